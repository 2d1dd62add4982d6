"""The registry: every name the plugins registered, by kind, with the plugin, distribution
and version behind it.

Collisions are fatal and an unknown name answers with a "did you mean". Objects created
by `Registry.create` blame their plugin for their failures (see `ichbench.blame`), and
`plugin_versions` gives the `{distribution: version}` of the plugins a run used, for its
provenance. Filling the registry from installed plugins is `ichbench.plugins`' job.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ichbench.blame import call_blamed, check_kind, describe, is_plugin_fault, wrap
from ichbench.blame import entry_of as _entry_of_object
from ichbench.errors import PluginError, UsageError
from ichbench.spec import Spec, parse_spec

KINDS = ("strategy", "backbone", "ensemble", "patient", "dataset")
KIND_LABELS = {
    "strategy": "strategy",
    "backbone": "backbone",
    "ensemble": "ensemble rule",
    "patient": "patient rule",
    "dataset": "dataset",
}


@dataclass(frozen=True)
class Entry:
    """One registered name, with where it came from.

    `claims` (datasets only) says whether the dataset reads a folder given bare as
    `--data PATH`; such a folder is created as `Spec(name, (PATH,))`.
    """

    kind: str
    name: str
    factory: Callable[[Spec], Any]
    help: str
    plugin: str
    distribution: str
    version: str
    claims: Callable[[Path], bool] | None = None

    def create(self, spec: Spec) -> Any:
        """Call the factory and check what it returns. The factory's own `UsageError` (a bad
        argument) and ichbench's other errors pass unchanged; any other failure, or an
        object of the wrong kind, is a PluginError naming the plugin and its distribution.
        The object comes back behind a proxy that blames the plugin for its failures."""
        try:
            obj = self.factory(spec)
        except UsageError:
            raise
        except Exception as exc:
            if not is_plugin_fault(exc):
                raise
            raise PluginError(
                f"{describe(self)} failed in its factory: {type(exc).__name__}: {exc}"
            ) from exc
        check_kind(self, obj)
        return wrap(obj, self)

    def claims_folder(self, path: Path) -> bool:
        """Whether this dataset claims `path`; a claim that fails is blamed on its plugin."""
        if self.claims is None:
            return False
        return bool(call_blamed(self, "claims", self.claims, path))


class Registry:
    """Every name every plugin registered, by kind. Collisions are fatal. Names are matched
    without regard to case, as configurations spell them in lower case (`RunConfig`
    canonicalises `Augment:3.3` to `augment:3.3`), so `MyNet` and `mynet` are one name."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def add(self, entry: Entry) -> None:
        if (
            not entry.name
            or entry.name != entry.name.strip()
            or any(c in entry.name for c in ":, \t\n")
        ):
            raise PluginError(
                f"Plugin {entry.plugin!r} ({entry.distribution}) registered {entry.name!r}, "
                "which cannot be chosen on the command line: a name is not empty and has no "
                "':', ',' or space"
            )
        if entry.kind not in self._entries:
            raise PluginError(
                f"Plugin {entry.plugin!r} registered {entry.name!r} with unknown kind "
                f"{entry.kind!r}; expected one of {', '.join(KINDS)}"
            )
        existing = self._entries[entry.kind].get(entry.name.lower())
        if existing is not None:
            raise PluginError(
                f"{KIND_LABELS[entry.kind].capitalize()} {entry.name!r} is registered twice: "
                f"by {existing.plugin} ({existing.distribution}) and by {entry.plugin} "
                f"({entry.distribution})"
            )
        self._entries[entry.kind][entry.name.lower()] = entry

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self) -> list[Entry]:
        return [e for kind in KINDS for _, e in sorted(self._entries[kind].items())]

    def get(self, kind: str, name: str) -> Entry:
        try:
            return self._entries[kind][name.lower()]
        except KeyError:
            pass
        label = KIND_LABELS[kind]
        available = self.names(kind)
        hint = difflib.get_close_matches(name, available, n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise PluginError(
            f"Unknown {label} {name!r}.{did_you_mean} Available: {', '.join(available) or 'none'}"
        )

    def entry_of(self, kind: str, text: str | Spec) -> Entry:
        """The entry a spec (`name:args`) of `kind` creates from, without creating anything."""
        spec = parse_spec(text) if isinstance(text, str) else text
        return self.get(kind, spec.name)

    def create(self, kind: str, text: str | Spec) -> Any:
        """Parse `name:args`, find the factory and let it validate its arguments.

        The object returned behaves as the factory's (attributes, `isinstance`), but any
        unexpected exception of its methods becomes a PluginError naming the plugin, its
        distribution and version, and the method (see `ichbench.blame`)."""
        spec = parse_spec(text) if isinstance(text, str) else text
        return self.get(kind, spec.name).create(spec)

    def claimants(self, path: Path) -> list[Entry]:
        """The datasets whose `claims` accept `path`."""
        return [e for e in self.entries() if e.kind == "dataset" and e.claims_folder(path)]


def created_by(obj: Any) -> Entry | None:
    """The entry whose factory created `obj` (an object from `Registry.create`), else None."""
    return _entry_of_object(obj)


def plugin_versions(registry: Registry, used: list[tuple[str, str]]) -> dict[str, str]:
    """`{distribution: version}` of the plugins behind `used`, a list of `(kind, spec_text)`
    as a run was configured (a dataset may be a bare folder: its claimant counts)."""
    from ichbench.data.resolve import dataset_entry

    versions: dict[str, str] = {}
    for kind, text in used:
        entry = (
            dataset_entry(text, registry)[0] if kind == "dataset" else registry.entry_of(kind, text)
        )
        versions[entry.distribution] = entry.version
    return dict(sorted(versions.items()))
