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
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from ichbench import paths
from ichbench.errors import RunBusyError, RunFinishedError, StoreError
from ichbench.records import (
    METRIC_NAMES,
    EpochRecord,
    FoldRecord,
    MetricRow,
    Predictions,
    RunRecord,
    VoteRecord,
)
from ichbench.store import migrations, owner

LOCK_TIMEOUT_ENV = "ICHBENCH_DB_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 60.0
STATUSES = migrations.RUN_STATUSES
READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA"}
_LOCK_MARKERS = ("Could not set lock", "Conflicting lock", "different configuration")

_METRIC_COLUMNS = (
    ["run_id", "fold", "model", "scope", "split", "threshold", *METRIC_NAMES,
     "tp", "fp", "tn", "fn", "n"]
    + [f"{m}_{end}" for m in METRIC_NAMES for end in ("lo", "hi")]
    + ["ci_method"]
)
_FOLD_COLUMNS = (
    "run_id", "fold", "status", "threshold", "best_epoch", "train_ich_before",
    "train_healthy_before", "train_ich", "train_healthy", "added", "removed",
    "train_patients", "val_patients", "wall_s", "checkpoint", "written_at", "compiled",
)


def _now() -> datetime:
    """Timestamps are stored as UTC without a zone (DuckDB TIMESTAMP)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    """Another process holds the file, or this process has it open in another mode."""
    text = str(exc)
    return any(marker in text for marker in _LOCK_MARKERS)


def _num(value: Any) -> float | None:
    """Masked, None and NaN metrics all become SQL NULL."""
    if value is None or value is np.ma.masked:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _curve_thresholds(n: int) -> np.ndarray:
    """Curves are F1 at evenly spaced thresholds from 0 to 1 (0.00, 0.01, ... 1.00)."""
    return np.round(np.linspace(0.0, 1.0, n), 6) if n > 1 else np.zeros(n)


def _lock_timeout_default() -> float:
    raw = os.environ.get(LOCK_TIMEOUT_ENV)
    if not raw:
        return DEFAULT_LOCK_TIMEOUT
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise StoreError(f"{LOCK_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None


class Store:
    """A run store in one DuckDB file.

    `create=False` is for commands that only read: a missing file is an error and is
    never created. `lock_timeout` bounds how long an open waits for another process's
    lock (default 60 s, or `$ICHBENCH_DB_TIMEOUT`).
    """

    def __init__(self, path: Path | str | None = None, *, create: bool = True,
                 lock_timeout: float | None = None) -> None:
        self.path = Path(path) if path is not None else paths.default_db()
        self.lock_timeout = _lock_timeout_default() if lock_timeout is None else lock_timeout
        if not self.path.exists():
            if not create:
                raise StoreError(f"No store at {self.path}; run `ichbench run` first")
            self._make_parent()
        self._migrate()

    # ------------------------------------------------------------------ connections

    def _make_parent(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"Cannot create the store {self.path}: {exc.strerror or exc}") \
                from exc

    def _open(self, read_only: bool, sandbox: bool = False) -> duckdb.DuckDBPyConnection:
        config = {"enable_external_access": False} if sandbox else {}
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.02
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only, config=config)
            except duckdb.Error as exc:
                if not _is_lock_conflict(exc):
                    raise StoreError(f"Cannot open the store {self.path}: {_first_line(exc)}") \
                        from exc
                if time.monotonic() + delay > deadline:
                    raise StoreError(
                        f"The store {self.path} stayed locked by another process for "
                        f"{self.lock_timeout:g} s: {_first_line(exc)}"
                    ) from exc
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 1.0)

    @contextmanager
    def _reader(self, sandbox: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self._open(read_only=True, sandbox=sandbox)
        try:
            yield con
        except duckdb.Error as exc:
            raise StoreError(f"Reading the store {self.path} failed: {_first_line(exc)}") \
                from exc
        finally:
            con.close()

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write: everything inside commits together or not at all."""
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
            raise StoreError(f"Writing to the store {self.path} failed: {_first_line(exc)}") \
                from exc
        finally:
            con.close()

    def _migrate(self) -> None:
        if self.path.exists():
            with self._reader() as con:
                if not migrations.pending(con):
                    return
        con = self._open(read_only=False)
        try:
            migrations.apply_migrations(con)
        except duckdb.Error as exc:
            raise StoreError(f"Upgrading the store {self.path} failed: {_first_line(exc)}") \
                from exc
        finally:
            con.close()

    # ------------------------------------------------------------------ writes

    def create_run(self, run: RunRecord, exclusive: bool = False) -> None:
        """Record a new run as `running`, with its patient split, in one transaction.
        `exclusive`: refuse while a run of the same configuration on the same data is
        finished (`RunFinishedError`) or running in another live process (`RunBusyError`)."""
        with self._transaction() as con:
            if _exists(con, run.run_id):
                raise StoreError(f"Run '{run.run_id}' already exists in {self.path}")
            if exclusive:
                self._refuse_duplicate(con, run)
            con.execute(
                "INSERT INTO runs (run_id, status, started_at, dataset, dataset_hash, config, "
                "config_hash, backbone, strategies, ensemble, patient_rule, seed, preset, "
                "device, pretrained, pretrained_source, versions, git_sha, split_hash, "
                "grid_id, owner) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?, ?, ?)",
                [run.run_id, _now(), run.dataset, run.dataset_hash, _json(run.config),
                 run.config_hash, run.backbone, list(run.strategies),
                 _setting(run, "ensemble"), _setting(run, "patient_rule"), int(run.seed),
                 run.preset, run.device, bool(run.pretrained), run.pretrained_source,
                 _json(run.versions), run.git_sha, run.split_hash, run.grid_id,
                 owner.this_process()],
            )
            self._insert_splits(con, run)

    def _refuse_duplicate(self, con: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
        rows = con.execute(
            "SELECT run_id, status, owner FROM runs WHERE config_hash = ? AND dataset_hash = ? "
            "AND status IN ('finished', 'running') ORDER BY status = 'finished' DESC",
            [run.config_hash, run.dataset_hash]).fetchall()
        for other, status, holder in rows:
            if status == "finished":
                raise RunFinishedError(other)
            if owner.alive_elsewhere(holder):
                raise RunBusyError(other, holder)

    def _insert_splits(self, con: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
        folds: list[int | None] = []
        patients: list[int] = []
        roles: list[str] = []
        for pid in run.test_patients:
            folds.append(None)
            patients.append(int(pid))
            roles.append("test")
        for fold, parts in sorted(run.folds.items(), key=lambda kv: int(kv[0])):
            for role in ("train", "val"):
                for pid in parts.get(role, []):
                    folds.append(int(fold))
                    patients.append(int(pid))
                    roles.append(role)
        if patients:
            con.executemany(
                "INSERT INTO splits VALUES (?, ?, ?, ?)",
                [(run.run_id, f, p, r) for f, p, r in zip(folds, patients, roles, strict=True)],
            )

    def write_fold(self, run_id: str, fold: FoldRecord) -> None:
        """Record one fold (row, epochs, metrics, curve, predictions) in one transaction;
        a fold already there is replaced."""
        with self._transaction() as con:
            self._require_run(con, run_id)
            for table in ("folds", "epochs", "curves", "predictions"):
                con.execute(f"DELETE FROM {table} WHERE run_id = ? AND fold = ?",
                            [run_id, fold.fold])
            con.execute("DELETE FROM metrics WHERE run_id = ? AND fold = ? AND model = 'fold'",
                        [run_id, fold.fold])
            self._insert_fold_row(con, run_id, fold)
            self._insert_epochs(con, run_id, fold.fold, fold.epochs)
            self._insert_metrics(con, run_id, fold.fold, fold.metrics)
            self._insert_curve(con, run_id, fold.fold, fold.curve)
            self._insert_predictions(con, run_id, fold.fold, fold.predictions)

    def _insert_fold_row(self, con: duckdb.DuckDBPyConnection, run_id: str,
                         fold: FoldRecord) -> None:
        values = [
            run_id, int(fold.fold), fold.status, _num(fold.threshold), _int(fold.best_epoch),
            _int(fold.train_ich_before), _int(fold.train_healthy_before), _int(fold.train_ich),
            _int(fold.train_healthy), _int(fold.added), _int(fold.removed),
            [int(p) for p in fold.train_patients], [int(p) for p in fold.val_patients],
            _num(fold.wall_s), fold.checkpoint, _now(), bool(fold.compiled),
        ]
        marks = ", ".join("?" for _ in _FOLD_COLUMNS)
        con.execute(f"INSERT INTO folds ({', '.join(_FOLD_COLUMNS)}) VALUES ({marks})", values)

    def _insert_epochs(self, con: duckdb.DuckDBPyConnection, run_id: str, fold: int,
                       epochs: list[EpochRecord]) -> None:
        if epochs:
            con.executemany(
                "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(run_id, fold, int(e.epoch), _num(e.train_loss), _num(e.val_loss),
                  _num(e.val_f1), _num(e.wall_s)) for e in epochs],
            )

    def _insert_metrics(self, con: duckdb.DuckDBPyConnection, run_id: str, fold: int | None,
                        rows: list[MetricRow]) -> None:
        if not rows:
            return
        model = "vote" if fold is None else "fold"
        values = []
        for metric in rows:
            row = metric.as_row()
            row.update(run_id=run_id, fold=fold, model=model)
            values.append([
                _num(row[c]) if c in _FLOAT_METRIC_COLUMNS
                else _int(row[c]) if c in ("fold", "tp", "fp", "tn", "fn", "n")
                else row[c]
                for c in _METRIC_COLUMNS
            ])
        marks = ", ".join("?" for _ in _METRIC_COLUMNS)
        con.executemany(
            f"INSERT INTO metrics ({', '.join(_METRIC_COLUMNS)}) VALUES ({marks})", values
        )

    def _insert_curve(self, con: duckdb.DuckDBPyConnection, run_id: str, fold: int | None,
                      curve: np.ndarray) -> None:
        f1 = np.asarray(curve, dtype=np.float64).reshape(-1)
        if f1.size == 0:
            return
        _scan_insert(
            con, {"threshold": _curve_thresholds(f1.size), "f1": f1},
            "INSERT INTO curves SELECT ?, ?, threshold, "
            "CASE WHEN isnan(f1) THEN NULL ELSE f1 END FROM {frame}",
            [run_id, fold],
        )

    def _insert_predictions(self, con: duckdb.DuckDBPyConnection, run_id: str,
                            fold: int | None, preds: Predictions) -> None:
        frame = _prediction_frame(preds, run_id, fold)
        if not len(frame["prob"]):
            return
        _scan_insert(
            con, frame,
            "INSERT INTO predictions SELECT ?, ?, split, patient_id, slice, label, "
            "CASE WHEN isnan(prob) THEN NULL ELSE prob END FROM {frame}",
            [run_id, fold],
        )

    def finish_run(self, run_id: str, vote: VoteRecord, wall_s: float) -> None:
        """Record the vote and mark the run finished, in one transaction. Refuses while
        a fold of the run's split has no finished result."""
        with self._transaction() as con:
            self._require_run(con, run_id)
            missing = self._missing_folds(con, run_id)
            if missing:
                raise StoreError(f"Run '{run_id}' cannot finish: fold(s) "
                                 f"{', '.join(map(str, missing))} have no finished result")
            con.execute("DELETE FROM metrics WHERE run_id = ? AND model = 'vote'", [run_id])
            for table in ("curves", "predictions"):
                con.execute(f"DELETE FROM {table} WHERE run_id = ? AND fold IS NULL", [run_id])
            self._insert_metrics(con, run_id, None, vote.metrics)
            self._insert_curve(con, run_id, None, vote.mean_curve)
            self._insert_predictions(con, run_id, None, vote.predictions)
            con.execute(
                "UPDATE runs SET status = 'finished', threshold = ?, finished_at = ?, "
                "wall_s = ?, error = NULL WHERE run_id = ?",
                [_num(vote.threshold), _now(), _num(wall_s), run_id],
            )

    def _missing_folds(self, con: duckdb.DuckDBPyConnection, run_id: str) -> list[int]:
        rows = con.execute(
            "SELECT DISTINCT s.fold FROM splits s WHERE s.run_id = ? AND s.fold IS NOT NULL "
            "AND s.fold NOT IN (SELECT fold FROM folds WHERE run_id = ? "
            "AND status = 'finished') ORDER BY s.fold",
            [run_id, run_id],
        ).fetchall()
        return [r[0] for r in rows]

    def mark_run(self, run_id: str, status: str, error: str | None = None) -> None:
        """Set a run `failed` or `interrupted` (with the error), or back to `running` when
        it is resumed (this process then becomes its owner). Only `finish_run` can make a
        run `finished`, and a finished run keeps that status. A run that another live
        process is running is not taken over (`RunBusyError`), and its status is left to
        that process."""
        if status not in STATUSES or status == "finished":
            allowed = ", ".join(s for s in STATUSES if s != "finished")
            raise StoreError(f"Cannot mark a run '{status}'; expected one of {allowed} "
                             "(a run becomes finished only through finish_run)")
        with self._transaction() as con:
            current = self._require_run(con, run_id)
            if current == "finished" and status == "running":
                raise RunFinishedError(run_id)  # finished meanwhile by another process
            if current == "finished":
                raise StoreError(f"Run '{run_id}' is finished; its status cannot become "
                                 f"'{status}'")
            holder = con.execute("SELECT owner FROM runs WHERE run_id = ?",
                                 [run_id]).fetchone()[0]
            if current == "running" and owner.alive_elsewhere(holder):
                if status == "running":
                    raise RunBusyError(run_id, holder)
                return  # the live process running it decides how it ends
            if status == "running":
                con.execute("UPDATE runs SET owner = ? WHERE run_id = ?",
                            [owner.this_process(), run_id])
            con.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = NULL WHERE run_id = ?",
                [status, error, run_id],
            )

    def _require_run(self, con: duckdb.DuckDBPyConnection, run_id: str) -> str:
        row = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()
        if row is None:
            raise StoreError(f"Unknown run '{run_id}' in {self.path}")
        return row[0]

    # ------------------------------------------------------------------ reads

    def resolve(self, run_id: str) -> str:
        """The full id of a run given its id or a unique prefix of it."""
        with self._reader() as con:
            return self._resolve(con, run_id)

    def _resolve(self, con: duckdb.DuckDBPyConnection, run_id: str) -> str:
        if _exists(con, run_id):
            return run_id
        matches = [r[0] for r in con.execute(
            "SELECT run_id FROM runs WHERE starts_with(run_id, ?) ORDER BY run_id LIMIT 6",
            [run_id]).fetchall()] if run_id else []
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise StoreError(f"Run id '{run_id}' is ambiguous: it starts "
                             f"{', '.join(matches[:5])}{' ...' if len(matches) > 5 else ''}")
        recent = [r[0] for r in con.execute(
            "SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 5").fetchall()]
        hint = f"Recent runs: {', '.join(recent)}" if recent else "The store has no runs yet"
        raise StoreError(f"Unknown run '{run_id}'. {hint}")

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The `runs` row (config and versions as dicts); accepts a unique id prefix."""
        with self._reader() as con:
            full = self._resolve(con, run_id)
            row = _dicts(con.execute("SELECT * FROM runs WHERE run_id = ?", [full]))[0]
        for key in ("config", "versions"):
            row[key] = json.loads(row[key]) if row[key] is not None else None
        return row

    def list_runs(self, status: str | None = None, backbone: str | None = None,
                  grid_id: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """`run_summary` rows, newest first."""
        if status is not None and status not in STATUSES:
            raise StoreError(f"Unknown status '{status}'; expected one of {', '.join(STATUSES)}")
        where, params = [], []
        for column, value in (("status", status), ("backbone", backbone),
                              ("grid_id", grid_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT * FROM run_summary"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC, run_id"
        if limit is not None:
            sql += f" LIMIT {max(0, int(limit))}"
        with self._reader() as con:
            return _dicts(con.execute(sql, params))

    def summaries(self, run_ids: list[str]) -> list[dict[str, Any]]:
        """`run_summary` rows of the given runs (ids or unique prefixes), in that order."""
        with self._reader() as con:
            full = list(dict.fromkeys(self._resolve(con, r) for r in run_ids))
            rows = _dicts(con.execute("SELECT * FROM run_summary WHERE list_contains(?, run_id)",
                                      [full]))
        by_id = {row["run_id"]: row for row in rows}
        return [by_id[r] for r in full]

    def find_finished_run(self, config_hash: str, dataset_hash: str) -> str | None:
        """The newest finished run of this config on this dataset, so a grid can skip it."""
        with self._reader() as con:
            row = con.execute(
                "SELECT run_id FROM runs WHERE status = 'finished' AND config_hash = ? "
                "AND dataset_hash = ? ORDER BY finished_at DESC LIMIT 1",
                [config_hash, dataset_hash],
            ).fetchone()
        return row[0] if row else None

    def runs_with_config(self, config_hash: str) -> list[dict[str, Any]]:
        """Runs of one configuration, finished first, then the newest: what a grid resumes."""
        with self._reader() as con:
            return _dicts(con.execute(
                "SELECT run_id, status, dataset_hash FROM runs WHERE config_hash = ? "
                "ORDER BY status = 'finished' DESC, started_at DESC", [config_hash]))

    def finished_folds(self, run_id: str) -> set[int]:
        with self._reader() as con:
            rows = con.execute(
                "SELECT fold FROM folds WHERE run_id = ? AND status = 'finished'", [run_id]
            ).fetchall()
        return {int(r[0]) for r in rows}

    def load_fold(self, run_id: str, fold: int) -> FoldRecord:
        """A stored fold as the runner wrote it, enough to recompute the vote on resume.
        Predictions come back ordered by split, patient and slice."""
        with self._reader() as con:
            rows = _dicts(con.execute(
                "SELECT * FROM folds WHERE run_id = ? AND fold = ?", [run_id, fold]))
            if not rows:
                raise StoreError(f"Run '{run_id}' has no fold {fold} in {self.path}")
            row = rows[0]
            curve = self._load_curve(con, run_id, fold)
            metrics = [_metric_row(m) for m in _dicts(con.execute(
                "SELECT * FROM metrics WHERE run_id = ? AND fold = ? AND model = 'fold' "
                "ORDER BY scope, split", [run_id, fold]))]
            preds = self._load_predictions(con, run_id, fold)
            epochs = [EpochRecord(e["epoch"], e["train_loss"], e["val_loss"], e["val_f1"],
                                  e["wall_s"]) for e in _dicts(con.execute(
                "SELECT * FROM epochs WHERE run_id = ? AND fold = ? ORDER BY epoch",
                [run_id, fold]))]
        return FoldRecord(
            fold=row["fold"], threshold=row["threshold"], best_epoch=row["best_epoch"],
            train_ich_before=row["train_ich_before"],
            train_healthy_before=row["train_healthy_before"], train_ich=row["train_ich"],
            train_healthy=row["train_healthy"], added=row["added"], removed=row["removed"],
            train_patients=list(row["train_patients"] or []),
            val_patients=list(row["val_patients"] or []), wall_s=row["wall_s"], curve=curve,
            metrics=metrics, predictions=preds, epochs=epochs, checkpoint=row["checkpoint"],
            status=row["status"], compiled=bool(row["compiled"]),
        )

    def _load_curve(self, con: duckdb.DuckDBPyConnection, run_id: str,
                    fold: int | None) -> np.ndarray:
        cond = "fold IS NULL" if fold is None else "fold = ?"
        params = [run_id] if fold is None else [run_id, fold]
        rows = con.execute(
            f"SELECT f1 FROM curves WHERE run_id = ? AND {cond} ORDER BY threshold", params
        ).fetchall()
        return np.array([np.nan if r[0] is None else r[0] for r in rows], dtype=np.float64)

    def _load_predictions(self, con: duckdb.DuckDBPyConnection, run_id: str,
                          fold: int | None) -> Predictions:
        cond = "fold IS NULL" if fold is None else "fold = ?"
        params = [run_id] if fold is None else [run_id, fold]
        cols = con.execute(
            "SELECT split, patient_id, slice, label, coalesce(prob, 'NaN'::DOUBLE) AS prob "
            f"FROM predictions WHERE run_id = ? AND {cond} ORDER BY split, patient_id, slice",
            params,
        ).fetchnumpy()
        return Predictions(
            split=np.asarray(cols["split"], dtype=str),
            patient_id=np.asarray(cols["patient_id"], dtype=np.int64),
            slice=np.asarray(cols["slice"], dtype=np.int64),
            label=np.asarray(cols["label"], dtype=np.int64),
            prob=np.asarray(cols["prob"], dtype=np.float64),
        )

    def load_vote_predictions(self, run_id: str) -> Predictions:
        """The ensemble's test probabilities recorded by `finish_run`."""
        with self._reader() as con:
            return self._load_predictions(con, run_id, None)

    def load_curve(self, run_id: str, fold: int | None) -> np.ndarray:
        """A fold's validation F1 curve, or the vote's mean curve for `fold=None`."""
        with self._reader() as con:
            return self._load_curve(con, run_id, fold)

    def run_metrics(self, run_id: str) -> list[dict[str, Any]]:
        """Every `metrics` row of a run: folds in order, then the vote."""
        with self._reader() as con:
            full = self._resolve(con, run_id)
            return _dicts(con.execute(
                "SELECT * FROM metrics WHERE run_id = ? "
                "ORDER BY model = 'vote', fold, scope DESC, split DESC", [full]))

    def folds(self, run_id: str) -> list[dict[str, Any]]:
        """The `folds` rows of a run, in fold order."""
        with self._reader() as con:
            full = self._resolve(con, run_id)
            return _dicts(con.execute(
                "SELECT * FROM folds WHERE run_id = ? ORDER BY fold", [full]))

    def baselines(self) -> list[dict[str, Any]]:
        with self._reader() as con:
            return _dicts(con.execute(
                "SELECT * FROM baselines ORDER BY source, scope DESC, setting, backbone, "
                "model, fold NULLS LAST"))

    def query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run one read-only statement on a sandboxed connection (no writes, no files,
        no extensions) and return (column names, rows)."""
        with self._reader(sandbox=True) as con:
            try:
                statements = con.extract_statements(sql)
            except duckdb.Error as exc:
                raise StoreError(f"SQL error: {_first_line(exc)}") from exc
            if len(statements) != 1:
                raise StoreError(f"ichbench sql runs exactly one statement; got "
                                 f"{len(statements)}")
            kind = statements[0].type.name
            if kind not in READ_ONLY_STATEMENTS:
                raise StoreError(f"ichbench sql is read-only: {kind} statements are not "
                                 "allowed (use SELECT)")
            try:
                result = con.execute(sql)
                columns = [d[0] for d in result.description or []]
                return columns, result.fetchall()
            except duckdb.Error as exc:
                text = _first_line(exc)
                if "read-only" in text or "Permission" in text:
                    raise StoreError(f"ichbench sql is read-only: {text}") from exc
                raise StoreError(f"SQL error: {text}") from exc


_FLOAT_METRIC_COLUMNS = frozenset(
    ["threshold", *METRIC_NAMES] + [f"{m}_{end}" for m in METRIC_NAMES for end in ("lo", "hi")]
)


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back without letting a failed rollback hide the error that caused it; the
    connection is closed right after, which discards the transaction anyway."""
    try:
        con.rollback()
    except duckdb.Error:
        pass


def _exists(con: duckdb.DuckDBPyConnection, run_id: str) -> bool:
    return con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone() is not None


def _json(value: Any) -> str:
    """Configs may hold paths and tuples: store them as their string / list form."""
    return json.dumps(value, sort_keys=True, default=str)


def _setting(run: RunRecord, name: str) -> str | None:
    """The ensemble and patient rules as chosen: a record attribute if present, else the
    config entry of that name."""
    value = getattr(run, name, None)
    if value is None and isinstance(run.config, dict):
        value = run.config.get(name)
    return None if value is None else str(value)


def _scan_insert(con: duckdb.DuckDBPyConnection, frame: dict[str, np.ndarray], sql: str,
                 params: list[Any]) -> None:
    """Bulk insert: DuckDB scans the numpy columns directly, no row-by-row binding.
    On failure the view is left to die with the connection: unregistering inside an
    aborted transaction would hide the real error."""
    name = "_ichbench_frame"
    con.register(name, frame)
    con.execute(sql.format(frame=name), params)
    con.unregister(name)


def _dicts(result: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    columns = [d[0] for d in result.description]
    return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]


def _prediction_frame(preds: Predictions, run_id: str, fold: int | None) -> dict[str, np.ndarray]:
    frame = {
        "split": np.asarray(preds.split).astype(str).reshape(-1),
        "patient_id": np.asarray(preds.patient_id, dtype=np.int64).reshape(-1),
        "slice": np.asarray(preds.slice, dtype=np.int64).reshape(-1),
        "label": np.asarray(preds.label, dtype=np.int64).reshape(-1),
        "prob": np.asarray(preds.prob, dtype=np.float64).reshape(-1),
    }
    lengths = {name: len(values) for name, values in frame.items()}
    if len(set(lengths.values())) > 1:
        where = "the vote" if fold is None else f"fold {fold}"
        raise StoreError(f"Predictions of {where} of run '{run_id}' have columns of "
                         f"different lengths: {lengths}")
    return frame


def _metric_row(row: dict[str, Any]) -> MetricRow:
    ci = {m: (row[f"{m}_lo"], row[f"{m}_hi"]) for m in METRIC_NAMES
          if row[f"{m}_lo"] is not None or row[f"{m}_hi"] is not None}
    return MetricRow(
        model=row["model"], fold=row["fold"], scope=row["scope"], split=row["split"],
        threshold=row["threshold"], sensitivity=row["sensitivity"],
        specificity=row["specificity"], precision=row["precision"], f1=row["f1"],
        accuracy=row["accuracy"], auc=row["auc"], tp=row["tp"], fp=row["fp"], tn=row["tn"],
        fn=row["fn"], n=row["n"], ci=ci, ci_method=row["ci_method"] or "",
    )
