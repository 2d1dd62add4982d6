"""The figures of the vote on the test set: how the voting threshold was chosen from the
folds' validation F1, the confusion matrices at that threshold, and the ROC curves."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from ichbench.report.figures import ICH, VOTE, fold_colour, new_figure

# ---------------------------------------------------------------- (b) thresholds


def threshold_figure(
    curves: dict[int, tuple[np.ndarray, np.ndarray]],
    mean_curve: tuple[np.ndarray, np.ndarray] | None,
    voting_threshold: float | None,
) -> Figure:
    """Validation F1 against the decision threshold for each fold and their mean; each
    fold's own threshold is its curve's peak, the voting threshold the mean's peak."""
    fig = new_figure(9, 5.2)
    ax = fig.subplots()
    for fold, (thr, f1) in sorted(curves.items()):
        colour = fold_colour(fold)
        ax.plot(thr, f1, color=colour, linewidth=1.4, alpha=0.85, label=f"Fold {fold}")
        if np.isfinite(f1).any():
            k = int(np.nanargmax(f1))
            ax.plot(thr[k], f1[k], "o", color=colour, markersize=5)
    if mean_curve is not None:
        thr, f1 = mean_curve
        ax.plot(thr, f1, color=VOTE, linewidth=2.6, label="Mean of folds")
    if voting_threshold is not None:
        ax.axvline(voting_threshold, color=VOTE, linestyle="--", linewidth=1.3)
        peak = None
        if mean_curve is not None and np.isfinite(mean_curve[1]).any():
            peak = float(np.nanmax(mean_curve[1]))
        text = f"voting threshold {voting_threshold:.2f}"
        if peak is not None:
            text += f"\nmean F1 {peak:.2f}"
        ax.annotate(
            text,
            xy=(voting_threshold, peak if peak is not None else 0.5),
            xytext=(12, 18),
            textcoords="offset points",
            fontsize=10,
            fontweight="bold",
            arrowprops=dict(arrowstyle="->", color=VOTE),
            bbox=dict(boxstyle="round,pad=0.3", facecolor="white", edgecolor="none", alpha=0.85),
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(True)
    ax.set_xlabel("Decision threshold on P(ICH)")
    ax.set_ylabel("F1 on the validation fold (slice level)")
    ax.set_title("F1 against threshold: folds, their mean and the voting threshold")
    ax.legend(loc="upper right", ncols=2)
    return fig


# ---------------------------------------------------------------- (c) confusion


def _confusion_panel(ax, counts: dict[str, int] | None, title: str, unit: str) -> None:
    ax.set_title(title)
    if counts is None:
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            colour = "white" if share[i, j] > 0.55 else "black"
            ax.text(
                j,
                i,
                f"{int(matrix[i, j])}\n{100 * share[i, j]:.0f}% of row",
                ha="center",
                va="center",
                color=colour,
                fontsize=12,
                fontweight="bold",
            )
    ax.set_xticks([0, 1], ["Healthy", "ICH"])
    ax.set_yticks([0, 1], ["Healthy", "ICH"])
    ax.set_xlabel("Predicted")
    ax.set_ylabel("Ground truth")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.text(
        0.5,
        -0.28,
        f"n = {int(matrix.sum())} {unit}",
        ha="center",
        transform=ax.transAxes,
        fontsize=10,
    )


def confusion_figure(
    slice_counts: dict[str, int] | None,
    patient_counts: dict[str, int] | None,
    threshold: float | None,
) -> Figure:
    """The vote on the test set at the voting threshold, slice and patient level."""
    fig = new_figure(10, 4.6)
    axes = fig.subplots(1, 2)
    _confusion_panel(axes[0], slice_counts, "Slice level", "slices")
    _confusion_panel(axes[1], patient_counts, "Patient level", "patients")
    thr = "" if threshold is None else f" at threshold {threshold:.2f}"
    fig.suptitle(f"Confusion matrices of the vote on the test set{thr}")
    return fig


# ---------------------------------------------------------------- (d) ROC


@dataclass
class RocCurve:
    label: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float | None
    colour: str
    strong: bool = False


def roc_figure(
    curves: list[RocCurve], operating_point: tuple[float, float] | None, threshold: float | None
) -> Figure:
    """ROC of each fold model and of the vote on the test slices; the vote's operating
    point at the voting threshold is marked."""
    fig = new_figure(7, 6.2)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="Chance")
    for c in curves:
        auc = "n/a" if c.auc is None else f"{c.auc:.3f}"
        ax.plot(
            c.fpr,
            c.tpr,
            color=c.colour,
            linewidth=2.8 if c.strong else 1.4,
            alpha=1 if c.strong else 0.85,
            label=f"{c.label} (AUC {auc})",
            drawstyle="steps-post",
        )
    if operating_point is not None:
        fpr, tpr = operating_point
        ax.plot(
            fpr,
            tpr,
            marker="*",
            markersize=16,
            color=ICH,
            markeredgecolor="black",
            linestyle="none",
            label="Vote (pooled over outer folds)"
            if threshold is None
            else f"Vote at threshold {threshold:.2f}",
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.grid(True)
    ax.set_xlabel("False positive rate (1 − specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title("ROC on the test slices")
    ax.legend(loc="lower right")
    return fig


def reliability_figure(curves: list[tuple[str, object, str, bool]]) -> Figure:
    """Reliability diagram: per score bin, the observed ICH fraction against the mean
    score (on the diagonal when calibrated), with each bin's slice count below.
    `curves` are (label, `ichbench.calibration.Reliability`, colour, strong)."""
    fig = new_figure(7, 7.4)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="Calibrated")
    width = 1.0 / max(len(curves), 1)
    for i, (label, rel, colour, strong) in enumerate(curves):
        filled = rel.counts > 0
        top.plot(
            rel.mean_predicted[filled],
            rel.observed[filled],
            marker="o",
            color=colour,
            linewidth=2.6 if strong else 1.3,
            label=f"{label} (ECE {rel.ece:.3f})",
        )
        left = rel.edges[:-1] + (rel.edges[1:] - rel.edges[:-1]) * width * i
        bottom.bar(
            left,
            rel.counts,
            width=(rel.edges[1:] - rel.edges[:-1]) * width,
            align="edge",
            color=colour,
            alpha=0.8,
        )
    top.set_xlim(0, 1)
    top.set_ylim(-0.01, 1.01)
    top.grid(True)
    top.set_ylabel("Observed ICH fraction")
    top.set_title("Reliability on the test slices")
    top.legend(loc="upper left")
    bottom.set_yscale("log")
    bottom.set_xlabel("Predicted ICH probability (bin mean)")
    bottom.set_ylabel("Slices")
    bottom.grid(True)
    return fig


def paired_figure(rows: list[dict], a: str, b: str) -> Figure:
    """B − A with its 95% CI for every metric, slice level beside patient level: a dot
    and a bar per metric, the zero line marked."""
    fig = new_figure(10, 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, scope in zip(axes, ("slice", "patient"), strict=True):
        mine = [r for r in rows if r["scope"] == scope]
        names = [r["name"] for r in mine]
        y = np.arange(len(mine))[::-1]
        for yi, r in zip(y, mine, strict=True):
            if r["diff"] is None:
                continue
            if r["lo"] is not None and r["hi"] is not None:
                crosses = r["lo"] <= 0 <= r["hi"]
                ax.plot([r["lo"], r["hi"]], [yi, yi], color="grey" if crosses else ICH, linewidth=3)
            ax.plot(r["diff"], yi, marker="o", color="black", markersize=7)
        ax.axvline(0, color="black", linewidth=1, linestyle=":")
        ax.set_yticks(y, names)
        ax.set_title(f"{scope.title()} level")
        ax.set_xlabel("B − A")
        ax.grid(True, axis="x")
    fig.suptitle(f"B = {b} minus A = {a}; red: the 95% CI excludes 0")
    return fig
