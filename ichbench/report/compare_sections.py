"""What a comparison page shows once rather than once per run: the runs' curves overlaid
on shared axes (each vote's ROC on its test slices, each mean validation F1 curve with
its voting threshold), and a figure that would be identical across runs (the dataset's
distributions, for runs on the same dataset and test patients) replaced by a pointer to
the first run's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from ichbench.report import figures as F
from ichbench.report.page import RunReport, Section, figure_out
from ichbench.views.run_data import RunData

OVERLAY_ID = "compare-curves"
SHARED_FIGURES = ("fig-dataset",)  # drawn from the dataset and split alone


@dataclass
class _RunCurves:
    label: str
    colour: str
    roc: tuple[np.ndarray, np.ndarray, float] | None  # fpr, tpr, auc of the vote on test
    mean_curve: tuple[np.ndarray, np.ndarray] | None  # threshold, mean validation F1
    threshold: float | None


def run_label(data: RunData) -> str:
    """A run in a legend: the random end of its id (what `show` accepts) and its
    strategies."""
    strategies = ", ".join(data.run.get("strategies") or []) or "no strategy"
    return f"{data.run_id[-6:]} ({data.run.get('backbone')}; {strategies})"


def _curves(data: RunData, colour: str) -> _RunCurves:
    from sklearn.metrics import roc_auc_score, roc_curve

    roc = None
    p = data.preds(None, "test")
    ok = np.isfinite(p["prob"])
    y, s = p["label"][ok], p["prob"][ok]
    if len(y) and y.min() != y.max():
        fpr, tpr, _ = roc_curve(y, s)
        roc = (fpr, tpr, float(roc_auc_score(y, s)))
    mean = data.curves.get(None)
    folds = [v for k, v in data.curves.items() if k is not None]
    if mean is None and folds:
        mean = (folds[0][0], np.nanmean(np.stack([f for _, f in folds]), axis=0))
    return _RunCurves(run_label(data), colour, roc, mean, data.threshold)


def overlay_figure(runs: list[_RunCurves]) -> Figure:
    """Left: each run's vote ROC on its test slices. Right: each run's mean validation F1
    against the threshold, its voting threshold dotted."""
    fig = F.new_figure(13, 5.6)
    roc_ax, thr_ax = fig.subplots(1, 2)
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="Chance")
    for run in runs:
        if run.roc is not None:
            fpr, tpr, auc = run.roc
            roc_ax.plot(
                fpr,
                tpr,
                color=run.colour,
                linewidth=2,
                drawstyle="steps-post",
                label=f"{run.label}: AUC {auc:.3f}",
            )
        if run.mean_curve is not None:
            thr, f1 = run.mean_curve
            thr_ax.plot(thr, f1, color=run.colour, linewidth=2, label=run.label)
        if run.threshold is not None:
            thr_ax.axvline(run.threshold, color=run.colour, linestyle="--", linewidth=1.1)
    roc_ax.set_xlim(-0.01, 1.01)
    roc_ax.set_ylim(-0.01, 1.01)
    roc_ax.set_aspect("equal")
    roc_ax.grid(True)
    roc_ax.set_xlabel("False positive rate (1 − specificity)")
    roc_ax.set_ylabel("True positive rate (sensitivity)")
    roc_ax.set_title("The votes' ROC on the test slices")
    roc_ax.legend(loc="lower right", fontsize=8.5)
    thr_ax.set_xlim(0, 1)
    thr_ax.set_ylim(0, 1.02)
    thr_ax.grid(True)
    thr_ax.set_xlabel("Decision threshold on P(ICH)")
    thr_ax.set_ylabel("Mean validation F1 of the folds (slice level)")
    thr_ax.set_title("Mean F1 against threshold; dashed: each voting threshold")
    thr_ax.legend(loc="upper right", fontsize=8.5)
    return fig


def overlay_section(reports: list[RunReport]) -> Section:
    """The runs' curves on shared axes, or a note where no run has any."""
    section = Section(OVERLAY_ID, "Runs overlaid: ROC and threshold curves")
    runs = [_curves(r.data, F.fold_colour(i)) for i, r in enumerate(reports)]
    if not any(r.roc is not None or r.mean_curve is not None for r in runs):
        section.notes.append("No run has test predictions or validation curves to overlay.")
        return section
    without = [r.label for r in runs if r.roc is None]
    if without:
        section.notes.append(
            "No ROC (no test predictions with both classes): " + "; ".join(without) + "."
        )
    with F.style():
        fig = overlay_figure(runs)
    section.figure = figure_out(
        fig,
        "Runs overlaid",
        "Each run's vote on its own test slices (left; AUC in the legend) and the mean of "
        "its folds' validation F1 curves with its voting threshold dashed (right), so that "
        "the runs read on one pair of axes. Runs on different test patients are not paired "
        "by these curves; the paired comparison table says when they are.",
    )
    return section


def drop_repeated_figures(reports: list[RunReport]) -> None:
    """A figure drawn from the dataset and the test patients alone is shown for the first
    run that has it; a later run on the same dataset (same hash) and the same test
    patients points to it instead of repeating it."""
    first: dict[tuple, str] = {}
    for report in reports:
        data = report.data
        key = (data.run.get("dataset_hash"), tuple(sorted(data.test_patients)))
        if key[0] is None:
            continue
        owner = first.setdefault(key, data.run_id)
        if owner == data.run_id:
            continue
        for section in report.sections:
            if section.figure is not None and section.id.split("--")[0] in SHARED_FIGURES:
                section.figure = None
                section.notes.append(
                    f"The same as run {owner}'s figure above: the same dataset "
                    f"({str(key[0])[:12]}) and the same test patients."
                )
