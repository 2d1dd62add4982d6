"""The single plugin loader and the registry built from it.

Built-in plugins live in the `ichbench_plugins` package and reach the registry through
the `ichbench` entry-point group, exactly like a third party's: the core never names
them. Entry points are loaded one at a time so that a broken plugin fails with its own
name, and every registered name is attributed to its plugin, distribution and version.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pluggy

from ichbench import hookspecs
from ichbench.errors import PluginError
from ichbench.spec import Spec, parse_spec

ENTRY_POINT_GROUP = "ichbench"
LOAD_ENV = "ICHBENCH_LOAD_PLUGINS"
"""Comma-separated distributions to load besides ichbench itself; unset loads all,
empty loads only the built-ins (what the tests do, so installed plugins cannot leak in)."""

KINDS = ("strategy", "backbone", "ensemble", "patient", "dataset")
KIND_LABELS = {
    "strategy": "strategy",
    "backbone": "backbone",
    "ensemble": "ensemble rule",
    "patient": "patient rule",
    "dataset": "dataset",
}
_HOOK_KIND = {
    "register_strategies": "strategy",
    "register_backbones": "backbone",
    "register_aggregators": None,  # the kind= keyword decides
    "register_datasets": "dataset",
}


@dataclass(frozen=True)
class Entry:
    """One registered name, with where it came from."""

    kind: str
    name: str
    factory: Callable[[Spec], Any]
    help: str
    plugin: str
    distribution: str
    version: str

    def create(self, spec: Spec) -> Any:
        return self.factory(spec)


class Registry:
    """Every name every plugin registered, by kind. Collisions are fatal."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def add(self, entry: Entry) -> None:
        if entry.kind not in self._entries:
            raise PluginError(
                f"Plugin {entry.plugin!r} registered {entry.name!r} with unknown kind "
                f"{entry.kind!r}; expected one of {', '.join(KINDS)}"
            )
        existing = self._entries[entry.kind].get(entry.name)
        if existing is not None:
            raise PluginError(
                f"{KIND_LABELS[entry.kind].capitalize()} {entry.name!r} is registered twice: "
                f"by {existing.plugin} ({existing.distribution}) and by {entry.plugin} "
                f"({entry.distribution})"
            )
        self._entries[entry.kind][entry.name] = entry

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self) -> list[Entry]:
        return [e for kind in KINDS for _, e in sorted(self._entries[kind].items())]

    def get(self, kind: str, name: str) -> Entry:
        try:
            return self._entries[kind][name]
        except KeyError:
            pass
        label = KIND_LABELS[kind]
        available = self.names(kind)
        hint = difflib.get_close_matches(name, available, n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise PluginError(
            f"Unknown {label} {name!r}.{did_you_mean} Available: {', '.join(available) or 'none'}"
        )

    def create(self, kind: str, text: str | Spec) -> Any:
        """Parse `name:args`, find the factory and let it validate its arguments."""
        spec = parse_spec(text) if isinstance(text, str) else text
        return self.get(kind, spec.name).create(spec)


def _distribution_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "unknown"
    return dist.metadata["Name"], dist.version


def _wanted(dist_name: str) -> bool:
    selection = os.environ.get(LOAD_ENV)
    if selection is None or dist_name == "ichbench":
        return True
    wanted = {n.strip().lower() for n in selection.split(",") if n.strip()}
    return dist_name.lower() in wanted


def _entry_points() -> list[md.EntryPoint]:
    return sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.value, ep.name))


class Plugins:
    """A pluggy manager loaded from entry points, and the registry its hooks produce."""

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self._origin: dict[str, tuple[str, str]] = {}
        self._registry: Registry | None = None
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        for ep in _entry_points():
            dist_name, version = _distribution_of(ep)
            if not _wanted(dist_name):
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must be named, never swallowed
                raise PluginError(
                    f"Plugin {ep.name!r} ({ep.value}) from {dist_name} {version} failed to "
                    f"load: {type(exc).__name__}: {exc}"
                ) from exc
            self.register(module, name=ep.value, distribution=dist_name, version=version)

    def register(self, plugin: object, *, name: str, distribution: str = "local",
                 version: str = "") -> None:
        if self.pm.has_plugin(name):
            return
        self.pm.register(plugin, name=name)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise PluginError(f"Plugin {name!r} ({distribution}) is invalid: {exc}") from exc
        self._origin[name] = (distribution, version)
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

    def _build_registry(self) -> Registry:
        registry = Registry()
        for hook_name, fixed_kind in _HOOK_KIND.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in reversed(caller.get_hookimpls()):
                plugin_name = impl.plugin_name
                dist, version = self._origin.get(plugin_name, ("local", ""))

                def register(name: str, factory: Callable[[Spec], Any], *, help: str = "",
                             kind: str | None = None, _plugin=plugin_name, _dist=dist,
                             _version=version, _fixed=fixed_kind, _hook=hook_name) -> None:
                    resolved = _fixed if _fixed is not None else kind
                    if resolved is None:
                        raise PluginError(
                            f"Plugin {_plugin!r}: {_hook} needs kind='ensemble' or "
                            f"kind='patient' for {name!r}"
                        )
                    registry.add(Entry(resolved, name, factory, help, _plugin, _dist, _version))

                try:
                    impl.function(register=register)
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"Plugin {plugin_name!r} ({dist}) failed in {hook_name}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
        return registry


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
    """Register a plugin object for the duration of a block, then always unregister it."""
    plugins = get_plugins()
    plugins.register(plugin, name=name)
    try:
        yield plugins.registry
    finally:
        plugins.unregister(name)
