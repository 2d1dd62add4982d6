"""Assembles a report: sections of tables and figures for each run, written as one
self-contained HTML page (images inline as base64 PNG, inline CSS: it opens offline in
any browser and can be mailed as one file) and as Markdown with the PNGs beside it.

Tables and curves come from the store alone. The dataset figure, Grad-CAM and t-SNE
also need the run's dataset and fold checkpoints; when those are missing or have
changed, their sections say so and the rest of the report is still written.
"""

from __future__ import annotations

import base64
import html
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ichbench import __version__
from ichbench.errors import IchbenchError
from ichbench.report import figures as F
from ichbench.report.tables import (
    RunData,
    TableData,
    compare_table,
    fmt,
    load_run_data,
    metrics_table,
    provenance_table,
    status_note,
)

Progress = Callable[[str, int, int], None]
"""progress(description, steps done, steps in total)"""

SECTION_IDS = ("provenance", "fig-dataset", "table-slice", "table-patient", "fig-threshold",
               "fig-confusion", "fig-roc", "fig-strip", "fig-gradcam", "fig-tsne",
               "fig-training")
COMPARE_ID = "table-compare"
RUN_STEPS = ("Reading the store", "Drawing figures from the store", "Loading the dataset",
             "Loading fold models", "Grad-CAM", "t-SNE")


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


def default_out(run_ids: Sequence[str]) -> Path:
    return Path(f"report-{run_ids[0]}") if len(run_ids) == 1 else Path("report-compare")


def total_steps(n_runs: int) -> int:
    return n_runs * len(RUN_STEPS) + (1 if n_runs > 1 else 0) + 1


# ---------------------------------------------------------------- entry point


def build_report(run_ids: Sequence[str], *, db: Path, out: Path | None = None,
                 options: ReportOptions | None = None, progress: Progress | None = None,
                 registry=None, cache_dir: Path | None = None) -> ReportResult:
    """Write the report of one run (or the comparison of several) into `out`.

    Raises StoreError when the store is missing or a run id is unknown; everything that
    only limits what can be shown (no checkpoints, no dataset) becomes a note instead.
    """
    from ichbench.paths import cache_dir as default_cache
    from ichbench.plugins import get_registry
    from ichbench.store import Store

    started = time.perf_counter()
    options = options or ReportOptions()
    store = Store(db, create=False)
    ids = list(dict.fromkeys(store.get_run(r)["run_id"] for r in run_ids))
    out = Path(out) if out is not None else default_out(ids)
    context = _Context(db=Path(db), registry=registry or get_registry(),
                       cache_dir=cache_dir or default_cache(), options=options,
                       total=total_steps(len(ids)), progress=progress)
    baselines = store.baselines()
    reports: list[RunReport] = []
    for rid in ids:
        context.step(f"{rid}: reading the store")
        data = load_run_data(store, rid)
        suffix = "" if len(ids) == 1 else f"--{rid}"
        reports.append(RunReport(data, _run_sections(data, baselines, context, suffix)))
    compare = None
    if len(reports) > 1:
        context.step("Comparing runs")
        compare = Section(COMPARE_ID, "Runs compared",
                          table=compare_table([r.data for r in reports], baselines,
                                              COMPARE_ID))
    context.step("Writing the report")
    result = _write(out, reports, compare, Path(db))
    result.wall_s = time.perf_counter() - started
    return result


@dataclass
class _Context:
    db: Path
    registry: Any
    cache_dir: Path
    options: ReportOptions
    total: int
    progress: Progress | None
    done: int = 0

    def step(self, description: str) -> None:
        if self.progress is not None:
            self.progress(description, self.done, self.total)
        self.done += 1


# ---------------------------------------------------------------- sections of one run


def _run_sections(data: RunData, baselines: list[dict], ctx: _Context,
                  suffix: str) -> list[Section]:
    rid = data.run_id
    sec: dict[str, Section] = {}

    def add(section_id: str, title: str) -> Section:
        sec[section_id] = Section(section_id + suffix, title)
        return sec[section_id]

    add("provenance", "Configuration and provenance").table = provenance_table(
        data, "provenance" + suffix)
    add("table-slice", "Slice level (Table I)").table = metrics_table(
        data, baselines, "slice", "table-slice" + suffix)
    add("table-patient", "Patient level (Table III)").table = metrics_table(
        data, baselines, "patient", "table-patient" + suffix)

    ctx.step(f"{rid}: drawing figures from the store")
    _threshold_section(data, add("fig-threshold", "F1 against threshold (Figure 4)"))
    _confusion_section(data, add("fig-confusion", "Confusion matrices (Figures 5 and 8)"))
    _roc_section(data, add("fig-roc", "ROC curves"))
    _strip_section(data, ctx, add("fig-strip", "Per-patient view of the vote"))
    _training_section(data, add("fig-training", "Training history"))

    ctx.step(f"{rid}: loading the dataset")
    dataset, data_problem = _load_dataset(data, ctx)
    _distribution_section(data, dataset, data_problem,
                          add("fig-dataset", "Dataset distributions (Figure 1)"))

    cam_sec = add("fig-gradcam", "Grad-CAM on test ICH slices (Figure 7)")
    tsne_sec = add("fig-tsne", "t-SNE of test-slice embeddings (Figure 6)")
    ctx.step(f"{rid}: loading fold models")
    models = None
    if ctx.options.cam or ctx.options.tsne:
        models = _load_models(data, ctx)
    ctx.step(f"{rid}: Grad-CAM")
    if not ctx.options.cam:
        cam_sec.notes.append("Grad-CAM was not requested (--no-cam).")
    else:
        _gradcam_section(data, dataset, data_problem, models, ctx, cam_sec)
    ctx.step(f"{rid}: t-SNE")
    if not ctx.options.tsne:
        tsne_sec.notes.append("t-SNE was not requested (--no-tsne).")
    else:
        _tsne_section(data, dataset, data_problem, models, ctx, tsne_sec)

    note = status_note(data)
    if note:
        for s in sec.values():
            if s.table is not None and s.id.startswith("table-"):
                s.notes.insert(0, note)
    return [sec[k] for k in SECTION_IDS]


def _figure(fig, title: str, caption: str) -> FigureOut:
    return FigureOut(title, caption, F.png_bytes(fig), width_in=float(fig.get_figwidth()))


def _threshold_section(data: RunData, section: Section) -> None:
    curves = {k: v for k, v in data.curves.items() if k is not None}
    if not curves:
        section.notes.append("No validation curves were recorded for this run.")
        return
    mean = data.curves.get(None)
    if mean is None:
        thr = next(iter(curves.values()))[0]
        mean = (thr, np.nanmean(np.stack([f for _, f in curves.values()]), axis=0))
    with F.style():
        fig = F.threshold_figure(curves, mean, data.threshold)
    caption = ("Validation F1 (slice level) of each fold's model at every threshold from "
               "0.00 to 1.00; dots mark each fold's own threshold. The voting threshold is "
               "the peak of the mean curve")
    caption += f" ({fmt(data.threshold)})." if data.threshold is not None else \
        "; the run did not finish, so none was chosen."
    section.figure = _figure(fig, "F1 against threshold", caption)


def _counts(metric: dict | None) -> dict[str, int] | None:
    if metric is None:
        return None
    return {k: int(metric[k]) for k in ("tp", "fp", "tn", "fn")}


def _confusion_section(data: RunData, section: Section) -> None:
    s = data.metric("vote", "slice", "test")
    p = data.metric("vote", "patient", "test")
    if s is None and p is None:
        section.notes.append(f"No vote on the test set: the run is {data.status}.")
        return
    with F.style():
        fig = F.confusion_figure(_counts(s), _counts(p), data.threshold)
    section.figure = _figure(
        fig, "Confusion matrices",
        "The vote on the held-out test patients at the voting threshold. Rows are the "
        "ground truth; each cell gives the count and its share of the row (the diagonal "
        f"shares are specificity and sensitivity). Patient rule: "
        f"{data.run.get('patient_rule') or 'any'}.")


def _roc_section(data: RunData, section: Section) -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    curves: list[F.RocCurve] = []
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
        curves.append(F.RocCurve(label, fpr, tpr, float(roc_auc_score(y, s)), colour, strong))
    if not curves:
        section.notes.append("No test predictions with both classes were recorded.")
        return
    if skipped:
        section.notes.append(f"Not drawn (no test predictions with both classes): "
                             f"{', '.join(skipped)}.")
    vote = data.metric("vote", "slice", "test")
    point = None
    if vote is not None and vote["tp"] + vote["fn"] and vote["fp"] + vote["tn"]:
        point = (vote["fp"] / (vote["fp"] + vote["tn"]), vote["tp"] / (vote["tp"] + vote["fn"]))
    with F.style():
        fig = F.roc_figure(curves, point, data.threshold)
    section.figure = _figure(
        fig, "ROC curves",
        "Receiver operating characteristic of each fold model and of the vote on the test "
        "slices (scikit-learn roc_curve on the stored predictions). The star is the vote's "
        "operating point at the voting threshold.")


def _patient_rule(data: RunData, registry):
    try:
        return registry.create("patient", data.run.get("patient_rule") or "any")
    except IchbenchError:
        return None


def _strip_section(data: RunData, ctx: _Context, section: Section) -> None:
    from ichbench.vote import patient_decisions

    p = data.preds(None, "test")
    if not len(p["prob"]) or data.threshold is None:
        section.notes.append(f"No vote on the test set: the run is {data.status}.")
        return
    thr = float(data.threshold)
    rule = _patient_rule(data, ctx.registry)
    decisions: dict[int, bool] = {}
    if rule is not None:
        pids, _, _, dec = patient_decisions(p["patient_id"], p["slice"], p["label"],
                                            p["prob"], p["prob"] >= thr, rule, thr)
        decisions = {int(a): bool(b) for a, b in zip(pids, dec, strict=True)}
    else:
        section.notes.append(f"The patient rule {data.run.get('patient_rule')!r} is not "
                             "installed; patient decisions are not shown.")
    strips = []
    for pid in np.unique(p["patient_id"]):
        rows = np.flatnonzero(p["patient_id"] == pid)
        rows = rows[np.argsort(p["slice"][rows], kind="stable")]
        strips.append(F.PatientStrip(int(pid), p["slice"][rows], p["prob"][rows],
                                     p["label"][rows], int(p["label"][rows].max()),
                                     decisions.get(int(pid))))
    with F.style():
        fig = F.strip_figure(strips, thr, f"run {data.run_id}")
    section.figure = _figure(
        fig, "Per-patient strip",
        "One row per test patient, slices in order. Colour: the vote's probability of ICH; "
        "triangles: slices labelled ICH; outlined squares: slices flagged at the voting "
        f"threshold ({thr:.2f}). Beside each row: the patient's label → the decision of "
        f"the patient rule ({data.run.get('patient_rule') or 'any'}); green when correct, "
        "red when not.")


def _training_section(data: RunData, section: Section) -> None:
    if not data.epochs:
        section.notes.append("No epochs were recorded for this run.")
        return
    best = {int(f["fold"]): int(f["best_epoch"]) for f in data.folds
            if f.get("best_epoch") is not None}
    with F.style():
        fig = F.training_figure(data.epochs, best)
    section.figure = _figure(
        fig, "Training history",
        "Training and validation cross-entropy and the best validation F1 over thresholds "
        "after each epoch; the star marks the epoch whose weights were kept.")


# ---------------------------------------------------------------- dataset


def _load_dataset(data: RunData, ctx: _Context):
    """The run's dataset reloaded through its config (normally a cache hit), or why not."""
    from ichbench.data.resolve import resolve_dataset
    from ichbench.interfaces import LoadOptions

    cfg = data.config
    if not cfg.get("data"):
        return None, "the run's configuration names no dataset"
    try:
        source = resolve_dataset(str(cfg["data"]), ctx.registry)
        dataset = source.load(
            LoadOptions(image_size=int(cfg.get("image_size") or 64),
                        windows=tuple(cfg.get("windows") or ("brain",)),
                        exclude=tuple(cfg.get("exclude") or ())),
            ctx.cache_dir)
    except (IchbenchError, OSError) as exc:
        return None, f"the dataset {cfg['data']!r} could not be loaded ({exc})"
    expected = data.run.get("dataset_hash")
    if expected and dataset.dataset_hash != expected:
        return None, (f"the dataset {cfg['data']!r} has changed since the run (hash "
                      f"{dataset.dataset_hash}, the run used {expected})")
    return dataset, None


def _distribution_section(data: RunData, dataset, problem: str | None,
                          section: Section) -> None:
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
        fig = F.distribution_figure(labels, pids, pos, data.test_patients, source)
    section.figure = _figure(
        fig, "Dataset distributions",
        f"Class balance of slices and patients, split into the cross-validation pool and "
        f"the held-out test patients, and the ICH slices by relative position in the head "
        f"(0 = first slice, 1 = last; bars: ICH slice count, line: share of the bin's "
        f"slices that are ICH) — {how}.")


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


# ---------------------------------------------------------------- models, CAM, t-SNE


def _load_models(data: RunData, ctx: _Context):
    from ichbench.report.cam import load_fold_models, report_device

    # only folds whose rows are in the store: a checkpoint renamed into place just before
    # a crash belongs to no recorded fold and must not be shown as one
    recorded = sorted(f["fold"] for f in data.folds if f["status"] == "finished")
    return load_fold_models(ctx.db, data.run_id, recorded, ctx.registry, report_device())


def _model_notes(data: RunData, models, dataset, problem: str | None,
                 ctx: _Context, needs: str) -> list[str]:
    from ichbench.paths import run_dir

    notes = []
    if dataset is None:
        notes.append(f"{needs} needs the run's images, but {problem}.")
    if models is None or not models.any:
        folder = run_dir(ctx.db, data.run_id)
        detail = "; ".join(models.problems) if models is not None and models.problems else ""
        notes.append(f"Fold checkpoints missing: {needs} needs the trained fold models, "
                     f"and none could be loaded from {folder}" + (f" ({detail})."
                                                                 if detail else "."))
    elif models.problems:
        notes.append("Some fold checkpoints are missing or unreadable: "
                     + "; ".join(models.problems) + ".")
    return notes


def _vote_probs(data: RunData) -> dict[tuple[int, int], float]:
    p = data.preds(None, "test")
    return {(int(a), int(b)): float(c) for a, b, c in
            zip(p["patient_id"], p["slice"], p["prob"], strict=True)}


def _cam_rows(dataset, data: RunData, probs: dict, n: int) -> tuple[list[int], str]:
    """Test ICH slices to explain, at most two per patient so one patient does not fill
    the page: the most confident ones and, for honesty, the least confident ones.
    Returns the rows and how they were chosen, in words for the caption."""
    rows = np.flatnonzero(np.isin(dataset.patient_ids, data.test_patients)
                          & (dataset.labels == 1))
    if not len(rows):
        return [], ""

    def score(r: int) -> float:
        key = (int(dataset.patient_ids[r]), int(dataset.slice_numbers[r]))
        if probs:
            return probs.get(key, -1.0)
        return float(dataset.masks[r].sum()) if dataset.masks is not None else 0.0

    ordered = sorted(rows.tolist(), key=lambda r: (-score(r), int(dataset.patient_ids[r]),
                                                   int(dataset.slice_numbers[r])))
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
    return (capped[:n - low] + capped[-low:],
            f"the {n - low} most and the {low} least confident test ICH slices")


def _gradcam_section(data: RunData, dataset, problem, models, ctx: _Context,
                     section: Section) -> None:
    from ichbench.report.cam import grad_cam, report_device

    notes = _model_notes(data, models, dataset, problem, ctx, "Grad-CAM")
    section.notes += notes
    if dataset is None or models is None or not models.any:
        return
    probs = _vote_probs(data)
    rows, chosen = _cam_rows(dataset, data, probs, ctx.options.cam_slices)
    if not rows:
        section.notes.append("The test set has no ICH slice to explain.")
        return
    fold_models = [models.models[k] for k in sorted(models.models)]
    images = np.asarray(dataset.images[rows])
    try:
        cams = grad_cam(fold_models, images, report_device())
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
        panels.append(F.CamPanel(image=images[i, 0], cam=cams[i], mask=mask,
                                 title=f"Patient {pid:03d}, slice {sl}", subtitle=sub,
                                 hit=hit))
    folds = ", ".join(str(m.fold) for m in fold_models)
    with F.style():
        fig = F.gradcam_figure(panels, f"Grad-CAM of the ICH class, mean over fold models "
                                       f"{folds}")
    mask_note = ("the ground-truth hemorrhage mask is outlined in cyan" if dataset.masks
                 is not None else "this dataset has no masks to outline")
    section.figure = _figure(
        fig, "Grad-CAM",
        f"Grad-CAM (pytorch-grad-cam) of the ICH logit, averaged over the fold models "
        f"that the vote combines. Slices: at most two per test patient; {chosen}. "
        f"{mask_note.capitalize()}. Left: the CT (first window); right: the heat map over "
        "it. Titles: the vote's probability, green when flagged at the voting threshold.")


def _tsne_section(data: RunData, dataset, problem, models, ctx: _Context,
                  section: Section) -> None:
    from ichbench.report.cam import fresh_model, prepare, report_device
    from ichbench.report.embeddings import embed, separation, tsne_2d

    section.notes += _model_notes(data, models, dataset, problem, ctx, "t-SNE")
    if dataset is None or models is None or not models.any:
        return
    fold = data.best_fold()
    if fold not in models.models:
        fold = sorted(models.models)[0]
    fm = models.models[fold]
    rows = np.flatnonzero(np.isin(dataset.patient_ids, data.test_patients))
    if len(rows) > ctx.options.tsne_max:
        rng = np.random.default_rng(int(data.run.get("seed") or 0))
        rows = np.sort(rng.choice(rows, ctx.options.tsne_max, replace=False))
    if len(rows) < 5:
        section.notes.append(f"Too few test slices ({len(rows)}) for t-SNE.")
        return
    labels = dataset.labels[rows]
    images = np.asarray(dataset.images[rows])
    device = report_device()
    seed = int(data.run.get("seed") or 0)
    try:
        before_model, before_size = fresh_model(str(data.run["backbone"]), fm.in_chans, seed,
                                                fold, ctx.registry, device)
        feats = {
            "before": embed(before_model, prepare(images, before_size, device)),
            "after": embed(fm.model, prepare(images, fm.input_size, device)),
        }
        points = {k: tsne_2d(v, seed) for k, v in feats.items()}
    except (ValueError, RuntimeError, IchbenchError) as exc:
        section.notes.append(f"t-SNE could not be computed: {exc}")
        return

    def subtitle(key: str) -> str:
        s = separation(feats[key], labels)
        return f"{feats[key].shape[1]}-d embedding" + \
            ("" if s is None else f", class silhouette {s:.2f}")

    panels = [
        F.EmbeddingPanel(points["before"], "Before training",
                         f"fresh {data.run['backbone']}, seed {seed} · " + subtitle("before")),
        F.EmbeddingPanel(points["after"], f"After training (fold {fold})",
                         subtitle("after")),
    ]
    with F.style():
        fig = F.tsne_figure(panels, labels, f"t-SNE of {len(rows)} test slices")
    section.figure = _figure(
        fig, "t-SNE of embeddings",
        "Each point is a test slice: the input of the network's final linear layer, "
        f"projected to two dimensions with t-SNE (scikit-learn). Left: the network as "
        f"initialised for fold {fold} before training (random weights, same seed rule as "
        f"the run); right: fold {fold}'s trained model (the fold with the best validation "
        "F1). The silhouette score (−1 to 1) measures how far apart the two classes lie "
        "in the full embedding.")


# ---------------------------------------------------------------- writing


def _write(out: Path, reports: list[RunReport], compare: Section | None,
           db: Path) -> ReportResult:
    out.mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    sections = ([compare] if compare else []) + [s for r in reports for s in r.sections]
    for s in sections:
        if s.figure is not None:
            s.figure.filename = f"{s.id}.png"
            path = out / s.figure.filename
            _atomic_write(path, s.figure.png)
            figures.append(path)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    html_path = out / "report.html"
    md_path = out / "report.md"
    _atomic_write(html_path, render_html(reports, compare, generated, db).encode("utf-8"))
    _atomic_write(md_path, render_markdown(reports, compare, generated, db).encode("utf-8"))
    notes = [n for s in sections for n in s.notes]
    return ReportResult(html_path, md_path, figures, [s.id for s in sections], notes, 0.0)


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def _title(reports: list[RunReport]) -> str:
    if len(reports) == 1:
        return f"ICH classification report — run {reports[0].data.run_id}"
    return f"ICH classification report — {len(reports)} runs compared"


def _summary(data: RunData) -> str:
    run = data.run
    pre = "pretrained" if run.get("pretrained") else "not pretrained"
    strategies = ", ".join(run.get("strategies") or []) or "no imbalance strategy"
    return (f"{run.get('backbone')} ({pre}) · {strategies} · {run.get('dataset')} · "
            f"preset {run.get('preset')} · seed {run.get('seed')}")


# ---------------------------------------------------------------- HTML

CSS = """
:root { --ink:#1d2330; --muted:#6b7280; --line:#d9dee7; --band:#f5f7fa; --accent:#1f4e79;
        --ich:#c0392b; --ok:#1e7b34; --warn:#b45309; }
* { box-sizing: border-box; }
body { margin:0; font-family: "Segoe UI", "Helvetica Neue", Arial, sans-serif; color:var(--ink);
       background:#eef1f5; line-height:1.45; }
main { max-width: 1240px; margin: 0 auto; padding: 28px 32px 60px; background:#fff;
       box-shadow: 0 0 24px rgba(0,0,0,.06); }
header h1 { font-size: 26px; margin: 0 0 4px; color: var(--accent); }
header .sub { color: var(--muted); font-size: 14px; margin: 2px 0; }
h2 { font-size: 20px; margin: 34px 0 10px; padding-bottom: 6px; border-bottom: 2px solid
     var(--line); color: var(--accent); }
h3 { font-size: 16px; margin: 14px 0 6px; }
nav { background: var(--band); border:1px solid var(--line); border-radius: 8px;
      padding: 10px 16px; margin: 18px 0; font-size: 14px; }
nav ol { margin: 4px 0; padding-left: 20px; columns: 2; }
nav a { color: var(--accent); text-decoration: none; }
.badge { display:inline-block; padding: 2px 10px; border-radius: 999px; font-size: 13px;
         font-weight: 700; color:#fff; vertical-align: middle; margin-left: 8px; }
.badge.finished { background: var(--ok); }
.badge.running { background: #2563eb; }
.badge.failed { background: var(--ich); }
.badge.interrupted { background: var(--warn); }
.banner { border-left: 6px solid var(--ich); background: #fdecea; padding: 12px 16px;
          margin: 14px 0; font-weight: 600; border-radius: 4px; }
.note { border-left: 4px solid var(--warn); background: #fff7e6; padding: 8px 14px;
        margin: 8px 0; font-size: 14px; border-radius: 4px; }
.tablewrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13.5px; margin: 6px 0 4px; min-width: 60%;
        font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 700; font-size: 15px;
          padding: 4px 0 8px; }
th { background: var(--accent); color: #fff; font-weight: 600; padding: 6px 10px;
     text-align: left; white-space: nowrap; }
td { padding: 5px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
td.num, th.num { text-align: right; white-space: nowrap; }
td:first-child { white-space: nowrap; }
.ci { display: block; font-size: 11px; color: var(--muted); font-weight: 400; }
tr.strong td { font-weight: 700; background: #eaf2fb; }
tr.muted td { color: #4b5563; background: #fafafa; }
tr.muted.strong td { background: #f1f1f1; }
tr.group td { background: var(--band); font-style: italic; font-weight: 600;
              color: var(--muted); padding-top: 9px; }
table.kv td:first-child { font-weight: 600; color: var(--muted); width: 230px; }
table.kv td { white-space: normal; word-break: break-word; }
.tcaption { color: var(--muted); font-size: 13px; max-width: 1100px; margin: 4px 0 0; }
figure { margin: 8px 0 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; max-width: 1100px; }
.run { margin-top: 30px; }
.run > h2.runhead { font-size: 22px; border-bottom: 3px solid var(--accent); }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; border-top: 1px solid
         var(--line); padding-top: 10px; }
@media print { body { background: #fff; } main { box-shadow: none; } }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table_html(t: TableData) -> str:
    kv = t.columns == ["", ""]
    parts = [f'<div class="tablewrap"><table class="{"kv" if kv else "metrics"}">']
    if not kv:
        parts.append(f"<caption>{_e(t.title)}</caption>")
        parts.append("<thead><tr>" + "".join(
            f'<th class="{"num" if i >= t.numeric_from else ""}">{_e(c)}</th>'
            for i, c in enumerate(t.columns)) + "</tr></thead>")
    parts.append("<tbody>")
    for row in t.rows:
        if row.group:
            parts.append(f'<tr class="group"><td colspan="{len(t.columns)}">'
                         f"{_e(row.cells[0])}</td></tr>")
            continue
        cls = " ".join(c for c, on in (("strong", row.strong), ("muted", row.muted)) if on)
        cells = "".join(f'<td class="{"num" if i >= t.numeric_from else ""}">{_cell_html(c)}'
                        "</td>" for i, c in enumerate(row.cells))
        parts.append(f'<tr class="{cls}">{cells}</tr>')
    parts.append("</tbody></table></div>")
    if t.caption:
        parts.append(f'<p class="tcaption">{_e(t.caption)}</p>')
    return "".join(parts)


def _cell_html(text: str) -> str:
    """A value with its interval (`0.91 [0.85–0.95]`) shows the interval small under
    the value, which keeps wide tables narrow enough for a slide."""
    match = _WITH_CI.match(text)
    if not match:
        return _e(text)
    return f'{_e(match.group(1))}<span class="ci">[{_e(match.group(2))}]</span>'


_WITH_CI = re.compile(r"^(\S+) \[(.+)\]$")


def _section_html(s: Section) -> str:
    parts = [f'<section id="{_e(s.id)}"><h2>{_e(s.title)}</h2>']
    parts += [f'<div class="note">{_e(n)}</div>' for n in s.notes]
    if s.table is not None:
        parts.append(_table_html(s.table))
    if s.figure is not None:
        data = base64.b64encode(s.figure.png).decode("ascii")
        width = int(round(s.figure.width_in * 96))
        parts.append(f'<figure><img alt="{_e(s.figure.title)}" '
                     f'style="width: min(100%, {width}px)" '
                     f'src="data:image/png;base64,{data}">'
                     f"<figcaption>{_e(s.figure.caption)}</figcaption></figure>")
    parts.append("</section>")
    return "\n".join(parts)


def _badge(status: str) -> str:
    label = status if status == "finished" else f"{status.upper()} — not finished"
    return f'<span class="badge {_e(status)}">{_e(label)}</span>'


def render_html(reports: list[RunReport], compare: Section | None, generated: str,
                db: Path) -> str:
    title = _title(reports)
    head = [f"<header><h1>{_e(title)}"
            + (_badge(reports[0].data.status) if len(reports) == 1 else "") + "</h1>"]
    for r in reports:
        prefix = f"{r.data.run_id}: " if len(reports) > 1 else ""
        head.append(f'<p class="sub">{_e(prefix + _summary(r.data))}'
                    + (_badge(r.data.status) if len(reports) > 1 else "") + "</p>")
    head.append(f'<p class="sub">Generated {_e(generated)} by ichbench {_e(__version__)} from '
                f"{_e(db)}</p></header>")
    banners = [f'<div class="banner">{_e(status_note(r.data))}</div>' for r in reports
               if not r.data.finished]
    toc = ["<nav><strong>Contents</strong><ol>"]
    if compare:
        toc.append(f'<li><a href="#{_e(compare.id)}">{_e(compare.title)}</a></li>')
    for r in reports:
        for s in r.sections:
            label = s.title if len(reports) == 1 else f"{r.data.run_id}: {s.title}"
            toc.append(f'<li><a href="#{_e(s.id)}">{_e(label)}</a></li>')
    toc.append("</ol></nav>")
    body = []
    if compare:
        body.append(_section_html(compare))
    for r in reports:
        if len(reports) > 1:
            body.append(f'<div class="run"><h2 class="runhead">Run {_e(r.data.run_id)}'
                        f"{_badge(r.data.status)}</h2>")
        body += [_section_html(s) for s in r.sections]
        if len(reports) > 1:
            body.append("</div>")
    footer = ("<footer>Reproduces the protocol of Hoseyni et al., “Comprehensive "
              "Hyperparameter Tuning to Enhance Deep Learning Performance for Intracranial "
              "Hemorrhage Classification in Head CT Scans”. Every number above was computed by "
              "the run and read back from the store; literature rows are as published. "
              "CIs: 95%.</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>\n"
            + "\n".join(head + banners + toc + body) + f"\n{footer}</main></body></html>\n")


# ---------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table_md(t: TableData) -> str:
    kv = t.columns == ["", ""]
    columns = ["Field", "Value"] if kv else t.columns
    lines = [] if kv else [f"**{_md_cell(t.title)}**", ""]
    lines.append("| " + " | ".join(_md_cell(c) for c in columns) + " |")
    lines.append("|" + "|".join("---:" if i >= t.numeric_from else "---"
                                for i in range(len(columns))) + "|")
    for row in t.rows:
        if row.group:
            cells = [f"*{_md_cell(row.cells[0])}*"] + [""] * (len(columns) - 1)
        else:
            cells = [_md_cell(c) for c in row.cells]
            if row.strong:
                cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    if t.caption:
        lines += ["", f"_{_md_cell(t.caption)}_"]
    return "\n".join(lines)


def _section_md(s: Section, level: str = "##") -> str:
    parts = [f"{level} {s.title}", ""]
    parts += [f"> **Note:** {n}\n" for n in s.notes]
    if s.table is not None:
        parts += [_table_md(s.table), ""]
    if s.figure is not None:
        parts += [f"![{s.figure.title}]({s.figure.filename})", "", f"_{s.figure.caption}_", ""]
    return "\n".join(parts)


def render_markdown(reports: list[RunReport], compare: Section | None, generated: str,
                    db: Path) -> str:
    lines = [f"# {_title(reports)}", ""]
    for r in reports:
        status = r.data.status if r.data.finished else f"**{r.data.status.upper()} — not " \
                                                       "finished**"
        lines.append(f"- `{r.data.run_id}` ({status}): {_summary(r.data)}")
    lines += ["", f"Generated {generated} by ichbench {__version__} from `{db}`.", ""]
    for r in reports:
        if not r.data.finished:
            lines += [f"> **Warning:** {status_note(r.data)}", ""]
    if compare:
        lines.append(_section_md(compare))
    for r in reports:
        level = "##"
        if len(reports) > 1:
            lines += [f"## Run {r.data.run_id}", ""]
            level = "###"
        lines += [_section_md(s, level) for s in r.sections]
    return "\n".join(lines).rstrip() + "\n"
