"""Fold models back from their checkpoints, their inputs prepared as in training, and
Grad-CAM maps of the ICH class through the `grad-cam` library (pytorch_grad_cam).

Only two choices are made here: which layer to explain (found generically, so any
backbone works) and how the fold models' maps are combined (their mean, since the vote
averages the same models' probabilities).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ichbench.interfaces import BuildOptions
from ichbench.paths import run_dir

if TYPE_CHECKING:
    import torch
    from torch import nn

CAM_CLASS = 1  # explain the ICH logit


@dataclass
class FoldModel:
    """A fold's trained network, rebuilt from its checkpoint, in eval mode."""

    fold: int
    model: nn.Module
    input_size: int | None
    image_size: int
    windows: tuple[str, ...]
    in_chans: int


@dataclass
class LoadedModels:
    models: dict[int, FoldModel]
    problems: list[str]  # one line per fold that could not be loaded

    @property
    def any(self) -> bool:
        return bool(self.models)


def report_device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def checkpoint_path(db: Path, run_id: str, fold: int) -> Path:
    return run_dir(Path(db), run_id) / f"fold{fold}.pt"


def load_fold_models(db: Path, run_id: str, folds: list[int], registry,
                     device: torch.device) -> LoadedModels:
    """Every fold model whose checkpoint exists and loads; the others are named in
    `problems` so the report can say what is missing instead of failing."""
    import torch

    models: dict[int, FoldModel] = {}
    problems: list[str] = []
    for fold in folds:
        path = checkpoint_path(db, run_id, fold)
        if not path.is_file():
            problems.append(f"fold {fold}: no checkpoint at {path}")
            continue
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            built = registry.create("backbone", ckpt["backbone"]).build(
                BuildOptions(in_chans=int(ckpt["in_chans"]), pretrained=False))
            built.model.load_state_dict(ckpt["state_dict"])
        except Exception as exc:  # a corrupt or foreign file must not stop the report
            problems.append(f"fold {fold}: cannot load {path} ({type(exc).__name__}: {exc})")
            continue
        built.model.to(device).eval()
        models[fold] = FoldModel(fold=fold, model=built.model, input_size=built.input_size,
                                 image_size=int(ckpt["image_size"]),
                                 windows=tuple(ckpt["windows"]), in_chans=int(ckpt["in_chans"]))
    return LoadedModels(models, problems)


def fresh_model(backbone: str, in_chans: int, seed: int, fold: int, registry,
                device: torch.device) -> tuple[nn.Module, int | None]:
    """The network as the runner initialised it for `fold` before training (same seed
    rule as Runner.build_model), without pretrained weights."""
    import torch

    torch.manual_seed(seed * 1000 + fold)
    built = registry.create("backbone", backbone).build(
        BuildOptions(in_chans=in_chans, pretrained=False))
    return built.model.to(device).eval(), built.input_size


def prepare(images: np.ndarray, input_size: int | None, device: torch.device) -> torch.Tensor:
    """uint8 (N, C, H, W) images as the network saw them in training: the trainer's own
    batch code (scale to [0, 1], resize to a forced input size, normalise)."""
    import torch

    from ichbench.training import DeviceImages, TrainSettings

    settings = TrainSettings(epochs=1, batch_size=1, lr=1.0, patience=1, seed=0,
                             device=device, input_size=input_size)
    data = DeviceImages(images, np.zeros(len(images), dtype=np.int64), device)
    index = torch.arange(len(images), device=device)
    return data.batch(index, None, settings, None).contiguous()


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


def grad_cam(models: list[FoldModel], images: np.ndarray, device: torch.device,
             batch: int = 16) -> np.ndarray:
    """Grad-CAM of the ICH class for each image, averaged over the fold models and
    rescaled to [0, 1]; (N, H, W) at the images' own size."""
    import torch
    import torch.nn.functional as F
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    height, width = images.shape[-2:]
    total = np.zeros((len(images), height, width), dtype=np.float64)
    for fm in models:
        x_all = prepare(images, fm.input_size, device)
        layer = cam_layer(fm.model, x_all)
        maps = []
        with GradCAM(model=fm.model, target_layers=[layer]) as cam:
            for start in range(0, len(x_all), batch):
                x = x_all[start:start + batch]
                out = cam(input_tensor=x, targets=[ClassifierOutputTarget(CAM_CLASS)] * len(x))
                maps.append(np.asarray(out, dtype=np.float32))
        stacked = torch.from_numpy(np.concatenate(maps))[:, None]
        if stacked.shape[-2:] != (height, width):
            stacked = F.interpolate(stacked, size=(height, width), mode="bilinear",
                                    align_corners=False)
        total += stacked[:, 0].numpy()
    total /= max(len(models), 1)
    lo = total.min(axis=(1, 2), keepdims=True)
    hi = total.max(axis=(1, 2), keepdims=True)
    return np.where(hi > lo, (total - lo) / np.where(hi > lo, hi - lo, 1), 0.0)
