"""A corpus of bad input: each case must end in exactly one `Error: ...` line that names
the culprit, the documented exit code, and an untouched store.

The store starts with one finished tiny run; every case works on its own byte copy and
afterwards the copy must be identical (same bytes, same row counts, no new checkpoint
folder), so a failing command can neither half-write a run nor mark one finished.
Cases run in-process through `ichbench.cli.app.main` (the console entry point) to keep
the corpus fast; a few also run as real subprocesses to pin the process exit code and
the absence of a traceback.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import nibabel as nib
import numpy as np
import pytest

from ichbench.errors import ExitCode

LABELS = "hemorrhage_diagnosis_raw_ct.csv"
VICTIM = 50  # the patient whose files the cases damage
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# --------------------------------------------------------------------------- the store


@pytest.fixture(scope="module")
def finished_store(tiny_synth_dir, tmp_path_factory) -> Path:
    """A store holding one finished tiny run (2 folds, 1 epoch), built once."""
    from ichbench.config import RunConfig
    from ichbench.lifecycle import run_config

    root = tmp_path_factory.mktemp("bad-input-store")
    config = RunConfig(
        data=str(tiny_synth_dir),
        backbone="tinycnn",
        folds=2,
        epochs=1,
        image_size=32,
        batch_size=16,
        preset="quick",
        device="cpu",
        exclude=[],
    )
    run_config(config, root / "runs.duckdb", cache_dir=root / "cache")
    return root / "runs.duckdb"


@pytest.fixture
def db(finished_store, tmp_path) -> Path:
    """This test's own copy of the finished store."""
    path = tmp_path / "store" / "runs.duckdb"
    path.parent.mkdir()
    shutil.copyfile(finished_store, path)
    return path


def snapshot(db: Path) -> dict[str, object]:
    """Everything a failed command could have changed in a store."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_type = 'BASE TABLE' ORDER BY table_name"
            ).fetchall()
        ]
        counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        runs = con.execute("SELECT run_id, status FROM runs ORDER BY run_id").fetchall()
    finally:
        con.close()
    checkpoints = db.parent / f"{db.name}.runs"
    return {
        "sha256": hashlib.sha256(db.read_bytes()).hexdigest(),
        "wal": db.with_name(db.name + ".wal").exists(),
        "counts": counts,
        "runs": runs,
        "run_folders": sorted(p.name for p in checkpoints.iterdir())
        if checkpoints.is_dir()
        else [],
    }


# --------------------------------------------------------------------------- invoking


def invoke(argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of the `ichbench` entry point run in this process."""
    from ichbench.cli.app import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    return int(stopped.value.code), ANSI.sub("", capsys.readouterr().err)


def the_error_line(stderr: str) -> str:
    """The one `Error:` line, with no traceback around it."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    assert "rerun with --debug" not in errors[0], f"an unexpected exception: {errors[0]}"
    return errors[0]


def run_args(data: Path | str, db: Path, *extra: str) -> list[str]:
    """A tiny `ichbench run`; `extra` (OPTION VALUE pairs) adds options or overrides them."""
    options = {
        "--data": str(data),
        "--backbone": "tinycnn",
        "--folds": "2",
        "--epochs": "1",
        "--image-size": "32",
        "--batch-size": "16",
        "--device": "cpu",
        "--exclude": "",
        "--db": str(db),
    }
    options.update(zip(extra[::2], extra[1::2]))
    return ["run", *(item for pair in options.items() for item in pair)]


# --------------------------------------------------------------------------- damage


def _volume(root: Path, pid: int = VICTIM) -> Path:
    return root / "ct_scans" / f"{pid:03d}.nii"


def _rewrite_volume(root: Path, make: Callable[[np.ndarray], np.ndarray]) -> None:
    img = nib.load(str(_volume(root)))
    data = make(np.asarray(img.get_fdata(), dtype=np.float32))
    nib.save(nib.Nifti1Image(data, img.affine), str(_volume(root)))


def truncate(root: Path) -> None:
    path = _volume(root)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(root: Path) -> None:
    _volume(root).write_bytes(b"")


def flat_2d(root: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.int16), np.eye(4)), str(_volume(root)))


def four_d(root: Path) -> None:
    _rewrite_volume(root, lambda v: np.stack([v, v], axis=-1))


def with_nan(root: Path) -> None:
    def poke(v: np.ndarray) -> np.ndarray:
        v[10, 10, 2] = np.nan
        return v

    _rewrite_volume(root, poke)


def with_inf(root: Path) -> None:
    def poke(v: np.ndarray) -> np.ndarray:
        v[3, 4, 1] = np.inf
        return v

    _rewrite_volume(root, poke)


def _edit_csv(root: Path, edit: Callable[[list[list[str]]], list[list[str]]]) -> None:
    path = root / LABELS
    rows = [line.split(",") for line in path.read_text(encoding="utf-8-sig").splitlines()]
    path.write_text("\n".join(",".join(r) for r in edit(rows)) + "\n", encoding="utf-8")


def drop_column(root: Path) -> None:
    def edit(rows):
        i = rows[0].index("Subdural")
        return [r[:i] + r[i + 1 :] for r in rows]

    _edit_csv(root, edit)


def duplicate_row(root: Path) -> None:
    _edit_csv(root, lambda rows: rows + [rows[5]])


def non_numeric(root: Path) -> None:
    def edit(rows):
        col = rows[0].index("No_Hemorrhage")
        rows[7][col] = "abc"
        return rows

    _edit_csv(root, edit)


def slice_out_of_range(root: Path) -> None:
    def edit(rows):
        last = max(i for i, r in enumerate(rows) if r[0] == str(VICTIM))
        rows[last][1] = "999"
        return rows

    _edit_csv(root, edit)


def no_volume(root: Path) -> None:
    _volume(root).unlink()
    (root / "masks" / f"{VICTIM:03d}.nii").unlink()


def no_rows(root: Path) -> None:
    _edit_csv(root, lambda rows: [r for r in rows if r[0] != str(VICTIM)])


def one_ich_patient(root: Path) -> None:
    """Labels that leave a single ICH patient: no split can give every fold one."""

    def edit(rows):
        head = rows[0]
        flags = [
            head.index(c)
            for c in (
                "Intraventricular",
                "Intraparenchymal",
                "Subarachnoid",
                "Epidural",
                "Subdural",
            )
        ]
        healthy = head.index("No_Hemorrhage")
        ich = sorted({r[0] for r in rows[1:] if r[healthy] == "0"})
        assert len(ich) >= 2
        for r in rows[1:]:
            if r[0] != ich[0]:
                for c in flags:
                    r[c] = "0"
                r[healthy] = "1"
        return rows

    _edit_csv(root, edit)


def jpg_not_an_image(root: Path) -> None:
    (root / "Patients_CT" / "049" / "brain" / "5.jpg").write_bytes(b"this is not a JPEG\n" * 8)


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    name: str
    code: ExitCode
    says: tuple[str, ...]  # what the error line must name
    damage: Callable[[Path], None] | None = None  # applied to a copy of the dataset
    extra: tuple[str, ...] = ()  # options added to the tiny run
    base: str = "synth"  # the dataset copied: synth (NIfTI layout) or jpg (v1.0 sample)


NIFTI = f"{VICTIM:03d}.nii"
CASES = [
    Case("nifti-truncated", ExitCode.DATA, (NIFTI, "truncated"), truncate),
    Case("nifti-zero-bytes", ExitCode.DATA, (NIFTI, "empty"), empty),
    Case("nifti-2d", ExitCode.DATA, (NIFTI, "3-D"), flat_2d),
    Case("nifti-4d", ExitCode.DATA, (NIFTI, "3-D"), four_d),
    Case("nifti-nan-voxels", ExitCode.DATA, (NIFTI, "NaN"), with_nan),
    Case("nifti-infinite-voxels", ExitCode.DATA, (NIFTI, "infinite"), with_inf),
    Case(
        "jpg-not-an-image",
        ExitCode.DATA,
        ("5.jpg", "not a readable image"),
        jpg_not_an_image,
        base="jpg",
    ),
    Case("csv-missing-column", ExitCode.DATA, (LABELS, "Subdural"), drop_column),
    Case("csv-duplicate-row", ExitCode.DATA, (LABELS, "duplicate"), duplicate_row),
    Case("csv-non-numeric", ExitCode.DATA, (LABELS, "'abc'"), non_numeric),
    Case(
        "csv-slice-out-of-range", ExitCode.DATA, ("050", "999", "out of range"), slice_out_of_range
    ),
    Case("patient-without-volume", ExitCode.DATA, ("050", "no images"), no_volume),
    Case("volume-without-rows", ExitCode.DATA, (NIFTI, "no rows"), no_rows),
    Case("data-folder-missing", ExitCode.DATA, ("no-such-folder",)),
    Case(
        "unknown-strategy",
        ExitCode.PLUGIN,
        ("agument", "Did you mean 'augment'"),
        extra=("--strategy", "agument:2"),
    ),
    Case(
        "unknown-backbone",
        ExitCode.PLUGIN,
        ("tinycn", "Did you mean 'tinycnn'"),
        extra=("--backbone", "tinycn"),
    ),
    Case("augment-negative", ExitCode.USAGE, ("augment", "-1"), extra=("--strategy", "augment:-1")),
    Case(
        "augment-not-a-number",
        ExitCode.USAGE,
        ("augment", "'abc'"),
        extra=("--strategy", "augment:abc"),
    ),
    Case("weight-zero", ExitCode.USAGE, ("ich", "0"), extra=("--weight", "ich:0")),
    Case("weight-unknown-class", ExitCode.USAGE, ("'bleed'",), extra=("--weight", "bleed:2")),
    Case("folds-more-than-patients", ExitCode.USAGE, ("--folds 10",), extra=("--folds", "10")),
    Case(
        "split-without-ich-patient", ExitCode.USAGE, ("1 ICH", "at least one ICH"), one_ich_patient
    ),
    Case("image-size-zero", ExitCode.USAGE, ("--image-size 0",), extra=("--image-size", "0")),
]


@pytest.fixture(scope="module")
def datasets(tiny_synth_dir, jpg_sample_dir) -> dict[str, Path]:
    return {"synth": tiny_synth_dir, "jpg": jpg_sample_dir}


def case_data(case: Case, datasets: dict[str, Path], tmp_path: Path) -> Path:
    if case.name == "data-folder-missing":
        return tmp_path / "no-such-folder"
    if case.damage is None:
        return datasets[case.base]
    copy = tmp_path / f"data-{case.name}"
    shutil.copytree(datasets[case.base], copy)
    case.damage(copy)
    return copy


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_never_creates_a_store(case, datasets, tmp_path, capsys):
    data = case_data(case, datasets, tmp_path)
    absent = tmp_path / "absent" / "runs.duckdb"
    code, stderr = invoke(run_args(data, absent, *case.extra), capsys)
    the_error_line(stderr)
    assert code == case.code
    assert not absent.parent.exists(), sorted(absent.parent.rglob("*"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_error_line_and_leaves_the_store_alone(
    case, datasets, db, tmp_path, capsys
):
    data = case_data(case, datasets, tmp_path)
    before = snapshot(db)
    code, stderr = invoke(run_args(data, db, *case.extra), capsys)
    line = the_error_line(stderr)
    for needle in case.says:
        assert needle in line, line
    assert code == case.code, line
    assert snapshot(db) == before


def test_corpus_covers_the_required_cases():
    assert len(CASES) + len(STORE_CASES) >= 20
    assert {c.code for c in CASES} == {ExitCode.DATA, ExitCode.PLUGIN, ExitCode.USAGE}


# --------------------------------------------------------------------------- bad stores


def store_is_a_directory(tmp_path: Path) -> Path:
    path = tmp_path / "a-directory.duckdb"
    path.mkdir()
    return path


def store_of_random_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "random.duckdb"
    path.write_bytes(np.random.default_rng(7).bytes(64 * 1024))
    return path


def store_under_a_file(tmp_path: Path) -> Path:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be\n")
    return blocker / "runs.duckdb"


def store_in_read_only_folder(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; store_under_a_file covers it")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "runs.duckdb"


STORE_CASES = [
    store_is_a_directory,
    store_of_random_bytes,
    store_under_a_file,
    store_in_read_only_folder,
]


def tree(path: Path) -> dict[str, str]:
    """Every file under the test's folder and its digest (what a command may not touch)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("make", STORE_CASES, ids=[m.__name__ for m in STORE_CASES])
def test_unusable_store_is_a_store_error(make, tiny_synth_dir, tmp_path, capsys):
    bad = make(tmp_path)
    before = tree(tmp_path)
    code, stderr = invoke(run_args(tiny_synth_dir, bad), capsys)
    line = the_error_line(stderr)
    assert bad.name in line, line
    assert code == ExitCode.STORE, line
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------- full disk


def _run_rows(db: Path, run_id: str) -> dict[str, object]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        status, error = con.execute(
            "SELECT status, error FROM runs WHERE run_id = ?", [run_id]
        ).fetchone()
        per_fold = {}
        for table in ("folds", "epochs", "metrics", "curves", "predictions"):
            per_fold[table] = dict(
                con.execute(
                    f"SELECT coalesce(fold, -1), count(*) FROM {table} WHERE run_id = ? "
                    "GROUP BY ALL",
                    [run_id],
                ).fetchall()
            )
    finally:
        con.close()
    return {"status": status, "error": error, "per_fold": per_fold}


def _new_run(db: Path, before: dict[str, object]) -> str:
    known = {r for r, _ in before["runs"]}
    new = [r for r, _ in snapshot(db)["runs"] if r not in known]
    assert len(new) == 1, new
    return new[0]


def _out_of_space(db: Path, data: Path, capsys, code: ExitCode) -> dict[str, object]:
    """`ichbench run` on `data` with a full disk mocked: exactly one error line, saying
    so, and exit `code`. Returns the store's snapshot from before the run."""
    before = snapshot(db)
    got, stderr = invoke(run_args(data, db), capsys)
    line = the_error_line(stderr)
    assert "No space left on device" in line, line
    assert got == code, line
    return before


def test_disk_full_while_saving_a_checkpoint(db, tiny_synth_dir, monkeypatch, capsys):
    """The first checkpoint write hits ENOSPC after writing part of the file."""
    import torch

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"\x80\x02partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(torch, "save", full_disk)
    before = _out_of_space(db, tiny_synth_dir, capsys, ExitCode.SYSTEM)
    run_id = _new_run(db, before)
    rows = _run_rows(db, run_id)
    assert rows["status"] == "failed" and "No space left" in rows["error"]
    assert not any(rows["per_fold"].values()), rows
    folder = db.parent / f"{db.name}.runs" / run_id
    left = [p.name for p in folder.iterdir() if p.suffix == ".pt" or ".tmp" in p.name]
    assert left == [], "a partial checkpoint was left"


def test_disk_full_while_writing_a_fold_rolls_the_fold_back(
    db, tiny_synth_dir, monkeypatch, capsys
):
    """The store's write of fold 1 fails halfway through its transaction."""
    from ichbench.store import writes

    original = writes.insert_predictions

    def full_disk(con, run_id, fold, preds, outer=0):
        if fold == 1:
            raise duckdb.IOException("IO Error: Could not write file: No space left on device")
        return original(con, run_id, fold, preds, outer)

    monkeypatch.setattr(writes, "insert_predictions", full_disk)
    before = _out_of_space(db, tiny_synth_dir, capsys, ExitCode.STORE)
    rows = _run_rows(db, _new_run(db, before))
    assert rows["status"] == "failed"
    for table, counts in rows["per_fold"].items():
        assert set(counts) == {0}, f"{table} has rows of a fold that was rolled back: {counts}"


def test_disk_full_while_preprocessing(db, tiny_synth_dir, monkeypatch, capsys):
    """ENOSPC while the cache is written: an error line, no run, no valid cache entry."""
    from ichbench.data import physionet

    def full_disk(folder, arrays):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "labels.npy"))

    monkeypatch.setattr(physionet, "save_arrays", full_disk)
    before = _out_of_space(db, tiny_synth_dir, capsys, ExitCode.SYSTEM)
    assert snapshot(db) == before
    slices = Path(os.environ["ICHBENCH_CACHE"]) / "slices"
    assert (sorted(p.name for p in slices.iterdir()) if slices.is_dir() else []) == []


# --------------------------------------------------------------------------- real processes


SUBPROCESS_CASES = ["nifti-truncated", "unknown-strategy", "augment-negative"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_in_a_real_process(name, datasets, db, tmp_path):
    case = next(c for c in CASES if c.name == name)
    data = case_data(case, datasets, tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "ICHBENCH_DEBUG"}
    env.update(ICHBENCH_LOAD_PLUGINS="", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="200")
    before = snapshot(db)
    done = subprocess.run(
        [sys.executable, "-m", "ichbench", *run_args(data, db, *case.extra)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    line = the_error_line(ANSI.sub("", done.stderr))
    assert done.returncode == case.code, line
    assert all(needle in line for needle in case.says), line
    assert snapshot(db) == before
