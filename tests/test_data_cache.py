"""The preprocessing cache: hits, keys, content hash, and never trusting a broken entry."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from ichbench.data import cache as cache_module
from ichbench.data import physionet
from ichbench.data.cache import content_hash, entry_dir
from ichbench.data.physionet import PhysioNetSource, open_folder
from ichbench.errors import DataError
from ichbench.interfaces import LoadOptions

OPTIONS = LoadOptions(image_size=32, exclude=())
ARRAYS = ("images", "labels", "patient_ids", "slice_numbers", "positions", "subtypes", "masks")


@pytest.fixture
def dataset_dir(tiny_synth_dir, tmp_path):
    """A private copy, so tests may touch files."""
    root = tmp_path / "ds"
    shutil.copytree(tiny_synth_dir, root)
    return root


@pytest.fixture
def count_builds(monkeypatch):
    calls = []
    real = physionet.build_arrays

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(physionet, "build_arrays", counting)
    return calls


def entries(cache):
    return sorted(p.name for p in (cache / "slices").iterdir())


def same_arrays(a, b):
    return all(np.array_equal(getattr(a, n), getattr(b, n)) for n in ARRAYS)


def test_second_load_is_a_memory_mapped_hit(dataset_dir, tmp_path, count_builds):
    source = PhysioNetSource(dataset_dir)
    first = source.load(OPTIONS, tmp_path / "cache")
    second = source.load(OPTIONS, tmp_path / "cache")
    assert len(count_builds) == 1
    assert same_arrays(first, second) and first.dataset_hash == second.dataset_hash
    assert isinstance(second.images, np.memmap) and not second.images.flags.writeable
    assert second.labels.dtype == np.int64 and second.positions.dtype == np.float32
    assert len(entries(tmp_path / "cache")) == 1


def test_progress_is_reported_per_patient_while_building(dataset_dir, tmp_path):
    seen = []
    PhysioNetSource(dataset_dir).load(
        OPTIONS, tmp_path / "cache", progress=lambda done, total: seen.append((done, total))
    )
    assert seen == [(i, 8) for i in range(1, 9)]


def test_options_and_file_changes_change_the_key(dataset_dir, tmp_path, count_builds):
    source = PhysioNetSource(dataset_dir)
    cache = tmp_path / "cache"
    source.load(OPTIONS, cache)
    source.load(LoadOptions(image_size=16, exclude=()), cache)
    source.load(LoadOptions(image_size=32, exclude=(49,)), cache)
    assert len(count_builds) == 3
    labels = dataset_dir / "hemorrhage_diagnosis_raw_ct.csv"
    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns + 10**9))
    source.load(OPTIONS, cache)
    assert len(count_builds) == 3, "the label file enters the key by content, not by its times"
    (dataset_dir / "masks/051.nii").unlink()
    source.load(OPTIONS, cache)
    assert len(count_builds) == 4 and len(entries(cache)) == 4


def test_a_large_file_enters_the_key_by_size_and_times(dataset_dir, tmp_path, count_builds):
    """Reading every volume on every load would make a warm load as slow as hashing the
    release; a touch of a large one rebuilds instead."""
    source = PhysioNetSource(dataset_dir)
    cache = tmp_path / "cache"
    path = dataset_dir / "ct_scans/050.nii"
    assert path.stat().st_size > cache_module.SMALL_FILE
    source.load(OPTIONS, cache)
    source.load(OPTIONS, cache)
    assert len(count_builds) == 1
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    source.load(OPTIONS, cache)
    assert len(count_builds) == 2 and len(entries(cache)) == 2


def test_dataset_hash_is_the_content_hash_independent_of_options(dataset_dir, tmp_path):
    source = PhysioNetSource(dataset_dir)
    a = source.load(OPTIONS, tmp_path / "cache")
    b = source.load(
        LoadOptions(image_size=16, windows=("brain", "bone"), exclude=(49,)), tmp_path / "cache"
    )
    folder = open_folder(dataset_dir)
    assert a.dataset_hash == b.dataset_hash == content_hash(dataset_dir, folder.data_files())
    with open(dataset_dir / "ct_scans/051.nii", "r+b") as handle:  # one voxel, same size
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 1]))
    c = source.load(OPTIONS, tmp_path / "cache")
    assert c.dataset_hash != a.dataset_hash


def test_a_copy_elsewhere_has_the_same_hash(dataset_dir, tmp_path):
    other = tmp_path / "elsewhere"
    shutil.copytree(dataset_dir, other)
    a = PhysioNetSource(dataset_dir).load(OPTIONS, tmp_path / "c1")
    b = PhysioNetSource(other).load(OPTIONS, tmp_path / "c2")
    assert a.dataset_hash == b.dataset_hash and a.name != b.name


def only_entry(cache):
    (name,) = entries(cache)
    return cache / "slices" / name


@pytest.mark.parametrize(
    "damage",
    ["missing array", "garbage meta", "wrong key", "truncated images", "wrong rows", "no meta"],
)
def test_a_corrupt_entry_is_rebuilt(dataset_dir, tmp_path, count_builds, damage):
    source = PhysioNetSource(dataset_dir)
    cache = tmp_path / "cache"
    good = source.load(OPTIONS, cache)
    expected = {n: np.array(getattr(good, n)) for n in ARRAYS}
    del good
    entry = only_entry(cache)
    meta = json.loads((entry / "meta.json").read_text())
    if damage == "missing array":
        (entry / "labels.npy").unlink()
    elif damage == "garbage meta":
        (entry / "meta.json").write_text("{not json")
    elif damage == "wrong key":
        (entry / "meta.json").write_text(json.dumps({**meta, "key": "other"}))
    elif damage == "truncated images":
        data = (entry / "images.npy").read_bytes()
        (entry / "images.npy").write_bytes(data[: len(data) // 2])
    elif damage == "wrong rows":
        np.save(entry / "labels.npy", np.zeros(3, dtype=np.int64))
    else:
        (entry / "meta.json").unlink()
    rebuilt = source.load(OPTIONS, cache)
    assert len(count_builds) == 2
    assert all(np.array_equal(getattr(rebuilt, n), expected[n]) for n in ARRAYS)


def test_leftover_temp_folder_is_ignored(dataset_dir, tmp_path, count_builds):
    source = PhysioNetSource(dataset_dir)
    cache = tmp_path / "cache"
    source.load(OPTIONS, cache)
    key = entries(cache)[0]
    shutil.rmtree(cache / "slices" / key)
    alive = cache / "slices" / f"{key}.tmp-{os.getpid()}-deadbeef"  # another build in flight
    alive.mkdir()
    (alive / "meta.json").write_text(json.dumps({"format": 1, "key": key, "rows": 1}))
    dead = cache / "slices" / f"{key}.tmp-999999999-cafe0000"  # a killed build
    dead.mkdir()
    ds = source.load(OPTIONS, cache)
    assert len(count_builds) == 2 and len(ds) > 1
    assert (cache / "slices" / key).is_dir() and alive.is_dir() and not dead.exists()


def test_interrupted_build_leaves_no_entry(dataset_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    real = physionet.decode_patient
    calls = []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(physionet, "decode_patient", dying)
    with pytest.raises(KeyboardInterrupt):
        PhysioNetSource(dataset_dir).load(OPTIONS, cache)
    assert entries(cache) == []
    monkeypatch.setattr(physionet, "decode_patient", real)
    assert len(PhysioNetSource(dataset_dir).load(OPTIONS, cache)) > 0


def test_entry_location(dataset_dir, tmp_path):
    PhysioNetSource(dataset_dir).load(OPTIONS, tmp_path / "cache")
    entry = only_entry(tmp_path / "cache")
    assert entry == entry_dir(tmp_path / "cache", entry.name)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["windows"] == ["brain"] and meta["layout"] == "nifti"
    assert sorted(meta["arrays"]) == sorted(ARRAYS)


def test_arrays_are_reserved_on_disk_before_they_are_mapped(tmp_path):
    """A mapped page that the disk cannot back is a SIGBUS; a reserved one never is."""
    images = cache_module.allocate_array(tmp_path / "images.npy", np.uint8, (40, 1, 64, 64))
    assert os.stat(tmp_path / "images.npy").st_blocks * 512 >= images.size
    images[:] = 7
    images.flush()
    del images
    again = np.load(tmp_path / "images.npy", mmap_mode="r")
    assert again.shape == (40, 1, 64, 64) and again.dtype == np.uint8 and (again == 7).all()


def test_files_changed_while_building_leave_no_entry(dataset_dir, tmp_path, monkeypatch):
    """The entry and its dataset_hash must hold what its key describes, or not exist."""
    cache = tmp_path / "cache"
    real = physionet.decode_patient
    labels = dataset_dir / "hemorrhage_diagnosis_raw_ct.csv"

    def editing(*args, **kwargs):
        if labels.read_bytes().endswith(b"\r\n"):
            labels.write_bytes(labels.read_bytes()[:-2])
        return real(*args, **kwargs)

    monkeypatch.setattr(physionet, "decode_patient", editing)
    with pytest.raises(DataError, match=r"ds: its files changed while it was being loaded"):
        PhysioNetSource(dataset_dir).load(OPTIONS, cache)
    assert entries(cache) == []
    monkeypatch.setattr(physionet, "decode_patient", real)
    ds = PhysioNetSource(dataset_dir).load(OPTIONS, cache)
    folder = open_folder(dataset_dir)
    assert ds.dataset_hash == content_hash(dataset_dir, folder.data_files())


def test_a_content_file_enters_the_key_even_when_not_among_the_files(tmp_path) -> None:
    """The generic DICOM layout names its labels.csv only as `content`: an edit to it must
    change the key, or the first load's labels would come back from the cache."""
    from ichbench.data.cache import fingerprint
    from ichbench.interfaces import LoadOptions

    image, labels = tmp_path / "a.dcm", tmp_path / "labels.csv"
    image.write_bytes(b"x" * 10)
    labels.write_text("slice,label\n1,0\n")
    key = fingerprint(tmp_path, [image], LoadOptions(), content=[labels])
    assert fingerprint(tmp_path, [image], LoadOptions(), content=[labels]) == key
    labels.write_text("slice,label\n1,1\n")
    assert fingerprint(tmp_path, [image], LoadOptions(), content=[labels]) != key
    # listed among the files as well: the same key as given once
    assert fingerprint(tmp_path, [image, labels], LoadOptions(), content=[labels]) == fingerprint(
        tmp_path, [image], LoadOptions(), content=[labels]
    )
