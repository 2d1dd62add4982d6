"""Sections that need more than the store: the run's dataset (reloaded through its
stored configuration) and its fold checkpoints, both through ichbench.checkpoints.

What is missing or has changed since the run becomes a note in the section; the rest of
the report is written regardless.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ichbench.errors import IchbenchError
from ichbench.paths import run_dir
from ichbench.report import figures as F
from ichbench.report import model_figures as MF
from ichbench.report.page import ReportOptions, Section, figure_out
from ichbench.views import RunData

# what an old or foreign stored configuration may raise on its way to a dataset
_LOAD_ERRORS = (IchbenchError, OSError, ValueError, TypeError, KeyError)


def load_dataset(data: RunData):
    """The run's dataset reloaded through its config (normally a cache hit), or why not:
    (dataset, None) or (None, the reason in words)."""
    from ichbench.checkpoints import load_run_dataset

    cfg = data.config
    if not cfg.get("data"):
        return None, "the run's configuration names no dataset"
    try:
        dataset = load_run_dataset(cfg)
    except _LOAD_ERRORS as exc:
        return None, f"the dataset {cfg['data']!r} could not be loaded ({exc})"
    expected = data.run.get("dataset_hash")
    if expected and dataset.dataset_hash != expected:
        return None, (
            f"the dataset {cfg['data']!r} has changed since the run (hash "
            f"{dataset.dataset_hash}, the run used {expected})"
        )
    return dataset, None


def load_models(data: RunData, db: Path):
    from ichbench.checkpoints import load_fold_models

    # only folds whose rows are in the store: a checkpoint renamed into place just before
    # a crash belongs to no recorded fold and must not be shown as one
    recorded = sorted(int(f["fold"]) for f in data.folds if f["status"] == "finished")
    return load_fold_models(db, data.run_id, recorded)


def _model_notes(
    data: RunData, models, dataset, problem: str | None, db: Path, needs: str
) -> list[str]:
    notes = []
    if dataset is None:
        notes.append(f"{needs} needs the run's images, but {problem}.")
    if models is None or not models.any:
        folder = run_dir(db, data.run_id)
        detail = "; ".join(models.problems) if models is not None and models.problems else ""
        notes.append(
            f"Fold checkpoints missing: {needs} needs the trained fold models, "
            f"and none could be loaded from {folder}" + (f" ({detail})." if detail else ".")
        )
    elif models.problems:
        notes.append(
            "Some fold checkpoints are missing or unreadable: " + "; ".join(models.problems) + "."
        )
    return notes


def _vote_probs(data: RunData) -> dict[tuple[int, int], float]:
    p = data.preds(None, "test")
    return {
        (int(a), int(b)): float(c)
        for a, b, c in zip(p["patient_id"], p["slice"], p["prob"], strict=True)
    }


def _cam_rows(dataset, data: RunData, probs: dict, n: int) -> tuple[list[int], str]:
    """Test ICH slices to explain, at most two per patient so one patient does not fill
    the page: the most confident ones and, for honesty, the least confident ones.
    Returns the rows and how they were chosen, in words for the caption."""
    rows = np.flatnonzero(
        np.isin(dataset.patient_ids, data.shown_test_patients) & (dataset.labels == 1)
    )
    if not len(rows):
        return [], ""

    def score(r: int) -> float:
        key = (int(dataset.patient_ids[r]), int(dataset.slice_numbers[r]))
        if probs:
            return probs.get(key, -1.0)
        return float(dataset.masks[r].sum()) if dataset.masks is not None else 0.0

    ordered = sorted(
        rows.tolist(),
        key=lambda r: (-score(r), int(dataset.patient_ids[r]), int(dataset.slice_numbers[r])),
    )
    per_patient: dict[int, int] = {}
    capped = []
    for r in ordered:
        pid = int(dataset.patient_ids[r])
        if per_patient.get(pid, 0) < 2:
            capped.append(r)
            per_patient[pid] = per_patient.get(pid, 0) + 1
    order = "by vote probability" if probs else "by lesion size"
    if len(capped) <= n:
        return capped, f"all {len(capped)} test ICH slices allowed by that cap, {order}"
    low = n // 4 if probs else 0
    if not low:
        return capped[:n], f"the first {n} test ICH slices {order}"
    return (
        capped[: n - low] + capped[-low:],
        f"the {n - low} most and the {low} least confident test ICH slices",
    )


def gradcam_section(
    data: RunData,
    dataset,
    problem: str | None,
    models,
    db: Path,
    options: ReportOptions,
    section: Section,
) -> None:
    from ichbench.report.cam import grad_cam

    section.notes += _model_notes(data, models, dataset, problem, db, "Grad-CAM")
    if dataset is None or models is None or not models.any:
        return
    probs = _vote_probs(data)
    rows, chosen = _cam_rows(dataset, data, probs, options.cam_slices)
    if not rows:
        section.notes.append("The test set has no ICH slice to explain.")
        return
    fold_models = [models.models[k] for k in sorted(models.models)]
    images = np.asarray(dataset.images[rows])
    try:
        cams = grad_cam(fold_models, rows, dataset)
    except (ValueError, RuntimeError) as exc:
        section.notes.append(f"Grad-CAM could not be computed: {exc}")
        return
    thr = data.threshold
    panels = []
    for i, r in enumerate(rows):
        pid, sl = int(dataset.patient_ids[r]), int(dataset.slice_numbers[r])
        prob = probs.get((pid, sl))
        hit = None if prob is None or thr is None else bool(prob >= thr)
        if prob is None:
            sub = "vote probability n/a"
        else:
            sub = f"P(ICH) {prob:.2f} · " + ("flagged" if hit else "missed")
        mask = None if dataset.masks is None else np.asarray(dataset.masks[r])
        panels.append(
            MF.CamPanel(
                image=images[i, 0],
                cam=cams[i],
                mask=mask,
                title=f"Patient {pid:03d}, slice {sl}",
                subtitle=sub,
                hit=hit,
            )
        )
    folds = ", ".join(str(m.fold) for m in fold_models)
    with F.style():
        fig = MF.gradcam_figure(panels, f"Grad-CAM of the ICH class, mean over fold models {folds}")
    mask_note = (
        "the ground-truth hemorrhage mask is outlined in cyan"
        if dataset.masks is not None
        else "this dataset has no masks to outline"
    )
    section.figure = figure_out(
        fig,
        "Grad-CAM",
        f"Grad-CAM (pytorch-grad-cam) of the ICH logit, averaged over the fold models "
        f"{_combined_by(data)}. Slices: at most two per test patient; {chosen}. "
        f"{mask_note.capitalize()}. Left: the CT (first window); right: the heat map over "
        "it. Titles: the vote's probability, green when flagged at the voting threshold.",
    )


def tsne_section(
    data: RunData,
    dataset,
    problem: str | None,
    models,
    db: Path,
    options: ReportOptions,
    section: Section,
) -> None:
    from ichbench.checkpoints import fresh_model
    from ichbench.report.embeddings import embed, separation, tsne_2d

    section.notes += _model_notes(data, models, dataset, problem, db, "t-SNE")
    if dataset is None or models is None or not models.any:
        return
    fold = data.best_fold()
    if fold not in models.models:
        fold = sorted(models.models)[0]
    fm = models.models[fold]
    rows = np.flatnonzero(np.isin(dataset.patient_ids, data.shown_test_patients))
    seed = int(data.run.get("seed") or 0)
    if len(rows) > options.tsne_max:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(rows, options.tsne_max, replace=False))
    if len(rows) < 5:
        section.notes.append(f"Too few test slices ({len(rows)}) for t-SNE.")
        return
    labels = dataset.labels[rows]
    images = fm.rows_input(dataset, rows)
    try:
        before = fresh_model(str(data.run["backbone"]), fm.in_chans, seed, fold, fm.device)
        feats = {
            "before": embed(before.model, before.prepare(images)),
            "after": embed(fm.model, fm.prepare(images)),
        }
        points = {k: tsne_2d(v, seed) for k, v in feats.items()}
    except (ValueError, RuntimeError, IchbenchError) as exc:
        section.notes.append(f"t-SNE could not be computed: {exc}")
        return

    def subtitle(key: str) -> str:
        s = separation(feats[key], labels)
        return f"{feats[key].shape[1]}-d embedding" + (
            "" if s is None else f", class silhouette {s:.2f}"
        )

    panels = [
        MF.EmbeddingPanel(
            points["before"],
            "Before training",
            f"fresh {data.run['backbone']}, seed {seed} · " + subtitle("before"),
        ),
        MF.EmbeddingPanel(points["after"], f"After training (fold {fold})", subtitle("after")),
    ]
    with F.style():
        fig = MF.tsne_figure(panels, labels, f"t-SNE of {len(rows)} test slices")
    section.figure = figure_out(
        fig,
        "t-SNE of embeddings",
        "Each point is a test slice: the input of the network's final linear layer, "
        f"projected to two dimensions with t-SNE (scikit-learn). Left: the network as "
        f"initialised for fold {fold} before training (random weights, same seed rule as "
        f"the run); right: fold {fold}'s trained model (the fold with the best validation "
        "F1). The silhouette score (−1 to 1) measures how far apart the two classes lie "
        "in the full embedding.",
    )


def _combined_by(data: RunData) -> str:
    """What the fold models feed: the vote, or a second stage over their embeddings."""
    stage2 = data.config.get("stage2")
    if stage2 not in (None, "none"):
        return f"(stage 1: a second-stage {stage2} reads their slice embeddings for the vote)"
    return "that the vote combines"
