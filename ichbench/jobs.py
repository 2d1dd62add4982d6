"""What a run's life is made of, shared by the lifecycle and the executors: the job of
one configuration, a trial's result as it comes back, the run's result, and the contract
an executor keeps. Plain data: no store, no training."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ichbench.errors import RunBusyError
from ichbench.records import FoldRecord, VoteRecord

if TYPE_CHECKING:
    from ichbench.interfaces import SliceDataset
    from ichbench.protocol import RunProtocol
    from ichbench.split import NestedSplit, TrialKey


@dataclass
class Job:
    """One configuration's run, created (or reopened) in the store, and its folds still
    to train."""

    protocol: RunProtocol
    run_id: str
    dataset: SliceDataset
    split: NestedSplit
    done: set[TrialKey]  # (outer fold, fold) of the folds kept from an earlier attempt
    folds: list[TrialKey]  # those still to train
    pretrained: bool
    pretrained_source: str | None
    started: float = field(default_factory=time.perf_counter)
    store_s: float = 0.0


@dataclass(frozen=True)
class Busy:
    """A configuration whose unfinished run another live process is running."""

    run_id: str
    error: RunBusyError


@dataclass
class RunResult:
    run_id: str
    threshold: float  # NaN with several outer folds: each cut at its own
    vote: VoteRecord  # the headline: the vote, or the outer folds' votes pooled
    folds: dict[TrialKey, FoldRecord]
    timings: dict[str, float] = field(default_factory=dict)
    outer_votes: list[VoteRecord] = field(default_factory=list)  # one per outer fold, if several


@dataclass
class TrialResult:
    """A finished trial as it comes back to the driver; `job` indexes the jobs given."""

    job: int
    fold: TrialKey
    record: FoldRecord
    state: dict


class Executor(Protocol):
    """Runs the trials of the given jobs and yields their results as they complete. An
    exception raised for a trial carries `job_index`, the job it belongs to."""

    device_label: str | None  # what runs record as their device; None: the driver's own

    def trials(self, jobs: Sequence[Job]) -> Iterator[TrialResult]: ...

    def close(self) -> None: ...


@contextlib.contextmanager
def tagged(job: int) -> Iterator[None]:
    """Remember which job an exception belongs to, so the driver marks that run failed."""
    try:
        yield
    except BaseException as exc:
        tag(exc, job)
        raise


def tag(exc: BaseException, job: int) -> None:
    with contextlib.suppress(AttributeError):
        exc.job_index = job  # type: ignore[attr-defined]
