"""The dataset figure: how slices and patients split into classes, the cross-validation
pool and the test set, and where in the head the ICH slices lie."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ichbench.report.figures import HEALTHY, ICH, VOTE, new_figure


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
        *(Patch(facecolor="grey", alpha=a, edgecolor="black", label=n) for n, _, a in groups),
        Patch(facecolor=ICH, edgecolor="black", label="ICH slices"),
        Line2D([], [], color=VOTE, marker="o", label="% of slices that are ICH"),
    ]
    # one legend under the panels: bars reach every corner of these axes on some dataset
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    n_p = len(np.unique(patient_ids))
    fig.suptitle(f"Dataset: {n_p} patients, {len(labels)} slices ({source})")
    return fig
