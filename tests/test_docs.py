"""Meta-tests that keep docs/plugins.md honest: every hook documented under its exact
signature, the example package identical to tests/sample_plugin, every built-in named,
and every example plugin of the guide registered, created and used as the core uses it."""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import ichbench
import ichbench_plugins.aggregators
import ichbench_plugins.backbones
import ichbench_plugins.datasets
import ichbench_plugins.strategies
from ichbench import hookspecs
from ichbench.data.resolve import resolve_dataset
from ichbench.interfaces import (
    KIND_PROTOCOLS,
    BuildOptions,
    LoadOptions,
    SliceDataset,
    StrategyContext,
    TrainPlan,
)
from ichbench.plugins import Plugins, registered, reset_plugins
from ichbench.registry import created_by

ROOT = Path(__file__).parent.parent
GUIDE = ROOT / "docs" / "plugins.md"
HOOKS = [
    name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "ichbench_spec")
]


@pytest.fixture(scope="module")
def guide() -> str:
    return GUIDE.read_text()


def test_there_are_hooks_to_document():
    assert set(HOOKS) == {
        "register_strategies",
        "register_backbones",
        "register_aggregators",
        "register_datasets",
    }


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_heading_with_its_exact_signature(guide, hook):
    signature = f"{hook}{inspect.signature(getattr(hookspecs, hook))}"
    assert f"\n## `{signature}`\n" in guide, f"docs/plugins.md lacks a heading ## `{signature}`"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_section_quotes_its_docstring(guide, hook):
    section = guide.split(f"## `{hook}(")[1].split("\n## ")[0]
    summary = inspect.getdoc(getattr(hookspecs, hook)).split(": ")[0]
    assert summary in section


def test_no_heading_documents_a_hook_that_does_not_exist(guide):
    documented = re.findall(r"^## `(register_\w+)\(", guide, flags=re.MULTILINE)
    assert sorted(documented) == sorted(HOOKS)


def example_files(guide: str) -> dict[str, str]:
    """The code blocks that follow `<!-- file: PATH -->` markers."""
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", guide, flags=re.DOTALL)
    return dict(blocks)


def test_the_example_package_is_the_sample_plugin(guide):
    examples = example_files(guide)
    assert set(examples) == {
        "tests/sample_plugin/pyproject.toml",
        "tests/sample_plugin/ichbench_focal.py",
    }
    for path, code in examples.items():
        assert code == (ROOT / path).read_text(), f"docs/plugins.md is out of date for {path}"


def test_every_builtin_name_is_in_the_guide(guide):
    plugins = Plugins(load_entry_points=False)
    for module in (
        ichbench_plugins.strategies,
        ichbench_plugins.backbones,
        ichbench_plugins.aggregators,
        ichbench_plugins.datasets,
    ):
        plugins.register(module, name=module.__name__)
    names = [e.name for e in plugins.registry.entries()]
    assert len(names) > 15
    missing = [n for n in names if f"`{n}" not in guide]
    assert not missing, f"built-ins not mentioned in docs/plugins.md: {missing}"


def test_every_public_name_is_in_the_guide(guide):
    missing = [n for n in ichbench.__all__ if n != "__version__" and f"`{n}`" not in guide]
    assert not missing, f"ichbench exports not mentioned in docs/plugins.md: {missing}"


# --------------------------------------------------------------------------- examples


def python_blocks(guide: str) -> list[tuple[str, str]]:
    """(the marker comment just above it or "", code) for every ```python block."""
    return re.findall(r"(?:<!-- ([^\n]*?) -->\n)?```python\n(.*?)```", guide, flags=re.DOTALL)


def examples(guide: str) -> dict[str, tuple[str, str]]:
    """kind -> (spec to create, code) of the `<!-- example: KIND SPEC -->` blocks."""
    found = {}
    for marker, code in python_blocks(guide):
        if marker.startswith("example: "):
            kind, spec = marker.removeprefix("example: ").split()
            found[kind] = (spec, code)
    return found


def test_every_python_block_of_the_guide_is_checked(guide):
    markers = [marker.split(":")[0] for marker, _ in python_blocks(guide)]
    assert markers and set(markers) <= {"example", "file", "test"}, markers


def test_the_guide_has_an_example_of_every_hook(guide):
    kinds = set(examples(guide))
    assert {"strategy", "backbone", "dataset"} <= kinds and kinds & {"ensemble", "patient"}
    assert kinds <= set(KIND_PROTOCOLS)


@pytest.fixture
def load_example(guide, monkeypatch):
    """Exec an example as the module `docs_example_KIND` and register it, for one test."""
    reset_plugins()
    monkeypatch.setenv("ICHBENCH_LOAD_PLUGINS", "")

    def load(kind: str):
        spec, code = examples(guide)[kind]
        module = types.ModuleType(f"docs_example_{kind}")
        monkeypatch.setitem(sys.modules, module.__name__, module)
        exec(compile(code, f"docs/plugins.md ({kind} example)", "exec"), module.__dict__)
        return spec, module

    yield load
    reset_plugins()


def created(registry, kind: str, spec: str, module: types.ModuleType):
    obj = registry.create(kind, spec)
    assert isinstance(obj, KIND_PROTOCOLS[kind])
    entry = created_by(obj)
    assert (entry.plugin, entry.distribution) == (module.__name__, "local")
    return obj


def small_dataset() -> SliceDataset:
    labels = np.array([0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0], dtype=np.int64)
    patients = np.repeat(np.array([1, 2, 3], dtype=np.int64), 4)
    slices = np.tile(np.arange(1, 5, dtype=np.int64), 3)
    return SliceDataset(
        "small",
        "h",
        np.zeros((12, 1, 4, 4), np.uint8),
        labels,
        patients,
        slices,
        ((slices - 1) / 3).astype(np.float32),
        np.zeros((12, 5), np.uint8),
    )


def test_the_strategy_example(load_example):
    spec, module = load_example("strategy")
    dataset = small_dataset()
    ctx = StrategyContext(dataset, np.array([1, 2, 3]), np.random.default_rng(0))
    plan = TrainPlan(np.arange(12), np.zeros(12, bool))
    with registered(module, module.__name__) as registry:
        out = created(registry, "strategy", spec, module).apply(plan, ctx)
    kept = dataset.labels[out.indices]
    assert (int((kept == 1).sum()), int((kept == 0).sum())) == (3, round(1.5 * 3))
    assert len(out.augment) == len(out.indices)
    assert out.notes["steps"][-1]["removed"] == 9 - round(1.5 * 3)
    assert len(plan.indices) == 12 and plan.notes == {}


def test_the_backbone_example(load_example, tmp_path):
    import torch

    spec, module = load_example("backbone")
    with registered(module, module.__name__) as registry:
        backbone = created(registry, "backbone", spec, module)
        built = backbone.build(BuildOptions(in_chans=3, pretrained=False))
        assert (built.pretrained, built.pretrained_source) == (False, None)
        assert built.model(torch.rand(2, 3, 32, 32)).shape == (2, 2)
        with pytest.warns(UserWarning, match="random initialisation"):
            assert backbone.build(BuildOptions(in_chans=1, pretrained=True)).pretrained is False
        path = tmp_path / "weights.pt"
        torch.save(built.model.state_dict(), path)
        again = backbone.build(BuildOptions(in_chans=1, weights=path))
    assert (again.pretrained, again.pretrained_source) == (True, f"file:{path}")
    torch.testing.assert_close(
        again.model.state_dict()["layer4.1.conv2.weight"],
        built.model.state_dict()["layer4.1.conv2.weight"],
    )


def test_the_aggregator_example(load_example):
    kind = "ensemble" if "ensemble" in examples(GUIDE.read_text()) else "patient"
    spec, module = load_example(kind)
    with registered(module, module.__name__) as registry:
        rule = created(registry, kind, spec, module)
        probs = np.array([[0.2, 0.9, 0.0], [0.8, 0.9, 1.0]])
        scores, decisions = (
            rule.combine(probs, 0.5)
            if kind == "ensemble"
            else rule.decide(probs[0], probs[0] >= 0.5, 0.5)
        )
    if kind == "ensemble":
        np.testing.assert_allclose(scores[:2], [0.4, 0.9])
        assert scores.shape == decisions.shape == (3,) and decisions.dtype == bool
        assert decisions.tolist() == [False, True, False]


def test_the_dataset_example_claims_its_folders_and_loads_them(load_example, tmp_path):
    spec, module = load_example("dataset")
    folder = tmp_path / "archive"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.savez(
        folder / "slices.npz",
        images=rng.integers(0, 256, (5, 20, 20), dtype=np.uint8),
        labels=np.array([0, 1, 0, 1, 0]),
        patient_ids=np.array([7, 7, 7, 3, 3]),
        slice_numbers=np.array([2, 1, 3, 2, 1]),
    )
    with registered(module, module.__name__) as registry:
        source = resolve_dataset(str(folder), registry)
        assert created_by(source).plugin == module.__name__
        assert registry.create("dataset", f"{spec}:{folder}").name == source.name
        dataset = source.load(LoadOptions(image_size=8, exclude=()), tmp_path / "cache")
        assert "physionet" in registry.names("dataset")  # claimed by one, beside the built-in
    assert dataset.images.dtype == np.uint8 and dataset.images.shape == (5, 1, 8, 8)
    assert dataset.patient_ids.tolist() == [3, 3, 7, 7, 7]
    assert dataset.slice_numbers.tolist() == [1, 2, 1, 2, 3]
    assert dataset.labels.tolist() == [0, 1, 1, 0, 0]
    np.testing.assert_allclose(dataset.positions, [0, 1, 0, 0.5, 1])
    assert dataset.subtypes.shape == (5, 5) and dataset.positions.dtype == np.float32
    for name in ("labels", "patient_ids", "slice_numbers"):
        assert getattr(dataset, name).dtype == np.int64


def test_the_testing_snippet_passes(guide, monkeypatch):
    (code,) = [code for marker, code in python_blocks(guide) if marker == "test"]
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "sample_plugin"))
    monkeypatch.delitem(sys.modules, "ichbench_focal", raising=False)
    reset_plugins()
    namespace: dict = {}
    try:
        exec(compile(code, "docs/plugins.md (testing)", "exec"), namespace)
        tests = [fn for name, fn in namespace.items() if name.startswith("test_")]
        assert tests
        for test in tests:
            test()
    finally:
        sys.modules.pop("ichbench_focal", None)
        reset_plugins()
