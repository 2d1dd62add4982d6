"""Where a run's numbers came from: its id, the code (git commit, library versions), the
plugins it used and the process running it, recorded with every run so a result can be
traced and repeated."""

from __future__ import annotations

import platform
import secrets
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ichbench import __version__
from ichbench.liveness import this_process
from ichbench.records import RunRecord

if TYPE_CHECKING:
    from ichbench.interfaces import BuiltModel, SliceDataset
    from ichbench.protocol import RunProtocol
    from ichbench.split import NestedSplit, Split


def new_run_id() -> str:
    """Sortable by creation time (UTC), unique by its random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


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
) -> RunRecord:
    """Everything a run row records about where its numbers come from: configuration and
    its hash, data and split hashes, initial weights, code, plugins, and its process."""
    cfg = protocol.cfg
    return RunRecord(
        run_id=run_id,
        dataset=protocol.plugins.dataset.name,
        dataset_hash=dataset.dataset_hash,
        config=cfg.as_dict(),
        config_hash=cfg.hash,
        backbone=cfg.backbone,
        strategies=cfg.strategy_specs(),
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
    )


def _folds(split: Split) -> dict[int, dict[str, list[int]]]:
    return {f.index: {"train": list(f.train), "val": list(f.val)} for f in split.folds}
