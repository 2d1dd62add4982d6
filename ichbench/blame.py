"""Blame: a failure inside a plugin is reported as that plugin's, with where it came from.

The core talks to plugin objects only through the protocols of `ichbench.interfaces`.
`Registry.create` hands it each object wrapped in a `PluginProxy`, so that a plugin bug
surfacing deep inside the protocol reads, on the command line, as

    Error: Strategy 'focal' from ichbench-focal 0.1.0 failed in apply: ZeroDivisionError: ...

rather than as an anonymous traceback in ichbench's own code. The proxy is thin: it
forwards every attribute read and write to the object, makes `isinstance` answer for the
object (its class and the protocols alike), compares, hashes, prints and pickles as the
object, and only changes what a method call raises. Other special methods (`len`, `iter`,
calling the object itself) are not the protocols' business and are not forwarded.

What is never rewrapped, because it says something else than "this plugin has a bug":
ichbench's own errors (a plugin may raise `UsageError` or `DataError` on purpose),
`KeyboardInterrupt` and `SystemExit` (not `Exception`s at all), `OSError` (the system said
no: a full disk, a permission) and running out of memory (`MemoryError`, and any
`...OutOfMemoryError` such as CUDA's).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ichbench.errors import IchbenchError, PluginError
from ichbench.interfaces import KIND_PROTOCOLS

if TYPE_CHECKING:
    from ichbench.registry import Entry

_TARGET = "_ichbench_target"
_ENTRY = "_ichbench_entry"


def is_plugin_fault(exc: BaseException) -> bool:
    """Whether an exception escaping a plugin is the plugin's fault, and so blamed on it."""
    if not isinstance(exc, Exception):
        return False
    if isinstance(exc, (IchbenchError, OSError, MemoryError)):
        return False
    return not type(exc).__name__.endswith("OutOfMemoryError")


def describe(entry: Entry) -> str:
    """`Strategy 'focal' from ichbench-focal 0.1.0`: how every blamed message starts."""
    from ichbench.registry import KIND_LABELS

    origin = f"{entry.distribution} {entry.version}".strip()
    return f"{KIND_LABELS[entry.kind].capitalize()} {entry.name!r} from {origin}"


def blamed(entry: Entry, where: str, exc: Exception) -> PluginError:
    """The PluginError that reports `exc`, raised in `where`, as the plugin's failure."""
    return PluginError(f"{describe(entry)} failed in {where}: {type(exc).__name__}: {exc}")


def call_blamed(
    entry: Entry, where: str, function: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """Call a plugin's function; an exception that is its fault becomes a PluginError
    chained from the original (so `--debug` still shows the plugin's traceback)."""
    try:
        return function(*args, **kwargs)
    except Exception as exc:
        if not is_plugin_fault(exc):
            raise
        raise blamed(entry, where, exc) from exc


def protocol_members(kind: str) -> tuple[str, ...]:
    """The attributes (methods and data) an object of `kind` must have."""
    protocol = KIND_PROTOCOLS[kind]
    methods = [n for n, v in vars(protocol).items() if not n.startswith("_") and callable(v)]
    data = [n for n in getattr(protocol, "__annotations__", {}) if not n.startswith("_")]
    return tuple(sorted(set(methods) | set(data)))


def check_kind(entry: Entry, obj: Any) -> None:
    """A factory must return an object of its kind's protocol; say what is missing if not."""
    protocol = KIND_PROTOCOLS[entry.kind]
    if isinstance(obj, protocol):
        return
    missing = [n for n in protocol_members(entry.kind) if not hasattr(obj, n)]
    lacks = f": it has no {', '.join(missing)}" if missing else ""
    raise PluginError(
        f"{describe(entry)}: its factory returned {type(obj).__name__}, which is "
        f"not a {protocol.__name__}{lacks}"
    )


class PluginProxy:
    """A created plugin object that blames its plugin for any failure of its methods."""

    __slots__ = (_TARGET, _ENTRY)

    def __init__(self, target: Any, entry: Entry) -> None:
        object.__setattr__(self, _TARGET, target)
        object.__setattr__(self, _ENTRY, entry)

    @property
    def __class__(self) -> type:  # isinstance(proxy, TheirClass) holds, as for the object
        return type(object.__getattribute__(self, _TARGET))

    def __getattr__(self, name: str) -> Any:
        target = object.__getattribute__(self, _TARGET)
        value = getattr(target, name)
        if _is_own_method(value, target):
            return _blaming(object.__getattribute__(self, _ENTRY), name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, _TARGET), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(object.__getattribute__(self, _TARGET), name)

    def __dir__(self) -> list[str]:
        return dir(object.__getattribute__(self, _TARGET))

    def __repr__(self) -> str:
        return repr(object.__getattribute__(self, _TARGET))

    def __str__(self) -> str:
        return str(object.__getattribute__(self, _TARGET))

    def __eq__(self, other: object) -> bool:
        return object.__getattribute__(self, _TARGET) == unwrap(other)

    def __hash__(self) -> int:
        return hash(object.__getattribute__(self, _TARGET))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        entry = object.__getattribute__(self, _ENTRY)
        return _restore, (
            object.__getattribute__(self, _TARGET),
            entry.kind,
            entry.name,
            entry.help,
            entry.plugin,
            entry.distribution,
            entry.version,
        )


def _is_own_method(value: Any, target: Any) -> bool:
    return (inspect.ismethod(value) or inspect.isbuiltin(value)) and getattr(
        value, "__self__", None
    ) is target


def _blaming(entry: Entry, where: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        return call_blamed(entry, where, function, *args, **kwargs)

    return call


def _forwarding(name: str, is_method: bool) -> Any:
    """A class-level member of the kind's protocol, so that `isinstance` checks that look
    only at the class (typing's `getattr_static`, Python 3.12+) find it on the proxy."""
    if is_method:

        def method(self: PluginProxy, *args: Any, **kwargs: Any) -> Any:
            target = object.__getattribute__(self, _TARGET)
            return call_blamed(
                object.__getattribute__(self, _ENTRY), name, getattr(target, name), *args, **kwargs
            )

        method.__name__ = name
        return method
    return property(
        lambda self: getattr(object.__getattribute__(self, _TARGET), name),
        lambda self, value: setattr(object.__getattribute__(self, _TARGET), name, value),
    )


def _proxy_class(kind: str) -> type[PluginProxy]:
    protocol = KIND_PROTOCOLS[kind]
    members = {
        name: _forwarding(name, callable(vars(protocol).get(name)))
        for name in protocol_members(kind)
    }
    return type(f"{protocol.__name__}Proxy", (PluginProxy,), {"__slots__": (), **members})


_PROXY_CLASSES = {kind: _proxy_class(kind) for kind in KIND_PROTOCOLS}


def wrap(obj: Any, entry: Entry) -> Any:
    """`obj`, created by `entry`'s factory, behind a proxy of its kind."""
    return _PROXY_CLASSES[entry.kind](unwrap(obj), entry)


def unwrap(obj: Any) -> Any:
    """The plugin's own object behind a proxy (anything else unchanged)."""
    if PluginProxy in type(obj).__mro__:
        return object.__getattribute__(obj, _TARGET)
    return obj


def entry_of(obj: Any) -> Entry | None:
    """The registry entry that created `obj`, when `obj` came from `Registry.create`."""
    if PluginProxy in type(obj).__mro__:
        return object.__getattribute__(obj, _ENTRY)
    return None


def _not_recreatable(spec: Any) -> Any:
    raise PluginError(
        "A plugin object restored from a pickle cannot create another one; "
        "create it from the registry"
    )


def _restore(
    target: Any, kind: str, name: str, help: str, plugin: str, distribution: str, version: str
) -> Any:
    from ichbench.registry import Entry

    return wrap(target, Entry(kind, name, _not_recreatable, help, plugin, distribution, version))
