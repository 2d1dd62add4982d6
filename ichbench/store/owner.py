"""Which process is running a run, and whether it still is.

A run's row records its owner as `HOST:PID:START`, START being the boot's id and the
process's start time since boot (Linux), so that a recycled PID, before or after a
reboot, is not mistaken for the run's process. Without /proc (macOS) START is empty and
a live PID is taken for the owner. A
`running` run whose owner is alive on this host must not be resumed by anyone else: two
processes would train the same folds. A process killed with SIGKILL leaves its run
`running`; its owner is then dead and the run resumable. On another host liveness cannot
be checked from here, so such a run is treated as resumable (the user knows their
cluster; the old behaviour).
"""

from __future__ import annotations

import os
import socket
from functools import cache


def _stat(pid: int) -> tuple[str, str]:
    """(state, start time) from /proc/PID/stat, fields 3 and 22, read after the command
    name (which may hold spaces); empty strings where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return "", ""
    fields = stat.rsplit(")", 1)[-1].split()
    return (fields[0], fields[19]) if len(fields) > 19 else ("", "")


@cache
def _host() -> str:
    return socket.gethostname()


@cache
def _boot() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()[:8]
    except OSError:
        return ""


def _start(pid: int) -> str:
    ticks = _stat(pid)[1]
    return f"{_boot()}-{ticks}" if ticks else ""


def this_process() -> str:
    pid = os.getpid()
    return f"{_host()}:{pid}:{_start(pid)}"


def alive_elsewhere(owner: str | None) -> bool:
    """True when `owner` is another process of this host that is still running."""
    if not owner or owner == this_process():
        return False
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != _host() or not pid_text.isdigit() or os.name != "posix":
        return False  # not checkable from here (on Windows, os.kill would kill it)
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    except (OverflowError, ValueError):
        return False  # not a PID
    if _stat(pid)[0] in ("Z", "X"):
        return False  # killed, not yet reaped by its parent
    current = _start(pid)
    return not start or not current or current == start
