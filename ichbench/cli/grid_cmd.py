"""`ichbench grid`: run every configuration of a grid, skip what the store already has,
rank by mean validation F1 (the study's selection rule).

Trials, one per (configuration, fold), run in this process (`--executor local`, one
configuration after the other) or over a Ray cluster (`--executor ray`); either way this
process alone writes the store.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ichbench.cli.common import err, out
from ichbench.cli.progress import Bars
from ichbench.config import RunConfig
from ichbench.events import Event

EXECUTORS = ("local", "ray")


def register(app: typer.Typer) -> None:
    @app.command()
    def grid(
        strategy: list[str] = typer.Option([], "--strategy", help="One axis per option; "
                                           "commas list its values: augment:1,2,3.3 or "
                                           "none,undersample:0.5."),
        weight: list[str] = typer.Option([], "--weight", help="One axis per option: "
                                         "ich:2,4,6,8,10 or healthy:1,0.5."),
        backbone: list[str] = typer.Option([], "--backbone", help="An axis of backbones: "
                                           "resnet50,vgg16,mobilenetv2,inception_v3."),
        config: Path = typer.Option(None, "--config", help="A grid TOML file, e.g. "
                                    "benchmarks/paper_grid.toml (its axes add to the options')."),
        data: str = typer.Option("synthetic", "--data"),
        preset: str = typer.Option("auto", "--preset", help="auto: paper where trials get a "
                                   "GPU, quick otherwise."),
        epochs: int = typer.Option(None, "--epochs"),
        image_size: int = typer.Option(None, "--image-size"),
        folds: int = typer.Option(5, "--folds"),
        seed: int = typer.Option(0, "--seed"),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]; with "
                                   "--executor ray, cpu keeps trials off the cluster's GPUs."),
        compile: bool = typer.Option(False, "--compile/--no-compile", help="Train through "
                                     "torch.compile (see `ichbench run --help`)."),
        db: Path = typer.Option(None, "--db"),
        executor: str = typer.Option("local", "--executor", help="local (this process, one "
                                     "trial at a time) or ray (trials over a Ray cluster, one "
                                     "GPU each where it has GPUs; needs the ray extra)."),
        address: str = typer.Option(None, "--address", help="With --executor ray: the cluster "
                                    "to join, 'auto' (started with `ray start`) or HOST:PORT; "
                                    "default: a local Ray instance."),
        cpus_per_trial: float = typer.Option(1.0, "--cpus-per-trial", help="With --executor "
                                             "ray: CPUs (and torch threads) each trial takes."),
        dry_run: bool = typer.Option(False, "--dry-run", help="List the configurations only."),
    ) -> None:
        """Run the cartesian product of the given options; rank by mean validation F1."""
        from ichbench.errors import UsageError
        from ichbench.executors import import_ray, make_executor
        from ichbench.grid import Grid, axes_from_options, load_toml
        from ichbench.paths import default_db
        from ichbench.store import Store

        if executor not in EXECUTORS:
            raise UsageError(f"--executor {executor!r}: expected {' or '.join(EXECUTORS)}")
        if address and executor != "ray":
            raise UsageError("--address is only for --executor ray")
        if executor == "ray":
            import_ray()  # fail before any work when the extra is missing
        axes = axes_from_options(strategy, weight, backbone)
        fixed: dict = {}
        if config:
            file_axes, fixed = load_toml(config)
            axes += file_axes
        if not axes:
            raise UsageError("No grid axes: give --strategy/--weight/--backbone lists or --config")
        base = RunConfig(data=data, preset=preset, epochs=epochs, image_size=image_size,
                         folds=folds, seed=seed, device=device, compile=compile)
        base = replace(base, **fixed)
        plan = Grid(axes=axes, base=base)
        configs = plan.configs()
        err.print(f"Grid [bold]{plan.grid_id}[/]: {len(configs)} configuration(s)")
        if dry_run:
            for cfg in configs:
                out.print(" ".join(_describe(cfg)))
            return
        store = Store(db or default_db())
        trials = make_executor(executor, address, device=device, cpus_per_trial=cpus_per_trial)
        try:
            if executor == "local":
                _run_local(trials, configs, store, plan.grid_id)
            else:
                err.print(trials.describe())
                _run_distributed(trials, configs, store, plan.grid_id)
        finally:
            trials.close()
        _print_ranking(store, plan.grid_id, configs)


def _run_local(executor, configs: list[RunConfig], store, grid_id: str) -> None:
    """One configuration after the other, with the progress bars of `ichbench run`."""
    from ichbench.cli.progress import RunProgress
    from ichbench.executors import run_jobs

    for i, cfg in enumerate(configs, start=1):
        label = f"[{i}/{len(configs)}] {' '.join(_describe(cfg))}"
        with RunProgress() as progress:
            job = _plan(executor, cfg, store, grid_id, progress, label)
            if job is None:
                continue
            err.print(label)
            for _ in run_jobs([job], executor):
                pass


def _plan(executor, cfg: RunConfig, store, grid_id: str, progress, label: str):
    """The configuration's job, or None, said on stderr, when it has nothing to run here:
    finished already, or being run by another live process."""
    from ichbench.executors import Job, plan_job

    job = plan_job(executor.runner(cfg, store, observers=[progress], grid_id=grid_id))
    if isinstance(job, Job):
        return job
    reason = f"already finished as {job}" if isinstance(job, str) else f"skipped: {job.error}"
    err.print(f"{label}: {reason}")
    return None


def _run_distributed(executor, configs: list[RunConfig], store, grid_id: str) -> None:
    """Every configuration's run prepared here first, then all their trials in flight at
    once; a line per fold and per run as results come back."""
    from ichbench.executors import abandon, run_jobs

    # the driver trains nothing: its own device is the CPU, the trials' is the cluster's
    configs = [replace(_preset_for(cfg, executor.device), device="cpu") for cfg in configs]
    labels = [" ".join(_describe(cfg)) for cfg in configs]
    with _GridProgress() as progress:
        jobs, job_labels = [], []
        try:
            for i, cfg in enumerate(configs):
                job = _plan(executor, cfg, store, grid_id, progress,
                            f"[{i + 1}/{len(configs)}] {labels[i]}")
                if job is None:
                    continue
                jobs.append(job)
                job_labels.append(labels[i])
        except BaseException:
            abandon(jobs)  # runs already opened are left resumable, not `running`
            raise
        progress.start_trials(sum(len(j.folds) for j in jobs))

        def on_trial(index: int, record) -> None:
            test_f1 = next((m.f1 for m in record.metrics
                            if m.split == "test" and m.scope == "slice"), None)
            progress.trial_done(f"{job_labels[index]} fold {record.fold}: threshold "
                                f"{record.threshold:.2f}, val F1 {float(record.curve.max()):.3f}, "
                                f"test F1 {_fmt(test_f1)} ({record.wall_s:.1f} s)")

        for result in run_jobs(jobs, executor, on_trial=on_trial):
            err.print(f"Finished [bold]{result.run_id}[/]: voting threshold "
                      f"{result.threshold:.2f}")


def _preset_for(cfg: RunConfig, trial_device: str) -> RunConfig:
    """`--preset auto` follows the device the trials get, not the driver's."""
    if cfg.preset != "auto":
        return cfg
    return replace(cfg, preset="paper" if trial_device == "cuda" else "quick")


class _GridProgress(Bars):
    """Preprocessing and trial bars on stderr for a distributed grid."""

    def __init__(self) -> None:
        super().__init__(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TimeElapsedColumn())
        self.trial_task = None

    def __call__(self, event: Event) -> None:
        d = event.data
        if self.shared(event):
            return
        if event.kind == "run_started" and d["resumed"]:
            err.print(f"Resuming [bold]{d['run_id']}[/] (folds {d['finished']} kept)")

    def start_trials(self, total: int) -> None:
        self.trial_task = self.progress.add_task("Trials", total=total)

    def trial_done(self, line: str) -> None:
        err.print(f"  {line}")
        self.progress.advance(self.trial_task)


def _describe(cfg: RunConfig) -> list[str]:
    parts = [f"--strategy {s}" for s in cfg.strategies] + [f"--weight {w}" for w in cfg.weights]
    if cfg.backbone:
        parts.append(f"--backbone {cfg.backbone}")
    return parts or ["(no strategy)"]


def _print_ranking(store, grid_id: str, configs) -> None:
    rows = [r for r in store.list_runs(grid_id=grid_id) if r["status"] == "finished"]
    rows.sort(key=lambda r: -(r["mean_val_f1"] or 0.0))
    table = Table(title=f"Grid {grid_id}: ranked by mean validation F1 over folds")
    for col in ("rank", "run", "strategies", "backbone", "mean val F1", "vote test F1",
                "patient test F1"):
        table.add_column(col)
    for rank, row in enumerate(rows, start=1):
        table.add_row(str(rank), row["run_id"], ", ".join(row["strategies"] or []) or "none",
                      row["backbone"], _fmt(row["mean_val_f1"]), _fmt(row["slice_f1"]),
                      _fmt(row["patient_f1"]))
    out.print(table)


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"
