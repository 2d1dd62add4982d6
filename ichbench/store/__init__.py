"""The DuckDB run store: where every run, fold, metric and prediction is kept."""

from __future__ import annotations

from ichbench.store.reads import StoredSplit
from ichbench.store.store import Store

__all__ = ["Store", "StoredSplit"]
