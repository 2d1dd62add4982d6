"""`ichbench run`: the protocol on one configuration."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from ichbench.cli.common import err, out
from ichbench.config import RunConfig

DATA_HELP = "A dataset folder (either PhysioNet layout), or a registered dataset spec."


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        data: str = typer.Option("synthetic", "--data", help=DATA_HELP),
        backbone: str = typer.Option(None, "--backbone", help="Backbone spec, e.g. resnet50, "
                                     "timm:convnext_tiny (default: the preset's)."),
        strategy: list[str] = typer.Option([], "--strategy", help="Imbalance strategy, "
                                           "repeatable, applied in order: augment:3.3, "
                                           "undersample:0.5, bootstrap:2."),
        weight: list[str] = typer.Option([], "--weight", help="Class weight of the loss, "
                                         "repeatable: ich:4, healthy:0.5."),
        ensemble: str = typer.Option("mean", "--ensemble", help="Fold ensemble rule."),
        patient_rule: str = typer.Option("any", "--patient-rule", help="Patient rule."),
        folds: int = typer.Option(5, "--folds", help="Cross-validation folds."),
        test_size: float = typer.Option(0.2, "--test-size", help="Fraction of patients held "
                                        "out for the test set."),
        epochs: int = typer.Option(None, "--epochs", help="Maximum epochs per fold."),
        batch_size: int = typer.Option(None, "--batch-size"),
        lr: float = typer.Option(None, "--lr", help="Adam learning rate."),
        patience: int = typer.Option(None, "--patience", help="Early-stopping patience "
                                     "(epochs without a better validation F1)."),
        image_size: int = typer.Option(None, "--image-size", help="Square input size in px."),
        window: list[str] = typer.Option(["brain"], "--window", help="CT window(s) stacked "
                                         "as channels: brain, subdural, bone."),
        preset: str = typer.Option("auto", "--preset", help="auto (paper on CUDA, quick "
                                   "otherwise), quick or paper."),
        seed: int = typer.Option(0, "--seed"),
        db: Path = typer.Option(None, "--db", help="Run store (default ./runs.duckdb or "
                                "$ICHBENCH_DB)."),
        weights: Path = typer.Option(None, "--weights", help="Local pretrained weights file "
                                     "for the backbone (never downloads)."),
        pretrained: bool = typer.Option(None, "--pretrained/--no-pretrained",
                                        help="Start from pretrained weights (default: preset)."),
        exclude: str = typer.Option("58,79", "--exclude", help="Patients left out, comma "
                                    "separated ('' for none)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
        compile: bool = typer.Option(None, "--compile/--no-compile", help="Train through "
                                     "torch.compile (the first steps pay the compilation; "
                                     "results repeat but differ from eager ones). "
                                     "Not part of the config hash; recorded per fold."),
        resume: str = typer.Option(None, "--resume", help="Finish an unfinished run: "
                                   "finished folds are kept. The run's stored "
                                   "configuration is used; only --db and --compile/--no-compile "
                                   "apply."),
    ) -> None:
        """Run the 5-fold protocol with the voting threshold and store every result."""
        from ichbench.paths import default_db
        from ichbench.store import Store
        from ichbench.store.render import print_run_tables

        db_path = db or default_db()
        if resume:
            store = Store(db_path, create=False)
            run = store.get_run(resume)
            config, resume = RunConfig.from_dict(run["config"]), run["run_id"]
            if compile is not None:  # a setting of the machine: a resumed run may change it
                config = replace(config, compile=compile)
        else:
            store = None  # opened once the inputs are known to be good
            config = RunConfig(
                data=data, backbone=backbone, strategies=list(strategy), weights=list(weight),
                ensemble=ensemble, patient_rule=patient_rule, folds=folds, test_size=test_size,
                epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                image_size=image_size, windows=list(window), preset=preset, seed=seed,
                weights_file=str(weights) if weights else None, pretrained=pretrained,
                exclude=_parse_exclude(exclude), device=device, compile=bool(compile),
            )
        result, store = execute(config, store or db_path, resume=resume)
        print_run_tables(out, store, result.run_id)
        err.print(f"Stored as run [bold]{result.run_id}[/] in {store.path}")


def execute(config: RunConfig, store, *, resume: str | None = None, grid_id: str | None = None):
    """Run one configuration with progress bars.

    `store` may be a path: the store is then opened only after the configuration, the
    plugins, the dataset and the split have been checked, so bad input never creates or
    touches it.
    """
    from ichbench.cli.progress import RunProgress
    from ichbench.runner import Runner
    from ichbench.store import Store

    with RunProgress() as progress:
        runner = Runner(config, None, observers=[progress], grid_id=grid_id)
        dataset = runner.load_data()
        runner.split_of(dataset)
        runner.store = store if isinstance(store, Store) else Store(store)
        return runner.run(resume=resume, dataset=dataset), runner.store


def _parse_exclude(text: str) -> list[int]:
    from ichbench.errors import UsageError

    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return sorted(int(t) for t in items)
    except ValueError:
        raise UsageError(f"--exclude {text!r}: expected patient numbers separated by commas, "
                         "e.g. 58,79") from None
