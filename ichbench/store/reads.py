"""Reading the store: the typed queries every reader (report, `show`, resume) uses.

Every statement here binds its values as `?` parameters on a read-only connection; no
reader ever builds SQL from a value. `Store.query` is only for a user's own SQL.

A run with several outer folds has a fold model per (outer fold, fold) and a vote per
outer fold; "the vote" of a reader is the run's headline (`outer_fold` NULL: pooled over
the outer folds), and per-fold readers take one outer fold (`outer`, 0 by default: the
only one of a run of the study's single split).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from ichbench.config import WEIGHT_CLASSES, canonical_spec
from ichbench.errors import StoreError
from ichbench.records import EpochRecord, FoldRecord, PatientDecisions, Predictions
from ichbench.store import migrations
from ichbench.store.rows import (
    decode_json,
    dicts,
    metric_row,
    patients_from,
    predictions_from,
)

STATUSES = migrations.RUN_STATUSES
READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA"}
# the `run_summary` columns runs can be sorted by: highest (or newest) first
SORTABLE = (
    "started_at",
    "finished_at",
    "slice_f1",
    "slice_sensitivity",
    "slice_specificity",
    "slice_precision",
    "slice_accuracy",
    "slice_auc",
    "patient_f1",
    "patient_sensitivity",
    "patient_specificity",
    "patient_precision",
    "patient_accuracy",
    "mean_val_f1",
    "folds_finished",
)


@dataclass
class StoredSplit:
    """A run's patient split as recorded: every tested patient (each in one outer fold's
    test set), each outer fold's test patients, and outer fold 0's folds, their training
    and validation patients."""

    test: list[int] = field(default_factory=list)
    folds: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    outer_tests: dict[int, list[int]] = field(default_factory=dict)


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def exists(con: duckdb.DuckDBPyConnection, run_id: str) -> bool:
    return con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone() is not None


def strategy_terms(text: str) -> tuple[list[str], list[str]]:
    """What `runs --strategy TEXT` matches among a run's stored specs: exact specs, and
    prefixes. A spec matches itself in its canonical spelling (`augment:3.30` finds
    `augment:3.3`); a name matches any of its arguments (`augment`, `ich`). A class weight
    is found in either spelling, `ich:4` or the registry's `weight:ich,4` (which stores
    written before weights were recorded as typed still hold); `weight` finds any."""
    spec = canonical_spec(text.strip())
    name, _, args = spec.partition(":")
    if name == "weight" and not args:
        return [], ["weight:"] + [f"{cls}:" for cls in WEIGHT_CLASSES]
    if name == "weight" and "," in args:
        cls, _, value = args.partition(",")
        return [spec, f"{cls}:{value}"], []
    if not args:
        return [name], [f"{name}:", f"weight:{name},"]
    return [spec, f"weight:{name},{args}"], []


def _json_parsed(description: list[tuple], rows: list[tuple]) -> list[tuple]:
    """Values of JSON columns as the objects they hold (DuckDB hands them over as text), so
    `sql --json` prints the configuration as an object rather than an escaped string."""
    kinds = [str(d[1]) for d in description]
    parsed = [i for i, kind in enumerate(kinds) if kind == "JSON"]
    if not parsed:
        return rows
    out = []
    for row in rows:
        values = list(row)
        for i in parsed:
            if isinstance(values[i], str):
                try:
                    values[i] = json.loads(values[i])
                except ValueError:
                    pass  # not valid JSON after all: shown as the text it is
        out.append(tuple(values))
    return out


def _fold_cond(fold: int | None, outer: int | None = 0) -> tuple[str, list[Any]]:
    """Rows of fold `fold` of outer fold `outer`, or (`fold` None) of that outer fold's
    vote, or (both None) of the run's headline vote."""
    if fold is None and outer is None:
        return "fold IS NULL AND outer_fold IS NULL", []
    if fold is None:
        return "fold IS NULL AND outer_fold = ?", [outer]
    return "fold = ? AND outer_fold = ?", [fold, 0 if outer is None else outer]


class StoreReads:
    """The read half of `Store`; needs `path` and `_reader()` from it."""

    path: Path

    def _reader(
        self,
        sandbox: bool = False,
    ) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        raise NotImplementedError  # provided by Store

    # ------------------------------------------------------------------ runs

    def resolve(self, run_id: str) -> str:
        """The full id of a run given its id, or a unique prefix or suffix of it (the
        random part a user sees at the end: `3a5f51`)."""
        with self._reader() as con:
            return self._resolve(con, run_id)

    def _resolve(self, con: duckdb.DuckDBPyConnection, run_id: str) -> str:
        if exists(con, run_id):
            return run_id
        matches = (
            [
                r[0]
                for r in con.execute(
                    "SELECT run_id FROM runs WHERE starts_with(run_id, ?) OR ends_with(run_id, ?) "
                    "ORDER BY run_id LIMIT 6",
                    [run_id, run_id],
                ).fetchall()
            ]
            if run_id
            else []
        )
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise StoreError(
                f"Run id '{run_id}' is ambiguous: it starts or ends "
                f"{', '.join(matches[:5])}{' ...' if len(matches) > 5 else ''}"
            )
        recent = [
            r[0]
            for r in con.execute(
                "SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 5"
            ).fetchall()
        ]
        hint = f"Recent runs: {', '.join(recent)}" if recent else "The store has no runs yet"
        raise StoreError(f"Unknown run '{run_id}'. {hint}")

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The `runs` row (config, versions and plugins as dicts); accepts a unique id
        prefix."""
        with self._reader() as con:
            full = self._resolve(con, run_id)
            row = dicts(con.execute("SELECT * FROM runs WHERE run_id = ?", [full]))[0]
        return decode_json(row, "runs")

    def list_runs(
        self,
        status: str | None = None,
        backbone: str | None = None,
        grid_id: str | None = None,
        limit: int | None = None,
        *,
        tags: Sequence[str] = (),
        dataset: str | None = None,
        strategy: str | None = None,
        since: datetime | None = None,
        sort: str | None = None,
    ) -> list[dict[str, Any]]:
        """`run_summary` rows, newest first (or by `sort`, one of SORTABLE, highest first,
        runs without a value last). Filters: every tag of `tags`; `dataset` anywhere in
        the dataset's name, in any case; a `strategy` spec among the run's (`augment:3.3`)
        or a strategy's name (`augment`: any ratio); started at `since` (UTC) or later."""
        if status is not None and status not in STATUSES:
            raise StoreError(f"Unknown status '{status}'; expected one of {', '.join(STATUSES)}")
        if sort is not None and sort not in SORTABLE:
            raise StoreError(f"Cannot sort runs by '{sort}'; expected one of {', '.join(SORTABLE)}")
        where, params = [], []
        for column, value in (("status", status), ("backbone", backbone), ("grid_id", grid_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if tags:
            where.append("list_has_all(coalesce(tags, []), ?)")
            params.append(list(tags))
        if dataset is not None:
            where.append("contains(lower(coalesce(dataset, '')), lower(?))")
            params.append(dataset)
        if strategy is not None:
            exact, prefixes = strategy_terms(strategy)
            where.append(
                "EXISTS (SELECT 1 FROM unnest(strategies) AS s(spec) "
                "WHERE list_contains(?::VARCHAR[], s.spec) OR EXISTS (SELECT 1 FROM "
                "unnest(?::VARCHAR[]) AS p(prefix) WHERE starts_with(s.spec, p.prefix)))"
            )
            params += [exact, prefixes]
        if since is not None:
            where.append("started_at >= ?")
            params.append(since)
        sql = "SELECT * FROM run_summary"
        if where:
            sql += " WHERE " + " AND ".join(where)
        order = "" if sort is None else f"{SORTABLE[SORTABLE.index(sort)]} DESC NULLS LAST, "
        sql += f" ORDER BY {order}started_at DESC, run_id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, int(limit)))
        with self._reader() as con:
            return dicts(con.execute(sql, params))

    def summaries(self, run_ids: list[str]) -> list[dict[str, Any]]:
        """`run_summary` rows of the given runs (ids or unique prefixes), in that order."""
        with self._reader() as con:
            full = list(dict.fromkeys(self._resolve(con, r) for r in run_ids))
            rows = dicts(
                con.execute("SELECT * FROM run_summary WHERE list_contains(?, run_id)", [full])
            )
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
            return [
                decode_json(r, "runs")
                for r in dicts(
                    con.execute(
                        "SELECT run_id, status, dataset_hash, plugins FROM runs "
                        "WHERE config_hash = ? "
                        "ORDER BY status = 'finished' DESC, started_at DESC",
                        [config_hash],
                    )
                )
            ]

    # ------------------------------------------------------------------ folds

    def finished_folds(self, run_id: str) -> set[tuple[int, int]]:
        """(outer fold, fold) of every finished fold of a run."""
        with self._reader() as con:
            rows = con.execute(
                "SELECT outer_fold, fold FROM folds WHERE run_id = ? AND status = 'finished'",
                [run_id],
            ).fetchall()
        return {(int(r[0]), int(r[1])) for r in rows}

    def load_fold(self, run_id: str, key: tuple[int, int] | int) -> FoldRecord:
        """A stored fold, `key` = (outer fold, fold), as the runner wrote it: enough to
        recompute the vote on resume. Predictions come back ordered by split, patient
        and slice; patient decisions by split and patient (None for a fold recorded
        without them). A bare fold number is a fold of outer fold 0."""
        outer, fold = key if isinstance(key, tuple) else (0, key)
        where = [run_id, fold, outer]
        with self._reader() as con:
            rows = dicts(
                con.execute(
                    "SELECT * FROM folds WHERE run_id = ? AND fold = ? AND outer_fold = ?", where
                )
            )
            if not rows:
                raise StoreError(f"Run '{run_id}' has no fold {key} in {self.path}")
            row = decode_json(rows[0], "folds")
            curve = self._load_curve(con, run_id, fold, outer)
            metrics = [
                metric_row(m)
                for m in dicts(
                    con.execute(
                        "SELECT * FROM metrics WHERE run_id = ? AND fold = ? AND outer_fold = ? "
                        "AND model = 'fold' ORDER BY scope, split",
                        where,
                    )
                )
            ]
            preds = self._load_predictions(con, run_id, fold, outer)
            patients = self._load_patients(con, run_id, fold, outer)
            epochs = [
                EpochRecord(e["epoch"], e["train_loss"], e["val_loss"], e["val_f1"], e["wall_s"])
                for e in dicts(
                    con.execute(
                        "SELECT * FROM epochs WHERE run_id = ? AND fold = ? AND outer_fold = ? "
                        "ORDER BY epoch",
                        where,
                    )
                )
            ]
        return FoldRecord(
            fold=row["fold"],
            threshold=row["threshold"],
            best_epoch=row["best_epoch"],
            train_ich_before=row["train_ich_before"],
            train_healthy_before=row["train_healthy_before"],
            train_ich=row["train_ich"],
            train_healthy=row["train_healthy"],
            added=row["added"],
            removed=row["removed"],
            train_patients=list(row["train_patients"] or []),
            val_patients=list(row["val_patients"] or []),
            wall_s=row["wall_s"],
            curve=curve,
            metrics=metrics,
            predictions=preds,
            epochs=epochs,
            checkpoint=row["checkpoint"],
            status=row["status"],
            compiled=bool(row["compiled"]),
            patients=patients if len(patients) else None,
            notes=dict(row["notes"] or {}),
            outer=int(row["outer_fold"]),
        )

    def folds(self, run_id: str, outer: int | None = 0) -> list[dict[str, Any]]:
        """The `folds` rows of one outer fold of a run (every outer fold's for None), in
        fold order, `notes` as a dict (None when the fold was recorded without them)."""
        with self._reader() as con:
            full = self._resolve(con, run_id)
            rows = dicts(
                con.execute(
                    "SELECT * FROM folds WHERE run_id = ? AND (? IS NULL OR outer_fold = ?) "
                    "ORDER BY outer_fold, fold",
                    [full, outer, outer],
                )
            )
        return [decode_json(r, "folds") for r in rows]

    def epoch_rows(self, run_id: str, outer: int = 0) -> list[dict[str, Any]]:
        """The `epochs` rows of one outer fold of a run, by fold then epoch."""
        with self._reader() as con:
            full = self._resolve(con, run_id)
            return dicts(
                con.execute(
                    "SELECT * FROM epochs WHERE run_id = ? AND outer_fold = ? ORDER BY fold, epoch",
                    [full, outer],
                )
            )

    def split(self, run_id: str) -> StoredSplit:
        """The run's patient split as recorded at its creation."""
        result = StoredSplit()
        with self._reader() as con:
            full = self._resolve(con, run_id)
            rows = con.execute(
                "SELECT outer_fold, fold, patient_id, role FROM splits WHERE run_id = ? "
                "ORDER BY outer_fold, fold NULLS FIRST, role, patient_id",
                [full],
            ).fetchall()
        for outer, fold, pid, role in rows:
            if role == "test":
                result.outer_tests.setdefault(int(outer), []).append(int(pid))
            elif outer == 0:
                parts = result.folds.setdefault(int(fold), {"train": [], "val": []})
                parts[role].append(int(pid))
        result.test = sorted(p for tests in result.outer_tests.values() for p in tests)
        return result

    # ------------------------------------------------------------------ results

    def run_metrics(self, run_id: str, outer: int = 0) -> list[dict[str, Any]]:
        """The `metrics` rows of one outer fold's folds, in order, then the run's
        headline vote."""
        with self._reader() as con:
            full = self._resolve(con, run_id)
            return dicts(
                con.execute(
                    "SELECT * FROM metrics WHERE run_id = ? AND ((model = 'fold' AND "
                    "outer_fold = ?) OR (model = 'vote' AND outer_fold IS NULL)) "
                    "ORDER BY model = 'vote', fold, scope DESC, split DESC",
                    [full, outer],
                )
            )

    def patient_thresholds(self, run_id: str) -> dict[int, float]:
        """The voting threshold each test patient's slices were cut at: the run's, or
        with outer folds that of the outer fold that tested the patient. Patients whose
        cut is not known (an unfinished run) are absent."""
        run = self.get_run(run_id)
        split = self.split(run["run_id"])
        if run.get("threshold") is not None:
            return {p: float(run["threshold"]) for p in split.test}
        by_outer = {
            m["outer_fold"]: float(m["threshold"])
            for m in self.outer_votes(run["run_id"])
            if (m["scope"], m["split"]) == ("slice", "test") and m["threshold"] is not None
        }
        return {
            p: by_outer[outer]
            for outer, tested in split.outer_tests.items()
            if outer in by_outer
            for p in tested
        }

    def outer_votes(self, run_id: str) -> list[dict[str, Any]]:
        """The vote `metrics` rows of each outer fold of a run (none with one outer
        fold, whose vote is the headline), by outer fold."""
        with self._reader() as con:
            full = self._resolve(con, run_id)
            return dicts(
                con.execute(
                    "SELECT * FROM metrics WHERE run_id = ? AND model = 'vote' "
                    "AND outer_fold IS NOT NULL ORDER BY outer_fold, scope DESC, split DESC",
                    [full],
                )
            )

    def _load_curve(
        self,
        con: duckdb.DuckDBPyConnection,
        run_id: str,
        fold: int | None,
        outer: int | None = None,
    ) -> np.ndarray:
        cond, extra = _fold_cond(fold, outer)
        rows = con.execute(
            f"SELECT f1 FROM curves WHERE run_id = ? AND {cond} ORDER BY threshold",
            [run_id, *extra],
        ).fetchall()
        return np.array([np.nan if r[0] is None else r[0] for r in rows], dtype=np.float64)

    def load_curve(self, run_id: str, fold: int | None, outer: int | None = None) -> np.ndarray:
        """A fold's validation F1 curve (of outer fold `outer`, 0 if None), or for
        `fold=None` the mean curve of a single-split run (`outer` None) or of one outer
        fold."""
        with self._reader() as con:
            return self._load_curve(con, run_id, fold, outer)

    def curves(
        self, run_id: str, outer: int = 0
    ) -> dict[int | None, tuple[np.ndarray, np.ndarray]]:
        """Every curve of one outer fold of a run: fold (None for the mean curve) ->
        (thresholds, F1), the F1 NaN where it was undefined."""
        with self._reader() as con:
            full = self._resolve(con, run_id)
            rows = con.execute(
                "SELECT fold, threshold, coalesce(f1, 'NaN'::DOUBLE) FROM curves "
                "WHERE run_id = ? AND coalesce(outer_fold, 0) = ? "
                "ORDER BY fold NULLS LAST, threshold",
                [full, outer],
            ).fetchall()
        grouped: dict[int | None, tuple[list[float], list[float]]] = {}
        for fold, thr, f1 in rows:
            thresholds, values = grouped.setdefault(fold, ([], []))
            thresholds.append(thr)
            values.append(f1)
        return {
            k: (np.asarray(t, dtype=float), np.asarray(f, dtype=float))
            for k, (t, f) in grouped.items()
        }

    def _load_predictions(
        self,
        con: duckdb.DuckDBPyConnection,
        run_id: str,
        fold: int | None,
        outer: int | None = None,
    ) -> Predictions:
        cond, extra = _fold_cond(fold, outer)
        cols = con.execute(
            "SELECT split, patient_id, slice, label, coalesce(prob, 'NaN'::DOUBLE) AS prob "
            f"FROM predictions WHERE run_id = ? AND {cond} ORDER BY split, patient_id, slice",
            [run_id, *extra],
        ).fetchnumpy()
        return predictions_from(cols)

    def load_vote_predictions(self, run_id: str) -> Predictions:
        """The run's headline test probabilities recorded by `finish_run`: the ensemble's,
        pooled over the outer folds when there are several."""
        with self._reader() as con:
            return self._load_predictions(con, run_id, None)

    def vote_slices(self, run_id: str, outer: int | None = None) -> dict[str, np.ndarray]:
        """The test slices of the run's headline vote (`outer` None) or of one outer
        fold's vote, by patient and slice: `patient_id`, `slice`, `label`, `prob` (NaN
        where NULL) and `decision` as 1.0 / 0.0, NaN where not recorded (runs made before
        the vote's decisions were stored)."""
        cond, extra = _fold_cond(None, outer)
        with self._reader() as con:
            full = self._resolve(con, run_id)
            cols = con.execute(
                "SELECT patient_id, slice, label, coalesce(prob, 'NaN'::DOUBLE) AS prob, "
                "coalesce(CAST(decision AS DOUBLE), 'NaN'::DOUBLE) AS decision "
                f"FROM predictions WHERE run_id = ? AND split = 'test' AND {cond} "
                "ORDER BY patient_id, slice",
                [full, *extra],
            ).fetchnumpy()
        return {
            "patient_id": np.asarray(cols["patient_id"], dtype=np.int64),
            "slice": np.asarray(cols["slice"], dtype=np.int64),
            "label": np.asarray(cols["label"], dtype=np.int64),
            "prob": np.asarray(cols["prob"], dtype=np.float64),
            "decision": np.asarray(cols["decision"], dtype=np.float64),
        }

    def vote_patients(self, run_id: str, outer: int | None = None) -> PatientDecisions:
        """The patient decisions of the run's headline vote, or of one outer fold's."""
        with self._reader() as con:
            return self._load_patients(con, self._resolve(con, run_id), None, outer)

    def outer_val_f1(self, run_id: str) -> dict[int, float]:
        """outer fold -> mean over its fold models of their validation slice F1."""
        with self._reader() as con:
            full = self._resolve(con, run_id)
            rows = con.execute(
                "SELECT outer_fold, avg(f1) FROM metrics WHERE run_id = ? AND model = 'fold' "
                "AND scope = 'slice' AND split = 'val' AND f1 IS NOT NULL GROUP BY outer_fold",
                [full],
            ).fetchall()
        return {int(o): float(v) for o, v in rows}

    def grid_selection(self, grid_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """A grid's picks per outer fold and the pooled metrics of the picks (empty when
        none was recorded, or in a store that predates them)."""
        with self._reader() as con:
            present = con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'grid_selections'"
            ).fetchone()[0]
            if not present:
                return [], []
            picked = dicts(
                con.execute(
                    "SELECT * FROM grid_selections WHERE grid_id = ? ORDER BY outer_fold",
                    [grid_id],
                )
            )
            metrics = dicts(
                con.execute(
                    "SELECT * FROM grid_selection_metrics WHERE grid_id = ? ORDER BY scope DESC",
                    [grid_id],
                )
            )
        return picked, metrics

    def prediction_columns(self, run_id: str) -> dict[str, np.ndarray]:
        """The predictions of one outer fold's fold models and of the run's headline vote,
        as columns `fold` (-1 for the vote), `split`, `patient_id`, `slice`, `label`,
        `prob` (NaN where NULL), ordered by fold, split, patient and slice."""
        with self._reader() as con:
            full = self._resolve(con, run_id)
            cols = con.execute(
                "SELECT coalesce(fold, -1) AS fold, split, patient_id, slice, label, "
                "coalesce(prob, 'NaN'::DOUBLE) AS prob FROM predictions WHERE run_id = ? "
                "AND ((fold IS NOT NULL AND outer_fold = 0) OR "
                "(fold IS NULL AND outer_fold IS NULL)) "
                "ORDER BY fold, split, patient_id, slice",
                [full],
            ).fetchnumpy()
        out = {"fold": np.asarray(cols["fold"], dtype=np.int64)}
        preds = predictions_from(cols)
        out.update(
            {
                name: getattr(preds, name)
                for name in ("split", "patient_id", "slice", "label", "prob")
            }
        )
        return out

    def _load_patients(
        self,
        con: duckdb.DuckDBPyConnection,
        run_id: str,
        fold: int | None,
        outer: int | None = None,
    ) -> PatientDecisions:
        cond, extra = _fold_cond(fold, outer)
        cols = con.execute(
            "SELECT split, patient_id, label, coalesce(score, 'NaN'::DOUBLE) AS score, "
            f"decision FROM patient_decisions WHERE run_id = ? AND {cond} "
            "ORDER BY split, patient_id",
            [run_id, *extra],
        ).fetchnumpy()
        return patients_from(cols)

    def patient_decisions(self, run_id: str) -> dict[int | None, PatientDecisions]:
        """The stored patient decisions of outer fold 0's fold models and of the run's
        headline vote: fold -> decisions, None for the vote. A model recorded without
        them (an older run) is absent."""
        with self._reader() as con:
            full = self._resolve(con, run_id)
            folds = [
                r[0]
                for r in con.execute(
                    "SELECT DISTINCT fold FROM patient_decisions WHERE run_id = ? "
                    "AND (outer_fold = 0 OR (fold IS NULL AND outer_fold IS NULL)) "
                    "ORDER BY fold NULLS LAST",
                    [full],
                ).fetchall()
            ]
            return {
                fold: self._load_patients(con, full, fold, None if fold is None else 0)
                for fold in folds
            }

    def comparable(self, run_id: str) -> bool | None:
        """Whether a finished run compares like for like with the literature (the
        `vote_vs_baselines` view's rule); None for a run without a result, or in an
        older store that predates the rule."""
        with self._reader() as con:
            full = self._resolve(con, run_id)
            has = con.execute(
                "SELECT count(*) FROM duckdb_columns() WHERE table_name = 'vote_vs_baselines' "
                "AND column_name = 'comparable'"
            ).fetchone()[0]
            if not has:
                return None
            row = con.execute(
                "SELECT bool_and(comparable) FROM vote_vs_baselines WHERE run_id = ?", [full]
            ).fetchone()
        return None if row is None or row[0] is None else bool(row[0])

    def baselines(self) -> list[dict[str, Any]]:
        with self._reader() as con:
            return dicts(
                con.execute(
                    "SELECT * FROM baselines ORDER BY source, scope DESC, setting, backbone, "
                    "model, fold NULLS LAST"
                )
            )

    # ------------------------------------------------------------------ evaluations

    def evaluations(self, run_id: str) -> list[dict[str, Any]]:
        """A run's evaluations on other datasets, oldest first, each with its metrics by
        scope (`metrics`: {"slice": row, "patient": row}, a scope it lacks absent);
        `preprocessing` decoded. Empty in an older store, which has none."""
        with self._reader() as con:
            full = self._resolve(con, run_id)
            rows = dicts(
                con.execute(
                    "SELECT * FROM evaluations WHERE run_id = ? ORDER BY created_at, evaluation_id",
                    [full],
                )
            )
            metrics = dicts(
                con.execute(
                    "SELECT * FROM evaluation_metrics WHERE run_id = ? ORDER BY scope DESC",
                    [full],
                )
            )
        for row in rows:
            if isinstance(row.get("preprocessing"), str):
                row["preprocessing"] = json.loads(row["preprocessing"])
            row["metrics"] = {
                m["scope"]: m for m in metrics if m["evaluation_id"] == row["evaluation_id"]
            }
        return rows

    def evaluation_patients(self, evaluation_id: str) -> dict[str, np.ndarray]:
        """One evaluation's patient decisions as columns (patient_id, label, score,
        decision), by patient."""
        with self._reader() as con:
            result = con.execute(
                "SELECT patient_id, label, score, decision FROM evaluation_patients "
                "WHERE evaluation_id = ? ORDER BY patient_id",
                [evaluation_id],
            ).fetchnumpy()
        return {k: np.asarray(v) for k, v in result.items()}

    # ------------------------------------------------------------------ user SQL

    def query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run one read-only statement on a sandboxed connection (no writes, no files,
        no extensions) and return (column names, rows)."""
        with self._reader(sandbox=True) as con:
            try:
                statements = con.extract_statements(sql)
            except duckdb.Error as exc:
                raise StoreError(f"SQL error: {first_line(exc)}") from exc
            if len(statements) != 1:
                raise StoreError(f"ichbench sql runs exactly one statement; got {len(statements)}")
            kind = statements[0].type.name
            if kind not in READ_ONLY_STATEMENTS:
                raise StoreError(
                    f"ichbench sql is read-only: {kind} statements are not allowed (use SELECT)"
                )
            try:
                result = con.execute(sql)
                description = result.description or []
                columns = [d[0] for d in description]
                return columns, _json_parsed(description, result.fetchall())
            except duckdb.Error as exc:
                text = first_line(exc)
                if "read-only" in text or "Permission" in text:
                    raise StoreError(f"ichbench sql is read-only: {text}") from exc
                raise StoreError(f"SQL error: {text}") from exc
