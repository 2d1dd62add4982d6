"""From cached images to what a network sees: one definition for training, evaluation,
Grad-CAM and prediction, so a model is never shown inputs prepared another way.

Cached images are uint8 (N, C, H, W): each window mapped to [0, 1], times 255. A
network sees them scaled back to [0, 1] (augmented there, in training), resized when the
backbone needs a fixed input size, then normalised: to about [-1, 1] by default (mean and
std 0.5 on every channel), or with the per-channel statistics the backbone's pretrained
weights expect (`channel_stats` maps those onto the input's channel count).

With slice context (2.5D) a row's input is its own slice and its `n` neighbours on each
side in the same scan: `context_table` says which rows those are and `gather_context`
stacks them, offset-major: the C windows of slice i-n, then those of slice i-n+1, ...,
then those of slice i+n, so the row's own slice is the middle block of C channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

MEAN, STD = 0.5, 0.5


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float32 in [0, 1] (a new tensor, safe to change in place)."""
    return images.float().div_(255.0)


def _per_channel(
    values: Sequence[float] | torch.Tensor, x: torch.Tensor, what: str
) -> torch.Tensor:
    import torch

    if isinstance(values, torch.Tensor):
        out = values.to(device=x.device, dtype=x.dtype)
    else:
        out = torch.tensor(tuple(values), device=x.device, dtype=x.dtype)
    if out.numel() != x.shape[1]:
        raise ValueError(
            f"normalisation {what} has {out.numel()} value(s) for {x.shape[1]} input "
            "channel(s); map the backbone's statistics with channel_stats(mean, std, in_chans)"
        )
    return out.view(1, -1, 1, 1)


def to_network(
    x: torch.Tensor,
    input_size: int | None,
    *,
    channels_last: bool,
    mean: Sequence[float] | torch.Tensor | None = None,
    std: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """[0, 1] images resized to `input_size` (when given and different) and normalised;
    channels-last when the device prefers it (CUDA).

    `mean` and `std` are per input channel (one value each per channel of `x`); None
    normalises every channel with 0.5 and 0.5. A caller that normalises many batches can
    pass them as tensors on `x`'s device, so no batch copies them from the host.
    """
    import torch
    import torch.nn.functional as F

    if input_size and x.shape[-1] != input_size:
        x = F.interpolate(
            x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=False
        )
    if mean is None and std is None:
        x = x.sub_(MEAN).div_(STD)
    else:
        centre = _per_channel(mean, x, "mean") if mean is not None else MEAN
        scale = _per_channel(std, x, "std") if std is not None else STD
        x = x.sub_(centre).div_(scale)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def network_input(
    images: np.ndarray,
    input_size: int | None,
    device: torch.device,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Cached uint8 images (N, C, H, W) as a network's input batch on `device`; `mean` and
    `std` as in `to_network` (with slice context, gather the rows first: `gather_context`)."""
    import torch

    x = to_unit(torch.from_numpy(np.ascontiguousarray(images)).to(device))
    return to_network(
        x, input_size, channels_last=device.type == "cuda", mean=mean, std=std
    ).contiguous()


def channel_stats(
    mean: Sequence[float] | None, std: Sequence[float] | None, in_chans: int
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """A pretrained model's input statistics (usually ImageNet's three RGB channels) mapped
    onto `in_chans` input channels the way timm adapts the pretrained first convolution
    (`timm.models.adapt_input_conv`), so each input channel is normalised as the filters
    that now read it were trained to expect:

    - as many channels as the statistics: unchanged;
    - one channel: timm sums the RGB filters, so the one channel stands for the average
      of the RGB inputs, normalised with the mean of the means and the mean of the stds;
    - any other count: timm repeats the RGB filters cyclically (R, G, B, R, ...), and so
      are the statistics.

    None (no pretrained statistics) maps to None.
    """
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")

    def adapt(values: Sequence[float] | None) -> tuple[float, ...] | None:
        if values is None:
            return None
        values = tuple(float(v) for v in values)
        if not values:
            raise ValueError("channel statistics need at least one value")
        if len(values) == in_chans:
            return values
        if in_chans == 1:
            return (sum(values) / len(values),)
        return tuple(values[c % len(values)] for c in range(in_chans))

    return adapt(mean), adapt(std)


def context_table(patient_ids: np.ndarray, n: int) -> np.ndarray:
    """For each dataset row i, the rows of slices i-n ... i+n of the same scan: int64
    (N, 2n+1), column n being i itself. At either end of a scan the edge slice is repeated,
    so a row's context never holds a row of another patient.

    Rows must be ordered by patient then slice (as a `SliceDataset`'s are): each patient's
    rows are one contiguous run. A patient whose rows are split in two is an error, because
    its neighbours in the table would not be its neighbours in the scan.
    """
    ids = np.asarray(patient_ids)
    if n < 0:
        raise ValueError(f"slice context must be >= 0, got {n}")
    count = len(ids)
    if count == 0:
        return np.zeros((0, 2 * n + 1), dtype=np.int64)
    starts_run = np.ones(count, dtype=bool)
    starts_run[1:] = ids[1:] != ids[:-1]
    if len(np.unique(ids)) != int(starts_run.sum()):
        raise ValueError("rows must be grouped by patient (ordered by patient, then slice)")
    run_start = np.flatnonzero(starts_run)
    run_end = np.append(run_start[1:], count) - 1
    run = np.cumsum(starts_run) - 1
    rows = np.arange(count, dtype=np.int64)
    offsets = np.arange(-n, n + 1, dtype=np.int64)
    table = rows[:, None] + offsets[None, :]
    return np.clip(table, run_start[run][:, None], run_end[run][:, None]).astype(np.int64)


def gather_context(images: np.ndarray, table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The inputs of `rows` with slice context: uint8 (len(rows), (2n+1)·C, H, W), gathered
    from `images` (N, C, H, W) through `table` (`context_table`), offset-major. Only the
    asked rows are gathered, never the whole dataset."""
    picked = np.asarray(images)[np.asarray(table)[np.asarray(rows, dtype=np.int64)]]
    return picked.reshape(picked.shape[0], -1, *picked.shape[-2:])
