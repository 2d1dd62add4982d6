"""`ichbench report`: a self-contained HTML page and a Markdown file for one run, or a
comparison of several."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ichbench.cli.common import complete_run_ids, err, out
from ichbench.cli.options import DbOpt

RunsArg = Annotated[
    list[str],
    typer.Argument(
        metavar="RUN...",
        help="Run ids (or unique prefixes or suffixes); several give a comparison.",
        autocompletion=complete_run_ids,
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Output folder (default ./report-<run> for one run, ./report-compare for several).",
    ),
]
NoCamOpt = Annotated[
    bool,
    typer.Option("--no-cam", help="Skip Grad-CAM (it needs the fold checkpoints and the dataset)."),
]
NoTsneOpt = Annotated[bool, typer.Option("--no-tsne", help="Skip the t-SNE of embeddings.")]


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        runs: RunsArg,
        out_dir: OutOpt = None,
        db: DbOpt = None,
        no_cam: NoCamOpt = False,
        no_tsne: NoTsneOpt = False,
    ) -> None:
        """Tables (per fold and vote, slice and patient level, beside the paper's numbers)
        and figures (thresholds, confusion, ROC, Grad-CAM, t-SNE, per-patient strip)."""
        from ichbench.cli.progress import step_bar
        from ichbench.paths import default_db
        from ichbench.report.build import ReportOptions, build_report

        options = ReportOptions(cam=not no_cam, tsne=not no_tsne)
        with step_bar("Report") as update:

            def progress(description: str, done: int, total: int) -> None:
                update(done, total, description=description)

            result = build_report(
                runs, db=db or default_db(), out=out_dir, options=options, progress=progress
            )
        for path in (result.html, result.markdown):
            out.print(str(path), soft_wrap=True, highlight=False)
        err.print(
            f"Report written in {result.wall_s:.1f} s: {len(result.figures)} figures "
            f"in {result.html.parent}",
            highlight=False,
        )
        for note in result.notes:
            if "not requested" not in note:
                err.print(f"[yellow]Note:[/] {note}", highlight=False, soft_wrap=True)
