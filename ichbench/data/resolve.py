"""From what a user typed (`synthetic:40`, `physionet:/data/ct-ich`, or a bare folder) to a
dataset source, through the registry, so built-in and third-party datasets are alike.

A bare folder belongs to the one registered dataset whose `claims` accepts it: the core
knows no layout itself, so a third party's layout is found exactly as PhysioNet's is.
"""

from __future__ import annotations

from pathlib import Path

from ichbench.errors import DataError, PluginError, UsageError
from ichbench.interfaces import DatasetSource
from ichbench.registry import Entry, Registry
from ichbench.spec import Spec, parse_spec


def dataset_entry(text: str, registry: Registry) -> tuple[Entry, Spec]:
    """The dataset entry `text` names and the spec to create it with, creating nothing:
    a registered name (`NAME[:ARGS]`) first, else an existing path claimed by one dataset,
    which receives it as its single argument."""
    names = registry.names("dataset")
    try:
        spec: Spec | None = parse_spec(text)
    except UsageError:
        spec = None
    if spec is not None and spec.name in names:
        return registry.get("dataset", spec.name), spec
    path = Path(text).expanduser()
    if not text.strip() or not path.exists():
        raise DataError(
            f"Dataset {text!r} not found: not a registered dataset "
            f"({', '.join(names) or 'none'}) nor an existing folder"
        )
    claimants = registry.claimants(path)
    if len(claimants) > 1:
        who = " and ".join(f"{e.name!r} ({e.plugin}, {e.distribution})" for e in claimants)
        raise PluginError(f"Dataset folder {path} is claimed by {who}; choose one as NAME:PATH")
    if not claimants:
        raise DataError(
            f"Dataset folder {path} is in no layout a registered dataset "
            f"recognises ({', '.join(names) or 'none'}); give NAME:PATH to choose "
            "one and see what it misses"
        )
    return claimants[0], Spec(claimants[0].name, (str(path),))


def resolve_dataset(text: str, registry: Registry) -> DatasetSource:
    """A registered dataset by spec name; else an existing folder, read by its claimant."""
    entry, spec = dataset_entry(text, registry)
    try:
        return entry.create(spec)
    except UsageError as exc:
        folder = Path(text).expanduser()
        if spec.args or not folder.exists():
            raise
        # `--data rsna` beside a folder named rsna: the registered name won; say how to
        # mean the folder
        raise UsageError(
            f"{exc} (a folder {text!r} is here too: give ./{text} to read it)"
        ) from None
