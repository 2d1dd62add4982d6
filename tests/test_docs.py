"""Meta-tests that keep docs/plugins.md honest: every hook documented under its exact
signature, the example package identical to tests/sample_plugin, every built-in named."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import ichbench_plugins.aggregators
import ichbench_plugins.backbones
import ichbench_plugins.strategies
from ichbench import hookspecs
from ichbench.plugins import Plugins

ROOT = Path(__file__).parent.parent
GUIDE = ROOT / "docs" / "plugins.md"
HOOKS = [name for name, fn in vars(hookspecs).items()
         if callable(fn) and hasattr(fn, "ichbench_spec")]


@pytest.fixture(scope="module")
def guide() -> str:
    return GUIDE.read_text()


def test_there_are_hooks_to_document():
    assert set(HOOKS) == {"register_strategies", "register_backbones", "register_aggregators",
                          "register_datasets"}


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
    assert set(examples) == {"tests/sample_plugin/pyproject.toml",
                             "tests/sample_plugin/ichbench_focal.py"}
    for path, code in examples.items():
        assert code == (ROOT / path).read_text(), f"docs/plugins.md is out of date for {path}"


def test_every_builtin_name_is_in_the_guide(guide):
    plugins = Plugins(load_entry_points=False)
    for module in (ichbench_plugins.strategies, ichbench_plugins.backbones,
                   ichbench_plugins.aggregators):
        plugins.register(module, name=module.__name__)
    names = [e.name for e in plugins.registry.entries()]
    assert len(names) > 15
    missing = [n for n in names if f"`{n}" not in guide]
    assert not missing, f"built-ins not mentioned in docs/plugins.md: {missing}"
