"""Which process is running a run, and whether another one may take it over.

A run's row records its owner as `HOST:PID:START` (`ichbench.liveness.this_process`). A
`running` run whose owner is alive on this host must not be resumed by anyone else: two
processes would train the same folds. A process killed with SIGKILL leaves its run
`running`; its owner is then dead and the run resumable. On another host liveness cannot
be checked from here, so such a run is treated as resumable (the user knows their
cluster).
"""

from __future__ import annotations

import os

from ichbench.liveness import host, pid_alive, this_process

__all__ = ["alive_elsewhere", "this_process"]


def alive_elsewhere(owner: str | None) -> bool:
    """True when `owner` is another process of this host that is still running."""
    if not owner or owner == this_process():
        return False
    owner_host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if owner_host != host() or not pid_text.isdigit() or os.name != "posix":
        return False  # not checkable from here
    return pid_alive(int(pid_text), start)
