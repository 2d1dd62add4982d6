"""A run's life in the store, one owner for every executor: create it (or reopen it to
resume), record each fold as its trial comes back, finish it with the vote, or mark it
failed or interrupted. `ichbench run` is a grid of one configuration through this same
path; the protocol (`ichbench.protocol`) computes, this module records.

Only the driver process writes the store, so the DuckDB file never has two writers in
one run or grid: trials run wherever the executor puts them and hand back their fold
record and weights. An interrupted run or grid resumes: finished folds are kept.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ichbench import checkpoints
from ichbench.device import device_label
from ichbench.errors import (
    IchbenchError,
    LeakageError,
    RunBusyError,
    RunFinishedError,
    UsageError,
)
from ichbench.events import FoldFinished, FoldSkipped, RunFinished, RunStarted
from ichbench.provenance import git_sha, library_versions, new_run_id
from ichbench.records import FoldRecord, RunRecord, VoteRecord

if TYPE_CHECKING:
    from ichbench.interfaces import SliceDataset
    from ichbench.protocol import RunProtocol
    from ichbench.split import Split
    from ichbench.store import Store


@dataclass
class Job:
    """One configuration's run, created (or reopened) in the store, and its folds still
    to train."""

    protocol: RunProtocol
    run_id: str
    dataset: SliceDataset
    split: Split
    done: set[int]
    folds: list[int]
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
    threshold: float
    vote: VoteRecord
    folds: dict[int, FoldRecord]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class TrialResult:
    """A finished trial as it comes back to the driver; `job` indexes the jobs given."""

    job: int
    fold: int
    record: FoldRecord
    state: dict


class Executor(Protocol):
    """Runs the trials of the given jobs and yields their results as they complete. An
    exception raised for a trial carries `job_index`, the job it belongs to."""

    device_label: str | None  # what runs record as their device; None: the driver's own

    def trials(self, jobs: Sequence[Job]) -> Iterator[TrialResult]: ...

    def close(self) -> None: ...


class Lifecycle:
    """The store's side of runs: `store` may be a path, opened only once the inputs
    (configuration, plugins, data, split) have proved good, so bad input never creates
    or touches it."""

    def __init__(
        self,
        store: Store | Path | str,
        *,
        grid_id: str | None = None,
        device_label: str | None = None,
    ) -> None:
        self._store = store
        self.grid_id = grid_id
        self.device_label = device_label

    @property
    def store(self) -> Store:
        from ichbench.store import Store

        if not isinstance(self._store, Store):
            self._store = Store(self._store)
        return self._store

    # ----------------------------------------------------------------- opening
    def open(
        self,
        protocol: RunProtocol,
        *,
        resume: str | None = None,
        reuse: bool = False,
        dataset: SliceDataset | None = None,
    ) -> Job | Busy | str:
        """The run to drive for `protocol`'s configuration: a new one; or, given `resume`,
        that unfinished run with its finished folds kept; or, with `reuse` (a grid), the
        unfinished run of the same configuration, data and plugins, or — when one is
        finished already — its run id (nothing to do), or `Busy` when another live
        process is running it."""
        dataset = dataset if dataset is not None else protocol.load_data()
        split = protocol.split_of(dataset)
        if resume:
            return self._reopen(protocol, dataset, split, self.store.resolve(resume))
        if not reuse:
            return self._create(protocol, dataset, split, exclusive=False)
        plugins = protocol.plugin_versions()
        existing = [
            r
            for r in self.store.runs_with_config(protocol.cfg.hash)
            if r["dataset_hash"] == dataset.dataset_hash and (r.get("plugins") or {}) == plugins
        ]
        try:
            if existing and existing[0]["status"] == "finished":
                return str(existing[0]["run_id"])
            if existing:
                return self._reopen(protocol, dataset, split, existing[0]["run_id"])
            return self._create(protocol, dataset, split, exclusive=True)
        except RunBusyError as exc:
            return Busy(exc.run_id, exc)
        except RunFinishedError as exc:  # another process finished it meanwhile
            return exc.run_id

    def _create(
        self, protocol: RunProtocol, dataset: SliceDataset, split: Split, exclusive: bool
    ) -> Job:
        built = protocol.preflight(dataset, split)
        run_id = new_run_id()
        record = self._run_record(protocol, run_id, dataset, split, built)
        self.store.create_run(record, exclusive=exclusive)
        job = Job(
            protocol,
            run_id,
            dataset,
            split,
            set(),
            [f.index for f in split.folds],
            built.pretrained,
            built.pretrained_source,
        )
        protocol.emit(
            RunStarted(
                run_id=run_id,
                folds=protocol.cfg.folds,
                epochs=protocol.cfg.epochs,
                resumed=False,
                finished=[],
            )
        )
        return job

    def _reopen(
        self, protocol: RunProtocol, dataset: SliceDataset, split: Split, run_id: str
    ) -> Job:
        run = self.store.get_run(run_id)
        if run["status"] == "finished":
            raise RunFinishedError(run_id)
        if run.get("dataset_hash") != dataset.dataset_hash:
            raise UsageError(
                f"Run {run_id} was made on another dataset "
                f"(hash {run.get('dataset_hash')}); cannot resume on this one"
            )
        if run.get("split_hash") != split.hash:
            raise LeakageError(
                f"Run {run_id}: the recomputed split differs from the stored "
                "one; refusing to resume"
            )
        done = self.store.finished_folds(run_id)
        self.store.mark_run(run_id, "running")
        job = Job(
            protocol,
            run_id,
            dataset,
            split,
            set(done),
            [f.index for f in split.folds if f.index not in done],
            bool(run.get("pretrained")),
            run.get("pretrained_source"),
        )
        protocol.emit(
            RunStarted(
                run_id=run_id,
                folds=protocol.cfg.folds,
                epochs=protocol.cfg.epochs,
                resumed=True,
                finished=sorted(done),
            )
        )
        for fold in sorted(done):
            protocol.emit(FoldSkipped(fold=fold))
        return job

    def _run_record(
        self, protocol: RunProtocol, run_id: str, dataset: SliceDataset, split: Split, built
    ) -> RunRecord:
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
            device=self.device_label or device_label(protocol.device),
            pretrained=built.pretrained,
            pretrained_source=built.pretrained_source,
            versions=library_versions(),
            git_sha=git_sha(),
            test_patients=list(split.test),
            folds={f.index: {"train": list(f.train), "val": list(f.val)} for f in split.folds},
            split_hash=split.hash,
            grid_id=self.grid_id,
            plugins=protocol.plugin_versions(),
        )

    # ----------------------------------------------------------------- recording
    def record_fold(self, job: Job, record: FoldRecord, state: dict) -> FoldRecord:
        """Save the fold's checkpoint (write, then rename), then its rows (one
        transaction); the fold counts as done only once both are in."""
        t = time.perf_counter()
        cfg = job.protocol.cfg
        record.checkpoint = checkpoints.save_checkpoint(
            Path(self.store.path),
            job.run_id,
            record.fold,
            state,
            backbone=cfg.backbone,
            in_chans=len(cfg.windows),
            image_size=cfg.image_size,
            windows=list(cfg.windows),
        )
        self.store.write_fold(job.run_id, record)
        job.store_s += time.perf_counter() - t
        test_f1 = next(m.f1 for m in record.metrics if m.split == "test" and m.scope == "slice")
        job.protocol.emit(
            FoldFinished(
                fold=record.fold,
                threshold=record.threshold,
                val_f1=float(record.curve.max()),
                test_f1=test_f1,
                wall_s=record.wall_s,
            )
        )
        return record

    def finish(self, job: Job, computed: dict[int, FoldRecord]) -> RunResult:
        """The vote over every fold, those kept from earlier and those just computed."""
        folds = {}
        for fold in sorted(job.done):
            folds[fold] = self.store.load_fold(job.run_id, fold)
        folds.update(computed)
        vote = job.protocol.vote(job.dataset, job.split, folds)
        wall = time.perf_counter() - job.started
        t = time.perf_counter()
        self.store.finish_run(job.run_id, vote, wall)
        job.store_s += time.perf_counter() - t
        timings = {**job.protocol.timings, "store": job.store_s}
        job.protocol.emit(
            RunFinished(
                run_id=job.run_id, threshold=vote.threshold, wall_s=wall, timings=dict(timings)
            )
        )
        return RunResult(job.run_id, vote.threshold, vote, folds, timings)

    def mark(self, job: Job, status: str, error: str | None = None) -> None:
        with contextlib.suppress(IchbenchError):  # the error being raised matters more
            self.store.mark_run(job.run_id, status, error=error)

    def abandon(self, jobs: Sequence[Job], status: str = "interrupted") -> None:
        """Mark runs opened but never driven, so a later grid resumes them."""
        for job in jobs:
            self.mark(job, status)

    # ----------------------------------------------------------------- driving
    def drive(
        self,
        jobs: Sequence[Job],
        executor: Executor,
        on_trial: Callable[[int, FoldRecord], None] | None = None,
    ) -> Iterator[RunResult]:
        """Run the trials of `jobs` through `executor`: record every fold as it arrives
        (then call `on_trial(job index, record)`), finish each run when its folds are all
        in, and yield it.

        On an error the failing trial's run is marked failed and the other unfinished runs
        interrupted (all resumable); on Ctrl-C every unfinished run is marked interrupted.
        """
        waiting = {i: set(job.folds) for i, job in enumerate(jobs)}
        computed: dict[int, dict[int, FoldRecord]] = {i: {} for i in range(len(jobs))}
        finished: set[int] = set()  # runs whose vote is stored: nothing left to mark

        def finish(i: int) -> RunResult:
            with tagged(i):
                result = self.finish(jobs[i], computed[i])
            finished.add(i)
            return result

        try:
            for i in range(len(jobs)):
                if not waiting[i]:  # every fold was already in the store
                    yield finish(i)
            for result in executor.trials(jobs):
                job = jobs[result.job]
                with tagged(result.job):
                    record = self.record_fold(job, result.record, result.state)
                    computed[result.job][result.fold] = record
                    waiting[result.job].discard(result.fold)
                    if on_trial is not None:
                        on_trial(result.job, record)
                if not waiting[result.job]:
                    yield finish(result.job)
        except KeyboardInterrupt:
            for i, job in enumerate(jobs):
                if i not in finished:
                    self.mark(job, "interrupted")
            raise
        except BaseException as exc:
            failed = getattr(exc, "job_index", None)
            for i, job in enumerate(jobs):
                if i == failed:
                    self.mark(job, "failed", f"{type(exc).__name__}: {exc}")
                elif i not in finished:
                    self.mark(job, "interrupted")
            raise


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


def run_config(
    config,
    store: Store | Path | str,
    *,
    resume: str | None = None,
    observers=None,
    cache_dir: Path | None = None,
    registry=None,
    grid_id: str | None = None,
) -> RunResult:
    """Run one configuration in this process (or finish the unfinished run `resume`): a
    grid of one, through the same lifecycle as any grid."""
    from ichbench.executors import LocalExecutor
    from ichbench.protocol import RunProtocol

    protocol = RunProtocol(config, registry=registry, observers=observers, cache_dir=cache_dir)
    lifecycle = Lifecycle(store, grid_id=grid_id)
    job = lifecycle.open(protocol, resume=resume)
    assert isinstance(job, Job)  # without `reuse`, open creates or reopens, or raises
    return next(iter(lifecycle.drive([job], LocalExecutor())))
