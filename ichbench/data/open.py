"""A run's dataset from its configuration: the dataset plugin that `--data` names (or
that claims the folder), loaded through the preprocessing cache with the run's image
size, windows and exclusions. Training and every later reader of a run open it here, so
they see the same slices."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ichbench.interfaces import LoadOptions, SliceDataset

if TYPE_CHECKING:
    from ichbench.config import RunConfig
    from ichbench.registry import Registry


def load_options(cfg: RunConfig) -> LoadOptions:
    """The preprocessing settings of a resolved configuration (part of the cache key)."""
    return LoadOptions(
        image_size=int(cfg.image_size), windows=tuple(cfg.windows), exclude=tuple(cfg.exclude)
    )


def open_dataset(
    cfg: RunConfig,
    *,
    registry: Registry | None = None,
    source: Any = None,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Any, SliceDataset]:
    """The dataset source (given, or resolved from `cfg.data`) and its loaded dataset."""
    from ichbench.data.resolve import resolve_dataset
    from ichbench.paths import cache_dir as default_cache_dir
    from ichbench.plugins import get_registry

    if source is None:
        source = resolve_dataset(cfg.data, registry or get_registry())
    dataset = source.load(load_options(cfg), cache_dir or default_cache_dir(), progress=progress)
    return source, dataset
