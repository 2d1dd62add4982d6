"""Where a grid's (configuration, fold) trials run: in this process, or over a Ray cluster.

A trial is `Runner.fold_trial`: pure, it trains and evaluates one fold and returns the
fold's record and kept weights without touching the store. The driver (this process)
alone writes the store, so the DuckDB file never has two writers: it records each fold
as its result comes back and finishes a configuration's run once all its folds are in.
An interrupted grid therefore resumes like an interrupted run: finished folds are kept.

Ray is optional and imported only by `RayExecutor`. Remote workers are sent the resolved
configuration, never the data: they load the dataset themselves (through the cache on
the driver's machine; by generating or reading it on another node) and refuse to train
when what they loaded, split or built differs from what the driver recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ichbench.errors import (
    DataError,
    IchbenchError,
    LeakageError,
    RunBusyError,
    RunFinishedError,
    UsageError,
)

if TYPE_CHECKING:
    from ichbench.config import RunConfig
    from ichbench.records import FoldRecord
    from ichbench.runner import Prepared, Runner, RunResult

RAY_MISSING = "--executor ray needs the ray extra: pip install 'ichbench[ray]'"
# what a worker must see as the driver does (a same-machine cache, the plugin selection)
ENV_FOR_WORKERS = ("ICHBENCH_CACHE", "ICHBENCH_LOAD_PLUGINS", "HF_HUB_OFFLINE", "HF_HOME")


@dataclass
class Job:
    """One configuration's run, already created (or reopened) in the store, and the folds
    it still needs."""

    runner: Runner
    prepared: Prepared
    folds: list[int]

    @property
    def run_id(self) -> str:
        return self.prepared.run_id


@dataclass
class TrialResult:
    """A finished trial as it comes back to the driver; `job` indexes the submitted jobs."""

    job: int
    fold: int
    record: FoldRecord
    state: dict


class Executor(Protocol):
    """Runs the trials of the given jobs and yields their results as they complete.
    An exception raised for a trial carries `job_index`, the job it belongs to."""

    def runner(self, config: RunConfig, store, **kwargs: Any) -> Runner:
        """The driver-side Runner of one configuration (Runner's keyword arguments)."""
        ...

    def trials(self, jobs: Sequence[Job]) -> Iterator[TrialResult]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Busy:
    """A configuration whose unfinished run another live process is running."""

    run_id: str
    error: RunBusyError


def plan_job(runner: Runner) -> Job | Busy | str:
    """A configuration's job: a new run, or the unfinished run of the same configuration on
    the same data reopened with its finished folds kept. When that configuration already has
    a finished run on this data, its run id instead: nothing is left to do; when another
    live process is running it, `Busy`: that process will finish it."""
    store = runner.store
    dataset = runner.load_data()
    existing = [r for r in store.runs_with_config(runner.cfg.hash)
                if r["dataset_hash"] == dataset.dataset_hash]
    if existing and existing[0]["status"] == "finished":
        return str(existing[0]["run_id"])
    try:
        prepared = runner.prepare(resume=existing[0]["run_id"] if existing else None,
                                  dataset=dataset, exclusive=True)
    except RunBusyError as exc:
        return Busy(exc.run_id, exc)
    except RunFinishedError as exc:  # another process finished it meanwhile
        return exc.run_id
    todo = [f.index for f in prepared.split.folds if f.index not in prepared.done]
    return Job(runner, prepared, todo)


def run_jobs(jobs: Sequence[Job], executor: Executor,
             on_trial: Callable[[int, FoldRecord], None] | None = None) -> Iterator[RunResult]:
    """Drive the trials of `jobs` through `executor`: record every fold as it arrives (then
    call `on_trial(job index, record)`), finish each run when its folds are all in, and
    yield it.

    On an error the failing trial's run is marked failed and the other unfinished runs
    interrupted (all resumable); on Ctrl-C every unfinished run is marked interrupted.
    """
    waiting = {i: set(job.folds) for i, job in enumerate(jobs)}
    computed: dict[int, dict[int, FoldRecord]] = {i: {} for i in range(len(jobs))}
    try:
        for i, job in enumerate(jobs):
            if not waiting[i]:  # every fold was already in the store
                try:
                    finished = _finish(job, computed[i])
                except BaseException as exc:
                    _tag(exc, i)
                    raise
                yield finished
        for result in executor.trials(jobs):
            job = jobs[result.job]
            try:
                record = job.runner.record_fold(job.run_id, result.record, result.state)
                computed[result.job][result.fold] = record
                waiting[result.job].discard(result.fold)
                if on_trial is not None:
                    on_trial(result.job, record)
                finished = None if waiting[result.job] else _finish(job, computed[result.job])
            except BaseException as exc:
                _tag(exc, result.job)
                raise
            if finished is not None:
                yield finished
    except KeyboardInterrupt:
        for i, job in enumerate(jobs):
            if waiting[i]:
                _mark(job, "interrupted", None)
        raise
    except BaseException as exc:
        failed = getattr(exc, "job_index", None)
        for i, job in enumerate(jobs):
            if i == failed:
                _mark(job, "failed", f"{type(exc).__name__}: {exc}")
            elif waiting[i]:
                _mark(job, "interrupted", None)
        raise


def abandon(jobs: Sequence[Job], status: str = "interrupted") -> None:
    """Mark runs opened for `jobs` but never driven, so a later grid resumes them."""
    for job in jobs:
        _mark(job, status, None)


def _finish(job: Job, computed: dict[int, FoldRecord]) -> RunResult:
    """The vote over every fold: those already in the store and those just computed."""
    folds = {}
    for fold in sorted(job.prepared.done):
        folds[fold] = job.runner.store.load_fold(job.run_id, fold)
        job.runner.emit("fold_skipped", fold=fold)
    folds.update(computed)
    return job.runner.finish(job.prepared, folds)


def _mark(job: Job, status: str, error: str | None) -> None:
    with contextlib.suppress(IchbenchError):  # the error being raised matters more
        job.runner.store.mark_run(job.run_id, status, error=error)


def _tag(exc: BaseException, job: int) -> None:
    """Remember which job's trial raised, so the driver marks that run failed."""
    with contextlib.suppress(AttributeError):
        exc.job_index = job  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- local


class LocalExecutor:
    """Every trial in this process, one after the other, in job and fold order; the
    runner's observers see every event as in `ichbench run`."""

    def trials(self, jobs: Sequence[Job]) -> Iterator[TrialResult]:
        for i, job in enumerate(jobs):
            for fold in job.folds:
                try:
                    record, state = job.runner.fold_trial(job.prepared.dataset,
                                                          job.prepared.split, fold)
                except BaseException as exc:
                    _tag(exc, i)
                    raise
                yield TrialResult(i, fold, record, state)

    def runner(self, config: RunConfig, store, **kwargs: Any) -> Runner:
        from ichbench.runner import Runner

        return Runner(config, store, **kwargs)

    def close(self) -> None:
        """Nothing to release."""


# --------------------------------------------------------------------------- Ray


@dataclass(frozen=True)
class TrialSpec:
    """What a worker needs to redo the driver's data, split and model, and train one fold."""

    config: dict[str, Any]
    fold: int
    config_hash: str
    dataset_hash: str
    split_hash: str
    pretrained: bool
    pretrained_source: str | None
    threads: int = 1
    env: dict[str, str] = field(default_factory=dict)


def run_trial(spec: TrialSpec) -> tuple[FoldRecord, dict]:
    """A trial on a worker: load the data (one loader per node at a time), check that data,
    split and initial weights are the driver's, train the fold. It trains on the GPU Ray
    assigned when the configuration's device is cuda, else on the CPU."""
    import torch

    from ichbench.config import RunConfig
    from ichbench.runner import Runner

    torch.set_num_threads(spec.threads)  # CPU results depend on it; make it the trial's CPUs
    for key, value in spec.env.items():
        os.environ[key] = value
    runner = Runner(RunConfig.from_dict(spec.config), store=None)
    node = os.uname().nodename
    if runner.cfg.hash != spec.config_hash:
        raise UsageError(f"Node {node} resolved configuration {runner.cfg.hash}, the driver "
                         f"{spec.config_hash}: install the same ichbench and plugins everywhere")
    with _node_lock(runner.cache_dir):
        dataset = runner.load_data()
    if dataset.dataset_hash != spec.dataset_hash:
        raise DataError(f"Dataset {runner.cfg.data!r} on node {node} has hash "
                        f"{dataset.dataset_hash[:12]}, the driver's {spec.dataset_hash[:12]}: "
                        "every node must see the same data")
    split = runner.split_of(dataset)
    if split.hash != spec.split_hash:
        raise LeakageError(f"The split recomputed on node {node} differs from the driver's; "
                           "refusing to train")
    probe = runner.build_model(spec.fold, dataset.images.shape[1])
    if (probe.pretrained, probe.pretrained_source) != (spec.pretrained, spec.pretrained_source):
        raise UsageError(f"Node {node} starts {runner.cfg.backbone} from "
                         f"{probe.pretrained_source or 'random weights'}, the run records "
                         f"{spec.pretrained_source or 'random weights'}: give every node the "
                         "same weights (--weights FILE at the same path, or the same Hub cache)")
    return runner.fold_trial(dataset, split, spec.fold)


@contextlib.contextmanager
def _node_lock(cache_dir: Path) -> Iterator[None]:
    """Workers of one node generate or preprocess a missing dataset once, not side by side."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".load.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def import_ray():
    """Ray, or the one-line error that says how to get it."""
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


def node_loss_errors(ray) -> list[type[BaseException]]:
    """Exceptions that mean a trial's worker or node went away, not that the trial failed:
    the only ones worth retrying."""
    names = ("NodeDiedError", "WorkerCrashedError", "LocalRayletDiedError", "OwnerDiedError",
             "ObjectLostError", "RaySystemError")
    return [getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n)]


class RayExecutor:
    """Trials as Ray tasks: one GPU each where the cluster has GPUs (unless `use_gpus` is
    false), else `cpus_per_trial` CPUs. A task lost with its worker or node is retried up
    to `max_retries` times; an error raised by the protocol is never retried.

    `address` None starts a local Ray instance (or uses the one this process already
    has); "auto" joins the cluster this machine belongs to (`ray start`); HOST:PORT joins
    that head node.
    """

    def __init__(self, address: str | None = None, *, use_gpus: bool = True,
                 cpus_per_trial: float = 1, max_retries: int = 3) -> None:
        self.ray = ray = import_ray()
        self._started = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = address or "a local Ray instance"
                raise UsageError(f"--executor ray: cannot connect to {where}: {exc}") from None
            self._started = True
        self.gpus = float(ray.cluster_resources().get("GPU", 0)) if use_gpus else 0.0
        self.cpus_per_trial = cpus_per_trial
        self.max_retries = max_retries
        self.env = {k: os.environ[k] for k in ENV_FOR_WORKERS if k in os.environ}

    @property
    def device(self) -> str:
        """What trials train on: 'cuda' when each gets a GPU, else 'cpu'."""
        return "cuda" if self.gpus > 0 else "cpu"

    def describe(self) -> str:
        per = "1 GPU" if self.gpus > 0 else f"{self.cpus_per_trial:g} CPU"
        return f"Ray cluster: {self._resources()}; {per} per trial"

    def task_options(self) -> dict[str, Any]:
        """Ray task options of a trial: its resources, and retries for lost workers only."""
        return {
            "max_retries": self.max_retries,
            "retry_exceptions": node_loss_errors(self.ray),
            "num_cpus": self.cpus_per_trial,
            "num_gpus": 1 if self.gpus > 0 else 0,
        }

    def trials(self, jobs: Sequence[Job]) -> Iterator[TrialResult]:
        ray = self.ray
        task = ray.remote(run_trial).options(**self.task_options())
        pending: dict[Any, tuple[int, int]] = {}
        for i, job in enumerate(jobs):
            common = self._spec_fields(job)
            for fold in job.folds:
                pending[task.remote(TrialSpec(fold=fold, **common))] = (i, fold)
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                i, fold = pending.pop(ref)
                try:
                    record, state = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, IchbenchError):  # one clear line, as locally
                        _tag(cause, i)
                        raise cause from None
                    _tag(exc, i)
                    raise
                except Exception as exc:
                    _tag(exc, i)
                    raise
                yield TrialResult(i, fold, record, state)
        finally:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)

    def runner(self, config: RunConfig, store, **kwargs: Any) -> Runner:
        """A driver-side runner for `config` whose run records where its trials train."""
        return _cluster_runner(config, store, f"ray:{self.device}, {self._resources()}",
                               **kwargs)

    def _resources(self) -> str:
        res = self.ray.cluster_resources()
        nodes = sum(1 for n in self.ray.nodes() if n.get("Alive"))
        return f"{nodes} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"

    def _spec_fields(self, job: Job) -> dict[str, Any]:
        run = job.runner.store.get_run(job.run_id)
        config = job.runner.cfg.as_dict()
        config["device"] = self.device
        return {"config": config, "config_hash": job.runner.cfg.hash,
                "dataset_hash": job.prepared.dataset.dataset_hash,
                "split_hash": job.prepared.split.hash, "pretrained": bool(run["pretrained"]),
                "pretrained_source": run["pretrained_source"],
                "threads": max(1, int(self.cpus_per_trial)), "env": dict(self.env)}

    def close(self) -> None:
        """Stop the local Ray instance this executor started; a cluster keeps running."""
        if self._started:
            self.ray.shutdown()
            self._started = False


def _cluster_runner(config: RunConfig, store, label: str, **kwargs: Any) -> Runner:
    """A Runner whose run row names the cluster as its device: the driver trains nothing."""
    from ichbench.runner import Runner

    return Runner(config, store, device_label=label, **kwargs)


def make_executor(name: str, address: str | None = None, *, device: str = "auto",
                  cpus_per_trial: float = 1) -> Executor:
    """The executor named on the command line; `--device cpu` keeps Ray trials off GPUs."""
    if name == "local":
        if address:
            raise UsageError("--address is only for --executor ray")
        return LocalExecutor()
    if name == "ray":
        if not cpus_per_trial > 0:
            raise UsageError(f"--cpus-per-trial {cpus_per_trial}: must be positive")
        executor = RayExecutor(address, use_gpus=device != "cpu", cpus_per_trial=cpus_per_trial)
        if device.startswith("cuda") and executor.gpus == 0:
            executor.close()
            raise UsageError(f"--device {device}: the Ray cluster has no GPUs")
        return executor
    raise UsageError(f"--executor {name!r}: expected local or ray")
