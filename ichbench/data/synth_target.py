"""The folder a synthetic dataset goes to: written whole or not at all, and never an
unrelated folder replaced by mistake.

The dataset is built in a temp folder beside the target (`.NAME.tmp-PID-RANDOM`) and
renamed into place; a killed generator's temp folder is recognised by its dead PID and
removed by the next one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from ichbench.data.layout import NIFTI_LABELS, SCANS
from ichbench.data.synth_files import PARAMS_FILE
from ichbench.errors import UsageError


def check_target(out: Path, force: bool) -> None:
    """A non-empty target needs --force, and then must look like a generated dataset."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise UsageError(f"{out} already exists and is not empty (use --force to replace it)")
        if not looks_generated(out):
            raise UsageError(
                f"Refusing to replace {out}: it does not look like a generated dataset"
            )


def looks_generated(folder: Path) -> bool:
    """--force replaces a previous dataset, never an unrelated folder given by mistake."""
    return folder.is_dir() and (
        (folder / PARAMS_FILE).is_file()
        or (folder / NIFTI_LABELS).is_file()
        or (folder / SCANS).is_dir()
    )


def temp_folder(out: Path) -> Path:
    """A fresh temp folder name beside `out`, owned by this process."""
    return out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_dead_temps(out: Path) -> None:
    """Temp folders of generators that were killed are never read; reclaim their space."""
    from ichbench.liveness import pid_alive

    for old in out.parent.glob(f".{out.name}.tmp-*"):
        pid = old.name[len(f".{out.name}.tmp-") :].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


def replace(tmp: Path, out: Path) -> None:
    """Put the finished `tmp` at `out`, moving a previous `out` aside first."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        tmp.rename(out)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        tmp.rename(out)
