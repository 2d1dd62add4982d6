"""The CLI run in-process, as a test drives it: exit code and output, and the tiny settings
that keep a real run to seconds on the CPU."""

from __future__ import annotations

import os
import signal

from ichbench.cli.app import main

TINY_ARGS = [
    "--data",
    "synthetic:10,1,32",
    "--backbone",
    "tinycnn",
    "--folds",
    "2",
    "--epochs",
    "1",
    "--image-size",
    "32",
    "--preset",
    "quick",
    "--device",
    "cpu",
]


TINY_CONFIG = dict(
    data="synthetic:10,1,32",
    backbone="tinycnn",
    folds=2,
    epochs=1,
    image_size=32,
    preset="quick",
    device="cpu",
)
"""The same tiny run as `TINY_ARGS`, as `RunConfig` keywords."""


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """`ichbench ARGS` in this process: (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("Error:")]


def interrupted_trial(key: tuple[int, int]):
    """`RunProtocol.fold_trial` that first sends this process a real SIGINT when the trial
    of `key` = (outer fold, fold) starts: Ctrl-C as that fold begins."""
    from ichbench.protocol import RunProtocol

    original = RunProtocol.fold_trial

    def trial(self, dataset, split, at):
        if at == key:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, dataset, split, at)

    return trial
