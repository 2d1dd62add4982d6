"""The single plugin loader: installed plugins loaded from entry points into a pluggy
manager, and the registry their hooks fill.

Built-in plugins live in the `ichbench_plugins` package and reach the registry through
the `ichbench` entry-point group, exactly like a third party's: the core never names
them. Entry points are loaded one at a time so that a broken plugin fails with its own
name, and every registered name is attributed to its plugin, distribution and version
(the registry itself is `ichbench.registry`). Problems that do not stop ichbench (a hook
function that lacks `@hookimpl`, a plugin that registers nothing, a misspelled
distribution in `ICHBENCH_LOAD_PLUGINS`) are collected in `Plugins.warnings` for the CLI
to print.

`created_by` and `plugin_versions` live in the registry but are importable from here too,
as `ichbench.plugins.created_by` and `ichbench.plugins.plugin_versions` are public API.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pluggy

from ichbench import hookspecs
from ichbench.errors import PluginError
from ichbench.registry import Entry, Registry
from ichbench.registry import created_by as created_by
from ichbench.registry import plugin_versions as plugin_versions
from ichbench.spec import Spec

ENTRY_POINT_GROUP = "ichbench"
LOAD_ENV = "ICHBENCH_LOAD_PLUGINS"
"""Comma-separated distributions to load besides ichbench itself; unset loads all,
empty loads only the built-ins (what the tests do, so installed plugins cannot leak in)."""

_HOOK_KIND = {
    "register_strategies": "strategy",
    "register_backbones": "backbone",
    "register_aggregators": None,  # the kind= keyword decides
    "register_datasets": "dataset",
}


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares it: `Ichbench_Focal` -> `ichbench-focal`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _distribution_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "unknown"
    return dist.metadata["Name"], dist.version


def _selection() -> set[str] | None:
    """The normalised distributions `ICHBENCH_LOAD_PLUGINS` asks for; None: all of them."""
    selection = os.environ.get(LOAD_ENV)
    if selection is None:
        return None
    return {normalise(n.strip()) for n in selection.split(",") if n.strip()}


def _wanted(dist_name: str, selection: set[str] | None) -> bool:
    return selection is None or normalise(dist_name) in selection | {"ichbench"}


def _selection_warnings(installed: set[str]) -> list[str]:
    """Names in `ICHBENCH_LOAD_PLUGINS` that load nothing, or only by normalisation."""
    warnings = []
    known = {normalise(n) for n in installed} | {"ichbench"}
    others = sorted(known - {"ichbench"})
    for raw in (os.environ.get(LOAD_ENV) or "").split(","):
        name = raw.strip()
        if not name:
            continue
        if normalise(name) not in known:
            warnings.append(
                f"{LOAD_ENV} names {name!r}, which is not an installed ichbench "
                f"plugin distribution (installed: {', '.join(others) or 'none'})"
            )
        elif name != normalise(name):
            warnings.append(
                f"{LOAD_ENV} names {name!r}; write it normalised as {normalise(name)!r}"
            )
    return warnings


def _entry_points() -> list[md.EntryPoint]:
    return sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.value, ep.name))


def _undecorated_hooks(plugin: object) -> list[str]:
    """`register_*` functions pluggy will never call, because they lack `@hookimpl`."""
    marker = f"{ENTRY_POINT_GROUP}_impl"
    found = []
    for attr in dir(plugin):
        if not attr.startswith("register_"):
            continue
        value = getattr(plugin, attr, None)
        if callable(value) and not inspect.isclass(value) and not hasattr(value, marker):
            found.append(attr)
    return found


class Plugins:
    """A pluggy manager loaded from entry points, and the registry its hooks produce.

    `warnings` lists what is wrong but not fatal, for the CLI to print once as
    `Warning: ...` lines; `pending_warnings()` returns each only the first time.
    """

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self._origin: dict[str, tuple[str, str]] = {}
        self._registry: Registry | None = None
        self._load_warnings: list[str] = []
        self._registry_warnings: list[str] = []
        self._reported: set[str] = set()
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        points = _entry_points()
        selection = _selection()
        self._load_warnings.extend(_selection_warnings({_distribution_of(ep)[0] for ep in points}))
        for ep in points:
            dist_name, version = _distribution_of(ep)
            if not _wanted(dist_name, selection) or self.pm.has_plugin(ep.value):
                continue  # not selected, or a module two entry points name
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must be named, never swallowed
                raise PluginError(
                    f"Plugin {ep.name!r} ({ep.value}) from {dist_name} {version} failed to "
                    f"load: {type(exc).__name__}: {exc}"
                ) from exc
            self.register(module, name=ep.value, distribution=dist_name, version=version)

    def register(
        self, plugin: object, *, name: str, distribution: str = "local", version: str = ""
    ) -> None:
        """Add a plugin object (a module, usually) under a name no other plugin has."""
        if self.pm.has_plugin(name):
            dist, _ = self._origin.get(name, ("unknown", ""))
            raise PluginError(
                f"A plugin named {name!r} is already registered (from {dist}); "
                "register yours under another name"
            )
        try:
            self.pm.register(plugin, name=name)
        except ValueError as exc:  # pluggy: this very object is registered under another name
            raise PluginError(
                f"Plugin {name!r} ({distribution}) is already registered as "
                f"{self.pm.get_name(plugin)!r}"
            ) from exc
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise PluginError(f"Plugin {name!r} ({distribution}) is invalid: {exc}") from exc
        self._origin[name] = (distribution, version)
        origin = f"{distribution} {version}".strip()
        self._load_warnings.extend(
            f"Plugin {name!r} ({origin}) defines {hook} without @hookimpl, so ichbench never "
            "calls it; decorate it with ichbench.hookimpl"
            for hook in _undecorated_hooks(plugin)
        )
        self._registry = None

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._origin.pop(name, None)
        self._registry = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    @property
    def warnings(self) -> list[str]:
        """Everything worth a warning, the registry's included (so this builds it, and
        raises what building it raises)."""
        _ = self.registry
        return [*self._load_warnings, *self._registry_warnings]

    def pending_warnings(self) -> list[str]:
        """The warnings not returned by an earlier call, so each is printed once."""
        fresh = [w for w in self.warnings if w not in self._reported]
        self._reported.update(fresh)
        return fresh

    def _build_registry(self) -> Registry:
        registry = Registry()
        for hook_name, fixed_kind in _HOOK_KIND.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in reversed(caller.get_hookimpls()):
                self._call_hook(registry, impl, hook_name, fixed_kind)
        registered = {e.plugin for e in registry.entries()}
        self._registry_warnings = [
            f"Plugin {name!r} ({f'{dist} {version}'.strip()}) registered nothing"
            for name, (dist, version) in self._origin.items()
            if name not in registered
        ]
        return registry

    def _call_hook(
        self, registry: Registry, impl: pluggy.HookImpl, hook_name: str, fixed_kind: str | None
    ) -> None:
        plugin_name = impl.plugin_name
        dist, version = self._origin.get(plugin_name, ("local", ""))

        def register(
            name: str,
            factory: Callable[[Spec], Any],
            *,
            help: str = "",
            kind: str | None = None,
            claims: Callable[[Path], bool] | None = None,
        ) -> None:
            resolved = fixed_kind if fixed_kind is not None else kind
            if resolved is None:
                raise PluginError(
                    f"Plugin {plugin_name!r}: {hook_name} needs kind='ensemble' "
                    f"or kind='patient' for {name!r}"
                )
            if claims is not None and (resolved != "dataset" or not callable(claims)):
                raise PluginError(
                    f"Plugin {plugin_name!r}: claims= for {name!r} must be a "
                    "callable(Path) -> bool, and only datasets claim folders"
                )
            registry.add(Entry(resolved, name, factory, help, plugin_name, dist, version, claims))

        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"Plugin {plugin_name!r} ({dist}) failed in {hook_name}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


_DEFAULT: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin manager, loaded once on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Plugins()
    return _DEFAULT


def get_registry() -> Registry:
    return get_plugins().registry


def reset_plugins() -> None:
    """Forget the loaded plugins (tests that change entry points or the environment)."""
    global _DEFAULT
    _DEFAULT = None


@contextmanager
def registered(plugin: object, name: str) -> Iterator[Registry]:
    """Register a plugin object for the duration of a block, then always unregister it.

    A name already taken (by an installed plugin, say) is an error: this never removes a
    plugin it did not add itself."""
    plugins = get_plugins()
    plugins.register(plugin, name=name)
    try:
        yield plugins.registry
    finally:
        plugins.unregister(name)
