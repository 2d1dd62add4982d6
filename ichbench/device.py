"""Which torch device work runs on, and how a run names it: one rule for training,
the report's Grad-CAM and inference."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ichbench.errors import UsageError

if TYPE_CHECKING:
    import torch


def resolve_device(requested: str) -> str:
    """`auto` is the GPU when there is one, else the CPU; an explicit CUDA device must
    exist."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {requested}: CUDA is not available on this machine")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise UsageError(f"--device {requested!r}: expected auto, cpu or cuda[:N]")
    return requested


def inference_device() -> torch.device:
    """Where a finished run's models are evaluated or explained: the GPU when there is one."""
    import torch

    return torch.device(resolve_device("auto"))


def device_label(device: torch.device) -> str:
    """What a run records as its device: the GPU's name, or the CPU's core count."""
    import torch

    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{os.cpu_count()} cores"
