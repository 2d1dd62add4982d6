"""The first durable copy of a run's results: files beside its fold checkpoints, written
before the DuckDB store is asked to take them.

DuckDB lets one process write a file at a time, and any process may hold it (a long
`ichbench sql`, a notebook, `duckdb -readonly`). A run must never fail or lose a fold
because of that, so each result a run produces — its record, each fold, the vote, a
failed or interrupted mark — is first written here, atomically (a temporary file renamed
into place), and then ingested into the store when its lock can be had
(`ichbench.store.ingest`). A result whose file exists is done even if the store has not
seen it yet; an `.ingested` marker beside it says the store has.

Files are JSON and NumPy `.npz` without pickles: a journal is data, never code.

    <store>.runs/<run>/run.json            the run's record
    <store>.runs/<run>/fold<k>.result.npz  one fold's record (rows, curve, predictions)
    <store>.runs/<run>/outer<o>.fold<k>.result.npz   the same, of outer fold o > 0
    <store>.runs/<run>/vote.result.npz     the votes (one per outer fold, and the
                                           pooled result) and the run's wall time
    <store>.runs/<run>/status.json         a failed or interrupted mark
    <store>.runs/<run>/<file>.ingested     the store holds <file>
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ichbench.paths import run_dir
from ichbench.records import (
    EpochRecord,
    FoldRecord,
    MetricRow,
    PatientDecisions,
    Predictions,
    RunRecord,
    VoteRecord,
)

RUN_FILE = "run.json"
VOTE_FILE = "vote.result.npz"
STATUS_FILE = "status.json"
INGESTED = ".ingested"
_FOLD_FILE = re.compile(r"^(?:outer(\d+)\.)?fold(\d+)\.result\.npz$")


def fold_file(key: tuple[int, int]) -> str:
    """The file of fold (outer, fold); outer fold 0's keep the names they always had."""
    outer, fold = key
    return f"fold{fold}.result.npz" if outer == 0 else f"outer{outer}.fold{fold}.result.npz"


def fold_label(key: tuple[int, int]) -> str:
    outer, fold = key
    return f"fold {fold}" if outer == 0 else f"outer fold {outer} fold {fold}"


@dataclass(frozen=True)
class Pending:
    """What of one run the store has not taken yet, in the order it must take it."""

    run_id: str
    run: bool
    folds: tuple[tuple[int, int], ...]
    vote: bool
    status: bool

    @property
    def empty(self) -> bool:
        return not (self.run or self.folds or self.vote or self.status)

    def describe(self) -> str:
        parts = (["the run"] if self.run else []) + [fold_label(k) for k in self.folds]
        parts += (["the vote"] if self.vote else []) + (["its status"] if self.status else [])
        return ", ".join(parts)


class Journal:
    """The journal of every run of one store (`<store>.runs/`)."""

    def __init__(self, store_path: Path | str) -> None:
        self.store_path = Path(store_path)

    def folder(self, run_id: str) -> Path:
        return run_dir(self.store_path, run_id)

    # ----------------------------------------------------------------- writing
    def write_run(self, run: RunRecord) -> None:
        payload = asdict(run)
        payload["folds"] = {str(k): v for k, v in run.folds.items()}
        self._write_json(run.run_id, RUN_FILE, payload)

    def write_fold(self, run_id: str, record: FoldRecord) -> None:
        meta = {f.name: getattr(record, f.name) for f in fields(FoldRecord)}
        for name in ("curve", "predictions", "patients", "embeddings"):
            meta.pop(name)
        meta["metrics"] = [_metric_dict(m) for m in record.metrics]
        meta["epochs"] = [asdict(e) for e in record.epochs]
        arrays = {"curve": np.asarray(record.curve, dtype=np.float64)}
        arrays |= _prefixed("pred", _columns(record.predictions))
        if record.patients is not None:
            arrays |= _prefixed("patient", _columns(record.patients))
        if record.embeddings is not None:
            arrays["embeddings"] = np.asarray(record.embeddings, dtype=np.float32)
        self._write_npz(run_id, fold_file(record.key), meta, arrays)

    def write_vote(self, run_id: str, votes: list[VoteRecord], wall_s: float) -> None:
        """Every vote of the run in one file: the run finishes with all of them or none."""
        meta: dict[str, Any] = {"run_wall_s": wall_s, "votes": []}
        arrays: dict[str, np.ndarray] = {}
        for i, vote in enumerate(votes):
            meta["votes"].append(
                {
                    "threshold": vote.threshold,
                    "wall_s": vote.wall_s,
                    "outer": vote.outer,
                    "metrics": [_metric_dict(m) for m in vote.metrics],
                    "warnings": list(vote.warnings),
                    "calibration": list(vote.calibration),
                }
            )
            part = {"mean_curve": np.asarray(vote.mean_curve, dtype=np.float64)}
            part |= _prefixed("pred", _columns(vote.predictions))
            if vote.decisions is not None:
                part["decision"] = np.asarray(vote.decisions, dtype=bool)
            if vote.patients is not None:
                part |= _prefixed("patient", _columns(vote.patients))
            arrays |= _prefixed(f"v{i}", part)
        self._write_npz(run_id, VOTE_FILE, meta, arrays)

    def write_status(self, run_id: str, status: str, error: str | None) -> None:
        self._write_json(run_id, STATUS_FILE, {"status": status, "error": error})

    def forget_status(self, run_id: str) -> None:
        """A resumed run is running again: an earlier mark must never be applied later."""
        for name in (STATUS_FILE, STATUS_FILE + INGESTED):
            (self.folder(run_id) / name).unlink(missing_ok=True)

    def forget_run(self, run_id: str) -> None:
        """A run the store refused to create never existed: its record goes."""
        folder = self.folder(run_id)
        for name in (RUN_FILE, RUN_FILE + INGESTED):
            (folder / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when nothing else is in it

    def mark_ingested(self, run_id: str, name: str) -> None:
        (self.folder(run_id) / (name + INGESTED)).touch()

    # ----------------------------------------------------------------- reading
    def read_run(self, run_id: str) -> RunRecord:
        payload = json.loads((self.folder(run_id) / RUN_FILE).read_text())
        payload["folds"] = {int(k): v for k, v in payload["folds"].items()}
        known = {f.name for f in fields(RunRecord)}
        return RunRecord(**{k: v for k, v in payload.items() if k in known})

    def read_fold(self, run_id: str, key: tuple[int, int]) -> FoldRecord:
        meta, arrays = self._read_npz(run_id, fold_file(key))
        meta["metrics"] = [_metric_row(m) for m in meta["metrics"]]
        meta["epochs"] = [EpochRecord(**e) for e in meta["epochs"]]
        return FoldRecord(
            **meta,
            curve=arrays["curve"],
            predictions=Predictions(**_unprefixed("pred", arrays)),
            patients=_patients(arrays),
            embeddings=arrays.get("embeddings"),
        )

    def read_vote(self, run_id: str) -> tuple[list[VoteRecord], float]:
        meta, arrays = self._read_npz(run_id, VOTE_FILE)
        if "votes" not in meta:  # written before outer folds: the one vote, unprefixed
            meta["votes"], arrays = (
                [{**meta, "outer": None}],
                {"v0." + k: v for k, v in arrays.items()},
            )
        votes = []
        for i, entry in enumerate(meta["votes"]):
            part = _unprefixed(f"v{i}", arrays)
            votes.append(
                VoteRecord(
                    threshold=entry["threshold"],
                    mean_curve=part["mean_curve"],
                    metrics=[_metric_row(m) for m in entry["metrics"]],
                    predictions=Predictions(**_unprefixed("pred", part)),
                    wall_s=entry["wall_s"],
                    patients=_patients(part),
                    outer=entry["outer"],
                    warnings=list(entry.get("warnings", [])),
                    decisions=part.get("decision"),
                    calibration=list(entry.get("calibration", [])),
                )
            )
        return votes, float(meta["run_wall_s"])

    def read_status(self, run_id: str) -> tuple[str, str | None]:
        payload = json.loads((self.folder(run_id) / STATUS_FILE).read_text())
        return payload["status"], payload["error"]

    def folds(self, run_id: str) -> list[tuple[int, int]]:
        """The (outer, fold) of a run whose results are on disk, ingested or not."""
        folder = self.folder(run_id)
        if not folder.is_dir():
            return []
        found = (_FOLD_FILE.match(p.name) for p in folder.iterdir())
        return sorted((int(m.group(1) or 0), int(m.group(2))) for m in found if m)

    def has_run(self, run_id: str) -> bool:
        return (self.folder(run_id) / RUN_FILE).is_file()

    def pending(self, run_id: str) -> Pending:
        folder = self.folder(run_id)

        def waiting(name: str) -> bool:
            return (folder / name).is_file() and not (folder / (name + INGESTED)).exists()

        return Pending(
            run_id=run_id,
            run=waiting(RUN_FILE),
            folds=tuple(k for k in self.folds(run_id) if waiting(fold_file(k))),
            vote=waiting(VOTE_FILE),
            status=waiting(STATUS_FILE),
        )

    def all_pending(self) -> list[Pending]:
        """Every run of the store with results the store has not taken, oldest first."""
        root = run_dir(self.store_path, "any").parent  # the folder of every run
        if not root.is_dir():
            return []
        found = (self.pending(p.name) for p in sorted(root.iterdir()) if p.is_dir())
        return [p for p in found if not p.empty]

    # ----------------------------------------------------------------- files
    def _write_json(self, run_id: str, name: str, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, sort_keys=True, default=_plain).encode()
        self._atomic(run_id, name, lambda handle: handle.write(data))

    def _write_npz(
        self, run_id: str, name: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> None:
        text = json.dumps(meta, sort_keys=True, default=_plain).encode()
        payload = {"meta": np.frombuffer(text, dtype=np.uint8), **arrays}
        self._atomic(run_id, name, lambda handle: np.savez(handle, **payload))

    def _atomic(self, run_id: str, name: str, write) -> None:
        """Write, flush to disk, then rename: a reader sees the whole file or none."""
        folder = self.folder(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / name
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        (folder / (name + INGESTED)).unlink(missing_ok=True)  # a rewrite waits again

    def _read_npz(self, run_id: str, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        with np.load(self.folder(run_id) / name, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
        return meta, arrays


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays in records as JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _metric_dict(metric: MetricRow) -> dict[str, Any]:
    row = asdict(metric)
    row["ci"] = {k: list(v) for k, v in metric.ci.items()}
    return row


def _metric_row(row: dict[str, Any]) -> MetricRow:
    row = dict(row)
    row["ci"] = {k: tuple(v) for k, v in row.get("ci", {}).items()}
    return MetricRow(**row)


def _columns(record: Predictions | PatientDecisions) -> dict[str, np.ndarray]:
    out = {}
    for f in fields(record):
        column = np.asarray(getattr(record, f.name))
        out[f.name] = column.astype(str) if column.dtype == object else column
    return out


def _prefixed(prefix: str, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}.{k}": v for k, v in columns.items()}


def _unprefixed(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    start = prefix + "."
    return {k[len(start) :]: v for k, v in arrays.items() if k.startswith(start)}


def _patients(arrays: dict[str, np.ndarray]) -> PatientDecisions | None:
    columns = _unprefixed("patient", arrays)
    return PatientDecisions(**columns) if columns else None
