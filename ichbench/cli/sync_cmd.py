"""`ichbench store sync`: results a run left on disk while the store was busy, into it."""

from __future__ import annotations

import typer

from ichbench.cli.common import out
from ichbench.cli.options import DbOpt


def register(app: typer.Typer) -> None:
    store_app = typer.Typer(help="Maintain the run store.", no_args_is_help=True)

    @store_app.command()
    def sync(db: DbOpt = None) -> None:
        """Take in the results runs left on disk while another process held the store.

        Runs do it themselves as soon as they can, and so does the next command that
        writes to the store; this does it now, waiting for the lock as any write does."""
        from ichbench.errors import StoreBusyError
        from ichbench.paths import default_db
        from ichbench.store import Store
        from ichbench.store.ingest import ingest
        from ichbench.store.journal import Journal

        path = db or default_db()
        journal = Journal(path)
        before = journal.all_pending()
        if not before:
            out.print(f"Nothing to sync: every result on disk is in {path}.", highlight=False)
            return
        left = ingest(Store(path, create=False), journal, [p.run_id for p in before])
        for pending in before:
            if pending.run_id not in {p.run_id for p in left}:
                out.print(f"{pending.run_id}: took {pending.describe()}", highlight=False)
        if left:
            waiting = "; ".join(f"{p.run_id}: {p.describe()}" for p in left)
            raise StoreBusyError(f"The store {path} stayed busy; still on disk only: {waiting}")

    app.add_typer(store_app, name="store")
