"""The hooks a plugin implements. Each hook hands the plugin a `register` callback.

Plugins import `hookimpl` from `ichbench` itself.

The full reference, with examples, is docs/plugins.md; a meta-test keeps it in step
with the signatures below.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ichbench")
hookimpl = pluggy.HookimplMarker("ichbench")


@hookspec
def register_strategies(register):
    """Register imbalance strategies: register(name, factory, help=...)."""


@hookspec
def register_backbones(register):
    """Register network backbones: register(name, factory, help=...)."""


@hookspec
def register_aggregators(register):
    """Register aggregation rules: register(name, factory, kind="ensemble"|"patient", help=...)."""


@hookspec
def register_datasets(register):
    """Register dataset sources: register(name, factory, help=..., claims=...)."""
