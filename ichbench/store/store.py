"""The DuckDB run store: every run, fold, metric, curve and prediction, one file.

DuckDB lets one process write a file at a time, so every operation opens a connection,
does its work in one transaction and closes it again; opening retries with bounded
exponential backoff while another process holds the lock. That keeps several
`ichbench run` processes sharing one store correct without a server.

The store never computes a metric: it turns records (ichbench.records) into rows and
back. Any failure rolls the whole operation back, so a fold is either entirely there
or not at all, and a run is only ever `finished` through `finish_run`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb

from ichbench import paths
from ichbench.errors import RunBusyError, RunFinishedError, StoreBusyError, StoreError
from ichbench.provenance import folder_safe
from ichbench.records import (
    FoldRecord,
    RunRecord,
    VoteRecord,
)
from ichbench.store import health, migrations, owner, writes
from ichbench.store.reads import StoreReads, exists, first_line
from ichbench.store.rows import METRIC_COLUMNS, metric_values, num, optional_json, to_json
from ichbench.store.writes import now

LOCK_TIMEOUT_ENV = "ICHBENCH_DB_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 60.0
STATUSES = migrations.RUN_STATUSES
_LOCK_MARKERS = ("Could not set lock", "Conflicting lock", "different configuration")


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    """Another process holds the file, or this process has it open in another mode."""
    text = str(exc)
    return any(marker in text for marker in _LOCK_MARKERS)


_verified: dict[Path, tuple] = {}  # store file -> its stamp when last found writable here


def _stamp(path: Path) -> tuple:
    """What changes whenever anyone writes a store: its file's and its WAL's identity,
    size and modification time."""
    stamp = []
    for file in (path, path.with_name(path.name + ".wal")):
        try:
            st = file.stat()
        except OSError:
            stamp.append(None)
        else:
            stamp.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamp)


def _lock_timeout_default() -> float:
    raw = os.environ.get(LOCK_TIMEOUT_ENV)
    if not raw:
        return DEFAULT_LOCK_TIMEOUT
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise StoreError(f"{LOCK_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None


class Store(StoreReads):
    """A run store in one DuckDB file (the reads are in `StoreReads`).

    The path is resolved (symlinks followed) so that one store has one name. Opened with
    `create=True` (to write), the store is checked whole and brought up to this version's
    schema at once (`ichbench.store.health`), so a damaged, incomplete or newer store is
    refused before anything is trained or written. `create=False` is for commands that
    start by reading: a missing file is an error and is never created, and the store is
    never migrated by a read (an older one reads with what it lacks as empty or NULL);
    its first write, if any, checks and upgrades it first. `lock_timeout` bounds how
    long an open waits for another process's lock (default 60 s, or
    `$ICHBENCH_DB_TIMEOUT`).
    """

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        create: bool = True,
        lock_timeout: float | None = None,
    ) -> None:
        self.path = paths.store_file(path) if path is not None else paths.default_db()
        self.lock_timeout = _lock_timeout_default() if lock_timeout is None else lock_timeout
        self._writable = False
        if not self.path.exists():
            if not create:
                raise StoreError(f"No store at {self.path}; run `ichbench run` first")
            self._make_parent()
        if create:
            self._prepare_to_write()
        else:
            with self._reader():
                pass  # a file that is no DuckDB store is reported now, not at the first read

    # ------------------------------------------------------------------ connections

    def _make_parent(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"Cannot create the store {self.path}: {exc.strerror or exc}") from exc

    def _open(self, read_only: bool, sandbox: bool = False) -> duckdb.DuckDBPyConnection:
        config = {"enable_external_access": False} if sandbox else {}
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.02
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only, config=config)
            except duckdb.Error as exc:
                if not _is_lock_conflict(exc):
                    raise StoreError(
                        f"Cannot open the store {self.path}: {first_line(exc)}"
                    ) from exc
                if time.monotonic() + delay > deadline:
                    raise StoreBusyError(
                        f"The store {self.path} stayed locked by another process for "
                        f"{self.lock_timeout:g} s: {first_line(exc)}"
                    ) from exc
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 1.0)

    @contextmanager
    def _reader(self, sandbox: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self._open(read_only=True, sandbox=sandbox)
        try:
            for statement in health.compat_views(con):
                con.execute(statement)
            yield con
        except duckdb.Error as exc:
            raise StoreError(f"Reading the store {self.path} failed: {first_line(exc)}") from exc
        finally:
            con.close()

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write: everything inside commits together or not at all."""
        self._prepare_to_write()
        con = self._open(read_only=False)
        try:
            con.begin()
            try:
                yield con
                con.commit()
            except BaseException:
                _rollback(con)
                raise
        except duckdb.Error as exc:
            raise StoreError(f"Writing to the store {self.path} failed: {first_line(exc)}") from exc
        finally:
            con.close()
        _verified[self.path] = _stamp(self.path)  # what this process wrote needs no re-check

    def _prepare_to_write(self) -> None:
        """Check the whole store on a read-only connection (a damaged file is never
        written), then apply the migrations it lacks; once per store, and again only
        when the file has changed since this process last found it writable."""
        if self._writable:
            return
        if not self.path.exists():
            self._upgrade()  # a new file: created with the whole schema
        elif _verified.get(self.path) != _stamp(self.path):
            con = self._open(read_only=True)
            try:
                todo = health.check_for_writing(con, self.path)
            finally:
                con.close()
            if todo:
                self._upgrade()
        self._writable = True
        _verified[self.path] = _stamp(self.path)

    def _upgrade(self) -> None:
        con = self._open(read_only=False)
        try:
            migrations.apply_migrations(con)
        except duckdb.Error as exc:
            raise StoreError(f"Upgrading the store {self.path} failed: {first_line(exc)}") from exc
        finally:
            con.close()

    # ------------------------------------------------------------------ writes

    def create_run(self, run: RunRecord, exclusive: bool = False) -> None:
        """Record a new run as `running`, with its patient split, in one transaction.
        `exclusive`: refuse while a run of the same configuration on the same data is
        finished (`RunFinishedError`) or running in another live process (`RunBusyError`)."""
        with self._transaction() as con:
            if exists(con, run.run_id):
                raise StoreError(f"Run '{run.run_id}' already exists in {self.path}")
            if exclusive:
                self._refuse_duplicate(con, run)
            con.execute(
                "INSERT INTO runs (run_id, status, started_at, dataset, dataset_hash, config, "
                "config_hash, backbone, strategies, ensemble, patient_rule, seed, preset, "
                "device, pretrained, pretrained_source, versions, git_sha, split_hash, "
                "grid_id, owner, plugins, name, tags, note) VALUES (?, 'running', ?, ?, ?, ?, "
                "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    run.run_id,
                    _started(run),
                    run.dataset,
                    run.dataset_hash,
                    to_json(run.config),
                    run.config_hash,
                    run.backbone,
                    list(run.strategies),
                    _setting(run, "ensemble"),
                    _setting(run, "patient_rule"),
                    int(run.seed),
                    run.preset,
                    run.device,
                    bool(run.pretrained),
                    run.pretrained_source,
                    to_json(run.versions),
                    run.git_sha,
                    run.split_hash,
                    run.grid_id,
                    run.owner or owner.this_process(),
                    optional_json(getattr(run, "plugins", None)),
                    getattr(run, "name", None),
                    list(getattr(run, "tags", None) or []),
                    getattr(run, "note", None),
                ],
            )
            writes.insert_splits(con, run)

    def _refuse_duplicate(self, con: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
        """Only a run of the same plugin versions counts as the same run: a plugin
        upgrade may change its results."""
        rows = con.execute(
            "SELECT run_id, status, owner, plugins FROM runs WHERE config_hash = ? "
            "AND dataset_hash = ? AND status IN ('finished', 'running') "
            "ORDER BY status = 'finished' DESC",
            [run.config_hash, run.dataset_hash],
        ).fetchall()
        ours = getattr(run, "plugins", None) or {}
        for other, status, holder, plugins in rows:
            if (json.loads(plugins) if plugins else {}) != ours:
                continue
            if status == "finished":
                raise RunFinishedError(other)
            if owner.alive_elsewhere(holder):
                raise RunBusyError(other, holder)

    def write_fold(self, run_id: str, fold: FoldRecord) -> None:
        """Record one fold (row, epochs, metrics, curve, predictions, patient decisions)
        in one transaction; a fold already there is replaced."""
        key, outer = [run_id, fold.fold, fold.outer], fold.outer
        with self._transaction() as con:
            self._require_run(con, run_id)
            for table in ("folds", "epochs", "curves", "predictions", "patient_decisions"):
                con.execute(
                    f"DELETE FROM {table} WHERE run_id = ? AND fold = ? AND outer_fold = ?", key
                )
            con.execute(
                "DELETE FROM metrics WHERE run_id = ? AND fold = ? AND outer_fold = ? "
                "AND model = 'fold'",
                key,
            )
            writes.insert_fold_row(con, run_id, fold)
            writes.insert_epochs(con, run_id, fold.fold, fold.epochs, outer)
            writes.insert_metrics(con, run_id, fold.fold, fold.metrics, outer)
            writes.insert_curve(con, run_id, fold.fold, fold.curve, outer)
            writes.insert_predictions(con, run_id, fold.fold, fold.predictions, outer)
            writes.insert_patients(con, run_id, fold.fold, getattr(fold, "patients", None), outer)

    def finish_run(self, run_id: str, votes: list[VoteRecord] | VoteRecord, wall_s: float) -> None:
        """Record the votes (metrics, mean curve, test probabilities, patient decisions)
        and mark the run finished, in one transaction: every outer fold's vote and the
        headline one (`outer` None; with one outer fold, its vote is the headline). Refuses
        while a fold of the run's split has no finished result."""
        votes = [votes] if isinstance(votes, VoteRecord) else list(votes)
        headline = [v for v in votes if v.outer is None]
        if len(headline) != 1:
            raise StoreError(f"Run '{run_id}': a run finishes with one headline vote")
        with self._transaction() as con:
            self._require_run(con, run_id)
            missing = self._missing_folds(con, run_id)
            if missing:
                raise StoreError(
                    f"Run '{run_id}' cannot finish: fold(s) "
                    f"{', '.join(map(str, missing))} have no finished result"
                )
            con.execute("DELETE FROM metrics WHERE run_id = ? AND model = 'vote'", [run_id])
            for table in ("curves", "predictions", "patient_decisions"):
                con.execute(f"DELETE FROM {table} WHERE run_id = ? AND fold IS NULL", [run_id])
            for vote in votes:
                outer = vote.outer
                writes.insert_metrics(con, run_id, None, vote.metrics, outer)
                writes.insert_curve(con, run_id, None, vote.mean_curve, outer)
                decisions = getattr(vote, "decisions", None)
                writes.insert_predictions(con, run_id, None, vote.predictions, outer, decisions)
                writes.insert_patients(con, run_id, None, getattr(vote, "patients", None), outer)
            warned = [w for vote in votes for w in vote.warnings]
            fitted = [c for vote in votes for c in getattr(vote, "calibration", [])]
            con.execute(
                "UPDATE runs SET status = 'finished', threshold = ?, finished_at = ?, "
                "wall_s = ?, error = NULL, warnings = ?, calibration = ? WHERE run_id = ?",
                [
                    num(headline[0].threshold),
                    now(),
                    num(wall_s),
                    to_json(warned),
                    optional_json(fitted or None),
                    run_id,
                ],
            )

    def record_selection(
        self, grid_id: str, picks: list[tuple[int, str, float | None]], metrics: list
    ) -> None:
        """A grid's honest estimate (`ichbench.selection`): (outer fold, run picked, its
        mean validation F1) per outer fold and the picks' pooled test metrics, replacing
        what the grid recorded before, in one transaction."""
        with self._transaction() as con:
            for table in ("grid_selections", "grid_selection_metrics"):
                con.execute(f"DELETE FROM {table} WHERE grid_id = ?", [grid_id])
            if picks:
                con.executemany(
                    "INSERT INTO grid_selections VALUES (?, ?, ?, ?)",
                    [(grid_id, int(o), run, num(f1)) for o, run, f1 in picks],
                )
            names = [c for c in METRIC_COLUMNS if c not in SELECTION_SKIPS]
            for metric in metrics:
                row = metric.as_row()
                row.update(run_id=grid_id, fold=None, model="vote", outer_fold=None)
                values = dict(zip(METRIC_COLUMNS, metric_values(row), strict=True))
                con.execute(
                    f"INSERT INTO grid_selection_metrics (grid_id, {', '.join(names)}, "
                    f"written_at) VALUES (?, {', '.join('?' for _ in names)}, ?)",
                    [grid_id, *[values[c] for c in names], now()],
                )

    def write_evaluation(self, evaluation) -> None:
        """Record an evaluation of a finished run on another dataset
        (`ichbench.evaluation.EvaluationRecord`: its row, metrics, slice predictions and
        patient decisions) in one transaction: all of it or, on any failure, none. The run
        must still be there and finished when the transaction runs."""
        with self._transaction() as con:
            status = self._require_run(con, evaluation.run_id)
            if status != "finished":
                raise StoreError(
                    f"Run '{evaluation.run_id}' is {status}: only a finished run's "
                    "evaluation can be recorded"
                )
            writes.insert_evaluation(con, evaluation)

    def _missing_folds(self, con: duckdb.DuckDBPyConnection, run_id: str) -> list[str]:
        rows = con.execute(
            "SELECT DISTINCT s.outer_fold, s.fold FROM splits s WHERE s.run_id = ? "
            "AND s.fold IS NOT NULL AND (s.outer_fold, s.fold) NOT IN "
            "(SELECT (outer_fold, fold) FROM folds WHERE run_id = ? AND status = 'finished') "
            "ORDER BY s.outer_fold, s.fold",
            [run_id, run_id],
        ).fetchall()
        return [str(fold) if outer == 0 else f"{outer}.{fold}" for outer, fold in rows]

    def mark_run(self, run_id: str, status: str, error: str | None = None) -> None:
        """Set a run `failed` or `interrupted` (with the error), or back to `running` when
        it is resumed (this process then becomes its owner). Only `finish_run` can make a
        run `finished`, and a finished run keeps that status. A run that another live
        process is running is not taken over (`RunBusyError`), and its status is left to
        that process."""
        if status not in STATUSES or status == "finished":
            allowed = ", ".join(s for s in STATUSES if s != "finished")
            raise StoreError(
                f"Cannot mark a run '{status}'; expected one of {allowed} "
                "(a run becomes finished only through finish_run)"
            )
        with self._transaction() as con:
            current = self._require_run(con, run_id)
            if current == "finished" and status == "running":
                raise RunFinishedError(run_id)  # finished meanwhile by another process
            if current == "finished":
                raise StoreError(f"Run '{run_id}' is finished; its status cannot become '{status}'")
            holder = con.execute("SELECT owner FROM runs WHERE run_id = ?", [run_id]).fetchone()[0]
            if current == "running" and owner.alive_elsewhere(holder):
                if status == "running":
                    raise RunBusyError(run_id, holder)
                return  # the live process running it decides how it ends
            if status == "running":
                con.execute(
                    "UPDATE runs SET owner = ? WHERE run_id = ?", [owner.this_process(), run_id]
                )
            con.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = NULL WHERE run_id = ?",
                [status, error, run_id],
            )

    def set_tags(
        self, run_id: str, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> tuple[str, list[str]]:
        """Add and remove tags of a run (an id or a unique prefix or suffix) in one
        transaction; returns its full id and its tags now. Tags label a run, whatever its
        status: no process ever writes them but this."""
        with self._transaction() as con:
            full = self._resolve(con, run_id)
            row = con.execute("SELECT tags FROM runs WHERE run_id = ?", [full]).fetchone()
            tags = [t for t in row[0] or [] if t not in remove]
            tags += [t for t in dict.fromkeys(add) if t not in tags]
            con.execute("UPDATE runs SET tags = ? WHERE run_id = ?", [tags, full])
        return full, tags

    def run_folder(self, run_id: str) -> Path:
        """The run's own folder (`<store>.runs/<run_id>/`); an id that would name any
        other place (a path separator, `..`) is refused, so removing a run never reaches
        outside the store's runs folder."""
        root = paths.run_dir(self.path, "run").parent
        folder = root / run_id
        if not folder_safe(run_id) or folder.parent != root:
            raise StoreError(
                f"Run id {run_id!r} in {self.path} does not name a folder of {root}; "
                "refusing to touch it"
            )
        return folder

    def remove_runs(self, run_ids: Sequence[str]) -> list[Removed]:
        """Delete runs (full ids): their rows from every table of the store, in one
        transaction, then, once that has committed, their folders (checkpoints,
        journal). A grid's honest selection that picked one of them is deleted with it,
        since its pooled estimate was made of that run's results. A run that a live
        process of this host is running (this one included) is refused with a StoreError
        naming that process, and then nothing is deleted; a `running` run whose process
        is gone may go, as may one of another host, which cannot be checked from here.
        A folder that cannot be removed is reported on the returned entry, its rows
        already gone."""
        ids = list(dict.fromkeys(run_ids))
        folders = {run_id: self.run_folder(run_id) for run_id in ids}
        with self._transaction() as con:
            for run_id in ids:
                if self._require_run(con, run_id) == "running":
                    holder = con.execute(
                        "SELECT owner FROM runs WHERE run_id = ?", [run_id]
                    ).fetchone()[0]
                    if holder == owner.this_process() or owner.alive_elsewhere(holder):
                        raise StoreError(_live_run_message(run_id, holder))
            grids = [
                r[0]
                for r in con.execute(
                    "SELECT DISTINCT grid_id FROM grid_selections "
                    "WHERE list_contains(?, run_id) ORDER BY grid_id",
                    [ids],
                ).fetchall()
            ]
            for table in ("grid_selections", "grid_selection_metrics"):
                con.execute(f"DELETE FROM {table} WHERE list_contains(?, grid_id)", [grids])
            for table in _tables_with_run_id(con):
                con.execute(
                    f"DELETE FROM {health.quote(table)} WHERE list_contains(?, run_id)", [ids]
                )
        return [
            Removed(run_id, folders[run_id], _remove_folder(folders[run_id]), grids)
            for run_id in ids
        ]

    def _require_run(self, con: duckdb.DuckDBPyConnection, run_id: str) -> str:
        row = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()
        if row is None:
            raise StoreError(f"Unknown run '{run_id}' in {self.path}")
        return row[0]


@dataclass
class Removed:
    """A run deleted from the store: its folder, why that folder is still there (None
    once it is gone, or when there was none), and the grids whose selection went too."""

    run_id: str
    folder: Path
    folder_error: str | None = None
    grids: list[str] = field(default_factory=list)


def _tables_with_run_id(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every table of the store that holds rows of runs: those of today and any that a
    later migration adds, so that removing a run leaves none of it behind."""
    return [
        r[0]
        for r in con.execute(
            "SELECT c.table_name FROM duckdb_columns() c "
            "JOIN duckdb_tables() t ON t.table_oid = c.table_oid "
            "WHERE c.database_name = current_database() AND c.schema_name = 'main' "
            "AND c.column_name = 'run_id' ORDER BY c.table_name = 'runs', c.table_name"
        ).fetchall()
    ]


def _remove_folder(folder: Path) -> str | None:
    """Remove a run's folder; a symbolic link is removed, never followed. Returns why it
    could not be, or None."""
    try:
        if folder.is_symlink():
            folder.unlink()
        elif folder.exists():
            shutil.rmtree(folder)
    except OSError as exc:
        return f"{exc.strerror or exc} ({exc.filename or folder})"
    return None


def _live_run_message(run_id: str, holder: str) -> str:
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    return (
        f"Run {run_id} is being run by process {pid} on {host}; stop it before removing "
        "it (nothing was removed)"
    )


def _started(run: RunRecord) -> datetime:
    """When the run was created, as its record says (a record taken in from the journal
    later keeps its own time); now for a record that does not say."""
    started = getattr(run, "started_at", None)
    if not started:
        return now()
    try:
        return datetime.fromisoformat(started)
    except (TypeError, ValueError):
        raise StoreError(f"Run '{run.run_id}': started_at {started!r} is no timestamp") from None


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back without letting a failed rollback hide the error that caused it; the
    connection is closed right after, which discards the transaction anyway."""
    try:
        con.rollback()
    except duckdb.Error:
        pass


# metric columns a grid's pooled choice has no value for: it is no run, fold or split,
# and each outer fold's pick was cut at its own threshold
SELECTION_SKIPS = ("run_id", "fold", "model", "split", "threshold", "outer_fold")


def _setting(run: RunRecord, name: str) -> str | None:
    """The ensemble and patient rules as chosen: a record attribute if present, else the
    config entry of that name."""
    value = getattr(run, name, None)
    if value is None and isinstance(run.config, dict):
        value = run.config.get(name)
    return None if value is None else str(value)
