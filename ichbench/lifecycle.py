"""A run's life in the store, one owner for every executor: create it (or reopen it to
resume), record each fold as its trial comes back, finish it with the vote, or mark it
failed or interrupted. `ichbench run` is a grid of one configuration through this same
path; the protocol (`ichbench.protocol`) computes, this module records.

Only the driver process writes the store, so the DuckDB file never has two writers in
one run or grid: trials run wherever the executor puts them and hand back their fold
record and weights. An interrupted run or grid resumes: finished folds are kept.

Every result is first written to the run's journal (`ichbench.store.journal`), then
ingested into the store; while another process holds the store, ingestion is retried in
the background and at the end, and a run goes on training: a busy store delays results,
it never fails a run or loses a fold.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ichbench import checkpoints
from ichbench.device import device_label
from ichbench.errors import (
    IchbenchError,
    LeakageError,
    RunBusyError,
    RunFinishedError,
    StoreBusyError,
    StoreError,
    Terminated,
    UsageError,
)
from ichbench.events import FoldFinished, FoldSkipped, RunFinished, RunStarted, RunWarning
from ichbench.jobs import Busy, Executor, Job, RunResult, tagged
from ichbench.provenance import new_run_id, run_record, utc_now
from ichbench.records import FoldRecord
from ichbench.store.ingest import Ingestion
from ichbench.store.journal import RUN_FILE, Journal, Pending, fold_label

if TYPE_CHECKING:
    from ichbench.interfaces import SliceDataset
    from ichbench.protocol import RunProtocol
    from ichbench.split import NestedSplit, TrialKey
    from ichbench.store import Store


class Lifecycle:
    """The store's side of runs: `store` may be a path, opened only once the inputs
    (configuration, plugins, data, split) have proved good, so bad input never creates
    or touches it. `name`, `tags` and `note` label every run it creates."""

    def __init__(
        self,
        store: Store | Path | str,
        *,
        grid_id: str | None = None,
        device_label: str | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
        note: str | None = None,
    ) -> None:
        self._store = store
        self.grid_id = grid_id
        self.device_label = device_label
        self.name, self.tags, self.note = name, list(tags), note
        self.journal = Journal(store.path if hasattr(store, "path") else store)
        self.ingestion = Ingestion(self.journal)
        self._synced = False

    @property
    def store(self) -> Store:
        """The store, opened on first use."""
        from ichbench.store import Store

        if not isinstance(self._store, Store):
            self._store = Store(self._store)
        return self._store

    def _sync_others(self, resumed: str | None = None) -> None:
        """Results earlier processes left on disk (the store was busy then) into the store,
        when it is free now: once, before this lifecycle's first run. A run being resumed
        is left to its own finish, which recomputes its vote from the folds it keeps."""
        if not self._synced:
            self._synced = True
            self.store  # noqa: B018 - opened (and checked) before anything is taken in
            self.ingestion.others(resumed)

    def pending(self, run_id: str) -> Pending:
        """What of a run is on disk but not yet in the store."""
        return self.journal.pending(run_id)

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
            run_id = self.store.resolve(resume)
            self._sync_others(resumed=run_id)
            return self._reopen(protocol, dataset, split, run_id)
        self._sync_others()
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
        self, protocol: RunProtocol, dataset: SliceDataset, split: NestedSplit, exclusive: bool
    ) -> Job:
        built = protocol.preflight(dataset, split)
        started = utc_now()
        run_id = new_run_id(started)
        record = run_record(
            protocol,
            run_id,
            dataset,
            split,
            built,
            device=self.device_label or device_label(protocol.device),
            grid_id=self.grid_id,
            started_at=started,
            name=self.name,
            tags=self.tags,
            note=self.note,
        )
        store = self.store
        self.journal.write_run(record)
        try:
            store.create_run(record, exclusive=exclusive)
        except StoreBusyError:
            message = f"The store {store.path} is busy: run {run_id} is recorded on disk and "
            message += "goes into the store once it is free"
            if exclusive:
                message += " (not checked against a run of the same configuration elsewhere)"
            protocol.emit(RunWarning(message=message))
        except BaseException:
            self.journal.forget_run(run_id)  # refused: the run does not exist
            raise
        else:
            self.journal.mark_ingested(run_id, RUN_FILE)
        job = Job(
            protocol,
            run_id,
            dataset,
            split,
            set(),
            split.trials(),
            built.pretrained,
            built.pretrained_source,
        )
        protocol.emit(
            RunStarted(
                run_id=run_id,
                folds=len(split.trials()),
                epochs=protocol.cfg.epochs,
                resumed=False,
                finished=[],
                outer=len(split),
            )
        )
        return job

    def _reopen(
        self, protocol: RunProtocol, dataset: SliceDataset, split: NestedSplit, run_id: str
    ) -> Job:
        run = self.store.get_run(run_id)
        if run["status"] == "finished":
            raise RunFinishedError(run_id)
        if run.get("dataset_hash") != dataset.dataset_hash:
            raise UsageError(
                f"Run {run_id} was made on another dataset "
                f"(hash {run.get('dataset_hash')}); cannot resume on this one"
            )
        stored_digest = (run.get("config") or {}).get("weights_digest")
        if protocol.cfg.weights_file and stored_digest != protocol.cfg.weights_digest:
            raise UsageError(
                f"Run {run_id} started from the weights file {protocol.cfg.weights_file} "
                f"with sha256 {stored_digest or 'unrecorded'}; it now holds "
                f"{protocol.cfg.weights_digest}: refusing to resume with other initial "
                "weights (put the original file back, or start a new run)"
            )
        if run.get("config_hash") != protocol.cfg.hash:
            raise StoreError(
                f"Run {run_id}: its stored configuration hashes to {protocol.cfg.hash}, not "
                f"to the recorded {run.get('config_hash')} (edited, or written by another "
                "version); refusing to resume"
            )
        if run.get("split_hash") != split.hash:
            raise LeakageError(
                f"Run {run_id}: the recomputed split differs from the stored "
                "one; refusing to resume"
            )
        done = self.store.finished_folds(run_id) | set(self.journal.folds(run_id))
        self.store.mark_run(run_id, "running")
        self.journal.forget_status(run_id)
        for key in sorted(done):
            path = checkpoints.checkpoint_path(self.journal.store_path, run_id, key)
            if not path.is_file():
                protocol.emit(
                    RunWarning(
                        message=(
                            f"Run {run_id}: {fold_label(key)} is kept, but its checkpoint "
                            f"{path} is gone; its results stand, and Grad-CAM and t-SNE "
                            "cannot show that fold"
                        )
                    )
                )
        job = Job(
            protocol,
            run_id,
            dataset,
            split,
            set(done),
            [key for key in split.trials() if key not in done],
            bool(run.get("pretrained")),
            run.get("pretrained_source"),
        )
        protocol.emit(
            RunStarted(
                run_id=run_id,
                folds=len(split.trials()),
                epochs=protocol.cfg.epochs,
                resumed=True,
                finished=sorted(done),
                outer=len(split),
            )
        )
        for outer, fold in sorted(done):
            protocol.emit(FoldSkipped(fold=fold, outer=outer))
        return job

    # ----------------------------------------------------------------- recording
    def record_fold(self, job: Job, record: FoldRecord, state: dict) -> FoldRecord:
        """Save the fold's checkpoint and its record on disk (each written, then renamed:
        from then on the fold is done), then its rows into the store (one transaction),
        now if the store is free, else as soon as it is."""
        t = time.perf_counter()
        cfg = job.protocol.cfg
        shown = record.notes.get("input") or {}
        record.checkpoint = checkpoints.save_checkpoint(
            self.journal.store_path,
            job.run_id,
            record.key,
            state,
            backbone=cfg.backbone,
            in_chans=int(shown.get("in_chans") or len(cfg.windows)),
            image_size=cfg.image_size,
            windows=list(cfg.windows),
            context=int(shown.get("context") or 0),
            mean=shown.get("mean"),
            std=shown.get("std"),
        )
        self.journal.write_fold(job.run_id, record)
        self.ingestion.take(job.run_id)
        job.store_s += time.perf_counter() - t
        test_f1 = next(m.f1 for m in record.metrics if m.split == "test" and m.scope == "slice")
        job.protocol.emit(
            FoldFinished(
                fold=record.fold,
                threshold=record.threshold,
                val_f1=float(record.curve.max()),
                test_f1=test_f1,
                wall_s=record.wall_s,
                outer=record.outer,
            )
        )
        return record

    def finish(self, job: Job, computed: dict[TrialKey, FoldRecord]) -> RunResult:
        """The votes over every fold, those kept from earlier and those just computed."""
        folds = {}
        journaled = set(self.journal.folds(job.run_id))
        for key in sorted(job.done):
            folds[key] = (
                self.journal.read_fold(job.run_id, key)
                if key in journaled
                else self.store.load_fold(job.run_id, key)
            )
        folds.update(computed)
        votes = job.protocol.vote(job.dataset, job.split, folds)
        vote = votes[-1]  # the headline
        # a resumed run took its kept folds' time in earlier invocations: they count too
        earlier = sum(float(f.wall_s or 0.0) for k, f in folds.items() if k not in computed)
        wall = time.perf_counter() - job.started + earlier
        t = time.perf_counter()
        self.journal.write_vote(job.run_id, votes, wall)
        self.ingestion.take(job.run_id)
        job.store_s += time.perf_counter() - t
        timings = {**job.protocol.timings, "store": job.store_s}
        job.protocol.emit(
            RunFinished(
                run_id=job.run_id, threshold=vote.threshold, wall_s=wall, timings=dict(timings)
            )
        )
        return RunResult(job.run_id, vote.threshold, vote, folds, timings, votes[:-1])

    def mark(self, job: Job, status: str, error: str | None = None) -> None:
        """Mark a run failed or interrupted, on disk first, then in the store; straight in
        the store when the disk refuses (it may be the full disk that failed the run)."""
        try:
            self.journal.write_status(job.run_id, status, error)
        except OSError:
            with contextlib.suppress(IchbenchError):  # the error being raised matters more
                self.store.mark_run(job.run_id, status, error=error)
            return
        with contextlib.suppress(IchbenchError, OSError):
            self.ingestion.take(job.run_id)

    def settle(self, jobs: Sequence[Job], *, wait: bool = True) -> list[Pending]:
        """The end of a drive: stop retrying in the background and take what is left
        into the store, waiting for its lock as any write does (`wait`), or trying once.
        Returns what is still only on disk (said as a warning)."""
        left = self.ingestion.settle([job.run_id for job in jobs], self.store if wait else None)
        for pending in left:
            jobs[0].protocol.emit(
                RunWarning(
                    message=(
                        f"Run {pending.run_id}: {pending.describe()} wait on disk for the store "
                        f"{self.journal.store_path}, which another process holds; they go in with "
                        "the next command that writes to it, or `ichbench store sync`"
                    )
                )
            )
        return left

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
        computed: dict[int, dict[TrialKey, FoldRecord]] = {i: {} for i in range(len(jobs))}
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
        except KeyboardInterrupt as exc:
            why = interruption(exc)
            for i, job in enumerate(jobs):
                if i not in finished:
                    self.mark(job, "interrupted", why)
            self._settle_quietly(jobs)
            raise
        except BaseException as exc:
            failed = getattr(exc, "job_index", None)
            for i, job in enumerate(jobs):
                if i == failed:
                    self.mark(job, "failed", f"{type(exc).__name__}: {exc}")
                elif i not in finished:
                    self.mark(job, "interrupted")
            self._settle_quietly(jobs)
            raise
        self.settle(jobs)

    def _settle_quietly(self, jobs: Sequence[Job]) -> None:
        """On the way out of an error: one quick try, never an error of its own."""
        with contextlib.suppress(Exception):
            self.settle(jobs, wait=False)


def run_config(
    config,
    store: Store | Path | str,
    *,
    resume: str | None = None,
    observers=None,
    cache_dir: Path | None = None,
    registry=None,
    grid_id: str | None = None,
    name: str | None = None,
    tags: Sequence[str] = (),
    note: str | None = None,
) -> RunResult:
    """Run one configuration in this process (or finish the unfinished run `resume`): a
    grid of one, through the same lifecycle as any grid; a new run is labelled with
    `name`, `tags` and `note`."""
    from ichbench.executors import LocalExecutor
    from ichbench.protocol import RunProtocol

    protocol = RunProtocol(config, registry=registry, observers=observers, cache_dir=cache_dir)
    lifecycle = Lifecycle(store, grid_id=grid_id, name=name, tags=tags, note=note)
    job = lifecycle.open(protocol, resume=resume)
    assert isinstance(job, Job)  # without `reuse`, open creates or reopens, or raises
    (result,) = lifecycle.drive([job], LocalExecutor())
    return result


def interruption(exc: KeyboardInterrupt) -> str:
    """What stopped a run, as its record keeps it."""
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
