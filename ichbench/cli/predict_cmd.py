"""`ichbench predict SCAN --run RUN`: one new scan through a finished run. Reads the store
(read-only) and the run's checkpoints; never writes the store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.text import Text

from ichbench.cli.common import complete_run_ids, emit_json, err, out
from ichbench.cli.options import DbOpt
from ichbench.errors import UsageError

if TYPE_CHECKING:
    from ichbench.predict import ScanPrediction

BARS = " ▁▂▃▄▅▆▇█"
STRIP_WIDTH = 60  # slices per line of the strip

ScanArg = Annotated[
    Path,
    typer.Argument(
        metavar="SCAN",
        help="A NIfTI volume (.nii, .nii.gz), a DICOM series folder, or a folder of slice "
        "images (one per slice, already windowed; one sub-folder per window for several).",
    ),
]
RunOpt = Annotated[
    str,
    typer.Option(
        "--run", help="The finished run whose models decide.", autocompletion=complete_run_ids
    ),
]
PredictJsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print the prediction as JSON on stdout (progress on stderr)."),
]
HtmlOpt = Annotated[
    Path | None,
    typer.Option(
        "--html",
        help="Also write a page with the most suspicious slices and their Grad-CAM.",
    ),
]


def register(app: typer.Typer) -> None:
    @app.command()
    def predict(
        scan: ScanArg,
        run_id: RunOpt,
        db: DbOpt = None,
        as_json: PredictJsonOpt = False,
        html: HtmlOpt = None,
    ) -> None:
        """Score one scan with a finished run: each slice's probability as a strip with
        the slices its vote flags marked, and the scan's decision under the run's
        voting threshold and patient rule. Never writes to the store."""
        from ichbench.cli.progress import step_bar
        from ichbench.paths import default_db
        from ichbench.predict import predict_scan, write_page
        from ichbench.store import Store

        if html is not None and html.is_dir():
            raise UsageError(
                f"--html {html} is a folder; give the page's file name (e.g. {html / 'scan.html'})"
            )
        store = Store(Path(db) if db else default_db(), create=False)
        with step_bar("Predicting") as update:

            def progress(description: str, done: int, total: int) -> None:
                update(done, total, description=description)

            prediction, model = predict_scan(store, run_id, scan, progress=progress)
            page = write_page(prediction, model, html) if html is not None else None
        if as_json:
            emit_json(prediction.as_json() | ({"html": str(page)} if page else {}))
        else:
            print_prediction(prediction)
        if page is not None:
            err.print(f"Page written: {escape(str(page))}", highlight=False, soft_wrap=True)


def strip(scores, flagged, width: int = STRIP_WIDTH) -> list[Text]:
    """The slices' scores as bars, a line of markers under them (`^` flagged by the vote),
    `width` slices a line, each block numbered by its first slice."""
    lines: list[Text] = []
    for start in range(0, len(scores), width):
        part = range(start, min(start + width, len(scores)))
        bars, marks = Text(f"{start + 1:>4} "), Text("     ")
        for i in part:
            level = min(int(round(float(scores[i]) * (len(BARS) - 1))), len(BARS) - 1)
            style = "bold red" if flagged[i] else "cyan"
            bars.append(BARS[max(level, 1)], style=style)
            marks.append("^" if flagged[i] else " ", style="bold red")
        lines += [bars, marks]
    return lines


def print_prediction(p: ScanPrediction) -> None:
    from ichbench.cli import render

    unit = "probability" if p.scores_are_probabilities else "fraction of folds voting ICH"
    flagged = [int(i) + 1 for i in p.flagged.nonzero()[0]]
    render.emit(
        out,
        Text(f"{p.scan.path} ({p.scan.kind}, {p.scan.slices} slices), run {p.run_id}"),
        Text(f"Slice {unit}, most inferior first; ^ = flagged at the vote's threshold:"),
        *strip(p.scores, p.flagged),
    )
    decision = Text("Decision: ")
    decision.append("ICH" if p.decision else "no ICH", style="bold red" if p.decision else "bold")
    decision.append(
        f" (scan score {p.score:.2f}; ensemble {p.ensemble}, threshold {p.threshold:.2f}, "
        f"patient rule {p.patient_rule})"
    )
    shown = ", ".join(map(str, flagged[:30])) + (" ..." if len(flagged) > 30 else "")
    render.emit(
        out,
        Text(f"Flagged slices: {shown or 'none'}"),
        decision,
    )
    for note in p.scan.notes:
        err.print(f"[yellow]Note:[/] {escape(note)}", highlight=False, soft_wrap=True)
