"""Parallel, resumable preprocessing: worker processes give the bytes of one process, and
a build interrupted by Ctrl-C, a kill or a dying worker resumes with only the patients it
had not written, never read as complete meanwhile."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ichbench.data import cache as cache_module
from ichbench.data import dicom_dataset, physionet
from ichbench.data.cache import (
    Unit,
    done_units,
    entry_dir,
    fill_rows,
    key_lock,
    partial_dir,
    pool_size,
    start_rows,
)
from ichbench.data.physionet import folder_key, load_folder, open_folder
from ichbench.data.windows import check_windows
from ichbench.errors import DataError, UsageError
from ichbench.interfaces import LoadOptions

OPTIONS = LoadOptions(image_size=32, exclude=())
ARRAYS = ("images", "labels", "patient_ids", "slice_numbers", "positions", "subtypes", "masks")
PATIENTS = 8  # tiny_synth_dir


@pytest.fixture
def dataset_dir(tiny_synth_dir, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_synth_dir, root)
    return root


@pytest.fixture
def reference(dataset_dir, tmp_path):
    """One uninterrupted in-process build, in its own cache."""
    return load_folder(dataset_dir, OPTIONS, tmp_path / "ref-cache", name="ref", workers=1)


def _counting(real, calls):
    def counting(folder, patient, *args, **kwargs):
        calls.append(patient)
        return real(folder, patient, *args, **kwargs)

    return counting


@pytest.fixture
def count_decodes(monkeypatch):
    """The patients decoded in this process, by id."""
    calls: list[int] = []
    monkeypatch.setattr(physionet, "decode_patient", _counting(physionet.decode_patient, calls))
    return calls


def key_of(root: Path) -> str:
    return folder_key(open_folder(root, ()), OPTIONS)


def assert_same_bytes(dataset, reference, cache: Path, key: str, ref_cache: Path) -> None:
    for name in ARRAYS:
        a, b = getattr(dataset, name), getattr(reference, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), name
    assert dataset.dataset_hash == reference.dataset_hash
    mine = json.loads((entry_dir(cache, key) / "meta.json").read_text())
    theirs = json.loads((entry_dir(ref_cache, key) / "meta.json").read_text())
    assert mine == theirs
    for name in ARRAYS:  # the files themselves, headers included
        path = f"{name}.npy"
        assert (entry_dir(cache, key) / path).read_bytes() == (
            entry_dir(ref_cache, key) / path
        ).read_bytes()


def test_ctrl_c_mid_build_resumes_with_only_the_missing_patients(
    dataset_dir, reference, tmp_path, monkeypatch
):
    cache, key = tmp_path / "cache", key_of(dataset_dir)
    real = physionet.decode_patient
    calls: list[int] = []

    def interrupted(folder, patient, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(patient)
        return real(folder, patient, *args, **kwargs)

    monkeypatch.setattr(physionet, "decode_patient", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_folder(dataset_dir, OPTIONS, cache, name="x", workers=1)
    assert not (cache / "slices" / key).exists()  # never read as complete
    assert done_units(partial_dir(cache, key)) == {0, 1}

    calls.clear()
    monkeypatch.setattr(physionet, "decode_patient", _counting(real, calls))
    progress: list[tuple[int, int]] = []
    dataset = load_folder(
        dataset_dir,
        OPTIONS,
        cache,
        name="x",
        workers=1,
        progress=lambda d, t: progress.append((d, t)),
    )
    patients = sorted(set(reference.patient_ids.tolist()))
    assert calls == patients[2:]  # the two written are not decoded again
    assert progress[0] == (2, PATIENTS) and progress[-1] == (PATIENTS, PATIENTS)
    assert_same_bytes(dataset, reference, cache, key, tmp_path / "ref-cache")
    assert not partial_dir(cache, key).exists()


def test_rows_of_another_plan_are_never_reused(tmp_path):
    arrays = {"images": (np.uint8, (4, 1, 2, 2))}
    units = [Unit(i, i, i + 1, i) for i in range(4)]
    files = start_rows(tmp_path, arrays, [[0, 1]])
    fill_rows(tmp_path, files, units[:2], _ones, None, workers=1)
    assert done_units(tmp_path) == {0, 1}
    start_rows(tmp_path, arrays, [[0, 1]])  # the same plan: kept
    assert done_units(tmp_path) == {0, 1}
    start_rows(tmp_path, arrays, [[0, 2]])  # another plan: started afresh
    assert done_units(tmp_path) == set()
    assert not np.load(tmp_path / "images.npy").any()


def _ones(context, task):
    return {"images": np.full((1, 1, 2, 2), task + 1, dtype=np.uint8)}


def test_a_done_mark_cut_short_by_a_kill_is_not_a_mark(tmp_path):
    (tmp_path / cache_module.DONE).write_text("0\n1\n2")
    assert done_units(tmp_path) == {0, 1}


def test_worker_count_setting(monkeypatch):
    monkeypatch.delenv(cache_module.WORKERS_ENV, raising=False)
    assert pool_size(None, 100, 8) == 1  # small: starting processes would cost more
    assert pool_size(None, 10**6, 8) == cache_module.default_workers()
    assert pool_size(3, 100, 8) == 3 and pool_size(3, 100, 2) == 2
    assert 1 <= cache_module.default_workers() <= cache_module.MAX_DEFAULT_WORKERS
    monkeypatch.setenv(cache_module.WORKERS_ENV, "2")
    assert pool_size(None, 100, 8) == 2  # asked for: used however small
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(cache_module.WORKERS_ENV, bad)
        with pytest.raises(UsageError, match=f"ICHBENCH_WORKERS={bad!r}"):
            pool_size(None, 100, 8)


def test_one_build_per_key_at_a_time(tmp_path):
    with key_lock(tmp_path, "k") as held:
        assert held
        with key_lock(tmp_path, "k", wait=False) as second:
            assert not second
        with key_lock(tmp_path, "other", wait=False) as other:
            assert other
    with key_lock(tmp_path, "k", wait=False) as again:
        assert again


def test_a_partial_build_of_changed_files_is_reclaimed(dataset_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    real = physionet.decode_patient
    calls: list[int] = []

    def interrupted(folder, patient, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(patient)
        return real(folder, patient, *args, **kwargs)

    monkeypatch.setattr(physionet, "decode_patient", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_folder(dataset_dir, OPTIONS, cache, name="x", workers=1)
    old = partial_dir(cache, key_of(dataset_dir))
    assert old.is_dir()
    monkeypatch.setattr(physionet, "decode_patient", real)
    labels = dataset_dir / "hemorrhage_diagnosis_raw_ct.csv"
    labels.write_bytes(labels.read_bytes() + b"\n")  # another key: the old build never resumes
    load_folder(dataset_dir, OPTIONS, cache, name="x", workers=1)
    assert not old.exists() and not (cache / "partial").exists()


# --------------------------------------------------------------------------- real processes


@pytest.mark.slow
def test_two_workers_give_the_bytes_of_one(dataset_dir, reference, tmp_path):
    cache, key = tmp_path / "cache", key_of(dataset_dir)
    progress: list[tuple[int, int]] = []
    dataset = load_folder(
        dataset_dir,
        OPTIONS,
        cache,
        name="x",
        workers=2,
        progress=lambda d, t: progress.append((d, t)),
    )
    assert progress == [(k, PATIENTS) for k in range(1, PATIENTS + 1)]
    assert_same_bytes(dataset, reference, cache, key, tmp_path / "ref-cache")


KILLED_BUILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ichbench.data.physionet import load_folder
    from ichbench.interfaces import LoadOptions

    def progress(done, total):
        print(done, total, flush=True)
        time.sleep(600)  # killed here, after the first patient is marked done

    if __name__ == "__main__":
        load_folder(Path(sys.argv[1]), LoadOptions(image_size=32, exclude=()),
                    Path(sys.argv[2]), name="x", workers=2, progress=progress)
    """
)


@pytest.mark.slow
def test_a_build_killed_with_sigkill_resumes_with_only_the_missing_patients(
    dataset_dir, reference, tmp_path, count_decodes
):
    cache, key = tmp_path / "cache", key_of(dataset_dir)
    script = tmp_path / "build.py"
    script.write_text(KILLED_BUILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, str(script), str(dataset_dir), str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: the workers die with it
    )
    try:
        line = child.stdout.readline()
        assert line.split() == ["1", str(PATIENTS)], child.stderr.read()
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
        child.stdout.close()
        child.stderr.close()
    assert not (cache / "slices" / key).exists()
    done = done_units(partial_dir(cache, key))
    assert len(done) == 1

    dataset = load_folder(dataset_dir, OPTIONS, cache, name="x", workers=1)
    assert len(count_decodes) == PATIENTS - 1
    assert_same_bytes(dataset, reference, cache, key, tmp_path / "ref-cache")


@pytest.mark.slow
def test_a_worker_that_dies_keeps_the_patients_written(
    dataset_dir, reference, tmp_path, count_decodes
):
    cache, key = tmp_path / "cache", key_of(dataset_dir)
    killed: list[int] = []

    def kill_a_worker(done, total):
        if not killed:
            worker = multiprocessing.active_children()[0]
            os.kill(worker.pid, signal.SIGKILL)  # as the out-of-memory killer would
            killed.append(worker.pid)

    with pytest.raises(OSError, match="worker process died") as caught:
        load_folder(dataset_dir, OPTIONS, cache, name="x", workers=2, progress=kill_a_worker)
    assert caught.value.filename == str(partial_dir(cache, key))
    done = done_units(partial_dir(cache, key))
    assert 1 <= len(done) < PATIENTS
    assert not (cache / "slices" / key).exists()

    dataset = load_folder(dataset_dir, OPTIONS, cache, name="x", workers=1)
    assert len(count_decodes) == PATIENTS - len(done)
    assert_same_bytes(dataset, reference, cache, key, tmp_path / "ref-cache")


@pytest.fixture(scope="module")
def rsna_dir(tmp_path_factory) -> Path:
    from ichbench.data.synth_dicom import generate_dicom

    return generate_dicom(tmp_path_factory.mktemp("rsna") / "rsna", "rsna", 4, 0, 32).out


def test_an_interrupted_dicom_build_resumes_with_only_the_missing_scans(
    rsna_dir, tmp_path, monkeypatch
):
    from ichbench.data.rsna import RsnaSource

    monkeypatch.setenv(cache_module.WORKERS_ENV, "1")
    reference = RsnaSource(rsna_dir).load(OPTIONS, tmp_path / "ref")
    real = dicom_dataset.read_files
    calls: list[Path] = []

    def interrupted(ordered, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(ordered[0].path)
        return real(ordered, *args, **kwargs)

    monkeypatch.setattr(dicom_dataset, "read_files", interrupted)
    with pytest.raises(KeyboardInterrupt):
        RsnaSource(rsna_dir).load(OPTIONS, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "slices").iterdir())
    (partial,) = (tmp_path / "cache" / "partial").iterdir()
    assert done_units(partial) == {0, 1}

    calls.clear()
    monkeypatch.setattr(
        dicom_dataset, "read_files", lambda o, *a, **k: calls.append(o[0].path) or real(o, *a, **k)
    )
    again = RsnaSource(rsna_dir).load(OPTIONS, tmp_path / "cache")
    scans = len(dicom_dataset.plan_rows(open_rsna_tree(rsna_dir), ()).scans)
    assert len(calls) == scans - 2
    for name in ARRAYS[:-1]:
        assert (
            np.asarray(getattr(again, name)).tobytes()
            == np.asarray(getattr(reference, name)).tobytes()
        )
    assert again.dataset_hash == reference.dataset_hash


def open_rsna_tree(root: Path):
    from ichbench.data.rsna import open_rsna

    return open_rsna(root)


@pytest.mark.slow
def test_dicom_tree_in_workers_gives_the_bytes_of_one_and_names_a_bad_file(
    rsna_dir, tmp_path, monkeypatch
):
    from ichbench.data.rsna import RsnaSource, open_rsna

    monkeypatch.setenv(cache_module.WORKERS_ENV, "1")
    one = RsnaSource(rsna_dir).load(OPTIONS, tmp_path / "one")
    monkeypatch.setenv(cache_module.WORKERS_ENV, "2")
    two = RsnaSource(rsna_dir).load(OPTIONS, tmp_path / "two")
    for name in ARRAYS[:-1]:
        assert np.asarray(getattr(one, name)).tobytes() == np.asarray(getattr(two, name)).tobytes()
    assert one.dataset_hash == two.dataset_hash

    # a worker's own error reaches the caller unchanged, naming the file; the scans that
    # finished are kept, the failed one is not marked
    opened = open_rsna(rsna_dir)
    plan = dicom_dataset.plan_rows(opened, ())
    units, start = [], 0
    for i, (_, ordered) in enumerate(plan.scans):
        units.append(Unit(i, start, start + len(ordered), list(ordered)))
        start += len(ordered)
    missing = tmp_path / "gone" / "ID_missing.dcm"
    units[1].task[0] = replace(units[1].task[0], path=missing)
    out = tmp_path / "partial"
    out.mkdir()
    files = start_rows(out, {"images": (np.uint8, (start, 1, 32, 32))}, [len(units)])
    context = (opened.fix_twelve_bit, check_windows(("brain",)), 32)
    with pytest.raises(DataError, match="ID_missing.dcm"):
        fill_rows(out, files, units, dicom_dataset._decode_scan, context, workers=2)
    assert 1 not in done_units(out)
