"""From cached images to what a network sees: one definition for training, evaluation,
Grad-CAM and prediction, so a model is never shown inputs prepared another way.

Cached images are uint8 (N, C, H, W): each window mapped to [0, 1], times 255. A
network sees them scaled back to [0, 1] (augmented there, in training), resized when the
backbone needs a fixed input size, then normalised to about [-1, 1].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

MEAN, STD = 0.5, 0.5


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float32 in [0, 1] (a new tensor, safe to change in place)."""
    return images.float().div_(255.0)


def to_network(x: torch.Tensor, input_size: int | None, *, channels_last: bool) -> torch.Tensor:
    """[0, 1] images resized to `input_size` (when given and different) and normalised;
    channels-last when the device prefers it (CUDA)."""
    import torch
    import torch.nn.functional as F

    if input_size and x.shape[-1] != input_size:
        x = F.interpolate(
            x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=False
        )
    x = x.sub_(MEAN).div_(STD)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def network_input(images: np.ndarray, input_size: int | None, device: torch.device) -> torch.Tensor:
    """Cached uint8 images (N, C, H, W) as a network's input batch on `device`."""
    import torch

    x = to_unit(torch.from_numpy(np.ascontiguousarray(images)).to(device))
    return to_network(x, input_size, channels_last=device.type == "cuda").contiguous()
