"""Domain errors. The core raises them; the CLI turns each into one `Error: ...` line.

Exit codes are part of the public interface (documented in the README), so scripts
driving ichbench can tell a bad input from a broken plugin from a store problem.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    DATA = 3
    PLUGIN = 4
    STORE = 5
    SYSTEM = 6
    INTERRUPTED = 130


class IchbenchError(Exception):
    """Base of every error the CLI reports as a single line."""

    exit_code: ExitCode = ExitCode.INTERNAL


class UsageError(IchbenchError):
    """A command-line value that cannot be used (bad option, bad argument)."""

    exit_code = ExitCode.USAGE


class DataError(IchbenchError):
    """A dataset that is missing, malformed or inconsistent; names the file or patient."""

    exit_code = ExitCode.DATA


class PluginError(IchbenchError):
    """A plugin that fails to load, collides with another, or is asked for by a wrong name."""

    exit_code = ExitCode.PLUGIN


class StoreError(IchbenchError):
    """The DuckDB store cannot be opened, written or queried as asked."""

    exit_code = ExitCode.STORE


class StoreBusyError(StoreError):
    """Another process held the store's lock for longer than the wait allowed."""


class LeakageError(IchbenchError):
    """A patient appears in two of train / validation / test: the worst bug this tool can have."""

    exit_code = ExitCode.INTERNAL


class RunFinishedError(UsageError):
    """A run asked to go on that is finished already (by this process or another)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"Run {run_id} is already finished; nothing to resume")
        self.run_id = run_id


class RunBusyError(StoreError):
    """A run another live process is running: resuming it would train its folds twice."""

    def __init__(self, run_id: str, owner: str) -> None:
        host, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        super().__init__(
            f"Run {run_id} is being run by process {pid} on {host}; wait for it "
            "to end, or stop it, before resuming"
        )
        self.run_id, self.owner = run_id, owner


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler ending a job, `kill`), raised where Ctrl-C would be, so a run
    is left resumable exactly as after Ctrl-C, and records which of the two stopped it."""
