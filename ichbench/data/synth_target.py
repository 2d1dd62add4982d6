"""The folder a synthetic dataset goes to: written whole or not at all, and never an
unrelated folder replaced by mistake.

Only a folder that carries the generator's mark (PARAMS_FILE, which lists the files it
wrote) and holds nothing else may be replaced: a real release has the very same layout.

The dataset is built in a temp folder beside the target (`.NAME.tmp-PID-RANDOM`) and
renamed into place; a killed generator's temp folder is recognised by its dead PID and
removed by the next one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from ichbench.data.layout import MASKS, NIFTI_LABELS, SCANS
from ichbench.data.synth_files import DEMOGRAPHICS, FIRST_PATIENT, GENERATOR_NAME, PARAMS_FILE
from ichbench.errors import UsageError

_GENERATOR = "`ichbench data synth`"


def check_target(out: Path, force: bool) -> None:
    """A non-empty target needs --force, and then must be a dataset the generator marked,
    holding nothing but the files it wrote."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise UsageError(f"{out} already exists and is not empty (use --force to replace it)")
        problem = replace_problem(out)
        if problem:
            raise UsageError(f"Refusing to replace {out}: {problem}")


def replace_problem(folder: Path) -> str | None:
    """Why `folder` may not be replaced, or None when everything in it is the generator's.

    A real release has the very layout the generator writes, so the layout proves nothing:
    only the generator's mark (PARAMS_FILE) does, and a file it did not write (a user's
    notes, a real scan) keeps the whole folder from being replaced.
    """
    if folder.is_symlink() or not folder.is_dir():
        return "it is not a folder"
    written = generated_files(folder)
    if written is None:
        return (
            f"it has no readable {PARAMS_FILE}, the mark {_GENERATOR} leaves on the datasets it "
            "writes, so it may hold real data; remove it yourself if it is yours to lose"
        )
    folders = {parent for name in written for parent in _parents(name)}
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            path = base / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink() or not path.is_dir():
                ours = rel in written and path.is_file() and not path.is_symlink()
            else:
                ours = rel in folders
            if not ours:
                return f"it holds {rel}, which {_GENERATOR} did not write (move it out first)"
        dirnames.sort()
    return None


def generated_files(folder: Path) -> set[str] | None:
    """The files the generator wrote into `folder`, from its mark; None when unmarked.

    The current generator lists them; a dataset of the first version lists its parameters
    only, from which its files follow (its volumes, masks, two CSVs and the mark).
    """
    try:
        params = json.loads((folder / PARAMS_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(params, dict) or params.get("generator") != GENERATOR_NAME:
        return None
    files = params.get("files")
    if isinstance(files, list) and all(isinstance(f, str) for f in files):
        return {*files, PARAMS_FILE}
    patients = params.get("patients")
    if files is not None or params.get("version") != 1 or type(patients) is not int:
        return None
    if not 0 < patients <= 10_000:
        return None
    ids = range(FIRST_PATIENT, FIRST_PATIENT + patients)
    return {
        NIFTI_LABELS,
        DEMOGRAPHICS,
        PARAMS_FILE,
        *(f"{SCANS}/{i:03d}.nii" for i in ids),
        *(f"{MASKS}/{i:03d}.nii" for i in ids),
    }


def _parents(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[: k + 1]) for k in range(len(parts))]


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


@contextlib.contextmanager
def built_beside(out: Path, force: bool) -> Iterator[Path]:
    """A temporary folder beside `out` for a generator to write a whole dataset into,
    renamed onto `out` when the block ends without error, removed whatever happens: a
    dataset appears whole or not at all. `out` must be a folder the generator may write
    (`check_target`). A failed `write()` names no file, so the error then names `out`."""
    check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(out)
    tmp = temp_folder(out)
    try:
        yield tmp
        replace(tmp, out)
    except OSError as exc:
        if exc.filename or exc.errno is None:
            raise
        strerror = exc.strerror or os.strerror(exc.errno)
        raise OSError(exc.errno, f"{strerror}, writing the synthetic dataset", str(out)) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
