"""What every command shares: the consoles.

Data goes to stdout, progress and messages to stderr, so `ichbench runs --json | jq`
works. When output is not a terminal (a pipe, a file, CI logs) rich would assume 80
columns and truncate wide tables; `$COLUMNS`, else 200, is used instead.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console


def _width(stream) -> int | None:
    if stream.isatty():
        return None  # rich measures the terminal
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        return 200


out = Console(width=_width(sys.stdout))  # data
err = Console(stderr=True, width=_width(sys.stderr))  # progress, messages, errors
