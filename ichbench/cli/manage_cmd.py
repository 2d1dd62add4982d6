"""`ichbench tag | rm`: keeping the run store tidy.

These commands change the store, so they open it for writing (an older store is
upgraded first) and wait for its lock as every write does; a store another process holds
for longer is one `Error:` line (exit 5), with nothing changed. Runs made while the store
was busy, still only on disk, are taken in first, so that they can be named here too.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from ichbench import paths
from ichbench.cli.common import complete_run_ids, err, out
from ichbench.cli.options import DbOpt
from ichbench.errors import ExitCode, UsageError
from ichbench.provenance import check_tags, folder_safe
from ichbench.store import Store

RunsArg = Annotated[
    list[str],
    typer.Argument(
        metavar="RUN",
        help="Run ids or unique prefixes (or suffixes).",
        autocompletion=complete_run_ids,
    ),
]


def _open(db) -> Store:
    """The store for writing, with the runs still only on disk taken in."""
    from ichbench.store.ingest import ingest_run_records
    from ichbench.store.journal import Journal

    store = Store(db or paths.default_db(), create=False)
    ingest_run_records(store, Journal(store.path))
    return store


def tag(
    run_id: Annotated[
        str,
        typer.Argument(
            metavar="RUN",
            help="Run id, or a unique prefix or suffix of it.",
            autocompletion=complete_run_ids,
        ),
    ],
    tags: Annotated[
        list[str],
        typer.Argument(
            metavar="TAG",
            help="Tags: each one word of letters, digits and _ . : -",
        ),
    ],
    remove: Annotated[
        bool, typer.Option("--remove", help="Remove these tags instead of adding them.")
    ] = False,
    db: DbOpt = None,
) -> None:
    """Add tags to a run (or remove them), whatever its status; `ichbench runs --tag T`
    lists the runs that have a tag."""
    wanted = check_tags(tags, option="tag")
    store = _open(db)
    before = store.get_run(run_id)
    if remove:
        full, now = store.set_tags(before["run_id"], remove=wanted)
    else:
        full, now = store.set_tags(before["run_id"], add=wanted)
    absent = [t for t in wanted if t not in (before.get("tags") or [])] if remove else []
    if absent:
        err.print(f"Run {full} had no tag {', '.join(absent)}", highlight=False, markup=False)
    out.print(f"{full}: {' '.join(now) if now else 'no tags'}", highlight=False, markup=False)


def rm(
    run_ids: RunsArg,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Remove without asking for confirmation.")
    ] = False,
    db: DbOpt = None,
) -> None:
    """Remove runs: their rows from every table of the store (in one transaction), then
    their folders beside it (checkpoints, journal). Asks first unless --yes; a run that
    a live process is running is refused."""
    for given in run_ids:
        if not folder_safe(given):
            raise UsageError(f"{given!r} is not a run id (a run id names no other folder)")
    if not yes and not _interactive():
        raise UsageError(
            "ichbench rm asks before removing runs and its input is not a terminal: "
            "give --yes to remove without asking"
        )
    store = _open(db)
    runs = [store.get_run(given) for given in dict.fromkeys(run_ids)]
    runs = list({r["run_id"]: r for r in runs}.values())
    for run in runs:
        store.run_folder(run["run_id"])  # a crafted id is refused before anything is asked
    if not yes:
        for run in runs:
            label = f" ({run['name']})" if run.get("name") else ""
            err.print(f"  {run['run_id']}{label}: {run['status']}", highlight=False, markup=False)
        noun = "run" if len(runs) == 1 else f"{len(runs)} runs"
        if not typer.confirm(
            f"Remove {noun} from {store.path}, with checkpoints?", default=False, err=True
        ):
            err.print("Nothing removed.")
            return
    removed = store.remove_runs([r["run_id"] for r in runs])
    for grid in sorted({g for r in removed for g in r.grids}):
        err.print(
            f"Grid {grid}: its selection picked a removed run and was removed with it; "
            "rerun the grid to select again",
            highlight=False,
            markup=False,
        )
    failed = [r for r in removed if r.folder_error]
    for r in removed:
        out.print(f"Removed {r.run_id}", highlight=False, markup=False)
    for r in failed:
        err.print(
            f"[bold red]Error:[/] {escape(f'Run {r.run_id} is gone from the store, but its ')}"
            f"{escape(f'folder {r.folder} could not be removed: {r.folder_error}')}",
            highlight=False,
            soft_wrap=True,
        )
    if failed:
        raise typer.Exit(int(ExitCode.SYSTEM))


def _interactive() -> bool:
    """Whether a person can answer the question: stdin is a terminal."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def register(app: typer.Typer) -> None:
    app.command("tag")(tag)
    app.command("rm")(rm)
