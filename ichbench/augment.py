"""On-the-fly augmentation of training batches: flips, small rotations, shifts and
scales, and brightness/contrast jitter, each with its own random parameters per image.

torchvision.transforms.v2 applies one set of random parameters to a whole batch, which
would make every augmented slice in a batch move the same way. Per-image parameters in
one call are what `torch.nn.functional.affine_grid` + `grid_sample` give: every image's
flip, rotation, scale and shift become one 2×3 matrix, so the whole batch is resampled
once, on the tensor's device, with no Python loop over images. The flip is folded into
that matrix (a sign on the x axis), which lands exactly on pixel centres.

Usage in a trainer: `x[flags] = augment_batch(x[flags], generator)`.

Batch-level transforms (`MixUp`, `CutMix`) mix pairs of samples and their targets; they
follow the `BatchTransform` contract of `TrainPlan.batch_transform`: `(x, targets,
generator) -> (x, targets)` with soft targets (B, 2), so any number of them chain
(`compose_batch_transforms`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Magnitudes of the random transforms. All zero (and flip_p 0) is the identity."""

    flip_p: float = 0.5  # probability of a left-right flip (axial CT is near-symmetric)
    rotate_deg: float = 10.0  # rotation uniform in ±rotate_deg
    translate: float = 0.05  # shift uniform in ±translate of the image size, per axis
    scale: float = 0.1  # zoom uniform in [1 - scale, 1 + scale]
    brightness: float = 0.05  # added offset uniform in ±brightness
    contrast: float = 0.1  # contrast factor uniform in [1 - contrast, 1 + contrast]


DEFAULT = AugmentConfig()


def _uniform(
    n: int, half_width: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """n values uniform in [-half_width, half_width], drawn on the generator's device."""
    return (torch.rand(n, generator=generator, device=device) * 2 - 1) * half_width


def _affine_matrices(
    n: int,
    height: int,
    width: int,
    config: AugmentConfig,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """(n, 2, 3) matrices for `affine_grid`, in its normalised [-1, 1] coordinates.

    The rotation is built in pixel space and converted, so non-square images rotate
    without shearing.
    """
    angle = _uniform(n, math.radians(config.rotate_deg), generator, device)
    zoom = 1 + _uniform(n, config.scale, generator, device)
    shift_x = _uniform(n, 2 * config.translate, generator, device)
    shift_y = _uniform(n, 2 * config.translate, generator, device)
    flip = torch.rand(n, generator=generator, device=device) < config.flip_p
    sign = 1.0 - 2.0 * flip.float()
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    aspect = height / width
    theta = torch.stack(
        [
            torch.stack([cos * sign, -sin * aspect, shift_x], dim=1),
            torch.stack([sin * sign / aspect, cos, shift_y], dim=1),
        ],
        dim=1,
    )
    return theta


def augment_batch(
    x: torch.Tensor, generator: torch.Generator | None = None, config: AugmentConfig = DEFAULT
) -> torch.Tensor:
    """A randomly transformed copy of a float batch (B, C, H, W) with values in [0, 1].

    Shape, dtype and device are preserved and values stay in [0, 1]; regions moved in
    from outside the image are 0 (air in every CT window). The same generator state
    gives the same output. Random numbers are drawn on the generator's device (the
    default generator's when none is given) and moved to the batch's.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(
            f"augment_batch expects a float (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}"
        )
    n, _, height, width = x.shape
    if n == 0:
        return x.clone()
    device = generator.device if generator is not None else x.device
    theta = _affine_matrices(n, height, width, config, generator, device).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast = (1 + _uniform(n, config.contrast, generator, device)).to(x.device, x.dtype)
    offset = _uniform(n, config.brightness, generator, device).to(x.device, x.dtype)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast.view(n, 1, 1, 1) + mean + offset.view(n, 1, 1, 1)
    return out.clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- batch mixing

BatchTransformFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]
]


def sample_beta(
    alpha: float, n: int, generator: torch.Generator, device: torch.device | None = None
) -> torch.Tensor:
    """n draws of Beta(alpha, alpha), float32, made on the generator's device and moved to
    `device`.

    `torch.distributions.Beta` draws only from the global generator, which dropout also
    draws from; the kernel it samples with (a Dirichlet over two gammas) is called here
    with the transform's own generator instead, so mixing never moves the model's streams.
    """
    concentration = torch.full((n, 2), float(alpha), device=generator.device)
    draws = torch._sample_dirichlet(concentration, generator=generator)[:, 0]
    return draws.to(device) if device is not None else draws


def _pairs(
    x: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: a mixing weight from Beta(alpha, alpha) and a partner (a random
    permutation of the batch; a sample may draw itself, which leaves it unchanged)."""
    n = x.shape[0]
    lam = sample_beta(alpha, n, generator, x.device).to(x.dtype)
    partner = torch.randperm(n, generator=generator, device=generator.device).to(x.device)
    return lam, partner


def _check_batch(x: torch.Tensor, targets: torch.Tensor, who: str) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(
            f"{who} expects a float (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}"
        )
    if targets.shape != (x.shape[0], 2) or not targets.is_floating_point():
        raise ValueError(
            f"{who} expects soft targets of shape ({x.shape[0]}, 2), got "
            f"{targets.dtype} {tuple(targets.shape)}"
        )


@dataclass(frozen=True)
class MixUp:
    """mixup (Zhang et al., 2018), one weight per sample: each sample is blended with a
    random partner, x = λ·x + (1 − λ)·x[partner], λ ~ Beta(α, α), and so are its targets.
    Small α keeps most samples close to one of the pair."""

    alpha: float

    def __call__(
        self, x: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_batch(x, targets, "mixup")
        if x.shape[0] == 0:
            return x, targets
        lam, partner = _pairs(x, self.alpha, generator)
        mixed = x * lam.view(-1, 1, 1, 1) + x[partner] * (1 - lam).view(-1, 1, 1, 1)
        weight = lam.to(targets.dtype).view(-1, 1)
        return mixed, targets * weight + targets[partner] * (1 - weight)


@dataclass(frozen=True)
class CutMix:
    """CutMix (Yun et al., 2019), one box per sample: a box of about (1 − λ) of the image,
    λ ~ Beta(α, α), centred uniformly at random and clipped to the image, is pasted from a
    random partner. Targets are mixed by the exact share of pixels each image contributes
    (the clipped box's area), not by the drawn λ."""

    alpha: float

    def __call__(
        self, x: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_batch(x, targets, "cutmix")
        n, _, height, width = x.shape
        if n == 0:
            return x, targets
        lam, partner = _pairs(x, self.alpha, generator)
        box = cutmix_boxes(lam, height, width, generator)
        mixed = torch.where(box.unsqueeze(1), x[partner], x)
        pasted = box.flatten(1).to(targets.dtype).mean(dim=1, keepdim=True)
        return mixed, targets * (1 - pasted) + targets[partner] * pasted


def cutmix_boxes(
    lam: torch.Tensor, height: int, width: int, generator: torch.Generator
) -> torch.Tensor:
    """Boolean masks (n, height, width), True inside each sample's pasted box: sides
    sqrt(1 − λ) of the image's, centre uniform over the image, clipped at the borders."""
    n = lam.shape[0]
    side = torch.sqrt((1 - lam.float()).clamp(0, 1))
    cut_h = torch.floor(side * height).long()
    cut_w = torch.floor(side * width).long()
    centre = torch.rand(n, 2, generator=generator, device=generator.device).to(lam.device)
    cy = torch.floor(centre[:, 0] * height).long()
    cx = torch.floor(centre[:, 1] * width).long()
    y0, y1 = (cy - cut_h // 2).clamp(0, height), (cy + cut_h - cut_h // 2).clamp(0, height)
    x0, x1 = (cx - cut_w // 2).clamp(0, width), (cx + cut_w - cut_w // 2).clamp(0, width)
    rows = torch.arange(height, device=lam.device).view(1, -1)
    cols = torch.arange(width, device=lam.device).view(1, -1)
    inside_rows = (rows >= y0.view(-1, 1)) & (rows < y1.view(-1, 1))
    inside_cols = (cols >= x0.view(-1, 1)) & (cols < x1.view(-1, 1))
    return inside_rows.unsqueeze(2) & inside_cols.unsqueeze(1)


@dataclass(frozen=True)
class ComposedBatchTransform:
    """Batch transforms applied in order, each to the batch and soft targets the previous
    one returned (the generator is shared, so the chain is one reproducible stream)."""

    transforms: tuple[BatchTransformFn, ...]

    def __call__(
        self, x: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for transform in self.transforms:
            x, targets = transform(x, targets, generator)
        return x, targets


def compose_batch_transforms(
    first: BatchTransformFn | None, second: BatchTransformFn
) -> BatchTransformFn:
    """`second` applied to the output of `first` (just `second` when there is no first);
    chains stay flat, so a plan's transform reads as the list of what it does."""
    if first is None:
        return second
    head = first.transforms if isinstance(first, ComposedBatchTransform) else (first,)
    tail = second.transforms if isinstance(second, ComposedBatchTransform) else (second,)
    return ComposedBatchTransform((*head, *tail))
