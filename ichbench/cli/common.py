"""What every command shares: the consoles and the one error boundary.

Data goes to stdout, progress and messages to stderr, so `ichbench runs --json | jq`
works.
"""

from __future__ import annotations

from rich.console import Console

out = Console()  # data
err = Console(stderr=True)  # progress, messages, errors
