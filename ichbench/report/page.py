"""What a report is made of, independent of how it is written out: sections of one run
(a table, a figure, notes on what could not be shown) and the options that choose them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ichbench.views import RunData, TableData

SECTION_IDS = (
    "provenance",
    "fig-dataset",
    "table-slice",
    "table-patient",
    "fig-threshold",
    "fig-confusion",
    "fig-roc",
    "fig-calibration",
    "fig-strip",
    "fig-gradcam",
    "fig-tsne",
    "fig-training",
)
COMPARE_ID = "table-compare"


@dataclass
class ReportOptions:
    cam: bool = True
    tsne: bool = True
    cam_slices: int = 8  # test ICH slices shown with Grad-CAM
    tsne_max: int = 1500  # test slices embedded (a seeded sample beyond that)


@dataclass
class FigureOut:
    title: str
    caption: str
    png: bytes
    width_in: float = 10.0  # the figure's width in inches: its natural size on the page
    filename: str = ""


@dataclass
class Section:
    id: str
    title: str
    table: TableData | None = None
    figure: FigureOut | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class RunReport:
    data: RunData
    sections: list[Section]


@dataclass
class ReportResult:
    html: Path
    markdown: Path
    figures: list[Path]
    sections: list[str]
    notes: list[str]
    wall_s: float


def figure_out(fig, title: str, caption: str) -> FigureOut:
    """A matplotlib figure as PNG bytes, at its natural width."""
    from ichbench.report import figures as F

    return FigureOut(title, caption, F.png_bytes(fig), width_in=float(fig.get_figwidth()))


def title(reports: list[RunReport]) -> str:
    if len(reports) == 1:
        return f"ICH classification report — run {reports[0].data.run_id}"
    return f"ICH classification report — {len(reports)} runs compared"


def summary(data: RunData) -> str:
    """One line naming what ran: backbone, strategies, dataset, preset, seed."""
    run = data.run
    pre = "pretrained" if run.get("pretrained") else "not pretrained"
    strategies = ", ".join(run.get("strategies") or []) or "no imbalance strategy"
    return (
        f"{run.get('backbone')} ({pre}) · {strategies} · {run.get('dataset')} · "
        f"preset {run.get('preset')} · seed {run.get('seed')}"
    )
