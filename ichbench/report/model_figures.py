"""The figures drawn from fold models rather than the store: Grad-CAM maps over test
slices and t-SNE of embeddings, in the same style and palette as every other figure
(ichbench.report.figures)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ichbench.report.figures import CAM_CMAP, HEALTHY, ICH, MASK_COLOUR, VOTE, new_figure

# ---------------------------------------------------------------- (e) Grad-CAM


@dataclass
class CamPanel:
    image: np.ndarray  # (H, W) uint8, the first window
    cam: np.ndarray  # (H, W) in [0, 1]
    mask: np.ndarray | None  # (H, W) 1 = hemorrhage
    title: str
    subtitle: str
    hit: bool | None  # flagged at the voting threshold; None when there is no vote


def gradcam_figure(panels: list[CamPanel], heading: str, columns: int = 2) -> Figure:
    """Each slice twice: the CT alone, and the Grad-CAM heat map over it with the
    ground-truth mask outlined, so the reader can judge both the lesion and the map."""
    n = len(panels)
    cols = min(columns, n)
    rows = int(np.ceil(n / cols))
    fig = new_figure(3.0 * 2 * cols, 3.3 * rows + 1.6)
    body, foot = fig.subfigures(2, 1, height_ratios=[3.3 * rows, 1.1])
    grid = body.subfigures(rows, cols, squeeze=False)
    for k, panel in enumerate(panels):
        sub = grid[k // cols][k % cols]
        ax_ct, ax_cam = sub.subplots(1, 2)
        ax_ct.imshow(panel.image, cmap="gray", vmin=0, vmax=255)
        ax_cam.imshow(panel.image, cmap="gray", vmin=0, vmax=255)
        ax_cam.imshow(
            panel.cam, cmap=CAM_CMAP, vmin=0, vmax=1, alpha=0.42, interpolation="bilinear"
        )
        if panel.mask is not None and panel.mask.any():
            for ax in (ax_ct, ax_cam):
                ax.contour(
                    panel.mask.astype(float), levels=[0.5], colors=MASK_COLOUR, linewidths=1.3
                )
        for ax in (ax_ct, ax_cam):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        ax_ct.set_title("CT", fontsize=9.5, fontweight="normal")
        ax_cam.set_title("Grad-CAM", fontsize=9.5, fontweight="normal")
        colour = {True: "#1E7B34", False: ICH}.get(panel.hit, VOTE)
        sub.suptitle(
            f"{panel.title}\n{panel.subtitle}", fontsize=10.5, color=colour, fontweight="bold"
        )
    for k in range(n, rows * cols):
        grid[k // cols][k % cols].set_visible(False)
    handles = [
        Line2D([], [], color=MASK_COLOUR, linewidth=2, label="Ground-truth mask"),
        Patch(color="#1E7B34", label="Flagged at the voting threshold"),
        Patch(color=ICH, label="Missed"),
    ]
    foot.legend(handles=handles, loc="center left", bbox_to_anchor=(0.02, 0.5), ncols=1)
    if panels:
        cax = foot.add_axes((0.5, 0.5, 0.42, 0.16))
        scale = ScalarMappable(norm=Normalize(0, 1), cmap=CAM_CMAP)
        foot.colorbar(
            scale,
            cax=cax,
            orientation="horizontal",
            label="Grad-CAM of the ICH class (0 = none, 1 = strongest)",
        )
    fig.suptitle(heading)
    return fig


# ---------------------------------------------------------------- (f) t-SNE


@dataclass
class EmbeddingPanel:
    points: np.ndarray  # (N, 2)
    title: str
    subtitle: str


def tsne_figure(panels: list[EmbeddingPanel], labels: np.ndarray, heading: str) -> Figure:
    """Test-slice embeddings (the input of the final linear layer) in two dimensions,
    coloured by ground truth: before training and after."""
    labels = np.asarray(labels).astype(int)
    fig = new_figure(6.2 * len(panels), 6)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, panel in zip(axes, panels, strict=True):
        for cls, colour, name, size in ((0, HEALTHY, "Healthy", 14), (1, ICH, "ICH", 22)):
            pts = panel.points[labels == cls]
            ax.scatter(
                pts[:, 0],
                pts[:, 1],
                s=size,
                color=colour,
                alpha=0.7,
                edgecolors="white",
                linewidths=0.3,
                label=f"{name} ({len(pts)})",
            )
        ax.set_title(f"{panel.title}\n{panel.subtitle}")
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="best", markerscale=1.5)
    fig.suptitle(heading)
    return fig
