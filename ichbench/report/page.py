"""What a report is made of, independent of how it is written out: sections of one run
(a table, a figure, notes on what could not be shown) and the options that choose them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ichbench.views import RunData, TableData

SECTION_IDS = (
    "provenance",
    "config",
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
    number: int = 0  # its place among the page's figures, from 1 (`number_figures`)


@dataclass
class Section:
    id: str
    title: str
    table: TableData | None = None
    figure: FigureOut | None = None
    notes: list[str] = field(default_factory=list)
    paper: str = ""  # the paper's counterpart ("Fig. 4"), cited in the caption


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


def number_figures(sections: list[Section]) -> None:
    """Number the figures 1, 2, ... in the order the page shows them. The paper's own
    numbers do not follow this page's order (its t-SNE, Fig. 6, comes after its Grad-CAM,
    Fig. 7, here), so they are cited in the captions instead of numbering the figures."""
    n = 0
    for s in sections:
        if s.figure is not None:
            n += 1
            s.figure.number = n


def heading(s: Section) -> str:
    """A section's heading, as the page and its contents list show it."""
    if s.figure is not None and s.figure.number:
        return f"Figure {s.figure.number}. {s.title}"
    return s.title


def caption(s: Section) -> str:
    """A figure's caption: its number, what it shows, and the paper's figure it matches."""
    text = s.figure.caption if s.figure is not None else ""
    if s.paper:
        text = f"{text.rstrip()} Compare the paper's {s.paper}."
    number = s.figure.number if s.figure is not None else 0
    return f"Figure {number}. {text}" if number else text


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
