"""Loading a weights file into a network that is not quite the one it was saved from.

A backbone plugin given `BuildOptions.weights` (a local file: `--weights PATH`) reads it
with `read_weights_file` and loads it with `load_adapted`, which is how ichbench keeps
two promises for every backbone: a weights file never runs pickled code, and it fits a
network built for another channel count or class count (a CT window per channel, two
classes) while anything else that does not fit is an error naming the file.

`load_adapted` folds the first convolution to the requested input channels (timm's
`adapt_input_conv`: summed to one channel, repeated and rescaled for more) and leaves a
classifier of another shape at its fresh initialisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ichbench.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["load_adapted", "read_weights_file"]


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file, never executing pickled code (weights_only)."""
    from timm.models import load_state_dict

    if not path.is_file():
        raise UsageError(f"Weights file {path} does not exist")
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as exc:
        raise UsageError(
            f"Weights file {path} cannot be read as a PyTorch or safetensors "
            f"state dict: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(state, Mapping) or not state:
        raise UsageError(f"Weights file {path} holds no state dict (found {type(state).__name__})")
    return _tensors_only(state, path)


def _tensors_only(state: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    import torch

    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UsageError(
            f"Weights file {path} is not a state dict: entry {bad[0]!r} is not a tensor"
        )
    return dict(state)


def _names(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def load_adapted(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    first_conv: str | tuple[str, ...] | None,
    classifier: str | tuple[str, ...] | None,
    origin: str,
    error: type[Exception] = UsageError,
) -> None:
    """Load `state` into `model`, adapting the first conv's input channels and leaving a
    classifier of a different shape freshly initialised.

    `first_conv` and `classifier` are module names (or tuples of them, or None) as in
    timm's `pretrained_cfg`: `"conv1"` covers `conv1.weight`; `"fc"` covers every
    `fc.*` key. `origin` names where the weights came from in every message
    (`"weights file /x.pt"`). Any other missing, unexpected or mis-shaped key raises
    `error` (default `UsageError`: the user's file does not fit; a plugin loading weights
    it ships passes `PluginError`). Batch-norm `num_batches_tracked` counters may be absent.
    """
    from timm.models import adapt_input_conv

    target = model.state_dict()
    state = dict(state)
    for conv in _names(first_conv):
        key = f"{conv}.weight"
        if key in state and key in target and state[key].shape != target[key].shape:
            try:
                state[key] = adapt_input_conv(target[key].shape[1], state[key])
            except (NotImplementedError, AssertionError, RuntimeError) as exc:
                raise error(
                    f"Weights from {origin}: cannot adapt {key} "
                    f"{tuple(state[key].shape)} to {target[key].shape[1]} input "
                    f"channels"
                ) from exc
    heads = tuple(f"{name}." for name in _names(classifier))
    for key in [k for k in state if k.startswith(heads) and k in target]:
        if state[key].shape != target[key].shape:
            del state[key]
    optional = {k for k in target if k.startswith(heads) or k.endswith("num_batches_tracked")}
    missing = [k for k in target if k not in state and k not in optional]
    unexpected = [k for k in state if k not in target]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
        for k in state
        if k in target and state[k].shape != target[k].shape
    ]
    problems = [
        (what, keys)
        for what, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", mismatched),
        )
        if keys
    ]
    if problems:
        detail = "; ".join(f"{len(keys)} {what} (e.g. {keys[0]})" for what, keys in problems)
        raise error(f"Weights from {origin} do not fit {type(model).__name__}: {detail}")
    model.load_state_dict(state, strict=False)
