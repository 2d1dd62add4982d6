"""On-the-fly augmentation of training batches: flips, small rotations, shifts and
scales, and brightness/contrast jitter, each with its own random parameters per image.

torchvision.transforms.v2 applies one set of random parameters to a whole batch, which
would make every augmented slice in a batch move the same way. Per-image parameters in
one call are what `torch.nn.functional.affine_grid` + `grid_sample` give: every image's
flip, rotation, scale and shift become one 2×3 matrix, so the whole batch is resampled
once, on the tensor's device, with no Python loop over images. The flip is folded into
that matrix (a sign on the x axis), which lands exactly on pixel centres.

Usage in a trainer: `x[flags] = augment_batch(x[flags], generator)`.
"""

from __future__ import annotations

import math
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
