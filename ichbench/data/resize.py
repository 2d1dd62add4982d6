"""Decoded slices brought to the requested square size, the same way for both releases.

torch is imported only when a stack actually needs resizing.
"""

from __future__ import annotations

import numpy as np


def resize_stack(stack: np.ndarray, size: int, chunk: int = 16) -> np.ndarray:
    """float (N, C, H, W) -> (N, C, size, size), bilinear with antialiasing when shrinking."""
    if stack.shape[-2:] == (size, size):
        return stack
    import torch
    import torch.nn.functional as F

    out = np.empty((*stack.shape[:2], size, size), dtype=np.float32)
    for start in range(0, stack.shape[0], chunk):
        part = torch.from_numpy(
            np.ascontiguousarray(stack[start : start + chunk], dtype=np.float32)
        )
        shrink = size < max(stack.shape[-2:])
        out[start : start + chunk] = F.interpolate(
            part, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
        ).numpy()
    return out


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W) -> (N, size, size) with nearest neighbours, so labels stay 0/1."""
    if masks.shape[-2:] == (size, size):
        return masks.astype(np.uint8)
    import torch
    import torch.nn.functional as F

    part = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8))[:, None].float()
    return (
        F.interpolate(part, size=(size, size), mode="nearest-exact")[:, 0].numpy().astype(np.uint8)
    )
