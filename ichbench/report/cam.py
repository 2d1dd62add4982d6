"""Grad-CAM maps of the ICH class through the `grad-cam` library (pytorch_grad_cam), on
fold models loaded by ichbench.checkpoints.

Only two choices are made here: which layer to explain (found generically, so any
backbone works) and how the fold models' maps are combined (their mean, since the vote
averages the same models' probabilities).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ichbench.checkpoints import FoldModel
    from ichbench.interfaces import SliceDataset

CAM_CLASS = 1  # explain the ICH logit


def trace_modules(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, tuple]]:
    """(name, module, output shape) of every leaf-or-named module, in execution order."""
    import torch

    order: list[tuple[str, Any, tuple]] = []
    names = {id(m): n for n, m in model.named_modules()}
    handles = []

    def hook(module, _inputs, output) -> None:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
        order.append((names.get(id(module), ""), module, shape))

    for _, module in model.named_modules():
        if module is not model:
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def cam_layer(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The layer to explain: timm's last feature stage where the model declares one (the
    usual Grad-CAM choice, e.g. layer4 of a ResNet), else the last convolution that still
    has a spatial map."""
    from torch import nn

    trace = trace_modules(model, x[:1])
    shapes = {name: shape for name, _, shape in trace}
    info = getattr(model, "feature_info", None)
    if info:
        try:
            name = info[-1]["module"]
            shape = shapes.get(name, ())
            if len(shape) == 4 and shape[-1] > 1 and shape[-2] > 1:
                return model.get_submodule(name)
        except (KeyError, TypeError, AttributeError, IndexError):
            pass
    convs = [(m, s) for _, m, s in trace if isinstance(m, nn.Conv2d) and len(s) == 4]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution to explain")
    spatial = [m for m, s in convs if s[-1] > 1 and s[-2] > 1]
    return spatial[-1] if spatial else convs[-1][0]


def grad_cam(
    models: list[FoldModel], rows: np.ndarray, dataset: SliceDataset, batch: int = 16
) -> np.ndarray:
    """Grad-CAM of the ICH class for each of the dataset's `rows`, averaged over the fold
    models and rescaled to [0, 1]; (N, H, W) at the images' own size. Each model sees
    the slices exactly as it saw them in training, neighbouring slices stacked where it
    was trained with them (`FoldModel.rows_input`, `FoldModel.prepare`)."""
    import torch
    import torch.nn.functional as F
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    height, width = dataset.images.shape[-2:]
    total = np.zeros((len(rows), height, width), dtype=np.float64)
    for fm in models:
        x_all = fm.prepare(fm.rows_input(dataset, rows))
        layer = cam_layer(fm.model, x_all)
        maps = []
        with GradCAM(model=fm.model, target_layers=[layer]) as cam:
            for start in range(0, len(x_all), batch):
                x = x_all[start : start + batch]
                out = cam(input_tensor=x, targets=[ClassifierOutputTarget(CAM_CLASS)] * len(x))
                maps.append(np.asarray(out, dtype=np.float32))
        stacked = torch.from_numpy(np.concatenate(maps))[:, None]
        if stacked.shape[-2:] != (height, width):
            stacked = F.interpolate(
                stacked, size=(height, width), mode="bilinear", align_corners=False
            )
        total += stacked[:, 0].numpy()
    total /= max(len(models), 1)
    lo = total.min(axis=(1, 2), keepdims=True)
    hi = total.max(axis=(1, 2), keepdims=True)
    return np.where(hi > lo, (total - lo) / np.where(hi > lo, hi - lo, 1), 0.0)
