"""Datasets: the PhysioNet reader (both releases), the synthetic generator and the cache.

Heavy libraries (torch, nibabel, matplotlib) are imported where they are used, so that
listing plugins or printing `--help` stays fast.
"""

from __future__ import annotations

from ichbench.data.physionet import PhysioNetSource, open_folder
from ichbench.data.resolve import dataset_entry, resolve_dataset
from ichbench.data.synth import SyntheticSource, generate
from ichbench.data.windows import WINDOWS

__all__ = [
    "WINDOWS",
    "PhysioNetSource",
    "SyntheticSource",
    "dataset_entry",
    "generate",
    "open_folder",
    "resolve_dataset",
]
