"""The report's figures, drawn with matplotlib's object API on the Agg canvas.

No pyplot: a `Figure` is created and rendered directly, so building a report in a
long-lived process or a test keeps no global figure state and needs no display. One
style and one palette for every figure, so the pictures sit together on a slide: healthy
is always blue, ICH always red, the vote always black, each fold always the same colour.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

HEALTHY = "#3A6EA5"
ICH = "#C0392B"
VOTE = "#111111"
FOLD_COLOURS = (
    "#1B9E77",
    "#D95F02",
    "#7570B3",
    "#E7298A",
    "#66A61E",
    "#E6AB02",
    "#A6761D",
    "#1F78B4",
    "#B15928",
    "#6A3D9A",
)
PROB_CMAP = "viridis"
CAM_CMAP = "jet"
MASK_COLOUR = "#00E5FF"
DPI = 150

STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 11,
    "axes.titlesize": 12.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 9.5,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "figure.titlesize": 14,
    "figure.titleweight": "bold",
    "image.interpolation": "nearest",
}


def fold_colour(fold: int) -> str:
    return FOLD_COLOURS[fold % len(FOLD_COLOURS)]


@contextmanager
def style() -> Iterator[None]:
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


# ---------------------------------------------------------------- (a) dataset


def _bar_labels(ax, bars) -> None:
    ax.bar_label(bars, padding=2, fontsize=9)


def distribution_figure(
    labels: np.ndarray,
    patient_ids: np.ndarray,
    positions: np.ndarray,
    test_patients: Sequence[int],
    source: str,
    bins: int = 10,
) -> Figure:
    """Slices and patients per class (split into the cross-validation pool and the test
    set), and where in the head the ICH slices are (relative slice position)."""
    labels = np.asarray(labels).astype(int)
    patient_ids = np.asarray(patient_ids)
    is_test = np.isin(patient_ids, np.asarray(list(test_patients)))
    fig = new_figure(13, 4.2)
    axes = fig.subplots(1, 3, width_ratios=[1, 1, 1.6])
    groups = (("CV pool", ~is_test, 1.0), ("Test", is_test, 0.55))
    x = np.arange(2)
    width = 0.38
    for i, (name, rows, alpha) in enumerate(groups):
        counts = [int(((labels == c) & rows).sum()) for c in (0, 1)]
        bars = axes[0].bar(
            x + (i - 0.5) * width,
            counts,
            width,
            color=[HEALTHY, ICH],
            alpha=alpha,
            edgecolor="black",
            linewidth=0.5,
            label=name,
        )
        _bar_labels(axes[0], bars)
        patients = np.unique(patient_ids[rows])
        p_labels = np.array([labels[patient_ids == p].max() for p in patients], dtype=int)
        counts = [int((p_labels == c).sum()) for c in (0, 1)]
        bars = axes[1].bar(
            x + (i - 0.5) * width,
            counts,
            width,
            color=[HEALTHY, ICH],
            alpha=alpha,
            edgecolor="black",
            linewidth=0.5,
            label=name,
        )
        _bar_labels(axes[1], bars)
    for ax, title, unit in (
        (axes[0], "Slices per class", "slices"),
        (axes[1], "Patients per class", "patients"),
    ):
        ax.set_xticks(x, ["Healthy", "ICH"])
        ax.set_title(title)
        ax.set_ylabel(f"Number of {unit}")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.margins(y=0.15)
        ax.legend(
            handles=[
                Patch(facecolor="grey", alpha=a, edgecolor="black", label=n) for n, _, a in groups
            ],
            loc="upper right",
        )
    edges = np.linspace(0, 1, bins + 1)
    ich_pos = np.asarray(positions)[labels == 1]
    all_counts, _ = np.histogram(np.asarray(positions), bins=edges)
    ich_counts, _ = np.histogram(ich_pos, bins=edges)
    centres = (edges[:-1] + edges[1:]) / 2
    bars = axes[2].bar(
        centres,
        ich_counts,
        width=1 / bins * 0.9,
        color=ICH,
        edgecolor="black",
        linewidth=0.5,
        label="ICH slices",
    )
    _bar_labels(axes[2], bars)
    axes[2].set_xlabel("Relative slice position (0 = first slice, 1 = last)")
    axes[2].set_ylabel("Number of ICH slices")
    axes[2].set_title("ICH by relative slice position")
    axes[2].set_xticks(edges[::2])
    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].margins(y=0.15)
    share = axes[2].twinx()
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(all_counts > 0, ich_counts / np.maximum(all_counts, 1), np.nan)
    share.plot(
        centres,
        100 * frac,
        color=VOTE,
        marker="o",
        markersize=4,
        linewidth=1.2,
        label="% of slices that are ICH",
    )
    share.set_ylabel("% of slices in the bin that are ICH")
    share.spines["right"].set_visible(True)
    share.set_ylim(
        0, max(5.0, float(np.nanmax(100 * frac)) * 1.3 if np.isfinite(frac).any() else 5.0)
    )
    handles = [
        Patch(facecolor=ICH, edgecolor="black", label="ICH slices"),
        Line2D([], [], color=VOTE, marker="o", label="% of slices that are ICH"),
    ]
    axes[2].legend(handles=handles, loc="upper left")
    n_p = len(np.unique(patient_ids))
    fig.suptitle(f"Dataset: {n_p} patients, {len(labels)} slices ({source})")
    return fig


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
            label=f"Vote at threshold {threshold:.2f}",
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


# ---------------------------------------------------------------- (g) patient strip


@dataclass
class PatientStrip:
    patient: int
    slices: np.ndarray  # slice numbers, ascending
    probs: np.ndarray
    labels: np.ndarray
    label: int  # patient label
    decision: bool | None  # patient decision of the run's patient rule


def strip_figure(strips: list[PatientStrip], threshold: float, source: str) -> Figure:
    """Every test patient's slices in order: the vote probability of each slice as a
    colour, the ground-truth ICH slices and the slices flagged at the voting threshold
    marked, and the patient's label and decision beside the row."""
    n = len(strips)
    width = max(int(max(s.slices.max() for s in strips)), 1) if strips else 1
    matrix = np.full((n, width), np.nan)
    for i, s in enumerate(strips):
        matrix[i, s.slices - 1] = s.probs
    fig = new_figure(min(4 + 0.26 * width, 18), 1.4 + 0.42 * n)
    ax = fig.subplots()
    cmap = matplotlib.colormaps[PROB_CMAP].with_extremes(bad="white")
    image = ax.imshow(
        np.ma.masked_invalid(matrix),
        cmap=cmap,
        vmin=0,
        vmax=1,
        aspect="auto",
        extent=(0.5, width + 0.5, n - 0.5, -0.5),
    )
    for i, s in enumerate(strips):
        truth = s.slices[s.labels == 1]
        flagged = s.slices[s.probs >= threshold]
        ax.scatter(
            truth,
            np.full(len(truth), i - 0.28),
            marker="v",
            s=26,
            color=ICH,
            edgecolors="white",
            linewidths=0.4,
            zorder=3,
        )
        for edge, lw in (("black", 2.6), ("white", 1.1)):  # visible on any colour
            ax.scatter(
                flagged,
                np.full(len(flagged), i),
                marker="s",
                s=60,
                facecolors="none",
                edgecolors=edge,
                linewidths=lw,
                zorder=3,
            )
    ax.set_yticks(np.arange(n), [_strip_label(s) for s in strips])
    for tick, s in zip(ax.get_yticklabels(), strips, strict=True):
        if s.decision is not None:
            tick.set_color("#1E7B34" if bool(s.decision) == bool(s.label) else ICH)
    ax.set_xlabel("Slice number")
    ax.set_xlim(0.5, width + 0.5)
    ax.tick_params(axis="y", length=0)
    fig.colorbar(image, ax=ax, label="Vote probability of ICH", shrink=0.9, pad=0.01)
    handles = [
        Line2D([], [], marker="v", color=ICH, linestyle="none", label="ICH slice (ground truth)"),
        Line2D(
            [],
            [],
            marker="s",
            markerfacecolor="none",
            markeredgecolor="black",
            linestyle="none",
            markersize=8,
            label=f"Flagged (P ≥ {threshold:.2f})",
        ),
    ]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2)
    fig.suptitle(f"Test patients slice by slice ({source}); label → decision, green = correct")
    return fig


def _strip_label(s: PatientStrip) -> str:
    truth = "ICH" if s.label else "healthy"
    if s.decision is None:
        return f"P{s.patient:03d} · {truth}"
    decided = "ICH" if s.decision else "healthy"
    return f"P{s.patient:03d} · {truth} → {decided}"


# ---------------------------------------------------------------- (h) training


def training_figure(epochs: list[dict], best: dict[int, int]) -> Figure:
    """Per-fold learning curves: training loss and validation F1 by epoch, with the kept
    (best validation F1) epoch marked."""
    fig = new_figure(12, 4.4)
    ax_loss, ax_f1 = fig.subplots(1, 2)
    folds = sorted({e["fold"] for e in epochs})
    for fold in folds:
        rows = [e for e in epochs if e["fold"] == fold]
        ep = np.array([e["epoch"] for e in rows])
        colour = fold_colour(fold)
        ax_loss.plot(ep, [e["train_loss"] for e in rows], "-o", color=colour, markersize=4)
        ax_loss.plot(
            ep, [e["val_loss"] for e in rows], "--s", color=colour, alpha=0.7, markersize=3.5
        )
        f1 = np.array([np.nan if e["val_f1"] is None else e["val_f1"] for e in rows])
        ax_f1.plot(ep, f1, "-o", color=colour, markersize=4, label=f"Fold {fold}")
        if fold in best and best[fold] in ep:
            k = int(np.flatnonzero(ep == best[fold])[0])
            ax_f1.plot(
                ep[k], f1[k], marker="*", markersize=15, color=colour, markeredgecolor="black"
            )
    for ax, label, title in (
        (ax_loss, "Cross-entropy loss", "Loss"),
        (ax_f1, "Best validation F1 over thresholds", "Validation F1"),
    ):
        ax.set_xlabel("Epoch")
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.grid(True)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if epochs:
            ax.set_xlim(0.5, max(e["epoch"] for e in epochs) + 0.5)
    ax_f1.set_ylim(0, 1.02)
    ax_loss.legend(
        handles=[Line2D([], [], color=fold_colour(f), label=f"Fold {f}") for f in folds]
        + [
            Line2D([], [], color="grey", marker="o", label="training"),
            Line2D([], [], color="grey", linestyle="--", marker="s", label="validation"),
        ],
        ncols=2,
        fontsize=8.5,
    )
    ax_f1.legend(title="★ = kept epoch", fontsize=8.5)
    fig.suptitle("Training history per fold")
    return fig
