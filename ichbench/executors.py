"""Where a grid's (configuration, fold) trials run: in this process, or over a Ray cluster.

A trial is `RunProtocol.fold_trial`: pure, it trains and evaluates one fold and returns
the fold's record and kept weights without touching the store. The driver records them
(`ichbench.lifecycle`), so the DuckDB file never has two writers.

Ray is optional and imported only by `RayExecutor`. Remote workers are sent the resolved
configuration, never the data: they load the dataset themselves (through the cache on
the driver's machine; by generating or reading it on another node) and refuse to train
when what they loaded, split or built differs from what the driver recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ichbench.errors import DataError, IchbenchError, LeakageError, UsageError
from ichbench.jobs import Job, TrialResult, tag

if TYPE_CHECKING:
    from ichbench.records import FoldRecord

RAY_MISSING = "--executor ray needs the ray extra: pip install 'ichbench[ray]'"
# what a worker must see as the driver does (a same-machine cache, the plugin selection)
ENV_FOR_WORKERS = ("ICHBENCH_CACHE", "ICHBENCH_LOAD_PLUGINS", "HF_HUB_OFFLINE", "HF_HOME")


# --------------------------------------------------------------------------- local


class LocalExecutor:
    """Every trial in this process, one after the other, in job and fold order; the
    protocol's observers see every event as in `ichbench run`."""

    device_label: str | None = None  # the runs record this process's device
    device = "auto"  # trials train on this process's device

    def trials(self, jobs: Sequence[Job]) -> Iterator[TrialResult]:
        for i, job in enumerate(jobs):
            for fold in job.folds:
                try:
                    record, state = job.protocol.fold_trial(job.dataset, job.split, fold)
                except BaseException as exc:
                    tag(exc, i)
                    raise
                yield TrialResult(i, fold, record, state)

    def close(self) -> None:
        """Nothing to release."""


# --------------------------------------------------------------------------- Ray


@dataclass(frozen=True)
class TrialSpec:
    """What a worker needs to redo the driver's data, split and model, and train one fold."""

    config: dict[str, Any]
    fold: tuple[int, int]  # (outer fold, fold)
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
    from ichbench.protocol import RunProtocol

    torch.set_num_threads(spec.threads)  # CPU results depend on it; make it the trial's CPUs
    for key, value in spec.env.items():
        os.environ[key] = value
    protocol = RunProtocol(RunConfig.from_dict(spec.config))
    node = os.uname().nodename
    if protocol.cfg.hash != spec.config_hash:
        raise UsageError(
            f"Node {node} resolved configuration {protocol.cfg.hash}, the driver "
            f"{spec.config_hash}: install the same ichbench and plugins everywhere"
        )
    with _node_lock(protocol.cache_dir):
        dataset = protocol.load_data()
    if dataset.dataset_hash != spec.dataset_hash:
        raise DataError(
            f"Dataset {protocol.cfg.data!r} on node {node} has hash "
            f"{dataset.dataset_hash[:12]}, the driver's {spec.dataset_hash[:12]}: "
            "every node must see the same data"
        )
    split = protocol.split_of(dataset)
    if split.hash != spec.split_hash:
        raise LeakageError(
            f"The split recomputed on node {node} differs from the driver's; refusing to train"
        )
    probe = protocol.build_model(spec.fold[1], dataset.images.shape[1])
    if (probe.pretrained, probe.pretrained_source) != (spec.pretrained, spec.pretrained_source):
        raise UsageError(
            f"Node {node} starts {protocol.cfg.backbone} from "
            f"{probe.pretrained_source or 'random weights'}, the run records "
            f"{spec.pretrained_source or 'random weights'}: give every node the "
            "same weights (--weights FILE at the same path, or the same Hub cache)"
        )
    return protocol.fold_trial(dataset, split, spec.fold)


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
    names = (
        "NodeDiedError",
        "WorkerCrashedError",
        "LocalRayletDiedError",
        "OwnerDiedError",
        "ObjectLostError",
        "RaySystemError",
    )
    return [getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n)]


class RayExecutor:
    """Trials as Ray tasks: one GPU each where the cluster has GPUs (unless `use_gpus` is
    false), else `cpus_per_trial` CPUs. A task lost with its worker or node is retried up
    to `max_retries` times; an error raised by the protocol is never retried.

    `address` None starts a local Ray instance (or uses the one this process already
    has); "auto" joins the cluster this machine belongs to (`ray start`); HOST:PORT joins
    that head node.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        use_gpus: bool = True,
        cpus_per_trial: float = 1,
        max_retries: int = 3,
    ) -> None:
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
                        tag(cause, i)
                        raise cause from None
                    tag(exc, i)
                    raise
                except Exception as exc:
                    tag(exc, i)
                    raise
                yield TrialResult(i, fold, record, state)
        finally:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)

    @property
    def device_label(self) -> str:
        """What the runs record as their device: the cluster, not the driver."""
        return f"ray:{self.device}, {self._resources()}"

    def _resources(self) -> str:
        res = self.ray.cluster_resources()
        nodes = sum(1 for n in self.ray.nodes() if n.get("Alive"))
        return f"{nodes} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"

    def _spec_fields(self, job: Job) -> dict[str, Any]:
        config = job.protocol.cfg.as_dict()
        config["device"] = self.device
        return {
            "config": config,
            "config_hash": job.protocol.cfg.hash,
            "dataset_hash": job.dataset.dataset_hash,
            "split_hash": job.split.hash,
            "pretrained": job.pretrained,
            "pretrained_source": job.pretrained_source,
            "threads": max(1, int(self.cpus_per_trial)),
            "env": dict(self.env),
        }

    def close(self) -> None:
        """Stop the local Ray instance this executor started; a cluster keeps running."""
        if self._started:
            self.ray.shutdown()
            self._started = False


def make_executor(
    name: str, address: str | None = None, *, device: str = "auto", cpus_per_trial: float = 1
) -> LocalExecutor | RayExecutor:
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
