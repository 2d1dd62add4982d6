"""The shared look of every report figure and its export as PNG, drawn with matplotlib's
object API on the Agg canvas.

No pyplot: a `Figure` is created and rendered directly, so building a report in a
long-lived process or a test keeps no global figure state and needs no display. One
style and one palette for every figure, so the pictures sit together on a slide: healthy
is always blue, ICH always red, the vote always black, each fold always the same colour.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib
from matplotlib.figure import Figure

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
