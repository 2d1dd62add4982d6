"""The per-patient strip: every test patient's slices in order, with the vote's
probability, the ground truth and the slices flagged at the voting threshold."""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ichbench.report.figures import ICH, PROB_CMAP, new_figure

# ---------------------------------------------------------------- (g) patient strip


@dataclass
class PatientStrip:
    patient: int
    slices: np.ndarray  # slice numbers, ascending
    probs: np.ndarray
    labels: np.ndarray
    label: int  # patient label
    decision: bool | None  # patient decision of the run's patient rule
    threshold: float | None = None  # its own voting threshold (its outer fold's), if any


def strip_figure(strips: list[PatientStrip], threshold: float | None, source: str) -> Figure:
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
        flagged = s.slices[s.probs >= (threshold if s.threshold is None else s.threshold)]
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
            label="Flagged (P ≥ its outer fold's threshold)"
            if threshold is None
            else f"Flagged (P ≥ {threshold:.2f})",
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
