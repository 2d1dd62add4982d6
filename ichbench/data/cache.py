"""The preprocessing cache: decoded, windowed, resized slices stored once, memory-mapped after.

An entry is a folder `<cache_dir>/slices/<key>/` of `.npy` arrays plus `meta.json`. The key
(`fingerprint`) covers the load options, the cache format and every file of the dataset: the
label file and every small file by content, each large image by size, mtime and ctime. An
edit that keeps a file's size and puts its mtime back still moves its ctime, which no user
call can set, so a warm load reads the labels and stats the images, never the image bytes.
The full content hash (`dataset_hash`) is computed while building and kept in meta.json; the
builder checks that the files still match the key afterwards, so the hash describes the
bytes that were decoded.

Entries are built in a partial folder `<cache_dir>/partial/<key>/` and renamed into place,
so a killed process never leaves a folder that reads as valid; an entry that fails any check
is rebuilt, not trusted. Arrays are preallocated before anything is written, so a full disk
is an OSError naming the file (not a SIGBUS when a mapped page cannot be backed), and the
partial folder is removed.

Building is resumable and parallel (`fill_rows`): the rows are cut into units (a patient,
a scan), decoded in worker processes (`ICHBENCH_WORKERS`, default the CPU count up to 8)
that write their rows straight into the preallocated arrays, and each unit is marked done
in the partial folder only once its rows are written. A build that is interrupted (Ctrl-C,
a kill, a worker that fails) leaves its partial folder; the next load of the same key
decodes only the units not marked, and gives the same bytes as one uninterrupted build. One
build per key runs at a time (a lock under `<cache_dir>/locks/`, released by the kernel
when its holder dies); a second loader waits for it and then reads its entry.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # no advisory locks on this platform: builds of one key may overlap
    fcntl = None  # type: ignore[assignment]

import numpy as np

from ichbench.errors import UsageError
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
PARTIAL = "partial"
LOCKS = "locks"
PLAN = "plan.json"
DONE = "done.log"
WORKERS_ENV = "ICHBENCH_WORKERS"
MAX_DEFAULT_WORKERS = 8
# below this many rows to decode, starting worker processes (each imports numpy and the
# readers) costs more than it saves: a build with the default worker count stays in-process
POOL_MIN_ROWS = 2048
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

    The files of `content` (the label file; a key of them whether or not `files` lists
    them too) and every file up to SMALL_FILE bytes are read and hashed; larger files
    enter by size, mtime and ctime, so a warm load of a dataset of large volumes costs a
    stat per volume plus reading its labels.
    """
    by_content = {Path(p) for p in content}
    files = {Path(p) for p in files} | by_content
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
    offset = _preallocate(path, dtype, shape)
    return np.memmap(path, dtype=np.dtype(dtype), mode="r+", offset=offset, shape=tuple(shape))


def _preallocate(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """Write a `.npy` header and reserve its data on disk; returns the data's offset."""
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
    with writing(path), open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {**header, "shape": tuple(shape)})
        offset = handle.tell()
        handle.flush()
        _reserve(handle, offset, math.prod(shape) * dtype.itemsize)
    return offset


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
        patient_truth=_by_patient(meta.get("patient_truth"), int),
        patient_names=_by_patient(meta.get("patient_names"), str),
    )


def _by_patient(value: Any, kind: type) -> dict | None:
    """A meta.json map keyed by patient id (JSON keys are strings) back to int keys."""
    return None if value is None else {int(k): kind(v) for k, v in value.items()}


def _remove_dead_temps(entry: Path) -> None:
    """Temp folders of builds whose process died are never read; reclaim their space."""
    for tmp in entry.parent.glob(f"{entry.name}{_TMP}*"):
        try:
            pid = int(tmp.name[len(entry.name) + len(_TMP) :].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def partial_dir(cache_dir: Path, key: str) -> Path:
    """Where the entry of `key` is built, and where an interrupted build waits to resume."""
    return Path(cache_dir) / PARTIAL / key


@contextmanager
def key_lock(cache_dir: Path, key: str, *, wait: bool = True) -> Iterator[bool]:
    """Hold the build lock of `key`; yields False only without `wait`, when another process
    holds it. The kernel releases it when the holder dies, so a killed build never leaves
    a lock behind (the empty lock file stays: removing it could split a waiter from it)."""
    if fcntl is None:
        yield True
        return
    path = Path(cache_dir) / LOCKS / f"{key}.lock"
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


_SOURCE = "source.txt"


def _remove_abandoned(cache_dir: Path, key: str, source: str) -> None:
    """Partial builds of the same source under another key (its files or options changed
    since) will never resume; reclaim their space unless a live build holds them."""
    base = Path(cache_dir) / PARTIAL
    for folder in base.iterdir() if base.is_dir() else []:
        if folder.name == key or not folder.is_dir():
            continue
        try:
            if (folder / _SOURCE).read_text() != source:
                continue
        except OSError:
            continue
        with key_lock(cache_dir, folder.name, wait=False) as held:
            if held:
                shutil.rmtree(folder, ignore_errors=True)


def load_cached(
    cache_dir: Path, key: str, build: Callable[[Path], dict[str, Any]], *, name: str, source: str
) -> SliceDataset:
    """Open the entry for `key`, building it first if absent or corrupt.

    `build(folder)` writes the row arrays into `folder` (see save_arrays, or start_rows
    and fill_rows for a build that resumes) and returns the metadata: at least rows,
    image_shape, arrays (names written), dataset_hash, windows. `folder` is the partial
    build of `key`: it may hold the rows an interrupted build wrote. A build that fails
    leaves it to be resumed, except on a full disk, when it is removed.
    """
    entry = entry_dir(cache_dir, key)
    if entry.is_dir():
        try:
            return open_entry(entry, name=name, source=source)
        except CorruptEntry:
            pass
    with key_lock(cache_dir, key):
        if entry.is_dir():  # built meanwhile by the holder of the lock, or corrupt
            try:
                return open_entry(entry, name=name, source=source)
            except CorruptEntry:
                shutil.rmtree(entry, ignore_errors=True)
        with writing(entry.parent):
            entry.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_temps(entry)
        _remove_abandoned(cache_dir, key, source)
        partial = partial_dir(cache_dir, key)
        try:
            with writing(partial):
                partial.mkdir(parents=True, exist_ok=True)
                (partial / _SOURCE).write_text(source)
            meta = dict(build(partial))
            meta.update(format=CACHE_FORMAT, key=key)
            for leftover in (PLAN, DONE, _SOURCE):
                (partial / leftover).unlink(missing_ok=True)
            with writing(partial / META):
                (partial / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
            try:
                partial.rename(entry)
            except OSError:
                if not entry.is_dir():  # not a concurrent build that finished first
                    raise
                shutil.rmtree(partial, ignore_errors=True)
            with contextlib.suppress(OSError):  # the last build in flight: no empty folder
                partial.parent.rmdir()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                shutil.rmtree(partial, ignore_errors=True)  # space first: nothing to resume
            raise
    return open_entry(entry, name=name, source=source)


# --------------------------------------------------------------------------- resumable rows


@dataclass(frozen=True)
class RowFile:
    """Rows of one preallocated `.npy` array, written at their offset: picklable, so a
    worker process writes its rows without mapping the file (or the 40 GB it may be)."""

    path: Path
    offset: int
    dtype: str
    row_shape: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        return math.prod(self.row_shape) * np.dtype(self.dtype).itemsize

    def write(self, start: int, values: np.ndarray) -> None:
        values = np.asarray(values)
        if values.dtype != np.dtype(self.dtype) or values.shape[1:] != self.row_shape:
            raise ValueError(
                f"{self.path.name}: rows of {values.dtype} {values.shape[1:]}, expected "
                f"{self.dtype} {self.row_shape}"
            )
        data = memoryview(np.ascontiguousarray(values).reshape(-1).view(np.uint8))
        position = self.offset + start * self.row_bytes
        with writing(self.path):
            fd = os.open(self.path, os.O_WRONLY)
            try:
                while len(data):
                    written = os.pwrite(fd, data, position)
                    data, position = data[written:], position + written
            finally:
                os.close(fd)


def _row_file(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> RowFile:
    """The RowFile of an allocated array; ValueError if it is not exactly that array."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            found, fortran, kind = np.lib.format.read_array_header_1_0(handle)
        else:
            found, fortran, kind = np.lib.format.read_array_header_2_0(handle)
        offset = handle.tell()
    if tuple(found) != tuple(shape) or fortran or kind != np.dtype(dtype):
        raise ValueError(f"{path}: {kind} {found}, expected {np.dtype(dtype)} {shape}")
    if path.stat().st_size != offset + math.prod(shape) * np.dtype(dtype).itemsize:
        raise ValueError(f"{path}: wrong size")
    return RowFile(path, offset, np.dtype(dtype).str, tuple(int(v) for v in shape[1:]))


def start_rows(
    folder: Path,
    arrays: Mapping[str, tuple[np.dtype, tuple[int, ...]]],
    plan: Any,
) -> dict[str, RowFile]:
    """The arrays `{name: (dtype, shape)}` of a build in `folder`, preallocated: those an
    interrupted build of the same `plan` left there (its done units kept), else new ones.

    `plan` (JSON-able: the units and their rows) must be equal for written rows to be
    reused; anything else in the folder is discarded. The plan is recorded only once
    every array is allocated, so a recorded plan always has its arrays.
    """
    wanted = {
        "format": CACHE_FORMAT,
        "arrays": {n: [np.dtype(d).str, [int(v) for v in s]] for n, (d, s) in arrays.items()},
        "plan": hashlib.blake2b(json.dumps(plan, sort_keys=True).encode()).hexdigest(),
    }
    try:
        kept = json.loads((folder / PLAN).read_text()) == wanted
        files = {n: _row_file(folder / f"{n}.npy", d, s) for n, (d, s) in arrays.items()}
    except (OSError, ValueError):
        kept = False
    if kept:
        return files
    for path in (folder / PLAN, folder / DONE, *(folder / f"{n}.npy" for n in arrays)):
        path.unlink(missing_ok=True)
    for n, (d, shape) in arrays.items():
        _preallocate(folder / f"{n}.npy", d, shape)
    files = {n: _row_file(folder / f"{n}.npy", d, s) for n, (d, s) in arrays.items()}
    with writing(folder / PLAN):
        (folder / f"{PLAN}.tmp").write_text(json.dumps(wanted))
        os.replace(folder / f"{PLAN}.tmp", folder / PLAN)
    return files


def done_units(folder: Path) -> set[int]:
    """The units whose rows a build in `folder` has written: whole lines of its done-log
    (a line cut short by a kill is not a mark)."""
    try:
        text = (folder / DONE).read_text()
    except OSError:
        return set()
    lines = text.split("\n")[:-1]
    return {int(line) for line in lines if line.strip().isdigit()}


@dataclass(frozen=True)
class Unit:
    """One piece of a build: rows `start:stop` of every array, decoded from `task`."""

    index: int
    start: int
    stop: int
    task: Any


Decode = Callable[[Any, Any], Mapping[str, np.ndarray]]
"""`decode(context, task) -> {array name: the unit's rows}`."""


def default_workers() -> int:
    """`ICHBENCH_WORKERS`, else the CPUs this process may use, at most MAX_DEFAULT_WORKERS."""
    text = os.environ.get(WORKERS_ENV, "").strip()
    if text:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise UsageError(f"{WORKERS_ENV}={text!r}: expected a whole number, 1 or more")
        return value
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_WORKERS))


def pool_size(workers: int | None, rows: int, units: int) -> int:
    """Worker processes for a build of `units` units and `rows` rows: `workers` when given
    (or set in ICHBENCH_WORKERS), else the default when the build is large enough to pay
    for starting them; never more than the units. 1 decodes in this process."""
    explicit = workers is not None or bool(os.environ.get(WORKERS_ENV, "").strip())
    count = int(workers) if workers is not None else default_workers()
    if count < 1:
        raise UsageError(f"workers {count}: expected 1 or more")
    if not explicit and rows < POOL_MIN_ROWS:
        return 1
    return max(1, min(count, units))


def fill_rows(
    folder: Path,
    files: Mapping[str, RowFile],
    units: Sequence[Unit],
    decode: Decode,
    context: Any,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[int]:
    """Decode every unit not yet done in `folder` and write its rows; returns the units
    decoded now, in the order they finished.

    With one worker the units are decoded here; with more, in spawned worker processes
    (`decode` must then be a module-level function, and `context` picklable: each worker
    receives it once). A unit is marked done only after its rows are written, so an
    interruption at any point loses at most the units in flight. `progress(done, total)`
    is called as units finish, counting those an earlier build did.
    """
    done = done_units(folder)
    todo = [u for u in units if u.index not in done]
    total = len(units)
    count = pool_size(workers, sum(u.stop - u.start for u in todo), len(todo))
    decoded: list[int] = []
    if progress is not None and total > len(todo):
        progress(total - len(todo), total)
    with writing(folder / DONE):
        fd = os.open(folder / DONE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:

        def mark(index: int) -> None:
            with writing(folder / DONE):
                os.write(fd, f"{index}\n".encode())
            decoded.append(index)
            if progress is not None:
                progress(total - len(todo) + len(decoded), total)

        if count <= 1:
            for unit in todo:
                _write_unit(files, unit, decode(context, unit.task))
                mark(unit.index)
        else:
            _fill_in_pool(folder, files, todo, decode, context, count, mark)
    finally:
        os.close(fd)
    return decoded


def _write_unit(files: Mapping[str, RowFile], unit: Unit, arrays: Mapping[str, np.ndarray]) -> None:
    for name, values in arrays.items():
        if len(values) != unit.stop - unit.start:
            raise ValueError(
                f"unit {unit.index}: {len(values)} rows of {name} for rows {unit.start}:{unit.stop}"
            )
        files[name].write(unit.start, values)


def _fill_in_pool(
    folder: Path,
    files: Mapping[str, RowFile],
    todo: list[Unit],
    decode: Decode,
    context: Any,
    count: int,
    mark: Callable[[int], None],
) -> None:
    """The units through `count` worker processes, a few in flight per worker (an
    interruption leaves little undone, and a build of 25 000 units holds few futures).
    On an error or an interruption the units queued are cancelled, those running are
    waited for, and every unit that finished is marked before the error is raised."""
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(
        count,
        mp_context=_start_method(decode),
        initializer=_start_worker,
        initargs=(decode, context, dict(files)),
    )
    queue = iter(todo[2 * count :])
    pending: set[Future] = set()
    failure: BaseException | None = None

    def settle(futures: Iterable[Future]) -> None:
        nonlocal failure
        for future in futures:
            if future.cancelled():
                continue
            error = future.exception()
            if error is None:
                mark(future.result())
            elif failure is None:
                failure = error

    try:
        for unit in todo[: 2 * count]:
            pending.add(pool.submit(_fill_unit, unit))
        while pending and failure is None:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            settle(finished)
            for _ in finished:
                unit = next(queue, None)
                if unit is not None and failure is None:
                    pending.add(pool.submit(_fill_unit, unit))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        settle(f for f in pending if f.done())
        raise
    pool.shutdown(wait=True, cancel_futures=True)
    settle(f for f in pending if f.done())
    if isinstance(failure, BrokenProcessPool):
        raise OSError(
            errno.ECHILD,
            "a preprocessing worker process died (out of memory?); the slices written are "
            f"kept and the next load resumes them (fewer at once: {WORKERS_ENV}=1)",
            str(folder),
        ) from failure
    if failure is not None:
        raise failure


def _start_method(decode: Decode) -> Any:
    """Workers forked from a fork server (a fresh process that imports the decoder's module
    and torch once, so each worker starts in milliseconds, not the seconds of importing
    torch again), or spawned where there is none: never forked from this process, whose
    threads (progress bars, torch's pool, a CUDA context) a fork would copy half-held."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([decode.__module__, "ichbench.data.resize", "torch"])
    return context


_WORKER: dict[str, Any] = {}


def _start_worker(decode: Decode, context: Any, files: dict[str, RowFile]) -> None:
    """A worker leaves Ctrl-C to the build (which stops and marks what finished), decodes
    on one thread (the workers are the parallelism), and exits when the process that
    started it dies (the build, or the fork server that dies with it) instead of
    lingering."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    _WORKER.update(decode=decode, context=context, files=files)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _fill_unit(unit: Unit) -> int:
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _write_unit(_WORKER["files"], unit, _WORKER["decode"](_WORKER["context"], unit.task))
    return unit.index
