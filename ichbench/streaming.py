"""Training on a dataset larger than the device's memory: the images stay in the
memory-mapped cache on the host, and each batch's rows go to the device when it is used,
the next batches read ahead on a background thread.

`StreamedImages` is a `DeviceImages` whose images never go to the device whole: the
labels (and the slice-context tables) do, so the trainer reads them as before. A batch is
the same uint8 rows, turned into floats by the same operations, so a fold trains to the
same bits whichever of the two holds its images (`tests/test_streaming.py`).

How the next batches are known without a change to the trainer: it hands `unit_batch`
slices of one index tensor that holds a whole epoch's order (`training.train_fold`), or
every row it scores (`training.predict`), batch after batch. The first slice of such a
tensor brings that tensor to the host once (one read per epoch, not per batch), and the
slices that follow it, of the same length, are gathered ahead. An index that is not such
a slice is read back and gathered on the spot: slower on CUDA, never wrong.

Rows are read with `os.preadv` straight into pinned host memory (on CUDA), which
releases the GIL, so the thread reading ahead does not stall the one queueing kernels;
the copy to the device is asynchronous (`non_blocking`) and the caching host allocator
keeps the pinned block alive until it is done.

`images_for` chooses: the images stay on the host when they exceed the memory allowed
(`--device-memory GIB`; default the free memory of a CUDA device, no limit on the CPU).
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ichbench.data.preprocess import context_table
from ichbench.training import DeviceImages

GIB = 2**30
READ_AHEAD = 4  # batches gathered ahead of the one in use


def device_budget(device: torch.device, device_memory: float | None) -> int | None:
    """Bytes the images may take on `device`: `device_memory` GiB when given, else the
    device's free memory on CUDA; None (no limit) on the CPU."""
    if device_memory is not None:
        return int(float(device_memory) * GIB)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def images_for(
    images: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    *,
    patient_ids: np.ndarray | None = None,
    context: int = 0,
    device_memory: float | None = None,
) -> DeviceImages:
    """The images on the device (`DeviceImages`) when they fit the budget
    (`device_budget`), else streamed from the host (`StreamedImages`)."""
    budget = device_budget(device, device_memory)
    kwargs = {"patient_ids": patient_ids, "context": context}
    if budget is None or images.nbytes <= budget:
        return DeviceImages(images, labels, device, **kwargs)
    allowed = "--device-memory" if device_memory is not None else "the device's free memory"
    return StreamedImages(images, labels, device, budget=budget, allowed=allowed, **kwargs)


def _gib(n: int) -> str:
    return f"{n / GIB:.3g} GiB"


class StreamedImages(DeviceImages):
    """The dataset's labels on the device, its images on the host (the memory-mapped
    cache), each batch's rows moved to the device as it is used."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        device: torch.device,
        *,
        patient_ids: np.ndarray | None = None,
        context: int = 0,
        budget: int | None = None,
        allowed: str = "--device-memory",
        read_ahead: int = READ_AHEAD,
    ) -> None:
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64)).to(device)
        self.device = device
        self.patient_ids = None if patient_ids is None else np.asarray(patient_ids)
        self.context = context
        self._tables: dict[int, torch.Tensor] = {}
        self._host_tables: dict[int, np.ndarray] = {}
        self._norms: dict[tuple, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        self.host = images
        self.row_shape = tuple(int(v) for v in images.shape[1:])
        self.budget = budget
        self.allowed = allowed  # where the budget came from, for `describe`
        self.read_ahead = max(0, int(read_ahead))
        self.pin = device.type == "cuda"
        self._fd, self._offset = _open_rows(images)
        self._row_bytes = int(np.prod(self.row_shape)) * images.dtype.itemsize
        self._order: tuple[torch.Tensor, np.ndarray] | None = None
        self._ahead: dict[tuple[int, int], Future] = {}
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ichbench-read-ahead")
        self.batches_read_ahead = 0  # served by the background thread
        self.batches_read_now = 0  # gathered while the trainer waited
        if context:
            self.context_rows(context)

    def describe(self) -> str:
        """What a run says of this choice."""
        budget = _gib(self.budget) if self.budget is not None else "no limit"
        return (
            f"images streamed to {self.device.type} batch by batch from the memory-mapped "
            f"cache: they take {_gib(self.host.nbytes)}, more than the {budget} allowed "
            f"({self.allowed})"
        )

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to release
            pass

    # ------------------------------------------------------------------- the batch
    def host_table(self, n: int) -> np.ndarray:
        """The (N, 2n+1) table of each row's context rows, on the host."""
        if n not in self._host_tables:
            self.context_rows(n)  # checks the patient ids, as DeviceImages does
            self._host_tables[n] = context_table(self.patient_ids, n)
        return self._host_tables[n]

    def rows(self, index: torch.Tensor, context: int) -> torch.Tensor:
        """As `DeviceImages.rows`: the same rows, read from the cache (ahead where the
        epoch's order allows) and copied to the device."""
        batch = self._fetch(index, context).to(self.device, non_blocking=self.pin)
        if context:
            return batch.reshape(len(index), 2 * context + 1, *self.row_shape)
        return batch

    def _fetch(self, index: torch.Tensor, context: int) -> torch.Tensor:
        """The uint8 rows of `index` (with their context rows) on the host: gathered
        ahead when `index` continues an order already seen, else now."""
        located = self._locate(index)
        if located is None:
            self.batches_read_now += 1
            return self._gather(index.cpu().numpy(), context)
        start, length = located
        future = self._ahead.pop((start, length), None)
        self._schedule(start, length, context)
        if future is not None:
            self.batches_read_ahead += 1
            return future.result()
        self.batches_read_now += 1
        return self._gather(self._order[1][start : start + length], context)

    def _locate(self, index: torch.Tensor) -> tuple[int, int] | None:
        """(start, length) of `index` in the order tensor it is a slice of, or None."""
        base = index._base
        if (
            base is None
            or index.dim() != 1
            or base.dim() != 1
            or index.dtype != torch.int64
            or base.dtype != torch.int64
            or index.stride(0) != 1
            or not base.is_contiguous()
        ):
            return None
        if self._order is None or self._order[0] is not base:
            for future in self._ahead.values():
                future.cancel()
            self._ahead.clear()
            self._order = (base, base.cpu().numpy())  # once per epoch
        return index.storage_offset() - base.storage_offset(), len(index)

    def _schedule(self, start: int, length: int, context: int) -> None:
        """Gather the `read_ahead` slices that follow on the background thread."""
        order = self._order[1]
        for k in range(1, self.read_ahead + 1):
            begin = start + k * length
            if begin >= len(order):
                break
            key = (begin, min(length, len(order) - begin))
            if key not in self._ahead:
                rows = order[begin : begin + key[1]]
                self._ahead[key] = self._thread.submit(self._gather, rows, context)

    def _gather(self, rows: np.ndarray, context: int) -> torch.Tensor:
        if context:
            rows = self.host_table(context)[rows].reshape(-1)
        rows = np.asarray(rows, dtype=np.int64)
        out = torch.empty((len(rows), *self.row_shape), dtype=torch.uint8, pin_memory=self.pin)
        target = out.numpy()
        if self._fd is None:
            target[...] = self.host[rows]
        else:
            _read_rows(self._fd, self._offset, self._row_bytes, rows, target)
        return out


def _open_rows(images: np.ndarray) -> tuple[int | None, int]:
    """A file descriptor on the `.npy` file `images` maps, and its data's offset; (None, 0)
    when `images` is not a whole `.npy` file mapped (it is then indexed in memory)."""
    filename = getattr(images, "filename", None)
    if not isinstance(images, np.memmap) or not filename or not images.flags.c_contiguous:
        return None, 0
    try:
        with open(filename, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            offset = handle.tell()
    except (OSError, ValueError):
        return None, 0
    if tuple(shape) != images.shape or fortran or dtype != images.dtype:
        return None, 0
    return os.open(filename, os.O_RDONLY), offset


def _read_rows(fd: int, offset: int, row_bytes: int, rows: np.ndarray, out: np.ndarray) -> None:
    """Rows `rows` of the file into `out`, one read per run of consecutive rows."""
    flat = out.reshape(len(rows), -1).view(np.uint8)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for run in np.split(np.arange(len(rows)), breaks):
        if not len(run):
            continue
        first, last = int(run[0]), int(run[-1]) + 1
        view: Any = memoryview(flat[first:last]).cast("B")
        position = offset + int(rows[first]) * row_bytes
        while len(view):
            got = os.preadv(fd, [view], position)
            if got <= 0:
                raise OSError(f"unexpected end of the cached images at byte {position}")
            view, position = view[got:], position + got
