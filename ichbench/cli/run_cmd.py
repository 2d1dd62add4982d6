"""`ichbench run`: the protocol on one configuration (a grid of one)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from ichbench.cli.common import complete_run_ids, emit_json, err, out, said
from ichbench.cli.options import (
    AllowRandomInitOpt,
    AugmentAllOpt,
    BackboneOpt,
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
    StrategyOpt,
    TestSizeOpt,
    TtaOpt,
    WarmupOpt,
    WeightDecayOpt,
    WeightOpt,
    WeightsFileOpt,
    WindowOpt,
    experiment_config,
    given_options,
)
from ichbench.config import EXECUTION_ONLY, RunConfig, check_repeats
from ichbench.errors import UsageError

ResumeOpt = Annotated[
    str | None,
    typer.Option(
        "--resume",
        help="Finish an unfinished run: finished folds are kept. The run's stored "
        "configuration is used; only --db, --compile/--no-compile and --device-memory "
        "apply.",
    ),
]


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        ctx: typer.Context,
        data: DataOpt = D.data,
        backbone: BackboneOpt = None,
        strategy: StrategyOpt = [],  # noqa: B006 - typer reads, never mutates, the default
        weight: WeightOpt = [],  # noqa: B006
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
        parallel_folds: ParallelFoldsOpt = None,
        db: DbOpt = None,
        resume: ResumeOpt = None,
        from_run: FromOpt = None,
        dry_run: DryRunOpt = False,
        as_json: RunJsonOpt = False,
        name: NameOpt = None,
        tag: RunTagOpt = [],  # noqa: B006
        note: NoteOpt = None,
    ) -> None:
        """Run the 5-fold protocol with the voting threshold and store every result."""
        from ichbench.cli.render import print_run_tables
        from ichbench.paths import default_db
        from ichbench.store import Store
        from ichbench.store.ingest import ingest_run_records
        from ichbench.store.journal import Journal

        db_path = db or default_db()
        store = db_path  # opened once the inputs are known to be good
        if resume is not None and from_run is not None:
            raise UsageError(
                "--resume and --from are exclusive: --resume finishes a run, --from starts "
                "a new one with a stored configuration"
            )
        if resume is not None:
            _check_resume(ctx, resume)
            store = Store(db_path, create=False)
            ingest_run_records(store, Journal(db_path))  # a run made while the store was busy
            run = store.get_run(resume)
            config, resume = RunConfig.from_dict(run["config"]), run["run_id"]
            if compile is not None:  # a setting of the machine: a resumed run may change it
                config = replace(config, compile=compile)
            if device_memory is not None:
                config = replace(config, device_memory=device_memory)
        else:
            config = experiment_config(
                ctx.params, backbone=backbone, strategies=strategy, weight_specs=weight
            )
            if from_run is not None:
                store = Store(db_path, create=False)
                config = _from_stored(ctx, store.get_run(from_run), config)
            check_repeats(repeats, config.seed)
            if dry_run:
                _dry_run(config, allow_random_init)
                return
            if repeats > 1:
                if as_json:
                    raise UsageError("--json with --repeats: give --json one run at a time")
                _run_repeats(
                    config,
                    repeats,
                    store,
                    name=name,
                    tags=tag,
                    note=note,
                    allow_random_init=allow_random_init,
                    parallel_folds=parallel_folds,
                )
                return
        result, lifecycle = execute(
            config,
            store,
            resume=resume,
            name=name,
            tags=tag,
            note=note,
            allow_random_init=allow_random_init,
            parallel_folds=parallel_folds,
        )
        if not lifecycle.pending(result.run_id).empty:
            err.print(
                f"Run [bold]{result.run_id}[/] finished; its results are on disk in "
                f"{lifecycle.journal.folder(result.run_id)}"
            )
            return
        if as_json:  # the id and the headline vote's metrics; progress stays on stderr
            rows = lifecycle.store.run_metrics(result.run_id)
            emit_json({"run_id": result.run_id, "vote": [r for r in rows if r["model"] == "vote"]})
        else:
            print_run_tables(out, lifecycle.store, result.run_id)
        err.print(f"Stored as run [bold]{result.run_id}[/] in {lifecycle.store.path}")


RunJsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the run id and its vote's metrics as JSON on stdout (progress stays on "
        "stderr).",
    ),
]
FromOpt = Annotated[
    str | None,
    typer.Option(
        "--from",
        metavar="RUN",
        help="A new run with the stored configuration of RUN (an id, or a unique prefix or "
        "suffix of one); the options given replace the settings they name.",
        autocompletion=complete_run_ids,
    ),
]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print the resolved configuration (and whether pretrained weights are found) "
        "and exit: no data loaded, nothing trained or stored.",
    ),
]


def _dry_run(config: RunConfig, allow_random_init: bool) -> None:
    """The resolved configuration with the first fold's network built (whether its
    weights are found), and nothing else: no data, no store. Pretrained weights asked for
    and missing are the error the run would stop with."""
    from ichbench.cli.resolved import resolved_lines
    from ichbench.protocol import RunProtocol

    protocol = RunProtocol(config, allow_random_init=allow_random_init)
    built = protocol.build_model(0, protocol.configured_in_chans())
    pairs = resolved_lines(config, protocol, built)
    print_pairs(out, "Resolved configuration (dry run: nothing trained)", pairs)
    protocol.check_pretrained(built)


# options of `run` that are not settings of the configuration, and the settings whose
# option has another name
NOT_SETTINGS = (
    "db",
    "resume",
    "from_run",
    "dry_run",
    "as_json",
    "name",
    "tag",
    "note",
    "repeats",
    "allow_random_init",
)
OPTION_FIELDS = {
    "window": "windows",
    "weights": "weights_file",
    "strategy": "strategies",
    "weight": "weights",
}


def _from_stored(ctx: typer.Context, run: dict, given: RunConfig) -> RunConfig:
    """`--from RUN`: the run's stored, resolved configuration, with the settings of the
    options typed now in place of its own. Where the run trains (device, compile) is this
    invocation's. A preset cannot apply: it fills settings, and a stored configuration
    has them all."""
    typed = [name for name in given_options(ctx) if name not in NOT_SETTINGS]
    if "preset" in typed:
        raise UsageError(
            f"--preset with --from {run['run_id']}: the stored configuration already has "
            "every setting a preset fills; give the settings to change instead"
        )
    fresh = given.as_dict()
    merged = dict(run["config"])
    for name in typed:
        merged[OPTION_FIELDS.get(name, name)] = fresh[OPTION_FIELDS.get(name, name)]
    for name in EXECUTION_ONLY:
        merged[name] = fresh[name]
    if "weights" in typed:
        merged["weights_digest"] = None  # recomputed from the file given now
    return RunConfig.from_dict(merged)


def print_pairs(console, title: str, pairs: list[tuple[str, str]]) -> None:
    """Field / value lines under a title, wrapped to the console's width."""
    from rich.table import Table

    from ichbench.cli.render import emit

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for name, value in pairs:
        grid.add_row(name, value)
    console.print(f"[bold]{title}[/]")
    emit(console, grid)


RESUME_OPTIONS = (
    "db",
    "compile",
    "device_memory",
    "resume",
    "as_json",
    "allow_random_init",
    "parallel_folds",
)  # what a resumed run may be given


def _check_resume(ctx: typer.Context, resume: str) -> None:
    """A resumed run trains with its stored configuration: an empty id (an unset shell
    variable) or an option that would change the configuration is an error, never
    silently ignored."""
    from ichbench.errors import UsageError

    if not resume.strip():
        raise UsageError("--resume '': expected a run id (or a unique prefix of one)")
    typed = set(given_options(ctx)) - set(RESUME_OPTIONS)
    given = [p.opts[0] for p in ctx.command.params if p.name in typed]
    if given:
        raise UsageError(
            f"--resume {resume} continues the run with its stored configuration; "
            f"{', '.join(given)} cannot change it (start a new run instead)"
        )


def _run_repeats(config: RunConfig, repeats: int, db_path, **labels) -> None:
    """The run again with seeds SEED … SEED+R−1, every one checked before the first
    starts; they share a grid id (`repeats-…`), so SQL can group them."""
    import hashlib

    from ichbench.cli.render import print_repeats
    from ichbench.protocol import RunProtocol

    configs = [replace(config, seed=config.seed + i) for i in range(repeats)]
    for cfg in configs:
        RunProtocol(cfg)  # a value no repeat can use fails before the store is touched
    group = (
        "repeats-"
        + hashlib.sha256(
            f"{config.hash}:{repeats}:{datetime.now(timezone.utc).isoformat()}".encode()
        ).hexdigest()[:10]
    )
    run_ids = []
    for i, cfg in enumerate(configs, start=1):
        err.print(f"[bold]Repeat {i}/{repeats}[/] (seed {cfg.seed})")
        result, lifecycle = execute(cfg, db_path, grid_id=group, **labels)
        run_ids.append(result.run_id)
    print_repeats(out, lifecycle.store, run_ids)
    err.print(f"Stored as {repeats} runs with grid id [bold]{group}[/] in {lifecycle.store.path}")


def execute(
    config: RunConfig,
    store,
    *,
    resume: str | None = None,
    grid_id: str | None = None,
    name: str | None = None,
    tags: list[str] | tuple[str, ...] = (),
    note: str | None = None,
    allow_random_init: bool = False,
    parallel_folds: int | None = None,
):
    """Run one configuration with progress bars; returns the result and its lifecycle.

    `store` may be a path: the store is then opened only after the configuration, the
    plugins, the dataset and the split have been checked, so bad input never creates or
    touches it.
    """
    from ichbench.cli.plugins_cmd import print_plugin_warnings
    from ichbench.cli.progress import RunProgress
    from ichbench.errors import ExitCode
    from ichbench.executors import LocalExecutor
    from ichbench.lifecycle import Lifecycle
    from ichbench.paths import default_db
    from ichbench.protocol import RunProtocol

    print_plugin_warnings()
    with RunProgress() as progress:
        protocol = RunProtocol(config, observers=[progress], allow_random_init=allow_random_init)
        protocol.check_weights_found()  # before the store is created or touched
        if resume is None:
            from ichbench.cli.resolved import resolved_lines

            print_pairs(err, "Resolved configuration", resolved_lines(config, protocol))
        lifecycle = Lifecycle(store, grid_id=grid_id, name=name, tags=tags, note=note)
        job = lifecycle.open(protocol, resume=resume)
        try:
            (result,) = lifecycle.drive([job], LocalExecutor(trials_at_once=parallel_folds))
        except KeyboardInterrupt:  # marked interrupted: say how to go on, once bars are gone
            result = None
    if result is None:
        where = "" if Path(lifecycle.journal.store_path) == Path(default_db()) else " --db "
        where += str(lifecycle.journal.store_path) if where else ""
        err.print(
            f"[yellow]Interrupted:[/] resume with `ichbench run --resume {job.run_id}{where}`"
        )
        said.interruption = True
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    return result, lifecycle
