"""`ichbench grid`: run every configuration of a grid, skip what the store already has,
rank by mean validation F1 (the study's selection rule)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.table import Table

from ichbench.cli.common import err, out
from ichbench.config import RunConfig


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
        preset: str = typer.Option("auto", "--preset"),
        epochs: int = typer.Option(None, "--epochs"),
        image_size: int = typer.Option(None, "--image-size"),
        folds: int = typer.Option(5, "--folds"),
        seed: int = typer.Option(0, "--seed"),
        device: str = typer.Option("auto", "--device"),
        db: Path = typer.Option(None, "--db"),
        executor: str = typer.Option("local", "--executor", help="local (one process)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="List the configurations only."),
    ) -> None:
        """Run the cartesian product of the given options; rank by mean validation F1."""
        from ichbench.cli.progress import RunProgress
        from ichbench.errors import UsageError
        from ichbench.grid import Grid, axes_from_options, load_toml
        from ichbench.paths import default_db
        from ichbench.runner import Runner
        from ichbench.store import Store

        if executor != "local":
            raise UsageError(f"--executor {executor!r}: only 'local' is available")
        axes = axes_from_options(strategy, weight, backbone)
        fixed: dict = {}
        if config:
            file_axes, fixed = load_toml(config)
            axes += file_axes
        if not axes:
            raise UsageError("No grid axes: give --strategy/--weight/--backbone lists or --config")
        base = RunConfig(data=data, preset=preset, epochs=epochs, image_size=image_size,
                         folds=folds, seed=seed, device=device)
        base = replace(base, **fixed)
        plan = Grid(axes=axes, base=base)
        configs = plan.configs()
        err.print(f"Grid [bold]{plan.grid_id}[/]: {len(configs)} configuration(s)")
        if dry_run:
            for cfg in configs:
                out.print(" ".join(_describe(cfg)))
            return
        store = Store(db or default_db())
        for i, cfg in enumerate(configs, start=1):
            label = " ".join(_describe(cfg))
            with RunProgress() as progress:
                runner = Runner(cfg, store, observers=[progress], grid_id=plan.grid_id)
                dataset = runner.load_data()
                existing = [r for r in store.runs_with_config(runner.cfg.hash)
                            if r["dataset_hash"] == dataset.dataset_hash]
                if existing and existing[0]["status"] == "finished":
                    err.print(f"[{i}/{len(configs)}] {label}: already finished as "
                              f"{existing[0]['run_id']}")
                    continue
                err.print(f"[{i}/{len(configs)}] {label}")
                runner.run(resume=existing[0]["run_id"] if existing else None, dataset=dataset)
        _print_ranking(store, plan.grid_id, configs)


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
