"""Where a run's numbers came from: its id, the code (git commit, library versions) and
the plugins it used, recorded with every run so a result can be traced and repeated."""

from __future__ import annotations

import platform
import secrets
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from ichbench import __version__


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
