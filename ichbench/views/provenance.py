"""Configuration and provenance of a run: what ran, on what, with which code, plugins
and libraries. `ichbench show` and the report print this same table."""

from __future__ import annotations

import json
from typing import Any

from ichbench.formatting import DASH, fmt, fmt_wall
from ichbench.views.metrics import strategies_text
from ichbench.views.model import Row, TableData
from ichbench.views.run_data import RunData

NOT_RECORDED = "not recorded"


def compiled_text(folds: list[dict[str, Any]]) -> str:
    """Which folds trained through torch.compile: a resumed run may mix both."""
    compiled = [int(f["fold"]) for f in folds if f.get("compiled")]
    if not folds:
        return DASH
    if not compiled:
        return "no"
    if len(compiled) == len(folds):
        return "yes, every fold"
    return "folds " + ", ".join(map(str, compiled)) + " only"


def _compact(value: Any) -> Any:
    """Floats to four significant digits, so a histogram stays readable in one cell."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_compact(v) for v in value]
    return value


CORE_NOTES = ("input", "patient_rule")  # what the core, not a strategy, notes on a fold


def recipe_text(cfg: dict[str, Any], folds: list[dict[str, Any]]) -> str:
    """The recipe beyond the paper's as the run used it; "the paper's" when none of it."""
    parts = []
    if cfg.get("context"):
        parts.append(f"context ±{cfg['context']} slice(s)")
    if cfg.get("augment_all"):
        parts.append("every slice augmented")
    if cfg.get("schedule") not in (None, "constant"):
        parts.append(f"{cfg['schedule']} schedule")
    if cfg.get("warmup"):
        parts.append(f"{cfg['warmup']} warmup epoch(s)")
    if cfg.get("weight_decay"):
        parts.append(f"AdamW, weight decay {cfg['weight_decay']:g}")
    if cfg.get("tta") not in (None, "none"):
        parts.append(f"test-time {cfg['tta']}")
    if cfg.get("stage2") not in (None, "none"):
        parts.append(f"stage 2 {cfg['stage2']}")
    shown = [(f.get("notes") or {}).get("input") or {} for f in folds]
    means = {tuple(i["mean"]) for i in shown if i.get("mean")}
    if means:
        parts.append("inputs normalised by the backbone's pretraining statistics")
    return ", ".join(parts) or "the paper's"


def seed_text(seed, split_seed) -> str:
    """The run's seed, and the split's where `--split-seed` set it apart."""
    return str(seed) if split_seed is None else f"{seed} (split seed {split_seed})"


def notes_text(folds: list[dict[str, Any]]) -> str:
    """Each fold's strategy notes; folds recorded before notes were kept say so."""
    if not folds:
        return DASH
    if all(f.get("notes") is None for f in folds):
        return NOT_RECORDED
    if all(not {k for k in f.get("notes") or {} if k not in CORE_NOTES} for f in folds):
        return "none"
    parts = []
    for f in folds:
        notes = f.get("notes")
        if notes is not None:  # shown in rows of their own: the recipe, the patient rule
            notes = {k: v for k, v in notes.items() if k not in CORE_NOTES}
        if notes is None:
            text = NOT_RECORDED
        elif not notes:
            text = "none"
        else:
            text = json.dumps(_compact(notes), sort_keys=True, default=str)
        parts.append(f"fold {f['fold']}: {text}")
    return "; ".join(parts)


def plugins_text(plugins: dict[str, str] | None) -> str:
    if not plugins:
        return NOT_RECORDED
    return ", ".join(f"{name} {version}" for name, version in sorted(plugins.items()))


def _pool_size(data: RunData) -> int:
    pool: set[int] = set()
    for parts in data.fold_patients.values():
        pool.update(parts["train"])
        pool.update(parts["val"])
    return len(pool)


def _time(value: Any) -> str:
    return DASH if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def threshold_text(data: RunData) -> str:
    """The voting threshold, or each outer fold's."""
    per_outer = data.outer_metrics("slice")
    if data.outer_folds > 1 and per_outer:
        return ", ".join(f"{fmt(m['threshold'])} (outer {m['outer_fold']})" for m in per_outer)
    return fmt(data.threshold)


def warnings_text(warnings: list[dict] | None) -> str:
    """What the run warned about its vote, one per line; `none` when it did not, a dash
    for a run recorded before votes were checked."""
    if warnings is None:
        return DASH
    if not warnings:
        return "none"
    return "\n".join(
        (f"outer fold {w['outer']}: " if w.get("outer") is not None else "") + w["message"]
        for w in warnings
    )


PATIENT_RULE = "patient-rule"  # the kind of a fitted patient rule among the fitted models
STAGE2 = "stage2"  # the kind of a fitted second stage


def calibration_text(fitted: list[dict] | None) -> str:
    """The calibrators fitted on each fold's validation predictions, if any."""
    fitted = [c for c in fitted or [] if c.get("kind") not in (PATIENT_RULE, STAGE2)]
    if not fitted:
        return "none"
    kinds = sorted({c["kind"] for c in fitted})
    fallbacks = sum(1 for c in fitted if (c.get("params") or {}).get("fallback"))
    text = f"{', '.join(kinds)}, fitted on each fold's validation predictions ({len(fitted)})"
    if fallbacks:
        text += f"; {fallbacks} left as the identity (one class in validation)"
    return text


def stage2_text(fitted: list[dict] | None) -> str:
    """The second stage as fitted on the out-of-fold validation scans, per outer fold."""
    stages = [c for c in fitted or [] if c.get("kind") == STAGE2]
    if not stages:
        return DASH
    parts = []
    for c in stages:
        p = c.get("params") or {}
        where = f"outer {c['outer']}: " if c.get("outer") is not None and len(stages) > 1 else ""
        text = (
            f"{where}{p.get('kind')} on {p.get('scans')} out-of-fold scans, "
            f"{p.get('feature_dim')} features, cross-fitted in {p.get('folds_used')} folds"
        )
        if p.get("fallback"):
            text += f" ({p['fallback']})"
        parts.append(text)
    return "; ".join(parts)


def patient_rule_text(fitted: list[dict] | None) -> str:
    """A learned patient rule as fitted on the out-of-fold validation patients: its
    coefficients per feature (standardised) and its threshold, per outer fold."""
    rules = [c for c in fitted or [] if c.get("kind") == PATIENT_RULE]
    if not rules:
        return DASH
    parts = []
    for c in rules:
        params = c.get("params") or {}
        where = f"outer {c['outer']}: " if c.get("outer") is not None and len(rules) > 1 else ""
        if params.get("fallback"):
            parts.append(f"{where}fell back: {params['fallback']}")
            continue
        names = params.get("features") or []
        coefs = params.get("coefficients") or []
        terms = ", ".join(f"{n} {w:+.2f}" for n, w in zip(names, coefs))
        cut = params.get("probability_threshold")
        parts.append(f"{where}{terms}; ICH at p >= {cut:.2f}" if cut is not None else terms)
    return "; ".join(parts)


def provenance_table(data: RunData, table_id: str = "provenance") -> TableData:
    """Configuration and provenance as field / value rows."""
    run = data.run
    cfg = data.config
    versions = run.get("versions") or {}
    pretrained = "yes" if run.get("pretrained") else "no"
    if run.get("pretrained_source"):
        pretrained += f" ({run['pretrained_source']})"
    status = run["status"] if data.finished else f"{run['status'].upper()} — NOT finished"
    if run.get("error"):
        status += f": {run['error']}"
    windows = ", ".join(cfg.get("windows") or []) or DASH
    labels = [
        ("Name", run.get("name")),
        ("Tags", ", ".join(run.get("tags") or [])),
        ("Note", run.get("note")),
    ]
    items = [
        ("Run", data.run_id),
        *((key, value) for key, value in labels if value),
        ("Status", status),
        ("Dataset", f"{run.get('dataset')}"),
        ("Dataset hash", str(run.get("dataset_hash"))),
        ("Excluded patients", ", ".join(str(p) for p in cfg.get("exclude") or []) or "none"),
        (
            "Patients",
            f"{len(data.test_patients)} test; "
            f"{_pool_size(data)} in {len(data.fold_patients)} cross-validation folds",
        ),
        ("Backbone", str(run.get("backbone"))),
        ("Pretrained", pretrained),
        ("Imbalance strategies", strategies_text(run)),
        (
            "Ensemble / patient rule",
            f"{run.get('ensemble') or DASH} / {run.get('patient_rule') or DASH}",
        ),
        (
            "Training",
            f"at most {cfg.get('epochs')} epoch(s), batch {cfg.get('batch_size')}, "
            f"lr {cfg.get('lr')}, patience {cfg.get('patience')}, "
            f"{cfg.get('image_size')} px, windows {windows}",
        ),
        ("Recipe", recipe_text(cfg, data.folds)),
        ("Voting threshold", threshold_text(data)),
        ("Vote warnings", warnings_text(run.get("warnings"))),
        ("Fold calibration", calibration_text(run.get("calibration"))),
        ("Learned patient rule", patient_rule_text(run.get("calibration"))),
        ("Second stage", stage2_text(run.get("calibration"))),
        ("Preset", str(run.get("preset"))),
        ("Seed", seed_text(run.get("seed"), cfg.get("split_seed"))),
        ("Device", str(run.get("device"))),
        ("torch.compile", compiled_text(data.folds)),
        ("Strategy notes", notes_text(data.folds)),
        ("Started / finished", f"{_time(run.get('started_at'))} / {_time(run.get('finished_at'))}"),
        ("Wall time", fmt_wall(run.get("wall_s"))),
        ("Config hash / split hash", f"{run.get('config_hash')} / {run.get('split_hash')}"),
        ("Git commit", str(run.get("git_sha") or "unknown")),
        ("Grid", str(run.get("grid_id") or DASH)),
        ("Plugins", plugins_text(run.get("plugins"))),
        ("Versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or DASH),
        ("Configuration", json.dumps(cfg, sort_keys=True)),
    ]
    if data.outer_folds > 1:
        items.insert(1, ("Outer folds", f"{data.outer_folds} (nested cross-validation)"))
    return TableData(
        id=table_id,
        title="Configuration and provenance",
        columns=["", ""],
        rows=[Row([k, v], strong=k == "Status" and not data.finished) for k, v in items],
        numeric_from=99,
    )


DIFF_IGNORED = ("device", "compile", "weights_digest")  # the machine, or the file's hash


def config_diff(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The settings whose values differ between runs, {setting: {run id: value}}: what a
    comparison compares, beside what it holds equal."""
    keys = sorted({k for cfg in configs.values() for k in cfg} - set(DIFF_IGNORED))
    return {
        k: {run_id: cfg.get(k) for run_id, cfg in configs.items()}
        for k in keys
        if len({json.dumps(cfg.get(k), sort_keys=True) for cfg in configs.values()}) > 1
    }


def config_diff_table(diff: dict[str, dict[str, Any]], table_id: str = "config-diff") -> TableData:
    """`config_diff` as a table: one row per differing setting, one column per run."""
    run_ids = list(next(iter(diff.values()))) if diff else []

    def cell(value: Any) -> str:
        if value is None:
            return DASH
        if isinstance(value, list):
            return ", ".join(map(str, value)) or "none"
        return str(value)

    return TableData(
        id=table_id,
        title="Configuration differences",
        columns=["Setting", *run_ids],
        rows=[Row([k, *(cell(v) for v in values.values())]) for k, values in diff.items()],
        numeric_from=len(run_ids) + 1,
        note="" if diff else "The runs' configurations are the same (but for the machine).",
    )
