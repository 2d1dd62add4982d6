"""Data a user owns is never lost or misrepresented: `synth --force` replaces only what the
generator wrote, a label edit that keeps size and mtime is still seen, and a full disk while
preprocessing is one clear error with nothing half-written left in the cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from small_fs import tmpfs

from ichbench.data.physionet import PhysioNetSource
from ichbench.data.synth import PARAMS_FILE, generate
from ichbench.errors import UsageError
from ichbench.interfaces import LoadOptions

OPTIONS = LoadOptions(image_size=32, exclude=())


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under `root`: a file by its bytes' digest, a folder by a mark."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "ichbench", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=600,
    )


# --------------------------------------------------------------------------- synth --force


@pytest.fixture
def real_layout(tmp_path):
    """A folder laid out like a real v1.3 release, with a file of the user's own."""
    root = generate(tmp_path / "release", 2, 0, 16).out
    (root / PARAMS_FILE).unlink()
    (root / "my_notes.txt").write_text("annotations I made by hand\n")
    return root


def test_force_never_replaces_a_folder_the_generator_did_not_mark(real_layout, tmp_path):
    before = snapshot(real_layout)
    result = cli("data", "synth", "--out", str(real_layout), "--patients", "3", "--force")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Refusing to replace" in lines[0], result.stderr
    assert PARAMS_FILE in result.stderr and "Traceback" not in result.stderr
    assert snapshot(real_layout) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]


def test_force_keeps_a_users_file_in_a_generated_folder(tmp_path):
    out = generate(tmp_path / "ds", 2, 0, 16).out
    (out / "masks" / "reading.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(UsageError, match=r"Refusing to replace .*ds: it holds masks/reading.txt"):
        generate(out, 3, 0, 16, force=True)
    assert snapshot(out) == before


def test_force_refuses_an_unreadable_marker(tmp_path):
    out = generate(tmp_path / "ds", 2, 0, 16).out
    (out / PARAMS_FILE).write_text("{not json")
    with pytest.raises(UsageError, match=r"Refusing to replace .*ds: .*ichbench-synth.json"):
        generate(out, 3, 0, 16, force=True)
    assert (out / PARAMS_FILE).read_text() == "{not json"


def test_force_replaces_a_dataset_of_the_previous_generator(tmp_path):
    """Its params file, without the list of files, still marks it: the files that version
    wrote follow from its parameters."""
    import json

    out = generate(tmp_path / "ds", 2, 0, 16).out
    params = json.loads((out / PARAMS_FILE).read_text())
    del params["files"]
    (out / PARAMS_FILE).write_text(json.dumps(params, indent=1) + "\n")
    generate(out, 3, 0, 16, force=True)
    assert len(list((out / "ct_scans").iterdir())) == 3
    (out / "extra.nii").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"it holds extra.nii"):
        generate(out, 2, 0, 16, force=True)


# --------------------------------------------------------------------------- stale labels


def flip_one_label(csv: Path) -> None:
    """Turn one healthy slice into ICH, keeping the file's size and mtime."""
    st = csv.stat()
    text = csv.read_bytes()
    lines = text.split(b"\r\n")
    for i, line in enumerate(lines[1:], start=1):
        cells = line.split(b",")
        if len(cells) == 9 and cells[2:7] == [b"0"] * 5 and cells[7] == b"1":
            cells[2], cells[7] = b"1", b"0"  # Intraventricular yes, No_Hemorrhage no
            lines[i] = b",".join(cells)
            break
    else:
        raise AssertionError("no healthy slice to flip")
    edited = b"\r\n".join(lines)
    assert len(edited) == len(text) and edited != text
    csv.write_bytes(edited)
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert csv.stat().st_size == st.st_size and csv.stat().st_mtime_ns == st.st_mtime_ns


def test_a_same_size_label_edit_with_its_mtime_restored_is_seen(tiny_synth_dir, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_synth_dir, root)
    source = PhysioNetSource(root)
    first = source.load(OPTIONS, tmp_path / "cache")
    labels, dataset_hash = np.array(first.labels), first.dataset_hash
    del first
    flip_one_label(root / "hemorrhage_diagnosis_raw_ct.csv")
    again = source.load(OPTIONS, tmp_path / "cache")
    assert int(again.labels.sum()) == int(labels.sum()) + 1
    assert again.dataset_hash != dataset_hash


def test_a_same_size_image_edit_with_its_mtime_restored_is_seen(tmp_path):
    """Volumes too large to read on every load enter the key by size and times: the ctime
    that the edit moved, and that no user call can put back, tells."""
    from ichbench.data.cache import SMALL_FILE

    root = generate(tmp_path / "ds", 2, 0, 64).out
    assert (root / "ct_scans" / "050.nii").stat().st_size > SMALL_FILE
    source = PhysioNetSource(root)
    first = source.load(OPTIONS, tmp_path / "cache")
    images, dataset_hash = np.array(first.images), first.dataset_hash
    del first
    volume = root / "ct_scans" / "050.nii"
    st = volume.stat()
    data = bytearray(volume.read_bytes())
    data[-64:] = b"\x7f" * 64  # the last voxels set far above the brain window
    volume.write_bytes(bytes(data))
    os.utime(volume, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = source.load(OPTIONS, tmp_path / "cache")
    assert again.dataset_hash != dataset_hash
    assert not np.array_equal(np.array(again.images), images)


# --------------------------------------------------------------------------- disk full


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB filesystem of its own, so that only what is written into it fills it."""
    with tmpfs(tmp_path / f"full-{uuid.uuid4().hex[:6]}", "64k") as mount_point:
        yield mount_point


def test_a_full_disk_while_preprocessing_is_one_error_and_no_entry(small_tmpfs, tmp_path):
    data = generate(tmp_path / "ds", 4, 0, 32).out
    env = {"ICHBENCH_CACHE": str(small_tmpfs), "ICHBENCH_DB": str(tmp_path / "runs.duckdb")}
    args = ["run", "--data", str(data), "--image-size", "64", "--epochs", "1", "--folds", "2"]
    result = cli(*args, "--device", "cpu", "--exclude", "none", env=env, cwd=tmp_path)
    assert result.returncode == 6, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "No space left on device" in errors[0] and str(small_tmpfs) in errors[0]
    assert "Traceback" not in result.stderr
    slices = small_tmpfs / "slices"
    assert not slices.exists() or list(slices.iterdir()) == []


def test_a_full_disk_while_generating_names_the_folder_and_leaves_nothing(small_tmpfs):
    out = small_tmpfs / "ds"
    result = cli("data", "synth", "--out", str(out), "--patients", "4", "--size", "64")
    assert result.returncode == 6, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], result.stderr
    assert str(out) in errors[0] and "Traceback" not in result.stderr
    assert list(small_tmpfs.iterdir()) == []
