"""Sections drawn from the store alone: thresholds, confusion, ROC, the per-patient
strip, training history, and the dataset figure when the dataset itself is not at hand.

Each fills a `Section` with a figure, or with a note saying why there is none.
"""

from __future__ import annotations

import numpy as np

from ichbench.formatting import fmt
from ichbench.report import dataset_figures as DF
from ichbench.report import figures as F
from ichbench.report import patient_figures as PF
from ichbench.report import training_figures as TF
from ichbench.report import vote_figures as VF
from ichbench.report.page import Section, figure_out
from ichbench.views import RunData


def threshold_section(data: RunData, section: Section) -> None:
    curves = {k: v for k, v in data.curves.items() if k is not None}
    if not curves:
        section.notes.append("No validation curves were recorded for this run.")
        return
    mean = data.curves.get(None)
    if mean is None:
        thr = next(iter(curves.values()))[0]
        mean = (thr, np.nanmean(np.stack([f for _, f in curves.values()]), axis=0))
    outer_zero = [m["threshold"] for m in data.outer_metrics("slice") if m["outer_fold"] == 0]
    shown = outer_zero[0] if data.outer_folds > 1 and outer_zero else data.threshold
    with F.style():
        fig = VF.threshold_figure(curves, mean, shown)
    caption = (
        "Validation F1 (slice level) of each fold's model at every threshold from "
        "0.00 to 1.00; dots mark each fold's own threshold. The voting threshold is "
        "the peak of the mean curve"
    )
    caption += (
        f" ({fmt(shown)})."
        if shown is not None
        else "; the run did not finish, so none was chosen."
    )
    if data.outer_folds > 1:
        caption += (
            f" Shown: the folds of outer fold 0 of {data.outer_folds}; each outer fold chose "
            "its own threshold this way (see the tables)."
        )
    section.figure = figure_out(fig, "F1 against threshold", caption)


def _counts(metric: dict | None) -> dict[str, int] | None:
    if metric is None:
        return None
    return {k: int(metric[k]) for k in ("tp", "fp", "tn", "fn")}


def confusion_section(data: RunData, section: Section) -> None:
    s = data.metric("vote", "slice", "test")
    p = data.metric("vote", "patient", "test")
    if s is None and p is None:
        section.notes.append(f"No vote on the test set: the run is {data.status}.")
        return
    with F.style():
        fig = VF.confusion_figure(_counts(s), _counts(p), data.threshold)
    section.figure = figure_out(
        fig,
        "Confusion matrices",
        "The vote on the held-out test patients at the voting threshold. Rows are the "
        "ground truth; each cell gives the count and its share of the row (the diagonal "
        f"shares are specificity and sensitivity). Patient rule: "
        f"{data.run.get('patient_rule') or 'any'}.",
    )


def roc_section(data: RunData, section: Section) -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    curves: list[VF.RocCurve] = []
    skipped: list[str] = []
    sources = [(f"Fold {k}", k, F.fold_colour(k), False) for k in data.fold_indices]
    sources.append(("Vote", None, F.VOTE, True))
    for label, fold, colour, strong in sources:
        p = data.preds(fold, "test")
        ok = np.isfinite(p["prob"])
        y, s = p["label"][ok], p["prob"][ok]
        if len(y) == 0:
            continue  # not recorded: the tables say which folds are missing
        if y.min() == y.max():
            skipped.append(label)
            continue
        fpr, tpr, _ = roc_curve(y, s)
        curves.append(VF.RocCurve(label, fpr, tpr, float(roc_auc_score(y, s)), colour, strong))
    if not curves:
        section.notes.append("No test predictions with both classes were recorded.")
        return
    if skipped:
        section.notes.append(
            f"Not drawn (no test predictions with both classes): {', '.join(skipped)}."
        )
    vote = data.metric("vote", "slice", "test")
    point = None
    if vote is not None and vote["tp"] + vote["fn"] and vote["fp"] + vote["tn"]:
        point = (vote["fp"] / (vote["fp"] + vote["tn"]), vote["tp"] / (vote["tp"] + vote["fn"]))
    with F.style():
        fig = VF.roc_figure(curves, point, data.threshold)
    section.figure = figure_out(
        fig,
        "ROC curves",
        "Receiver operating characteristic of each fold model and of the vote on the test "
        "slices (scikit-learn roc_curve on the stored predictions). The star is the vote's "
        "operating point at the voting threshold.",
    )


PAIRED_ID = "paired"


def paired_section(store, run_a: dict, run_b: dict) -> Section:
    """Two runs on the same test patients: B − A for every vote metric with its paired
    95% CI (a forest plot and the table `ichbench compare A B` prints), or the line that
    says why they cannot be paired."""
    from ichbench.views.paired import paired_result, paired_table

    section = Section(PAIRED_ID, "Paired comparison (B − A, same test patients)")
    result = paired_result(store, run_a, run_b)
    if result["note"]:
        section.notes.append(result["note"])
        return section
    section.table = paired_table(result)
    with F.style():
        fig = VF.paired_figure(result["rows"], result["a"], result["b"])
    section.figure = figure_out(
        fig,
        "Paired differences",
        f"Each vote metric of run B ({result['b']}) minus run A ({result['a']}) on the same "
        "test patients, with its 95% CI from a paired bootstrap over patients (each with "
        "all its slices); an interval that crosses 0 is no evidence of a difference.",
    )
    return section


def reliability_section(data: RunData, section: Section) -> None:
    from ichbench.calibration import reliability

    curves = []
    sources = [(f"Fold {k}", k, F.fold_colour(k), False) for k in data.fold_indices]
    sources.append(("Vote", None, F.VOTE, True))
    vote = data.metric("vote", "slice", "test")
    if vote is not None and vote.get("ece") is None:
        sources.pop()  # the vote's scores are no probabilities (fractions of folds)
    for label, fold, colour, strong in sources:
        p = data.preds(fold, "test")
        ok = np.isfinite(p["prob"]) & (p["prob"] >= 0) & (p["prob"] <= 1)
        if ok.any():
            curves.append((label, reliability(p["label"][ok], p["prob"][ok]), colour, strong))
    if not curves:
        section.notes.append("No test predictions were recorded.")
        return
    with F.style():
        fig = VF.reliability_figure(curves)
    section.figure = figure_out(
        fig,
        "Reliability diagram",
        "How far each model's scores can be read as probabilities: test slices in ten "
        "equal-width score bins, the observed ICH fraction of each bin against its mean "
        "score (on the dotted diagonal when calibrated), and the bins' sizes below. ECE: "
        "the count-weighted mean gap (also stored per model as metrics.ece, with the Brier "
        "score as metrics.brier).",
    )


def _vote_decisions(data: RunData) -> dict[int, bool] | None:
    """The vote's stored patient decisions on the test set; None when the run was
    recorded without them."""
    stored = data.patients.get(None)
    if stored is None:
        return None
    test = np.asarray(stored.split) == "test"
    return {
        int(p): bool(d) for p, d in zip(stored.patient_id[test], stored.decision[test], strict=True)
    }


def strip_section(data: RunData, section: Section) -> None:
    p = data.preds(None, "test")
    cuts = data.patient_cuts
    if not len(p["prob"]) or not cuts:
        section.notes.append(f"No vote on the test set: the run is {data.status}.")
        return
    thr = None if data.threshold is None else float(data.threshold)
    rule = data.run.get("patient_rule") or "any"
    decisions = _vote_decisions(data)
    if decisions is None:
        section.notes.append(
            f"This run was recorded without its patient decisions, so the decision of the "
            f"patient rule ({rule}) is not shown; the patient-level table gives its metrics."
        )
    strips = []
    for pid in np.unique(p["patient_id"]):
        rows = np.flatnonzero(p["patient_id"] == pid)
        rows = rows[np.argsort(p["slice"][rows], kind="stable")]
        strips.append(
            PF.PatientStrip(
                int(pid),
                p["slice"][rows],
                p["prob"][rows],
                p["label"][rows],
                int(p["label"][rows].max()),
                (decisions or {}).get(int(pid)),
                cuts.get(int(pid)),
            )
        )
    with F.style():
        fig = PF.strip_figure(strips, thr, f"run {data.run_id}")
    section.figure = figure_out(
        fig,
        "Per-patient strip",
        "One row per test patient, slices in order. Colour: the vote's probability of ICH; "
        "triangles: slices labelled ICH; outlined squares: slices flagged at the voting "
        + ("threshold of the patient's outer fold" if thr is None else f"threshold ({thr:.2f})")
        + ". Beside each row: the patient's label → the decision of "
        f"the patient rule ({rule}) as the run recorded it; green when correct, red when "
        "not.",
    )


def training_section(data: RunData, section: Section) -> None:
    if not data.epochs:
        section.notes.append("No epochs were recorded for this run.")
        return
    best = {
        int(f["fold"]): int(f["best_epoch"]) for f in data.folds if f.get("best_epoch") is not None
    }
    with F.style():
        fig = TF.training_figure(data.epochs, best)
    section.figure = figure_out(
        fig,
        "Training history",
        "Training and validation cross-entropy and the best validation F1 over thresholds "
        "after each epoch; the star marks the epoch whose weights were kept.",
    )


def distribution_section(data: RunData, dataset, problem: str | None, section: Section) -> None:
    """Class balance and bleeding positions: from the dataset when it could be reloaded,
    else from the slices the store recorded predictions for."""
    if dataset is not None:
        labels, pids, pos = dataset.labels, dataset.patient_ids, dataset.positions
        source = str(data.run.get("dataset"))
        how = "from the dataset itself, reloaded through the run's configuration"
    else:
        labels, pids, pos = _store_slices(data)
        source = "slices recorded in the store"
        how = "from the store's predictions (every recorded validation and test slice)"
        section.notes.append(f"Drawn from the store: {problem}.")
        if not len(labels):
            section.notes.append("No slices are recorded for this run.")
            return
    with F.style():
        fig = DF.distribution_figure(labels, pids, pos, data.test_patients, source)
    section.figure = figure_out(
        fig,
        "Dataset distributions",
        f"Class balance of slices and patients, split into the cross-validation pool and "
        f"the held-out test patients, and the ICH slices by relative position in the head "
        f"(0 = first slice, 1 = last; bars: ICH slice count, line: share of the bin's "
        f"slices that are ICH) — {how}.",
    )


def _store_slices(data: RunData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct (patient, slice) the run predicted on, with relative positions
    (slice − 1) / (slices − 1) as the loader defines them."""
    p = data.predictions
    if not len(p["prob"]):
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    keys = np.unique(np.stack([p["patient_id"], p["slice"], p["label"]], axis=1), axis=0)
    pids, slices, labels = keys[:, 0], keys[:, 1], keys[:, 2]
    _, first = np.unique(np.stack([pids, slices], axis=1), axis=0, return_index=True)
    pids, slices, labels = pids[first], slices[first], labels[first]
    count = {int(q): int(slices[pids == q].max()) for q in np.unique(pids)}
    pos = np.array([(s - 1) / max(count[int(q)] - 1, 1) for q, s in zip(pids, slices, strict=True)])
    return labels, pids, pos
