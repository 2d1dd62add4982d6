"""The training-history figure: each fold's learning curves and the epoch it kept."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ichbench.report.figures import fold_colour, new_figure

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
