"""Where ichbench keeps things, each overridable by an environment variable."""

from __future__ import annotations

import os
from pathlib import Path

DB_ENV = "ICHBENCH_DB"
CACHE_ENV = "ICHBENCH_CACHE"


def store_file(path: Path | str) -> Path:
    """The store file itself, absolute with every symlink followed: whichever name
    reaches a store, it has one WAL and one checkpoint folder (`<store>.runs/`)."""
    return Path(path).resolve()


def default_db() -> Path:
    """The run store: `$ICHBENCH_DB`, else `./runs.duckdb`."""
    return store_file(os.environ.get(DB_ENV) or "runs.duckdb")


def cache_dir() -> Path:
    """Preprocessing cache and generated synthetic data: `$ICHBENCH_CACHE`, else
    `$XDG_CACHE_HOME/ichbench` (`~/.cache/ichbench`)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ichbench"


def run_dir(db_path: Path | str, run_id: str) -> Path:
    """Fold checkpoints live beside the store file: `<db>.runs/<run_id>/fold<k>.pt`."""
    db = store_file(db_path)
    return db.parent / f"{db.name}.runs" / run_id
