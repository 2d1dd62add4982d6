"""From what a user typed (`synthetic:40`, `physionet:/data/ct-ich`, or a bare folder) to a
dataset source, through the registry, so built-in and third-party datasets are alike."""

from __future__ import annotations

from pathlib import Path

from ichbench.errors import DataError, UsageError
from ichbench.interfaces import DatasetSource
from ichbench.plugins import Registry
from ichbench.spec import Spec, parse_spec

FOLDER_DATASET = "physionet"


def resolve_dataset(text: str, registry: Registry) -> DatasetSource:
    """A registered dataset by spec name; else an existing folder read as PhysioNet data."""
    names = registry.names("dataset")
    try:
        spec: Spec | None = parse_spec(text)
    except UsageError:
        spec = None
    if spec is not None and spec.name in names:
        return registry.create("dataset", spec)
    path = Path(text).expanduser()
    if text.strip() and path.exists():
        return registry.create("dataset", Spec(FOLDER_DATASET, (str(path),)))
    raise DataError(f"Dataset {text!r} not found: not a registered dataset "
                    f"({', '.join(names) or 'none'}) nor an existing folder")
