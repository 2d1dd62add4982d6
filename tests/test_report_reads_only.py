"""The report only reads: it imports nothing that trains, runs a protocol, resolves a
plugin or loads a dataset itself, and it never writes SQL. Checked on the source of
every module of ichbench/report and of the table view-model it renders."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ichbench"
READERS = sorted([*(ROOT / "report").glob("*.py"), *(ROOT / "views").glob("*.py")])
FORBIDDEN = (
    "ichbench.training",
    "ichbench.plugins",
    "ichbench.registry",
    "ichbench.plugins",
    "ichbench.registry",
    "ichbench.data",
    "ichbench.runner",
    "ichbench.protocol",
    "ichbench.lifecycle",
    "ichbench.executors",
    "ichbench.grid",
    "ichbench.vote",
    "ichbench.metrics",
    "ichbench.split",
    "ichbench.augment",
    "ichbench.config",
)

SQL = re.compile(r"\b(SELECT|INSERT INTO|DELETE FROM|UPDATE \w+ SET|WHERE|JOIN)\b")


def _imports(tree: ast.AST, module: str) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                package = module.rsplit(".", node.level)[0]
                base = f"{package}.{node.module}" if node.module else package
            else:
                base = node.module or ""
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)


def test_there_are_modules_to_check() -> None:
    names = {p.stem for p in READERS}
    assert {"build", "html", "markdown", "cam", "metrics", "provenance"} <= names


@pytest.mark.parametrize("path", READERS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_imports_nothing_that_trains_or_resolves(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = [
        name
        for name in _imports(tree, _module_name(path))
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    ]
    assert bad == [], f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", READERS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_writes_no_sql_and_never_uses_the_user_sandbox(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    ]
    assert "query" not in calls and "execute" not in calls, path.name
    sql = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value)
    ]
    assert sql == [], f"{path.name} holds SQL: {sql}"


def test_the_checkers_catch_what_they_look_for() -> None:
    assert SQL.search("SELECT * FROM folds WHERE run_id = 'x'")
    assert not SQL.search("figures drawn from the store, where the run selected them")
    tree = ast.parse(
        "from ichbench.plugins import get_registry\nimport ichbench.vote as v\n"
        "from ..training import TrainSettings\n"
    )
    names = _imports(tree, "ichbench.report.build")
    assert "ichbench.plugins.get_registry" in names and "ichbench.vote" in names
    assert "ichbench.training.TrainSettings" in names
