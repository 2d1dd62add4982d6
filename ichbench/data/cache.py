"""The preprocessing cache: decoded, windowed, resized slices stored once, memory-mapped after.

An entry is a folder `<cache_dir>/slices/<key>/` of `.npy` arrays plus `meta.json`. The key
(`fingerprint`) covers the load options, the cache format and every file of the dataset: the
label file and every small file by content, each large image by size, mtime and ctime. An
edit that keeps a file's size and puts its mtime back still moves its ctime, which no user
call can set, so a warm load reads the labels and stats the images, never the image bytes.
The full content hash (`dataset_hash`) is computed while building and kept in meta.json; the
builder checks that the files still match the key afterwards, so the hash describes the
bytes that were decoded.

Entries are built in a sibling temp folder and renamed into place, so a killed process never
leaves a folder that reads as valid; an entry that fails any check is rebuilt, not trusted.
Arrays are preallocated before they are mapped, so a full disk is an OSError naming the
file (not a SIGBUS when a mapped page cannot be backed), and the temp folder is removed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
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
SMALL_FILE = 1 << 13  # bytes: read as cheaply as stat-ed, so such files enter the key by content


class CorruptEntry(Exception):
    """An entry that cannot be trusted; the caller rebuilds it."""


def _relative(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def fingerprint(
    root: Path,
    files: Iterable[Path],
    options: LoadOptions,
    extra: Mapping[str, Any] | None = None,
    *,
    content: Iterable[Path] = (),
) -> str:
    """A cache key that any edit, addition or removal changes.

    The files of `content` (the label file) and every file up to SMALL_FILE bytes are read
    and hashed; larger files enter by size, mtime and ctime, so a warm load of a dataset of
    large volumes costs a stat per volume plus reading its labels.
    """
    by_content = {Path(p) for p in content}
    h = hashlib.blake2b(digest_size=16)
    head = {"format": CACHE_FORMAT, "options": asdict(options), "extra": dict(extra or {})}
    h.update(json.dumps(head, sort_keys=True, default=list).encode())
    for path in sorted(files, key=lambda p: _relative(root, p)):
        st = path.stat()
        if path in by_content or st.st_size <= SMALL_FILE:
            digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
            h.update(f"{_relative(root, path)}\0{digest}\n".encode())
        else:
            stamp = f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
            h.update(f"{_relative(root, path)}\0{stamp}\n".encode())
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


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError while writing `path` names it (a failed write() or close() names no file),
    and says that the preprocessing cache was being written."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:
            raise
        strerror = exc.strerror or os.strerror(exc.errno)
        raise OSError(exc.errno, f"{strerror}, writing the preprocessing cache", str(path)) from exc


def allocate_array(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.memmap:
    """A writable memory-mapped `.npy` whose every byte is reserved on disk first.

    Writing through a map into a sparse file that the disk cannot back kills the process
    with SIGBUS; reserving the space turns a full disk into ENOSPC, here, naming `path`.
    """
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
    with writing(path), open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {**header, "shape": tuple(shape)})
        offset = handle.tell()
        handle.flush()
        _reserve(handle, offset, math.prod(shape) * dtype.itemsize)
    return np.memmap(path, dtype=dtype, mode="r+", offset=offset, shape=tuple(shape))


def _reserve(handle: Any, offset: int, length: int) -> None:
    if length <= 0:
        return
    try:
        os.posix_fallocate(handle.fileno(), offset, length)
        return
    except AttributeError:  # no posix_fallocate on this platform
        pass
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    handle.seek(offset)
    zeros = bytes(min(length, 1 << 20))
    left = length
    while left:
        left -= handle.write(zeros[: min(left, len(zeros))])
    handle.flush()
    os.fsync(handle.fileno())


def save_arrays(folder: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write row arrays with their canonical dtypes (images/masks may already be on disk)."""
    for name, array in arrays.items():
        path = folder / f"{name}.npy"
        with writing(path):
            np.save(path, np.ascontiguousarray(array, dtype=ROW_ARRAYS[name]))


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
    with writing(entry.parent):
        entry.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(entry)
    tmp = entry.parent / f"{key}{_TMP}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with writing(tmp):
        tmp.mkdir()
    try:
        meta = dict(build(tmp))
        meta.update(format=CACHE_FORMAT, key=key)
        with writing(tmp / META):
            (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        try:
            tmp.rename(entry)
        except OSError:
            if not entry.is_dir():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_entry(entry, name=name, source=source)
