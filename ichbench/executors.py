"""Where a grid's (configuration, fold) trials run: in this process, or over a Ray cluster.

A trial is `RunProtocol.fold_trial`: pure, it trains and evaluates one fold and returns
the fold's record and kept weights without touching the store. The driver records them
(`ichbench.lifecycle`), so the DuckDB file never has two writers.

Ray is optional and imported only by `RayExecutor`. Remote workers are sent the resolved
configuration, never the data: they load the dataset themselves (through the cache on
the driver's machine; by generating or reading it on another node) and refuse to train
when what they loaded, split or built differs from what the driver recorded.

The local executor runs its trials one after the other in this process, or, packed,
`trials_at_once` of them side by side in worker processes started fresh (spawn) on this
machine and its device: the folds of a run, or the trials of a grid, share one GPU. A
worker is what a Ray worker is: it loads the data through the same cache and checks it,
split and initial weights against the driver's, keeps them for the trials of the same
configuration it runs next, and hands back the fold's record and weights; each fold trains
exactly as it would alone with the same seed (on the CPU, at the same torch thread count).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pickle
import queue
import signal
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ichbench.errors import DataError, IchbenchError, LeakageError, UsageError
from ichbench.jobs import Job, TrialResult, tag

if TYPE_CHECKING:
    from ichbench.events import Event
    from ichbench.protocol import RunProtocol
    from ichbench.records import FoldRecord
    from ichbench.split import NestedSplit

RAY_MISSING = "--executor ray needs the ray extra: pip install 'ichbench[ray]'"
# what a worker must see as the driver does (a same-machine cache, the plugin selection)
ENV_FOR_WORKERS = ("ICHBENCH_CACHE", "ICHBENCH_LOAD_PLUGINS", "HF_HUB_OFFLINE", "HF_HOME")


# --------------------------------------------------------------------------- local


# a packed trial on CUDA is given this much free device memory when the count is chosen
# for the user (ResNet50 at 224 px, batch 32, bf16 peaks near 2 GiB: twice that, for
# larger networks and the allocator's slack)
GIB_PER_TRIAL = 4
MAX_AUTO_TRIALS = 8  # beyond this, trials on one GPU only queue behind each other
# what a worker hands back to the driver's observers: a fold's progress, not its data
FORWARDED_EVENTS = ("fold_started", "batch_finished", "epoch_finished")


class LocalExecutor:
    """The trials on this machine. One at a time (`trials_at_once` 1, the default) in
    this process, in job and fold order, the protocol's observers seeing every event as
    in `ichbench run`; or `trials_at_once` at a time in as many worker processes, each
    with `threads_per_trial` torch threads (default: this process's threads shared out),
    their folds' progress forwarded to the same observers. None chooses the count
    (`auto_trials_at_once`): 1 on the CPU, from the free device memory on CUDA."""

    device_label: str | None = None  # the runs record this process's device
    device = "auto"  # trials train on this process's device

    def __init__(self, trials_at_once: int | None = 1, *, threads_per_trial: int | None = None):
        check_trials_at_once(trials_at_once, "trials_at_once")
        if threads_per_trial is not None and threads_per_trial < 1:
            raise UsageError(f"threads_per_trial {threads_per_trial}: must be 1 or more")
        self.trials_at_once = trials_at_once
        self.threads_per_trial = threads_per_trial
        self.used: int | None = None  # the count the last `trials` ran with

    def trials(self, jobs: Sequence[Job]) -> Iterator[TrialResult]:
        total = sum(len(job.folds) for job in jobs)
        wanted = self.trials_at_once
        if wanted is None:
            wanted = auto_trials_at_once(jobs[0].protocol.device) if jobs else 1
        self.used = max(1, min(wanted, total))
        if self.used == 1:
            yield from self._one_by_one(jobs)
        else:
            yield from packed_trials(jobs, self.used, self._threads(self.used))

    def _one_by_one(self, jobs: Sequence[Job]) -> Iterator[TrialResult]:
        for i, job in enumerate(jobs):
            for fold in job.folds:
                try:
                    record, state = job.protocol.fold_trial(job.dataset, job.split, fold)
                except BaseException as exc:
                    tag(exc, i)
                    raise
                yield TrialResult(i, fold, record, state)

    def _threads(self, workers: int) -> int:
        if self.threads_per_trial is not None:
            return self.threads_per_trial
        import torch

        return max(1, torch.get_num_threads() // workers)

    def close(self) -> None:
        """Nothing to release: workers end with the trials that needed them."""


def check_trials_at_once(value: int | None, option: str) -> None:
    """A count of trials at once is None (chosen) or a positive integer."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UsageError(f"{option} {value}: expected a whole number of 1 or more")


def auto_trials_at_once(device) -> int:
    """How many trials share the device when the user does not say: 1 on the CPU (its
    cores already serve one trial's threads); on CUDA one per `GIB_PER_TRIAL` GiB of the
    device's free memory, at most `MAX_AUTO_TRIALS` and at most one per CPU core (each
    trial's process launches its own kernels)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    by_memory = int(free // (GIB_PER_TRIAL * 2**30))
    return max(1, min(by_memory, MAX_AUTO_TRIALS, os.cpu_count() or 1))


# --------------------------------------------------------------------------- packed


@dataclass(frozen=True)
class RemoteError:
    """An exception raised in a worker, in a form that always crosses back: its class,
    its arguments and attributes when they pickle, and the worker's traceback. An
    `IchbenchError` whose `__init__` takes other arguments than its message (such as
    `RunBusyError`) would not unpickle as itself; rebuilt from its class and `args`, it
    does, and still reads as the one line the worker raised."""

    cls: type
    args: tuple
    attrs: dict
    trace: str

    @classmethod
    def of(cls, exc: BaseException) -> RemoteError:
        attrs = dict(getattr(exc, "__dict__", {}))
        report = cls(type(exc), exc.args, attrs, traceback.format_exc())
        try:
            pickle.loads(pickle.dumps(report))
        except Exception:  # an argument or attribute that does not cross: keep the text
            report = cls(type(exc), (str(exc),), {}, report.trace)
            try:
                pickle.dumps(report)
            except Exception:  # a class that does not cross (defined in a function)
                message = f"{type(exc).__name__}: {exc}"
                report = cls(RuntimeError, (message,), {}, report.trace)
        return report

    def rebuild(self) -> BaseException:
        exc = self.cls.__new__(self.cls)
        exc.args = self.args
        for name, value in self.attrs.items():
            with contextlib.suppress(AttributeError):
                setattr(exc, name, value)
        exc.__cause__ = WorkerTraceback(self.trace)
        return exc


class WorkerTraceback(Exception):
    """The traceback of an exception raised in a worker process, shown with --debug."""

    def __str__(self) -> str:
        return "\n\n" + str(self.args[0]) if self.args else ""


def packed_trials(jobs: Sequence[Job], workers: int, threads: int) -> Iterator[TrialResult]:
    """The trials of `jobs` over `workers` spawned processes of `threads` torch threads
    each, yielded as they complete. An error in a trial comes back as itself (tagged
    with its job) and stops every worker; so do Ctrl-C and SIGTERM in this process, which
    the workers leave to it. A worker that dies (killed, out of memory) is an error naming
    the trial it held."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    tasks, results = context.Queue(), context.Queue()
    keys: dict[int, tuple[int, tuple[int, int]]] = {}
    env = {k: os.environ[k] for k in ENV_FOR_WORKERS if k in os.environ}
    for i, job in enumerate(jobs):
        common = local_spec_fields(job, threads, env)
        for fold in job.folds:
            keys[len(keys)] = (i, fold)
            tasks.put((len(keys) - 1, TrialSpec(fold=fold, **common)))
    for _ in range(workers):
        tasks.put(None)  # one stop sign per worker, after every task
    processes = [
        context.Process(target=worker_loop, args=(tasks, results), daemon=True)
        for _ in range(workers)
    ]
    held: dict[int, int] = {}  # worker pid -> task it is training
    try:
        for process in processes:
            process.start()
        left = set(keys)
        while left:
            try:
                task, what, payload = results.get(timeout=0.5)
            except queue.Empty:
                _check_alive(processes, held, keys, jobs)
                continue
            i, fold = keys[task]
            if what == "started":
                held[payload] = task
            elif what == "event":
                jobs[i].protocol.emit(payload)
            elif what == "error":
                exc = payload.rebuild()
                tag(exc, i)
                raise exc
            else:
                record, state_bytes, timings = payload
                left.discard(task)
                held = {pid: t for pid, t in held.items() if t != task}
                for name, seconds in timings.items():
                    jobs[i].protocol.timings[name] = (
                        jobs[i].protocol.timings.get(name, 0.0) + seconds
                    )
                yield TrialResult(i, fold, record, _load_state(state_bytes))
    finally:
        _stop(processes, (tasks, results))


def _check_alive(processes, held: dict[int, int], keys, jobs: Sequence[Job]) -> None:
    for process in processes:
        if process.exitcode not in (None, 0):
            task = held.get(process.pid)
            what = "a trial"
            exc = RuntimeError(f"A trial worker died (exit code {process.exitcode})")
            if task is not None:
                i, (outer, fold) = keys[task]
                what = f"run {jobs[i].run_id} fold {fold}" + (f" of outer {outer}" if outer else "")
                exc = RuntimeError(
                    f"The worker training {what} died (exit code {process.exitcode}: killed, "
                    "or out of memory); the run is left resumable"
                )
                tag(exc, i)
            raise exc


def _stop(processes, queues) -> None:
    """End the workers (at once: any trial still running is abandoned) and the queues."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        if process.pid is not None:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
    for q in queues:
        q.cancel_join_thread()  # never wait for a dead reader to drain what was put
        q.close()


def _load_state(data: bytes) -> dict:
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _state_bytes(state: dict) -> bytes:
    """A state dict as torch.save writes it: no shared memory or file descriptor per
    tensor to pass between processes, and the driver reads exactly the worker's bits."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def local_spec_fields(job: Job, threads: int, env: dict[str, str]) -> dict[str, Any]:
    """A local worker's trial: the driver's configuration on the driver's device and
    cache, checked there as on a Ray node."""
    config = job.protocol.cfg.as_dict()
    config["device"] = str(job.protocol.device)
    return {
        "config": config,
        "config_hash": job.protocol.cfg.hash,
        "dataset_hash": job.dataset.dataset_hash,
        "split_hash": job.split.hash,
        "pretrained": job.pretrained,
        "pretrained_source": job.pretrained_source,
        "threads": threads,
        "env": dict(env),
        "cache_dir": str(job.protocol.cache_dir),
    }


def worker_loop(tasks, results) -> None:
    """A packed trial worker: trains the tasks it takes until its stop sign. Ctrl-C is
    the driver's to handle (it stops the workers), so the worker ignores it; what a trial
    raises goes back as a `RemoteError`, the fold's weights as `torch.save` bytes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    prepared: dict[tuple, tuple] = {}
    current = {"task": -1}

    def forward(event: Event) -> None:
        if event.kind in FORWARDED_EVENTS:
            results.put((current["task"], "event", event))

    while True:
        item = tasks.get()
        if item is None:
            return
        task, spec = item
        current["task"] = task
        results.put((task, "started", os.getpid()))
        try:
            record, state, timings = local_trial(spec, prepared, forward)
            results.put((task, "done", (record, _state_bytes(state), timings)))
        except BaseException as exc:
            results.put((task, "error", RemoteError.of(exc)))
            return


def local_trial(
    spec: TrialSpec, prepared: dict, observer: Callable[[Event], None]
) -> tuple[FoldRecord, dict, dict[str, float]]:
    """One trial in a packed worker: its configuration's protocol, data and split made
    and checked once per worker (`prepare_trial`), kept in `prepared` for the next trial
    of the same configuration; returns the record, the weights and the seconds of
    training and evaluation it took."""
    key = (spec.config_hash, spec.dataset_hash, spec.cache_dir)
    if key not in prepared:
        prepared.clear()  # one configuration's data at a time on the device
        prepared[key] = prepare_trial(spec, observers=[observer])
    protocol, dataset, split = prepared[key]
    before = dict(protocol.timings)
    record, state = protocol.fold_trial(dataset, split, spec.fold)
    timings = {k: protocol.timings[k] - before.get(k, 0.0) for k in ("train", "eval")}
    return record, state, timings


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
    cache_dir: str | None = None  # a local worker's: the driver's own cache


def run_trial(spec: TrialSpec) -> tuple[FoldRecord, dict]:
    """A trial on a worker: load the data (one loader per node at a time), check that data,
    split and initial weights are the driver's, train the fold. It trains on the GPU Ray
    assigned when the configuration's device is cuda, else on the CPU."""
    protocol, dataset, split = prepare_trial(spec)
    return protocol.fold_trial(dataset, split, spec.fold)


def prepare_trial(
    spec: TrialSpec, observers: list | None = None
) -> tuple[RunProtocol, Any, NestedSplit]:
    """A worker's protocol, data and split for `spec`, each checked against the driver's:
    the configuration's hash, the dataset's, the split's, and where the initial weights
    come from. Sets the process's torch threads (CPU results depend on them) and the
    driver's environment first."""
    import torch

    from ichbench.config import RunConfig
    from ichbench.protocol import RunProtocol

    torch.set_num_threads(spec.threads)  # CPU results depend on it; make it the trial's CPUs
    for key, value in spec.env.items():
        os.environ[key] = value
    cache_dir = Path(spec.cache_dir) if spec.cache_dir else None
    protocol = RunProtocol(
        RunConfig.from_dict(spec.config), observers=observers, cache_dir=cache_dir
    )
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
    return protocol, dataset, split


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
    """Trials as Ray tasks: `gpus_per_trial` of a GPU each where the cluster has GPUs
    (unless `use_gpus` is false; a fraction packs several trials on one GPU, 0.25 four),
    and `cpus_per_trial` CPUs. A task lost with its worker or node is retried up
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
        gpus_per_trial: float = 1,
        max_retries: int = 3,
    ) -> None:
        check_gpus_per_trial(gpus_per_trial)
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
        self.gpus_per_trial = gpus_per_trial
        self.max_retries = max_retries
        self.env = {k: os.environ[k] for k in ENV_FOR_WORKERS if k in os.environ}

    @property
    def device(self) -> str:
        """What trials train on: 'cuda' when each gets a GPU, else 'cpu'."""
        return "cuda" if self.gpus > 0 else "cpu"

    def describe(self) -> str:
        per = f"{self.cpus_per_trial:g} CPU"
        if self.gpus > 0:
            per = f"{self.gpus_per_trial:g} GPU and {per}"
        return f"Ray cluster: {self._resources()}; {per} per trial"

    def task_options(self) -> dict[str, Any]:
        """Ray task options of a trial: its resources, and retries for lost workers only."""
        return {
            "max_retries": self.max_retries,
            "retry_exceptions": node_loss_errors(self.ray),
            "num_cpus": self.cpus_per_trial,
            "num_gpus": self.gpus_per_trial if self.gpus > 0 else 0,
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


def check_gpus_per_trial(value: float) -> None:
    """A Ray trial's share of a GPU: more than none, at most one whole GPU."""
    if not (isinstance(value, int | float) and 0 < value <= 1):
        raise UsageError(
            f"--gpus-per-trial {value}: expected a share of one GPU, more than 0 and at "
            "most 1 (0.25 packs four trials on each GPU)"
        )


def make_executor(
    name: str,
    address: str | None = None,
    *,
    device: str = "auto",
    cpus_per_trial: float = 1,
    trials_per_gpu: int | None = 1,
    gpus_per_trial: float | None = None,
) -> LocalExecutor | RayExecutor:
    """The executor named on the command line; `--device cpu` keeps Ray trials off GPUs.
    `trials_per_gpu` packs local trials (None: chosen, `auto_trials_at_once`);
    `gpus_per_trial` is Ray's share of a GPU per trial (None: one)."""
    check_trials_at_once(trials_per_gpu, "--trials-per-gpu")
    if name == "local":
        if address:
            raise UsageError("--address is only for --executor ray")
        if gpus_per_trial is not None:
            raise UsageError(
                "--gpus-per-trial is only for --executor ray; locally, --trials-per-gpu N "
                "packs N trials on the device"
            )
        return LocalExecutor(trials_per_gpu)
    if name == "ray":
        if not cpus_per_trial > 0:
            raise UsageError(f"--cpus-per-trial {cpus_per_trial}: must be positive")
        if trials_per_gpu not in (None, 1):
            raise UsageError(
                "--trials-per-gpu is only for --executor local; over Ray, --gpus-per-trial "
                f"{1 / trials_per_gpu:g} packs {trials_per_gpu} trials on each GPU"
            )
        share = 1.0 if gpus_per_trial is None else gpus_per_trial
        check_gpus_per_trial(share)
        executor = RayExecutor(
            address,
            use_gpus=device != "cpu",
            cpus_per_trial=cpus_per_trial,
            gpus_per_trial=share,
        )
        if device.startswith("cuda") and executor.gpus == 0:
            executor.close()
            raise UsageError(f"--device {device}: the Ray cluster has no GPUs")
        return executor
    raise UsageError(f"--executor {name!r}: expected local or ray")
