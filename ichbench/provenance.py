"""Where a run's numbers came from: its id, the code (git commit, library versions), the
plugins it used and the process running it, recorded with every run so a result can be
traced and repeated; and what its user calls it (name, tags, note), checked here once
for every command that sets them."""

from __future__ import annotations

import platform
import re
import secrets
import subprocess
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ichbench import __version__
from ichbench.errors import UsageError
from ichbench.liveness import this_process
from ichbench.records import RunRecord

if TYPE_CHECKING:
    from ichbench.interfaces import BuiltModel, SliceDataset
    from ichbench.protocol import RunProtocol
    from ichbench.split import NestedSplit, Split


TAG = re.compile(r"[A-Za-z0-9_.:-]+")
TAG_FORM = "letters, digits and _ . : - only"
NAME_MAX = 200  # a name is a label for tables, not a note


def utc_now() -> datetime:
    """Now in UTC without a zone, as the store keeps every timestamp."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_run_id(at: datetime | None = None) -> str:
    """Sortable by creation time (UTC), unique by its random suffix. Given the instant
    recorded as the run's `started_at`, the id names that same second."""
    at = utc_now() if at is None else at
    return at.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def folder_safe(run_id: str) -> bool:
    """Whether a run id can name a folder of the store's runs folder and nothing else:
    not empty, not `.` or `..`, without a path separator or a NUL."""
    return bool(run_id) and run_id not in (".", "..") and not any(c in run_id for c in "/\\\x00")


def check_tags(tags: Iterable[str], option: str = "--tag") -> list[str]:
    """Tags as given, each once, in order; a tag is one word so that it reads the same
    in a table, a shell and a filter. A bad one is refused by name."""
    checked: list[str] = []
    for tag in tags:
        if not TAG.fullmatch(tag):
            raise UsageError(f"{option} {tag!r}: a tag is one word of {TAG_FORM}")
        if tag not in checked:
            checked.append(tag)
    return checked


def check_name(name: str | None) -> str | None:
    """A run's name: one line of text, neither empty nor longer than NAME_MAX."""
    if name is None:
        return None
    text = name.strip()
    if not text or len(text) > NAME_MAX or any(not c.isprintable() for c in text):
        raise UsageError(
            f"--name {name!r}: a run's name is one line of 1 to {NAME_MAX} printable characters"
        )
    return text


def check_note(note: str | None) -> str | None:
    """A run's note: free text, lines included; an empty one is no note."""
    if note is None:
        return None
    if "\x00" in note:
        raise UsageError(f"--note {note!r}: a note cannot hold a NUL character")
    return note.strip() or None


def library_versions() -> dict[str, str]:
    """The versions of the libraries that shape the numbers."""
    import duckdb
    import numpy as np
    import sklearn
    import timm
    import torch

    return {
        "ichbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "duckdb": duckdb.__version__,
        # CPU results depend on it (reduction order): a bit-equal rerun needs the same count
        "torch_threads": str(torch.get_num_threads()),
    }


def git_sha() -> str | None:
    """The commit of the ichbench checkout that ran, when it runs from one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_record(
    protocol: RunProtocol,
    run_id: str,
    dataset: SliceDataset,
    split: NestedSplit,
    built: BuiltModel,
    *,
    device: str,
    grid_id: str | None,
    started_at: datetime | None = None,
    name: str | None = None,
    tags: Iterable[str] = (),
    note: str | None = None,
) -> RunRecord:
    """Everything a run row records about where its numbers come from: configuration and
    its hash, data and split hashes, initial weights, code, plugins, and its process;
    beside them, and outside the configuration, what its user calls it. `started_at` is
    the instant `run_id` was made of (now when not given)."""
    cfg = protocol.cfg
    started = utc_now() if started_at is None else started_at
    return RunRecord(
        run_id=run_id,
        dataset=protocol.plugins.dataset.name,
        dataset_hash=dataset.dataset_hash,
        config=cfg.as_dict(),
        config_hash=cfg.hash,
        backbone=cfg.backbone,
        strategies=cfg.typed_specs(),
        seed=cfg.seed,
        preset=cfg.preset,
        device=device,
        pretrained=built.pretrained,
        pretrained_source=built.pretrained_source,
        versions=library_versions(),
        git_sha=git_sha(),
        test_patients=list(split[0].test),
        folds=_folds(split[0]),
        split_hash=split.hash,
        grid_id=grid_id,
        plugins=protocol.plugin_versions(),
        owner=this_process(),
        more_outers=[{"test": list(s.test), "folds": _folds(s)} for s in split.outers[1:]],
        started_at=started.isoformat(),
        name=check_name(name),
        tags=check_tags(tags),
        note=check_note(note),
    )


def _folds(split: Split) -> dict[int, dict[str, list[int]]]:
    return {f.index: {"train": list(f.train), "val": list(f.val)} for f in split.folds}
