"""Every command-line option that more than one command takes, declared once.

`ichbench run` and `ichbench grid` take the same experiment options (a grid is the
product of runs, so it accepts everything a run does); the store commands share `--db`
and `--json`. Each alias carries its flag, default help and validation, so a command
lists the parameter and nothing else. `experiment_config` turns the shared options into
a `RunConfig` in one place, so no command copies option values by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from ichbench.config import RunConfig
from ichbench.exclusion import DEFAULT_EXCLUDE_TEXT, parse_exclude

DATA_HELP = "A dataset folder (either PhysioNet layout), or a registered dataset spec."

# ---------------------------------------------------------------- the store and output

DbOpt = Annotated[
    Path | None,
    typer.Option("--db", help="Run store (DuckDB file). Default: $ICHBENCH_DB or ./runs.duckdb."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
CsvOpt = Annotated[
    bool,
    typer.Option("--csv", help="Print CSV instead of tables (lists and objects as JSON cells)."),
]

# ---------------------------------------------------------------- the experiment

DataOpt = Annotated[str, typer.Option("--data", help=DATA_HELP)]
EnsembleOpt = Annotated[
    str | None, typer.Option("--ensemble", help="Fold ensemble rule (default: the preset's, mean).")
]
PatientRuleOpt = Annotated[
    str | None,
    typer.Option("--patient-rule", help="Patient rule (default: the preset's; paper: any)."),
]
FoldsOpt = Annotated[int, typer.Option("--folds", help="Cross-validation folds.")]
TestSizeOpt = Annotated[
    float,
    typer.Option(
        "--test-size", help="Fraction of patients held out for the test set (with --outer 1)."
    ),
]
OuterOpt = Annotated[
    int,
    typer.Option(
        "--outer",
        help="Outer folds of patients (nested cross-validation): each is the test set "
        "once, the folds and the vote made on the other patients; results pooled. "
        "1: the study's single held-out split.",
    ),
]
RepeatsOpt = Annotated[
    int,
    typer.Option(
        "--repeats",
        help="Repeat the whole run with seeds SEED, SEED+1, ... (other splits, other "
        "initial weights); prints each repeat's result and their mean ± sd.",
    ),
]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", help="Maximum epochs per fold.")]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", help="Training batch size.")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Adam learning rate.")]
PatienceOpt = Annotated[
    int | None,
    typer.Option(
        "--patience", help="Early-stopping patience (epochs without a better validation F1)."
    ),
]
ImageSizeOpt = Annotated[int | None, typer.Option("--image-size", help="Square input size in px.")]
WindowOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--window",
        help="CT window(s) stacked as channels, repeatable: brain, subdural, bone, or stack "
        "for all three (the JPG release has brain and bone only). Default: the preset's.",
    ),
]
PresetOpt = Annotated[
    str,
    typer.Option(
        "--preset",
        help="auto (paper where training gets a GPU, quick otherwise), quick, paper, or "
        "modern (the field's recipe on the device's network).",
    ),
]

# the recipe beyond the paper's: each defaults to the preset's (off but for modern)
ContextOpt = Annotated[
    int | None,
    typer.Option(
        "--context",
        help="Slice context (2.5D): N neighbouring slices on each side stacked as channels.",
    ),
]
ScheduleOpt = Annotated[
    str | None,
    typer.Option("--schedule", help="Learning-rate schedule per step: constant or cosine."),
]
WarmupOpt = Annotated[
    int | None, typer.Option("--warmup", help="Epochs of linear learning-rate warmup.")
]
WeightDecayOpt = Annotated[
    float | None,
    typer.Option("--weight-decay", help="Decoupled weight decay (AdamW when above 0)."),
]
AugmentAllOpt = Annotated[
    bool | None,
    typer.Option(
        "--augment-all/--no-augment-all",
        help="Augment every training slice on the fly (augment:R adds ICH copies instead).",
    ),
]
TtaOpt = Annotated[
    str | None,
    typer.Option("--tta", help="Test-time augmentation of every prediction: none or flip."),
]
Stage2Opt = Annotated[
    str | None,
    typer.Option(
        "--stage2",
        help="Second-stage sequence model over each scan's slice embeddings: none, gru or "
        "conv; fitted on out-of-fold validation slices, stored as its own result.",
    ),
]
SeedOpt = Annotated[
    int,
    typer.Option(
        "--seed",
        help="Seed of the initial weights, the strategies, the batches (and of the split "
        "unless --split-seed is given).",
    ),
]
SplitSeedOpt = Annotated[
    int | None,
    typer.Option(
        "--split-seed",
        help="Seed of the patient split (default: --seed), so training variance can be "
        "studied on a fixed split.",
    ),
]
WeightsFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights", help="Local pretrained weights file for the backbone (never downloads)."
    ),
]
PretrainedOpt = Annotated[
    bool | None,
    typer.Option(
        "--pretrained/--no-pretrained", help="Start from pretrained weights (default: preset)."
    ),
]
AllowRandomInitOpt = Annotated[
    bool,
    typer.Option(
        "--allow-random-init",
        help="With --pretrained: train from random initialisation when no pretrained weights "
        "are found (recorded as pretrained=false) instead of stopping.",
    ),
]
ExcludeOpt = Annotated[
    str,
    typer.Option("--exclude", help="Patients left out, comma-separated; 'none' (or '') for none."),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="auto, cpu or cuda[:N]; with --executor ray, cpu keeps trials off the cluster's GPUs.",
    ),
]
CompileOpt = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile",
        help="Train through torch.compile (the first steps pay the "
        "compilation; results repeat but differ from eager ones). "
        "Not part of the config hash; recorded per fold.",
    ),
]

# what a run configures that a grid varies: one value for a run, an axis for a grid
BackboneOpt = Annotated[
    str | None,
    typer.Option(
        "--backbone",
        help="Backbone spec, e.g. resnet50, timm:convnext_tiny (default: the preset's).",
    ),
]
StrategyOpt = Annotated[
    list[str],
    typer.Option(
        "--strategy",
        help="Imbalance strategy, repeatable, applied in order: augment:3.3, "
        "undersample:0.5, bootstrap:2.",
    ),
]
WeightOpt = Annotated[
    list[str],
    typer.Option("--weight", help="Class weight of the loss, repeatable: ich:4, healthy:0.5."),
]
BackboneAxisOpt = Annotated[
    list[str],
    typer.Option(
        "--backbone", help="An axis of backbones: resnet50,vgg16,mobilenetv2,inception_v3."
    ),
]
StrategyAxisOpt = Annotated[
    list[str],
    typer.Option(
        "--strategy",
        help="One axis per option; commas list its values: augment:1,2,3.3 or "
        "none,undersample:0.5.",
    ),
]
WeightAxisOpt = Annotated[
    list[str],
    typer.Option("--weight", help="One axis per option: ich:2,4,6,8,10 or healthy:1,0.5."),
]


# what a user calls the runs a command makes: labels, never part of the configuration
def _checked_name(value: str | None) -> str | None:
    from ichbench.provenance import check_name

    return check_name(value)


def _checked_tags(value: list[str] | None) -> list[str]:
    from ichbench.provenance import check_tags

    return check_tags(value or [])


def _checked_note(value: str | None) -> str | None:
    from ichbench.provenance import check_note

    return check_note(value)


NameOpt = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="A name for the run (a grid's: every run it makes), shown by runs and show. "
        "A label: not part of the configuration or its hash.",
        callback=_checked_name,
    ),
]
RunTagOpt = Annotated[
    list[str],
    typer.Option(
        "--tag",
        help="A tag for the run, repeatable: one word of letters, digits and _ . : - "
        "(ichbench runs --tag T filters by it; ichbench tag changes them later).",
        callback=_checked_tags,
    ),
]
NoteOpt = Annotated[
    str | None,
    typer.Option(
        "--note", help="A note on the run, free text, shown by show.", callback=_checked_note
    ),
]


class D:
    """Defaults of the shared options, one place: `data: DataOpt = D.data`."""

    data = "synthetic"
    folds = 5
    test_size = 0.2
    outer = 1
    repeats = 1
    preset = "auto"
    seed = 0
    exclude = DEFAULT_EXCLUDE_TEXT
    device = "auto"


def given_options(ctx: typer.Context) -> list[str]:
    """The parameters a user typed (or set through the environment), in declaration
    order; a default is not given. Compared by name: typer ships its own copy of click's
    `ParameterSource` enum."""
    typed = ("COMMANDLINE", "ENVIRONMENT")
    return [
        p.name
        for p in ctx.command.params
        if getattr(ctx.get_parameter_source(p.name), "name", None) in typed
    ]


def experiment_config(options: Mapping[str, Any], **axes: Any) -> RunConfig:
    """The `RunConfig` of the shared options as a command received them (its
    `ctx.params`); `axes` are the per-command ones (`backbone`, `strategies`,
    `weight_specs` for a run; left unset by a grid)."""
    weights = options["weights"]
    return RunConfig(
        data=options["data"],
        ensemble=options["ensemble"],
        patient_rule=options["patient_rule"],
        context=options["context"],
        schedule=options["schedule"],
        warmup=options["warmup"],
        weight_decay=options["weight_decay"],
        augment_all=options["augment_all"],
        tta=options["tta"],
        stage2=options["stage2"],
        folds=options["folds"],
        test_size=options["test_size"],
        outer=options["outer"],
        epochs=options["epochs"],
        batch_size=options["batch_size"],
        lr=options["lr"],
        patience=options["patience"],
        image_size=options["image_size"],
        windows=list(options["window"]) if options["window"] else None,
        preset=options["preset"],
        seed=options["seed"],
        split_seed=options["split_seed"],
        weights_file=str(weights) if weights else None,
        pretrained=options["pretrained"],
        exclude=list(parse_exclude(options["exclude"], option="--exclude")),
        device=options["device"],
        compile=bool(options["compile"]),
        device_memory=options.get("device_memory"),
        backbone=axes.get("backbone"),
        strategies=list(axes.get("strategies") or []),
        weights=list(axes.get("weight_specs") or []),
    )


# ---------------------------------------------------------------- packing trials on a device


def _checked_parallel_folds(value: int | None) -> int | None:
    from ichbench.executors import check_trials_at_once

    check_trials_at_once(value, "--parallel-folds")
    return value


ParallelFoldsOpt = Annotated[
    int | None,
    typer.Option(
        "--parallel-folds",
        help="Folds trained at once on this machine's device, each in its own worker "
        "process, each with the results it has alone (same seed, same weights; on the "
        "CPU at the same torch thread count). Default: 1 on the CPU; on CUDA one per 4 GiB "
        "of free device memory, at most 8 and at most the CPU cores. Not part of the "
        "configuration.",
        callback=_checked_parallel_folds,
    ),
]


# ---------------------------------------------------------------- images larger than the device


DeviceMemoryOpt = Annotated[
    float | None,
    typer.Option(
        "--device-memory",
        metavar="GIB",
        help="GiB the dataset's images may take on the training device; larger, they stay "
        "in the memory-mapped cache and each batch is streamed to the device (the same "
        "batches). Default: a CUDA device's free memory, no limit on the CPU. Not part "
        "of the configuration.",
    ),
]
