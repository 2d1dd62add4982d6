"""Assembles a report: sections of tables and figures for each run, written as one
self-contained HTML page (ichbench.report.html) and as Markdown with the PNGs beside it
(ichbench.report.markdown).

The report only reads. Tables and curves come from the store's typed reads; the
dataset figure, Grad-CAM and t-SNE also need the run's dataset and fold checkpoints,
which ichbench.checkpoints provides; when those are missing or have changed, their
sections say so and the rest of the report is still written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ichbench.report import model_sections as M
from ichbench.report import store_sections as S
from ichbench.report.compare_sections import drop_repeated_figures, overlay_section
from ichbench.report.config_table import config_table, without_config_row
from ichbench.report.evaluation_section import evaluation_sections
from ichbench.report.html import render_html
from ichbench.report.markdown import render_markdown
from ichbench.report.page import (
    COMPARE_ID,
    SECTION_IDS,
    ReportOptions,
    ReportResult,
    RunReport,
    Section,
    number_figures,
)
from ichbench.store import Store
from ichbench.views import RunData, load_run_data
from ichbench.views.metrics import compare_table, literature_caveat, metrics_table, status_note
from ichbench.views.provenance import provenance_table

__all__ = ["COMPARE_ID", "SECTION_IDS", "ReportOptions", "ReportResult", "build_report"]

Progress = Callable[[str, int, int], None]
"""progress(description, steps done, steps in total)"""

RUN_STEPS = (
    "Reading the store",
    "Drawing figures from the store",
    "Loading the dataset",
    "Loading fold models",
    "Grad-CAM",
    "t-SNE",
)


def default_out(run_ids: Sequence[str]) -> Path:
    return Path(f"report-{run_ids[0]}") if len(run_ids) == 1 else Path("report-compare")


def total_steps(n_runs: int) -> int:
    return n_runs * len(RUN_STEPS) + (1 if n_runs > 1 else 0) + 1


@dataclass
class _Context:
    db: Path
    options: ReportOptions
    total: int
    progress: Progress | None
    done: int = 0

    def step(self, description: str) -> None:
        if self.progress is not None:
            self.progress(description, self.done, self.total)
        self.done += 1


def build_report(
    run_ids: Sequence[str],
    *,
    db: Path,
    out: Path | None = None,
    options: ReportOptions | None = None,
    progress: Progress | None = None,
) -> ReportResult:
    """Write the report of one run (or the comparison of several) into `out`.

    Raises StoreError when the store is missing or a run id is unknown; everything that
    only limits what can be shown (no checkpoints, no dataset) becomes a note instead.
    """
    started = time.perf_counter()
    options = options or ReportOptions()
    store = Store(db, create=False)
    ids = list(dict.fromkeys(store.resolve(r) for r in run_ids))
    out = Path(out) if out is not None else default_out(ids)
    ctx = _Context(db=Path(db), options=options, total=total_steps(len(ids)), progress=progress)
    baselines = store.baselines()
    reports: list[RunReport] = []
    for rid in ids:
        ctx.step(f"{rid}: reading the store")
        data = load_run_data(store, rid)
        suffix = "" if len(ids) == 1 else f"--{rid}"
        reports.append(RunReport(data, _run_sections(data, baselines, ctx, suffix)))
    compare: list[Section] = []
    if len(reports) > 1:
        ctx.step("Comparing runs")
        votes = {r.data.run_id: r.data.metrics for r in reports}
        summaries = store.summaries(ids)
        compare.append(
            Section(
                COMPARE_ID,
                "Runs compared",
                table=compare_table(summaries, baselines, COMPARE_ID, votes=votes),
            )
        )
        if len(reports) == 2:
            compare.append(S.paired_section(store, summaries[0], summaries[1]))
        compare.append(overlay_section(reports))
        drop_repeated_figures(reports)
    ctx.step("Writing the report")
    result = _write(out, reports, compare, Path(db))
    result.wall_s = time.perf_counter() - started
    return result


def _run_sections(
    data: RunData, baselines: list[dict], ctx: _Context, suffix: str
) -> list[Section]:
    rid = data.run_id
    sec: dict[str, Section] = {}

    def add(section_id: str, title: str, paper: str = "") -> Section:
        sec[section_id] = Section(section_id + suffix, title, paper=paper)
        return sec[section_id]

    add("provenance", "Provenance").table = without_config_row(
        provenance_table(data, "provenance" + suffix)
    )
    add("config", "Configuration").table = config_table(data.config, "config" + suffix)
    add("table-slice", "Slice level (Table I)").table = metrics_table(
        data, baselines, "slice", "table-slice" + suffix
    )
    add("table-patient", "Patient level (Table III)").table = metrics_table(
        data, baselines, "patient", "table-patient" + suffix
    )
    caveat = literature_caveat(data.run, data.comparable)
    if caveat:
        sec["table-slice"].notes.append(caveat)

    ctx.step(f"{rid}: drawing figures from the store")
    S.threshold_section(data, add("fig-threshold", "F1 against threshold", "Fig. 4"))
    S.confusion_section(data, add("fig-confusion", "Confusion matrices", "Figs. 5 and 8"))
    S.roc_section(data, add("fig-roc", "ROC curves"))
    S.reliability_section(data, add("fig-calibration", "Calibration (reliability diagram)"))
    S.strip_section(data, add("fig-strip", "Per-patient view of the vote"))
    S.training_section(data, add("fig-training", "Training history"))

    ctx.step(f"{rid}: loading the dataset")
    dataset, problem = M.load_dataset(data)
    S.distribution_section(
        data, dataset, problem, add("fig-dataset", "Dataset distributions", "Fig. 1")
    )

    cam_sec = add("fig-gradcam", "Grad-CAM on test ICH slices", "Fig. 7")
    tsne_sec = add("fig-tsne", "t-SNE of test-slice embeddings", "Fig. 6")
    ctx.step(f"{rid}: loading fold models")
    models = None
    if ctx.options.cam or ctx.options.tsne:
        models = M.load_models(data, ctx.db)
    ctx.step(f"{rid}: Grad-CAM")
    if not ctx.options.cam:
        cam_sec.notes.append("Grad-CAM was not requested (--no-cam).")
    else:
        M.gradcam_section(data, dataset, problem, models, ctx.db, ctx.options, cam_sec)
    ctx.step(f"{rid}: t-SNE")
    if not ctx.options.tsne:
        tsne_sec.notes.append("t-SNE was not requested (--no-tsne).")
    else:
        M.tsne_section(data, dataset, problem, models, ctx.db, ctx.options, tsne_sec)

    note = status_note(data)
    if note:
        for s in sec.values():
            if s.table is not None and s.id.startswith("table-"):
                s.notes.insert(0, note)
    return [sec[k] for k in SECTION_IDS] + evaluation_sections(ctx.db, data, suffix)


def _write(out: Path, reports: list[RunReport], compare: list[Section], db: Path) -> ReportResult:
    out.mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    sections = compare + [s for r in reports for s in r.sections]  # in page order
    number_figures(sections)
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
    """The whole file or none: a full disk leaves neither a partial file nor a hidden
    temporary one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
