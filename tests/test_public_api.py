"""`import ichbench` is the whole public face a plugin needs, and it stays cheap."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ichbench

HERE = Path(__file__).parent
PLUGIN_NEEDS = {
    "hookimpl",
    "Spec",
    "parse_float",
    "parse_int",
    "expect_args",
    "SliceDataset",
    "LoadOptions",
    "TrainPlan",
    "StrategyContext",
    "BuiltModel",
    "BuildOptions",
    "Strategy",
    "Backbone",
    "EnsembleRule",
    "PatientRule",
    "DatasetSource",
    "SUBTYPES",
    "UsageError",
    "DataError",
    "PluginError",
    "IchbenchError",
    "read_weights_file",
    "load_adapted",
}


def test_the_namespace_has_what_a_plugin_needs():
    assert PLUGIN_NEEDS <= set(ichbench.__all__)
    for name in ichbench.__all__:
        assert getattr(ichbench, name) is not None
    assert ichbench.TrainPlan is __import__("ichbench.interfaces").interfaces.TrainPlan
    assert set(ichbench.__all__) <= set(dir(ichbench))


def test_an_unknown_name_is_an_attribute_error():
    try:
        ichbench.not_a_thing  # noqa: B018
    except AttributeError as exc:
        assert "not_a_thing" in str(exc)
    else:
        raise AssertionError("ichbench.not_a_thing did not raise")


def test_import_ichbench_and_every_public_name_leave_torch_unimported():
    code = (
        "import sys, ichbench\n"
        "assert 'torch' not in sys.modules, 'import ichbench imported torch'\n"
        "from ichbench import *\n"
        "for name in ichbench.__all__: getattr(ichbench, name)\n"
        "print(sorted(m for m in ('torch', 'timm', 'duckdb') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_sample_plugin_imports_from_ichbench_alone():
    tree = ast.parse((HERE / "sample_plugin" / "ichbench_focal.py").read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    modules |= {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert {m for m in modules if m.startswith("ichbench")} == {"ichbench"}
