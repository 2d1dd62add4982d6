"""The error boundary of the `ichbench` command: usage errors, domain errors, exit codes."""

from __future__ import annotations

import pytest
from cli_run import run_main

from ichbench import __version__
from ichbench.errors import ExitCode


def test_version(capsys):
    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and __version__ in out


@pytest.mark.parametrize(
    "args, message",
    [
        (("report",), "Missing argument"),
        (("run", "--bogus"), "No such option: --bogus"),
        (("frobnicate",), "No such command"),
    ],
)
def test_usage_errors_exit_2_without_traceback(capsys, args, message):
    code, _, err = run_main(capsys, *args)
    assert code == ExitCode.USAGE
    assert message in err and "Traceback" not in err


def test_domain_error_is_one_line(capsys, tmp_path):
    code, _, err = run_main(
        capsys, "run", "--strategy", "agument:2", "--db", str(tmp_path / "r.duckdb")
    )
    assert code == ExitCode.PLUGIN
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [
        "Error: Unknown strategy 'agument'. Did you mean 'augment'? Available: "
        "augment, bootstrap, cutmix, mixup, undersample, weight"
    ]
    assert not (tmp_path / "r.duckdb").exists()


def test_bad_exclude_is_a_usage_error(capsys, tmp_path):
    code, _, err = run_main(capsys, "run", "--exclude", "58,x", "--db", str(tmp_path / "r.db"))
    assert code == ExitCode.USAGE and "--exclude '58,x'" in err


def test_sigterm_marks_a_run_interrupted(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from ichbench.store import Store

    db = tmp_path / "runs.duckdb"
    env = {**os.environ, "ICHBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ichbench",
            "run",
            "--data",
            "synthetic:14,1,32",
            "--backbone",
            "tinycnn",
            "--folds",
            "3",
            "--epochs",
            "500",
            "--patience",
            "500",
            "--image-size",
            "32",
            "--db",
            str(db),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    for line in proc.stderr:  # wait until the run exists in the store
        if "Run 20" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.INTERRUPTED, rest
    (run,) = Store(db, create=False).list_runs()
    assert run["status"] == "interrupted"
    assert run["error"] == "terminated (SIGTERM)"  # why, kept with the run
    assert f"Interrupted: resume with `ichbench run --resume {run['run_id']} --db {db}`" in (
        " ".join(rest.split())
    )


def test_ctrl_c_says_how_to_resume_and_records_why(capsys, tmp_path, monkeypatch):
    from cli_run import TINY_ARGS, interrupted_trial, run_main

    from ichbench.protocol import RunProtocol
    from ichbench.store import Store

    monkeypatch.setattr(RunProtocol, "fold_trial", interrupted_trial((0, 1)))
    db = tmp_path / "r.duckdb"
    code, _, err = run_main(capsys, "run", *TINY_ARGS, "--db", str(db))
    assert code == ExitCode.INTERRUPTED
    (run,) = Store(db, create=False).list_runs()
    assert (run["status"], run["error"]) == ("interrupted", "interrupted (Ctrl-C)")
    said = " ".join(err.split())
    assert f"Interrupted: resume with `ichbench run --resume {run['run_id']} --db {db}`" in said
    assert said.count("Interrupted") == 1
