"""The preprocessing cache: decoded, windowed, resized slices stored once, memory-mapped after.

An entry is a folder `<cache_dir>/slices/<key>/` of `.npy` arrays plus `meta.json`. The key
is a cheap fingerprint (relative paths, sizes and mtimes of the dataset's files, the load
options and the cache format), so a warm load only stats files and maps arrays. The
expensive content hash (`dataset_hash`) is computed while building and kept in meta.json.

Entries are built in a sibling temp folder and renamed into place, so a killed process never
leaves a folder that reads as valid; an entry that fails any check is rebuilt, not trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ichbench.interfaces import LoadOptions, SliceDataset
from ichbench.liveness import pid_alive

CACHE_FORMAT = 1
META = "meta.json"
ROW_ARRAYS: dict[str, np.dtype] = {
    "images": np.dtype(np.uint8),
    "labels": np.dtype(np.int64),
    "patient_ids": np.dtype(np.int64),
    "slice_numbers": np.dtype(np.int64),
    "positions": np.dtype(np.float32),
    "subtypes": np.dtype(np.uint8),
    "masks": np.dtype(np.uint8),
}
_TMP = ".tmp-"


class CorruptEntry(Exception):
    """An entry that cannot be trusted; the caller rebuilds it."""


def _relative(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def fingerprint(
    root: Path, files: Iterable[Path], options: LoadOptions, extra: Mapping[str, Any] | None = None
) -> str:
    """A cache key from file metadata only: any edit, addition or removal changes it."""
    h = hashlib.blake2b(digest_size=16)
    head = {"format": CACHE_FORMAT, "options": asdict(options), "extra": dict(extra or {})}
    h.update(json.dumps(head, sort_keys=True, default=list).encode())
    for path in sorted(files, key=lambda p: _relative(root, p)):
        st = path.stat()
        h.update(f"{_relative(root, path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def content_hash(root: Path, files: Iterable[Path], chunk: int = 1 << 20) -> str:
    """blake2b over every file's relative path and bytes: the dataset's identity in the store."""
    h = hashlib.blake2b(digest_size=32)
    for path in sorted(files, key=lambda p: _relative(root, p)):
        h.update(_relative(root, path).encode() + b"\0")
        with path.open("rb") as handle:
            while block := handle.read(chunk):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def entry_dir(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "slices" / key


def save_arrays(folder: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write row arrays with their canonical dtypes (images/masks may already be on disk)."""
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(array, dtype=ROW_ARRAYS[name]))


def open_entry(folder: Path, *, name: str, source: str) -> SliceDataset:
    """Map a finished entry; raises CorruptEntry when anything is missing or inconsistent."""
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as exc:
        raise CorruptEntry(f"{folder / META}: {exc}") from None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != CACHE_FORMAT
        or meta.get("key") != folder.name
    ):
        raise CorruptEntry(f"{folder / META}: wrong format or key")
    try:
        rows = int(meta["rows"])
        shape = tuple(int(v) for v in meta["image_shape"])
        names = list(meta["arrays"])
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in names}
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise CorruptEntry(f"{folder}: {exc}") from None
    for n in ("images", "labels", "patient_ids", "slice_numbers", "positions", "subtypes"):
        if n not in arrays:
            raise CorruptEntry(f"{folder}: no {n}.npy")
    for n, array in arrays.items():
        if n not in ROW_ARRAYS or array.dtype != ROW_ARRAYS[n] or array.shape[:1] != (rows,):
            raise CorruptEntry(f"{folder}: {n}.npy has shape {array.shape}, {array.dtype}")
    if arrays["images"].shape[1:] != shape:
        raise CorruptEntry(f"{folder}: images.npy has shape {arrays['images'].shape}")
    return SliceDataset(
        name=name,
        dataset_hash=str(meta.get("dataset_hash", "")),
        images=arrays["images"],
        labels=arrays["labels"],
        patient_ids=arrays["patient_ids"],
        slice_numbers=arrays["slice_numbers"],
        positions=arrays["positions"],
        subtypes=arrays["subtypes"],
        masks=arrays.get("masks"),
        windows=tuple(meta.get("windows", ("brain",))),
        source=source,
    )


def _remove_dead_temps(entry: Path) -> None:
    """Temp folders of builds whose process died are never read; reclaim their space."""
    for tmp in entry.parent.glob(f"{entry.name}{_TMP}*"):
        try:
            pid = int(tmp.name[len(entry.name) + len(_TMP) :].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def load_cached(
    cache_dir: Path, key: str, build: Callable[[Path], dict[str, Any]], *, name: str, source: str
) -> SliceDataset:
    """Open the entry for `key`, building it first if absent or corrupt.

    `build(folder)` writes the row arrays into `folder` (see save_arrays) and returns the
    metadata: at least rows, image_shape, arrays (names written), dataset_hash, windows.
    """
    entry = entry_dir(cache_dir, key)
    if entry.is_dir():
        try:
            return open_entry(entry, name=name, source=source)
        except CorruptEntry:
            shutil.rmtree(entry, ignore_errors=True)
    entry.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(entry)
    tmp = entry.parent / f"{key}{_TMP}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        meta = dict(build(tmp))
        meta.update(format=CACHE_FORMAT, key=key)
        (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        try:
            tmp.rename(entry)
        except OSError:
            if not entry.is_dir():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_entry(entry, name=name, source=source)
