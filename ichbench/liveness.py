"""Whether a process is still running: the one answer for run owners and cache builders.

A process is named `HOST:PID:START`, START being the boot's id and the process's start
time since boot (Linux), so that a recycled PID, before or after a reboot, is not taken
for the process it replaced. Without /proc (macOS) START is empty and a live PID is taken
for the process. A zombie (killed, not yet reaped by its parent) is not running. Another
host's processes cannot be checked from here: callers decide what that means for them
(`ichbench.store.owner` for runs, `ichbench.data.cache` for interrupted builds).
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
def host() -> str:
    return socket.gethostname()


@cache
def _boot() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()[:8]
    except OSError:
        return ""


def start_of(pid: int) -> str:
    """The START part of a process's name; empty without /proc or for no such process."""
    ticks = _stat(pid)[1]
    return f"{_boot()}-{ticks}" if ticks else ""


def this_process() -> str:
    """`HOST:PID:START` of the calling process."""
    pid = os.getpid()
    return f"{host()}:{pid}:{start_of(pid)}"


def pid_alive(pid: int, start: str = "") -> bool:
    """True when process `pid` of this host runs (not a zombie) and, given `start`, is the
    process that had that START. On Windows nothing is checkable (os.kill would kill the
    process), and a PID is taken for alive, so nothing of a live process is reclaimed."""
    if os.name != "posix":
        return True
    if pid <= 0:
        return False  # 0 and -N name process groups, not a process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    except (OverflowError, ValueError):
        return False  # not a PID
    except OSError:
        return True  # unknown: never reclaim what may be a live process's
    if _stat(pid)[0] in ("Z", "X"):
        return False
    current = start_of(pid)
    return not start or not current or current == start
