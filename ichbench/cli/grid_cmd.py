"""`ichbench grid`: run every configuration of a grid, skip what the store already has,
rank by mean validation F1 (the study's selection rule).

Trials, one per (configuration, fold), run on this machine (`--executor local`: one
configuration after the other in this process, or `--trials-per-gpu N` trials at once in
worker processes sharing the device) or over a Ray cluster (`--executor ray`, a GPU or
`--gpus-per-trial` of one each); either way this process alone writes the store.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ichbench.cli.common import err, out
from ichbench.cli.options import (
    AllowRandomInitOpt,
    AugmentAllOpt,
    BackboneAxisOpt,
    BatchSizeOpt,
    CompileOpt,
    ContextOpt,
    D,
    DataOpt,
    DbOpt,
    DeviceMemoryOpt,
    DeviceOpt,
    EnsembleOpt,
    EpochsOpt,
    ExcludeOpt,
    FoldsOpt,
    ImageSizeOpt,
    LrOpt,
    NameOpt,
    NoteOpt,
    OuterOpt,
    ParallelFoldsOpt,
    PatienceOpt,
    PatientRuleOpt,
    PresetOpt,
    PretrainedOpt,
    RepeatsOpt,
    RunTagOpt,
    ScheduleOpt,
    SeedOpt,
    SplitSeedOpt,
    Stage2Opt,
    StrategyAxisOpt,
    TestSizeOpt,
    TtaOpt,
    WarmupOpt,
    WeightAxisOpt,
    WeightDecayOpt,
    WeightsFileOpt,
    WindowOpt,
    experiment_config,
    given_options,
)
from ichbench.config import RunConfig, check_repeats, preset_for_device

EXECUTORS = ("local", "ray")


ExecutorOpt = Annotated[
    str,
    typer.Option(
        "--executor",
        help="local (this machine: one trial at a time, or --trials-per-gpu at once) or "
        "ray (trials over a Ray cluster, a GPU or --gpus-per-trial of one each where it has "
        "GPUs; needs the ray extra).",
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="With --executor ray: the cluster to join, 'auto' (started with `ray "
        "start`) or HOST:PORT; default: a local Ray instance.",
    ),
]
TrialsPerGpuOpt = Annotated[
    int | None,
    typer.Option(
        "--trials-per-gpu",
        help="With --executor local: (configuration, fold) trials trained at once on this "
        "machine's device, each in its own worker process, each with the results it has "
        "alone. Default: 1 on the CPU; on CUDA one per 4 GiB of free device memory, at most "
        "8 and at most the CPU cores.",
    ),
]
GpusPerTrialOpt = Annotated[
    float | None,
    typer.Option(
        "--gpus-per-trial",
        help="With --executor ray: each trial's share of a GPU, more than 0 and at most 1 "
        "(0.25 packs four trials on every GPU). Default: 1.",
    ),
]
CpusOpt = Annotated[
    float,
    typer.Option(
        "--cpus-per-trial", help="With --executor ray: CPUs (and torch threads) each trial takes."
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="A grid TOML file, e.g. benchmarks/paper_grid.toml. Its axes add to the "
        "options'; its [run] table sets run options by configuration name (exclude, "
        "batch_size, ...), typed as the options are. An option given on the command line "
        "wins over [run]; [run] wins over the options' defaults. [run] strategies, weights "
        "or backbone together with an axis of the same option is an error.",
    ),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="List the configurations only.")]


# the options whose configuration field has another name (see `experiment_config`)
OPTION_FIELDS = {"window": "windows", "weights": "weights_file"}


def _given(ctx: typer.Context) -> set[str]:
    """The configuration fields of the options typed on the command line, which win over
    a grid file's [run] table (a default does not)."""
    return {OPTION_FIELDS.get(name, name) for name in given_options(ctx)}


def register(app: typer.Typer) -> None:
    @app.command()
    def grid(
        ctx: typer.Context,
        strategy: StrategyAxisOpt = [],  # noqa: B006 - typer reads, never mutates, the default
        weight: WeightAxisOpt = [],  # noqa: B006
        backbone: BackboneAxisOpt = [],  # noqa: B006
        config: ConfigOpt = None,
        data: DataOpt = D.data,
        ensemble: EnsembleOpt = None,
        patient_rule: PatientRuleOpt = None,
        folds: FoldsOpt = D.folds,
        test_size: TestSizeOpt = D.test_size,
        outer: OuterOpt = D.outer,
        repeats: RepeatsOpt = D.repeats,
        epochs: EpochsOpt = None,
        batch_size: BatchSizeOpt = None,
        lr: LrOpt = None,
        patience: PatienceOpt = None,
        image_size: ImageSizeOpt = None,
        window: WindowOpt = None,
        context: ContextOpt = None,
        schedule: ScheduleOpt = None,
        warmup: WarmupOpt = None,
        weight_decay: WeightDecayOpt = None,
        augment_all: AugmentAllOpt = None,
        tta: TtaOpt = None,
        stage2: Stage2Opt = None,
        preset: PresetOpt = D.preset,
        seed: SeedOpt = D.seed,
        split_seed: SplitSeedOpt = None,
        weights: WeightsFileOpt = None,
        pretrained: PretrainedOpt = None,
        allow_random_init: AllowRandomInitOpt = False,
        exclude: ExcludeOpt = D.exclude,
        device: DeviceOpt = D.device,
        compile: CompileOpt = None,
        device_memory: DeviceMemoryOpt = None,
        db: DbOpt = None,
        executor: ExecutorOpt = "local",
        address: AddressOpt = None,
        cpus_per_trial: CpusOpt = 1.0,
        trials_per_gpu: TrialsPerGpuOpt = None,
        parallel_folds: ParallelFoldsOpt = None,
        gpus_per_trial: GpusPerTrialOpt = None,
        dry_run: DryRunOpt = False,
        name: NameOpt = None,
        tag: RunTagOpt = [],  # noqa: B006
        note: NoteOpt = None,
    ) -> None:
        """Run the cartesian product of the given options; rank by mean validation F1."""
        from ichbench.cli.plugins_cmd import print_plugin_warnings
        from ichbench.errors import UsageError
        from ichbench.executors import (
            auto_trials_at_once,
            check_gpus_per_trial,
            check_trials_at_once,
            import_ray,
            make_executor,
        )
        from ichbench.grid import Grid, axes_from_options, base_config, load_toml
        from ichbench.paths import default_db
        from ichbench.store import Store

        if executor not in EXECUTORS:
            raise UsageError(f"--executor {executor!r}: expected {' or '.join(EXECUTORS)}")
        if address and executor != "ray":
            raise UsageError("--address is only for --executor ray")
        check_trials_at_once(trials_per_gpu, "--trials-per-gpu")
        if parallel_folds is not None:  # a run's option: in a grid, trials are folds too
            if trials_per_gpu not in (None, parallel_folds):
                raise UsageError(
                    f"--parallel-folds {parallel_folds} and --trials-per-gpu {trials_per_gpu}: "
                    "in a grid both count the trials trained at once; give one"
                )
            trials_per_gpu = parallel_folds
        if gpus_per_trial is not None:
            check_gpus_per_trial(gpus_per_trial)
            if executor != "ray":
                raise UsageError("--gpus-per-trial is only for --executor ray")
        if trials_per_gpu is not None and executor != "local":
            raise UsageError("--trials-per-gpu is only for --executor local")
        if executor == "ray":
            import_ray()  # fail before any work when the extra is missing
        axes = axes_from_options(strategy, weight, backbone)
        fixed: dict = {}
        if config:
            file_axes, fixed = load_toml(config)
            axes += file_axes
        if not axes:
            raise UsageError("No grid axes: give --strategy/--weight/--backbone lists or --config")
        base = experiment_config(ctx.params)
        base = base_config(base, fixed, explicit=_given(ctx), axes=axes, source=config)
        plan = Grid(axes=axes, base=base)
        check_repeats(repeats, base.seed)
        configs = [replace(c, seed=c.seed + i) for c in plan.configs() for i in range(repeats)]
        err.print(f"Grid [bold]{plan.grid_id}[/]: {len(configs)} configuration(s)")
        _check_all(configs, allow_random_init)  # a dry run says what would fail, too
        if dry_run:
            for cfg in configs:
                out.print(" ".join(_describe(cfg)))
            return
        print_plugin_warnings()
        store = db or default_db()  # opened once the inputs are known to be good
        packed = trials_per_gpu
        if executor == "local" and packed is None:
            from ichbench.device import resolve_device

            packed = auto_trials_at_once(resolve_device(device))
        trials = make_executor(
            executor,
            address,
            device=device,
            cpus_per_trial=cpus_per_trial,
            trials_per_gpu=packed if executor == "local" else None,
            gpus_per_trial=gpus_per_trial,
        )
        labels = {"name": name, "tags": tag, "note": note, "allow_random_init": allow_random_init}
        try:
            if executor == "local" and packed > 1:
                err.print(f"Packed: {packed} trials at once on this machine's device")
                _run_distributed(trials, configs, store, plan.grid_id, **labels)
            elif executor == "local":
                _run_local(trials, configs, store, plan.grid_id, **labels)
            else:
                configs = _for_cluster(configs, trials.device)
                _check_all(configs, allow_random_init)
                err.print(trials.describe())
                _run_distributed(trials, configs, store, plan.grid_id, **labels)
        finally:
            trials.close()
        _print_ranking(Store(store, create=False), plan.grid_id, configs)
        if any(cfg.outer > 1 for cfg in configs):
            _select_honestly(Store(store), plan.grid_id)


def _check_all(configs: list[RunConfig], allow_random_init: bool = False) -> None:
    """Resolve every configuration and create its plugins before anything runs, so a bad
    value anywhere in the grid (pretrained weights asked for and missing among them)
    fails before the store is created or touched."""
    from ichbench.protocol import RunProtocol

    for cfg in configs:
        RunProtocol(cfg, allow_random_init=allow_random_init).check_weights_found()


def _for_cluster(configs: list[RunConfig], trial_device: str) -> list[RunConfig]:
    """The driver trains nothing: its own device is the CPU; `--preset auto` follows the
    device the trials get."""
    return [
        replace(cfg, preset=preset_for_device(cfg.preset, trial_device), device="cpu")
        for cfg in configs
    ]


def _run_local(
    executor,
    configs: list[RunConfig],
    store,
    grid_id: str,
    *,
    allow_random_init: bool = False,
    **labels,
) -> None:
    """One configuration after the other, with the progress bars of `ichbench run`."""
    from ichbench.cli.progress import RunProgress
    from ichbench.lifecycle import Lifecycle

    lifecycle = Lifecycle(store, grid_id=grid_id, device_label=executor.device_label, **labels)
    for i, cfg in enumerate(configs, start=1):
        label = f"[{i}/{len(configs)}] {' '.join(_describe(cfg))}"
        with RunProgress() as progress:
            job = _plan(lifecycle, cfg, progress, label, allow_random_init)
            if job is None:
                continue
            err.print(label)
            for _ in lifecycle.drive([job], executor):
                pass


def _plan(lifecycle, cfg: RunConfig, progress, label: str, allow_random_init: bool = False):
    """The configuration's job, or None, said on stderr, when it has nothing to run here:
    finished already, or being run by another live process."""
    from ichbench.jobs import Job
    from ichbench.protocol import RunProtocol

    protocol = RunProtocol(cfg, observers=[progress], allow_random_init=allow_random_init)
    job = lifecycle.open(protocol, reuse=True)
    if isinstance(job, Job):
        return job
    reason = f"already finished as {job}" if isinstance(job, str) else f"skipped: {job.error}"
    err.print(f"{label}: {reason}")
    return None


def _run_distributed(
    executor,
    configs: list[RunConfig],
    store,
    grid_id: str,
    *,
    allow_random_init: bool = False,
    **run_labels,
) -> None:
    """Every configuration's run prepared here first, then all their trials in flight at
    once (over a cluster, or packed on this machine's device); a line per fold and per run
    as results come back."""
    from ichbench.cli.progress import GridProgress, fold_line, fold_name
    from ichbench.events import FoldFinished
    from ichbench.lifecycle import Lifecycle

    labels = [" ".join(_describe(cfg)) for cfg in configs]
    lifecycle = Lifecycle(store, grid_id=grid_id, device_label=executor.device_label, **run_labels)
    with GridProgress() as progress:
        jobs, job_labels = [], []
        try:
            for i, cfg in enumerate(configs):
                job = _plan(
                    lifecycle,
                    cfg,
                    progress,
                    f"[{i + 1}/{len(configs)}] {labels[i]}",
                    allow_random_init,
                )
                if job is None:
                    continue
                jobs.append(job)
                job_labels.append(labels[i])
        except BaseException:
            lifecycle.abandon(jobs)  # runs already opened are left resumable, not `running`
            raise
        progress.start_trials(sum(len(j.folds) for j in jobs))

        def on_trial(index: int, record) -> None:
            test_f1 = next(
                (m.f1 for m in record.metrics if m.split == "test" and m.scope == "slice"), None
            )
            event = FoldFinished(
                fold=record.fold,
                threshold=record.threshold,
                val_f1=float(record.curve.max()),
                test_f1=test_f1,
                wall_s=record.wall_s,
                outer=record.outer,
            )
            name = fold_name(event, len(jobs[index].split))
            progress.trial_done(f"{job_labels[index]} {name}: {fold_line(event)}")

        for result in lifecycle.drive(jobs, executor, on_trial=on_trial):
            err.print(f"Finished [bold]{result.run_id}[/]: {threshold_text(result.threshold)}")


def threshold_text(threshold: float) -> str:
    """The run's voting threshold, or that each outer fold has its own."""
    if threshold != threshold:  # NaN: pooled over outer folds
        return "each outer fold at its own voting threshold"
    return f"voting threshold {threshold:.2f}"


def _describe(cfg: RunConfig) -> list[str]:
    parts = [f"--strategy {s}" for s in cfg.strategies] + [f"--weight {w}" for w in cfg.weights]
    if cfg.backbone:
        parts.append(f"--backbone {cfg.backbone}")
    return parts or ["(no strategy)"]


def _print_ranking(store, grid_id: str, configs) -> None:
    from ichbench.cli import render
    from ichbench.views import Row, TableData
    from ichbench.views.metrics import val_f1_cell
    from ichbench.views.paired import indistinguishable_from_best

    rows = [r for r in store.list_runs(grid_id=grid_id) if r["status"] == "finished"]
    rows.sort(key=lambda r: -(r["mean_val_f1"] or 0.0))
    near = indistinguishable_from_best(store, rows)
    table = TableData(
        id="ranking",
        title=f"Grid {grid_id}: ranked by mean validation F1 over folds (± sd)",
        columns=[
            "Rank",
            "Run",
            "Strategies",
            "Backbone",
            "Mean val F1",
            "≈ best",
            "Vote test F1",
            "Patient test F1",
        ],
        rows=[
            Row(
                [
                    str(rank),
                    row["run_id"],
                    ", ".join(row["strategies"] or []) or "none",
                    str(row["backbone"]),
                    val_f1_cell(row),
                    {True: "yes", False: "no"}.get(near.get(row["run_id"]), "–"),
                    _fmt(row["slice_f1"]),
                    _fmt(row["patient_f1"]),
                ]
            )
            for rank, row in enumerate(rows, start=1)
        ],
        numeric_from=4,
        note="≈ best: the out-of-fold validation F1 cannot be told from the best run's "
        "(paired bootstrap over patients, 95% CI of the difference contains 0).",
    )
    known = [r["run_id"] for r in store.list_runs()]
    whole = f"`ichbench runs --grid {grid_id} --wide` shows them whole"
    render.emit(out, render.rich_table(table, known_ids=known, whole_ids=whole))


def _select_honestly(store, grid_id: str) -> None:
    """With outer folds: the configuration picked in each outer fold by its validation F1
    alone, scored on that outer fold's test patients; stored and shown."""
    from collections import Counter

    from ichbench.selection import candidates_from, picks, pooled_choice
    from ichbench.views.metrics import metric_cell

    runs = [r for r in store.list_runs(grid_id=grid_id) if r["status"] == "finished"]
    candidates = candidates_from(store, runs)
    chosen = picks(candidates)
    if not chosen:
        return
    metrics = pooled_choice(candidates, chosen)
    val = {c.run_id: c.outers for c in candidates}
    left = len(runs) - len(candidates)
    if left:
        err.print(
            f"{left} finished run(s) of the grid have other outer folds (another seed): left "
            "out of the selection, which compares configurations on the same patients"
        )
    store.record_selection(
        grid_id,
        [(o, run, val[run][o].mean_val_f1) for o, run in sorted(chosen.items())],
        metrics,
    )
    _, stored = store.grid_selection(grid_id)
    table = Table(
        title="Grid search + pick the best, scored honestly: each outer fold picks by "
        "validation F1 alone, tested on its own patients",
        caption="Pooled over the outer folds, every patient once; 95% CIs resample patients.",
    )
    for col in ("scope", "sensitivity", "specificity", "F1", "AUC", "n"):
        table.add_column(col)
    for m in stored:
        table.add_row(
            m["scope"],
            *[metric_cell(m, k) for k in ("sensitivity", "specificity", "f1", "auc")],
            str(m["n"]),
        )
    out.print(table)
    labels = {r["run_id"]: ", ".join(r["strategies"] or []) or "none" for r in runs}
    counts = Counter(chosen.values())
    out.print(
        "Picked: "
        + "; ".join(
            f"{labels[run]} ({run}) in {n} of {len(chosen)} outer folds"
            for run, n in counts.most_common()
        ),
        highlight=False,
    )


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"
