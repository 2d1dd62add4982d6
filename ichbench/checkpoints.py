"""Fold checkpoints: where they live, what they hold, how they are written and read back,
and how a stored run becomes fold models ready for inference.

A fold's kept weights are written beside the store, `<store>.runs/<run>/fold<k>.pt`,
atomically (a temporary file renamed into place), so a crash or a full disk leaves
either the whole checkpoint or none. They are read with `weights_only=True`: a
checkpoint is data, never code. Everything that needs a trained model (the report's
Grad-CAM and t-SNE, evaluation of a finished run, prediction) goes through
`load_fold_models`, and everything that initialises one goes through `init_seed`, so a
model is rebuilt exactly as the run built it.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ichbench.data.preprocess import context_table, gather_context, network_input
from ichbench.device import inference_device
from ichbench.errors import UsageError
from ichbench.interfaces import BuildOptions, SliceDataset
from ichbench.paths import run_dir

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT_KEYS = ("state_dict", "backbone", "in_chans", "image_size", "windows", "fold")


def checkpoint_name(fold: int | tuple[int, int]) -> str:
    """`fold<k>.pt` for fold k of outer fold 0 (given as k or (0, k)), as always;
    `outer<o>.fold<k>.pt` for the folds of the other outer folds."""
    outer, fold = fold if isinstance(fold, tuple) else (0, fold)
    return f"fold{fold}.pt" if outer == 0 else f"outer{outer}.fold{fold}.pt"


def checkpoint_path(store_path: Path, run_id: str, fold: int | tuple[int, int]) -> Path:
    return run_dir(Path(store_path), run_id) / checkpoint_name(fold)


def init_seed(seed: int, fold: int) -> int:
    """The torch seed a fold's network is initialised with: fold models of one run start
    apart, and a run repeated with the same seed starts where it started."""
    return seed * 1000 + fold


def seed_init(seed: int, fold: int) -> None:
    import torch

    torch.manual_seed(init_seed(seed, fold))


def save_checkpoint(
    store_path: Path,
    run_id: str,
    fold: int | tuple[int, int],
    state: dict,
    *,
    backbone: str,
    in_chans: int,
    image_size: int,
    windows: list[str],
    context: int = 0,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> str:
    """Write a fold's kept weights atomically; returns the file name (relative to the run
    folder), which the fold row records. With them goes what the network's inputs must
    look like: the windows, the neighbouring slices stacked on each side (`context`) and
    the normalisation (None: 0.5/0.5); checkpoints written before these keys existed
    read as context 0 and 0.5/0.5, which is what they were trained on."""
    import torch

    folder = run_dir(Path(store_path), run_id)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(fold)
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    try:
        torch.save(
            {
                "state_dict": state,
                "backbone": backbone,
                "in_chans": in_chans,
                "image_size": image_size,
                "windows": list(windows),
                "context": int(context),
                "mean": list(mean) if mean is not None else None,
                "std": list(std) if std is not None else None,
                "fold": fold[1] if isinstance(fold, tuple) else fold,
                "outer": fold[0] if isinstance(fold, tuple) else 0,
            },
            tmp,
        )
        os.replace(tmp, final)
    except RuntimeError as exc:  # torch reports a failed write as its own error
        failure = _write_failure(folder, final, exc)
        tmp.unlink(missing_ok=True)  # a partial file on a full disk is only in the way
        raise failure from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final.name


def _write_failure(folder: Path, final: Path, exc: RuntimeError) -> OSError:
    """What the system refused, as the OSError it is: torch's serializer raises a
    RuntimeError ("[enforce fail at inline_container.cc…] unexpected pos") when the disk
    fills under it, which would otherwise read as a bug."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < 1 << 20:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final))
    return OSError(errno.EIO, f"Writing the checkpoint failed ({exc})", str(final))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, on the CPU; raises ValueError when it lacks a field."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in FORMAT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"not an ichbench checkpoint (missing {', '.join(missing)})")
    return ckpt


@dataclass
class FoldModel:
    """A fold's network in eval mode on `device`, with what its inputs must look like."""

    fold: int
    model: nn.Module
    backbone: str
    input_size: int | None
    image_size: int
    windows: tuple[str, ...]
    in_chans: int
    device: torch.device
    context: int = 0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        """Network inputs (N, in_chans, H, W), uint8 as cached, with each slice's context
        already stacked (`rows_input`), as this network saw them in training."""
        return network_input(images, self.input_size, self.device, mean=self.mean, std=self.std)

    def rows_input(self, dataset: SliceDataset, rows: np.ndarray) -> np.ndarray:
        """The cached images of dataset `rows` with their `context` neighbouring slices
        stacked as channels, as training stacked them (uint8, for `prepare`)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not self.context:
            return np.asarray(dataset.images[rows])
        table = context_table(dataset.patient_ids, self.context)
        return gather_context(dataset.images, table, rows)


@dataclass
class LoadedModels:
    models: dict[int, FoldModel]
    problems: list[str]  # one line per fold that could not be loaded

    @property
    def any(self) -> bool:
        return bool(self.models)


def _build(backbone: str, in_chans: int):
    from ichbench.plugins import get_registry

    return (
        get_registry()
        .create("backbone", backbone)
        .build(BuildOptions(in_chans=in_chans, pretrained=False))
    )


def load_fold_models(
    store_path: Path, run_id: str, folds: list[int], device: torch.device | None = None
) -> LoadedModels:
    """Every fold model of a run whose checkpoint exists and loads; the others are named
    in `problems`, so a caller can say what is missing instead of failing."""
    device = device or inference_device()
    models: dict[int, FoldModel] = {}
    problems: list[str] = []
    for fold in folds:
        path = checkpoint_path(store_path, run_id, fold)
        if not path.is_file():
            problems.append(f"fold {fold}: no checkpoint at {path}")
            continue
        try:
            ckpt = load_checkpoint(path)
            built = _build(str(ckpt["backbone"]), int(ckpt["in_chans"]))
            built.model.load_state_dict(ckpt["state_dict"])
            model = FoldModel(  # a field of the wrong type is a damaged file, too
                fold=fold,
                model=built.model,
                backbone=str(ckpt["backbone"]),
                input_size=built.input_size,
                image_size=int(ckpt["image_size"]),
                windows=tuple(ckpt["windows"]),
                in_chans=int(ckpt["in_chans"]),
                device=device,
                context=int(ckpt.get("context") or 0),
                mean=_stats(ckpt.get("mean")),
                std=_stats(ckpt.get("std")),
            )
        except Exception as exc:  # a corrupt or foreign file must not stop the caller
            problems.append(f"fold {fold}: cannot load {path} ({type(exc).__name__}: {exc})")
            continue
        built.model.to(device).eval()
        models[fold] = model
    return LoadedModels(models, problems)


def _stats(values) -> tuple[float, ...] | None:
    return tuple(float(v) for v in values) if values is not None else None


def fresh_model(
    backbone: str,
    in_chans: int,
    seed: int,
    fold: int,
    device: torch.device | None = None,
    *,
    image_size: int = 0,
    windows: tuple[str, ...] = (),
) -> FoldModel:
    """The network as the run initialised `fold` before training (without pretrained
    weights): what the trained model is compared against."""
    device = device or inference_device()
    seed_init(seed, fold)
    built = _build(backbone, in_chans)
    built.model.to(device).eval()
    return FoldModel(
        fold=fold,
        model=built.model,
        backbone=backbone,
        input_size=built.input_size,
        image_size=image_size,
        windows=windows,
        in_chans=in_chans,
        device=device,
    )


def load_run_dataset(config: dict[str, Any], cache_dir: Path | None = None) -> SliceDataset:
    """The dataset a run trained on, from its stored configuration, through the cache.
    Raises an IchbenchError (DataError, PluginError) when it cannot be had."""
    from ichbench.config import RunConfig
    from ichbench.data.open import open_dataset

    cfg = RunConfig.from_dict(config)
    if cfg.image_size is None:
        raise UsageError("The run's configuration has no image size; it was never resolved")
    _, dataset = open_dataset(cfg, cache_dir=cache_dir)
    return dataset
