"""The validation side of a run: how each fold was chosen and what it trained on.

The grid ranks configurations by their mean validation F1 (never by test), and each fold
keeps the epoch of its best validation F1; this table shows those numbers beside the
training set each fold saw, so a reader can judge a test result by how it was selected.
"""

from __future__ import annotations

from typing import Any

from ichbench.formatting import DASH, fmt
from ichbench.views.metrics import mean_sd
from ichbench.views.model import Row, TableData
from ichbench.views.run_data import RunData


def _val_f1(data: RunData, outer: int | None, fold: int) -> float | None:
    for row in data.metrics:
        if (
            row["model"] == "fold"
            and row["scope"] == "slice"
            and row["split"] == "val"
            and row["fold"] == fold
            and (row.get("outer_fold") or 0) == (outer or 0)
        ):
            return row["f1"]
    return None


def _samples(fold: dict[str, Any]) -> tuple[str, str]:
    """Training samples per epoch after the strategies, and the ICH share of them."""
    ich, healthy = fold.get("train_ich"), fold.get("train_healthy")
    if ich is None or healthy is None or ich + healthy == 0:
        return DASH, DASH
    return f"{ich + healthy:,}", f"{ich / (ich + healthy):.2f}"


def validation_table(data: RunData, folds: list[dict[str, Any]] | None = None) -> TableData:
    """A row per recorded fold (`folds`: every outer fold's, where the run has several;
    default the folds `data` holds) (validation F1 at its own threshold, that threshold, the
    epoch kept, samples per epoch and their ICH share, validation patients), then the
    mean ± sd of the validation F1: the number the grid selects by."""
    folds = data.folds if folds is None else folds
    outers = {(f.get("outer_fold") or 0) for f in folds}
    rows: list[Row] = []
    values: list[float | None] = []
    for fold in sorted(folds, key=lambda f: ((f.get("outer_fold") or 0), f["fold"])):
        outer = fold.get("outer_fold") or 0
        value = _val_f1(data, outer, fold["fold"])
        values.append(value)
        name = f"fold {outer}.{fold['fold']}" if len(outers) > 1 else f"fold {fold['fold']}"
        samples, share = _samples(fold)
        best = fold.get("best_epoch")
        rows.append(
            Row(
                [
                    name,
                    fmt(value),
                    fmt(fold.get("threshold")),
                    DASH if best is None else str(best),
                    samples,
                    share,
                    str(len(fold.get("val_patients") or [])),
                ]
            )
        )
    if len(rows) > 1:
        rows.append(Row(["mean ± sd", mean_sd(values), DASH, DASH, DASH, DASH, DASH], strong=True))
    return TableData(
        id=f"validation--{data.run['run_id']}",
        title=f"Validation, how each fold was chosen ({data.run['run_id']})",
        short_title="Validation (how each fold was chosen)",
        columns=[
            "Model",
            "Val F1",
            "Thr",
            "Best epoch",
            "Samples/epoch",
            "ICH share",
            "Val patients",
        ],
        short_columns=["Model", "Val F1", "Thr", "Epoch", "Samples", "ICH", "Val pts"],
        rows=rows,
        numeric_from=1,
        caption="Slice-level F1 on each fold's validation patients at the fold's own "
        "threshold (the maximum of its F1 curve), at the epoch kept; the grid ranks "
        "configurations by the mean. Samples per epoch count the training set after the "
        "imbalance strategies.",
    )
