"""The report's external validation: a run's evaluations on other datasets, as a table
beside its own held-out test result and as a figure of each metric's 95% CI, so a drop
from the internal figure to another hospital's scans is seen at a glance.

A run without evaluations adds nothing to its report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ichbench.report.page import Section, figure_out
from ichbench.views import RunData
from ichbench.views.evaluation import LONG, evaluations_table, internal_metrics

SECTION_ID = "table-evaluations"
FIGURE_ID = "fig-evaluations"
DRAWN = (("patient", "sensitivity"), ("patient", "specificity"), ("patient", "f1"))
DRAWN_SLICE = ("slice", "f1")


def evaluation_sections(db: Path, data: RunData, suffix: str = "") -> list[Section]:
    """The table and the figure of a run's evaluations; none when it has none."""
    from ichbench.store import Store

    store = Store(db, create=False)
    evaluations = store.evaluations(data.run_id)
    if not evaluations:
        return []
    internal = internal_metrics(store, data.run_id)
    table = Section(
        SECTION_ID + suffix,
        "External validation",
        table=evaluations_table(data.run, internal, evaluations, SECTION_ID + suffix),
    )
    figure = Section(FIGURE_ID + suffix, "External validation against the internal test set")
    figure.figure = figure_out(
        _forest(data, internal, evaluations),
        figure.title,
        "Each metric with its 95% CI: the run's own held-out test patients (grey) and "
        "each dataset it was evaluated on, with its models, threshold and patient rule "
        "unchanged. Slice F1 is missing for a dataset labelled per patient only.",
    )
    return [table, figure]


def _forest(data: RunData, internal: dict[str, dict], evaluations: list[dict[str, Any]]):
    from ichbench.report import figures as F

    own = _plain(f"{data.run.get('dataset')} (own test set)")
    rows = [(own, internal, True)] if internal else []
    rows += [
        (_plain(f"{e['dataset']} · {e['evaluation_id'][-6:]}"), e["metrics"], False)
        for e in evaluations
    ]
    panels = [*DRAWN, DRAWN_SLICE]
    with F.style():
        fig = F.new_figure(3.0 * len(panels), 0.55 * len(rows) + 1.6)
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        y = np.arange(len(rows))[::-1]
        for ax, (scope, name) in zip(axes, panels):
            for yi, (_, metrics, own) in zip(y, rows):
                m = metrics.get(scope)
                if m is None or m.get(name) is None:
                    continue
                colour = "#888888" if own else F.VOTE
                lo, hi = m.get(f"{name}_lo"), m.get(f"{name}_hi")
                if lo is not None and hi is not None:
                    ax.plot([lo, hi], [yi, yi], color=colour, linewidth=2)
                ax.plot([m[name]], [yi], "o", color=colour)
            ax.set_xlim(-0.02, 1.02)
            ax.set_title(f"{scope.capitalize()} {LONG[name]}", fontsize=10.5)
            ax.grid(axis="x")
        axes[0].set_yticks(y, [label for label, _, _ in rows])
        return fig


def _plain(label: str) -> str:
    """A dataset's name as literal text: matplotlib reads `$...$` as mathematics, and a
    folder named with dollar signs would otherwise fail the whole report."""
    return label.replace("$", r"\$")
