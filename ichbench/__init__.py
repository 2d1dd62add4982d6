"""ichbench: a bench for intracranial-hemorrhage classifiers on head CT.

This package's namespace is what a plugin needs, and all it needs: `from ichbench import
hookimpl, Spec, expect_args, TrainPlan, UsageError, ...`. Names are imported on first
use, so `import ichbench` stays cheap (it never imports torch) and listing plugins or
printing `--help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ichbench.hookspecs": ("hookimpl",),
    "ichbench.spec": ("Spec", "parse_spec", "parse_float", "parse_int", "expect_args"),
    "ichbench.interfaces": (
        "SUBTYPES",
        "SliceDataset",
        "LoadOptions",
        "DatasetSource",
        "TrainPlan",
        "StrategyContext",
        "Strategy",
        "BuiltModel",
        "BuildOptions",
        "Backbone",
        "EnsembleRule",
        "PatientRule",
    ),
    "ichbench.errors": ("IchbenchError", "UsageError", "DataError", "PluginError"),
    "ichbench.weights": ("read_weights_file", "load_adapted"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "__version__",
    "hookimpl",
    "Spec",
    "parse_spec",
    "parse_float",
    "parse_int",
    "expect_args",
    "SUBTYPES",
    "SliceDataset",
    "LoadOptions",
    "DatasetSource",
    "TrainPlan",
    "StrategyContext",
    "Strategy",
    "BuiltModel",
    "BuildOptions",
    "Backbone",
    "EnsembleRule",
    "PatientRule",
    "IchbenchError",
    "UsageError",
    "DataError",
    "PluginError",
    "read_weights_file",
    "load_adapted",
]

if TYPE_CHECKING:
    from ichbench.errors import DataError, IchbenchError, PluginError, UsageError
    from ichbench.hookspecs import hookimpl
    from ichbench.interfaces import (
        SUBTYPES,
        Backbone,
        BuildOptions,
        BuiltModel,
        DatasetSource,
        EnsembleRule,
        LoadOptions,
        PatientRule,
        SliceDataset,
        Strategy,
        StrategyContext,
        TrainPlan,
    )
    from ichbench.spec import Spec, expect_args, parse_float, parse_int, parse_spec
    from ichbench.weights import load_adapted, read_weights_file


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'ichbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
