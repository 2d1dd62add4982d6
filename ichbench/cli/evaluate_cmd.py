"""`ichbench evaluate RUN --data OTHER`: external validation of a finished run, recorded
in the store as an evaluation of that run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ichbench.cli.common import complete_run_ids, emit_json, err, out
from ichbench.cli.options import DbOpt, DeviceMemoryOpt, JsonOpt
from ichbench.exclusion import DEFAULT_EXCLUDE, parse_exclude

RunArg = Annotated[
    str,
    typer.Argument(
        metavar="RUN",
        help="Run id, or a unique prefix or suffix of it.",
        autocompletion=complete_run_ids,
    ),
]
OtherOpt = Annotated[
    str,
    typer.Option(
        "--data",
        help="The other dataset: a folder in any layout a dataset plugin reads, or a "
        "registered dataset spec (synthetic:N,SEED,SIZE). Loaded with the run's "
        "preprocessing settings.",
    ),
]

OtherExcludeOpt = Annotated[
    str | None,
    typer.Option(
        "--exclude",
        help="Patients of the other dataset left out, comma-separated; 'none' for none. "
        "Default: the default exclusion (58,79 of the PhysioNet release), never the run's "
        "own list.",
    ),
]


def register(app: typer.Typer) -> None:
    @app.command()
    def evaluate(
        run_id: RunArg,
        data: OtherOpt,
        exclude: OtherExcludeOpt = None,
        device_memory: DeviceMemoryOpt = None,
        db: DbOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Apply a finished run (its fold models, ensemble rule, voting threshold and
        patient rule, unchanged) to every patient of another dataset, and record the
        result as an evaluation of that run: metrics with 95% CIs at slice level (where
        the dataset labels slices) and patient level, every prediction, and the
        dataset's fingerprint. `show RUN` lists its evaluations; SQL finds them in
        `evaluations`, `evaluation_metrics`, `evaluation_predictions` and
        `evaluation_patients`."""
        from ichbench.cli import render
        from ichbench.cli.progress import step_bar
        from ichbench.config import check_device_memory
        from ichbench.evaluation import evaluate as run_evaluation
        from ichbench.evaluation import same_evaluation
        from ichbench.paths import default_db
        from ichbench.store import Store
        from ichbench.views.evaluation import evaluation_metrics_table

        check_device_memory(device_memory)
        left_out = DEFAULT_EXCLUDE if exclude is None else parse_exclude(exclude)
        store = Store(Path(db) if db else default_db(), create=False)
        with step_bar("Evaluating") as update:

            def progress(description: str, done: int, total: int) -> None:
                update(done, total, description=description)

            record = run_evaluation(
                store,
                run_id,
                data,
                exclude=left_out,
                progress=progress,
                device_memory=device_memory,
            )
        earlier = same_evaluation(record, store.evaluations(record.run_id))
        if earlier is None:
            store.write_evaluation(record)
        else:
            record.notes.append(
                f"run {record.run_id} was evaluated on this data already, with the same "
                f"preprocessing, version and device ({earlier['evaluation_id']}); shown as "
                "stored, nothing recorded again"
            )
        for note in record.notes:
            err.print(f"[yellow]Note:[/] {escape(note)}", highlight=False, soft_wrap=True)
        stored = earlier or next(
            e
            for e in store.evaluations(record.run_id)
            if e["evaluation_id"] == record.evaluation_id
        )
        if as_json:
            emit_json(stored)
            return
        render.emit(out, render.rich_table(evaluation_metrics_table(stored)))
        err.print(
            f"Evaluation {stored['evaluation_id']} of run {record.run_id} on "
            f"{escape(record.dataset)}: "
            f"{record.patients} patients, {record.slices} slices in {record.wall_s:.1f} s",
            highlight=False,
            soft_wrap=True,
        )
