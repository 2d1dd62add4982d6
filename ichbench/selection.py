"""The honest estimate of "grid search, then keep the best configuration".

A grid ranked by validation F1 and reported by the winner's test F1 scores the winner on
patients that helped pick it only through luck of the draw; the study tuned its
configuration this way. With outer folds the choice can be made without any test patient:
in each outer fold the configuration whose fold models have the best mean validation F1
(on that outer fold's development patients only) is picked, and scored on that outer
fold's test patients. Pooled over the outer folds, every patient is tested once by a
choice it took no part in: that is what the grid's procedure, not its winner, achieves.

Pure: it takes what the store holds (`ichbench.store`) and returns metric rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ichbench.metrics import patient_metrics, slice_metrics
from ichbench.records import MetricRow


@dataclass
class OuterResult:
    """One configuration's vote on one outer fold's test patients, as stored."""

    mean_val_f1: float | None  # mean over that outer fold's folds of their validation F1
    slice_labels: np.ndarray
    slice_patients: np.ndarray
    slice_scores: np.ndarray
    slice_decisions: np.ndarray
    patient_labels: np.ndarray
    patient_scores: np.ndarray
    patient_decisions: np.ndarray


@dataclass
class Candidate:
    """A finished configuration of the grid: its run and its result per outer fold."""

    run_id: str
    outers: dict[int, OuterResult] = field(default_factory=dict)


def picks(candidates: list[Candidate]) -> dict[int, str]:
    """outer fold -> the run picked there: the best mean validation F1 of that outer
    fold's fold models (the first candidate given on a tie). An outer fold a candidate
    lacks, or where its validation F1 is undefined, does not count for it."""
    chosen: dict[int, str] = {}
    outers = sorted({k for c in candidates for k in c.outers})
    for outer in outers:
        best, best_f1 = None, -np.inf
        for c in candidates:
            result = c.outers.get(outer)
            if result is None or result.mean_val_f1 is None:
                continue
            if result.mean_val_f1 > best_f1:
                best, best_f1 = c.run_id, result.mean_val_f1
        if best is not None:
            chosen[outer] = best
    return chosen


def pooled_choice(
    candidates: list[Candidate], chosen: dict[int, str], *, seed: int = 0
) -> list[MetricRow]:
    """Slice and patient metrics (test, 95% CIs resampling patients) of each outer fold's
    picked configuration on that outer fold's test patients, pooled."""
    by_id = {c.run_id: c for c in candidates}
    parts = [by_id[run].outers[outer] for outer, run in sorted(chosen.items())]
    if not parts:
        return []

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    nan = float("nan")
    return [
        slice_metrics(
            "vote",
            None,
            "test",
            nan,
            cat("slice_labels"),
            cat("slice_scores"),
            cat("slice_decisions").astype(bool),
            cat("slice_patients"),
            seed=seed,
        ),
        patient_metrics(
            "vote",
            None,
            "test",
            nan,
            cat("patient_labels"),
            cat("patient_scores"),
            cat("patient_decisions").astype(bool),
            seed=seed,
        ),
    ]


def candidates_from(store, runs: list[dict]) -> list[Candidate]:
    """The finished runs of a grid that share the first run's outer folds (same split),
    each with its result per outer fold, as `store` (`ichbench.store.Store`) holds them.
    A slice's decision is the ensemble rule's as stored; for runs recorded before those
    were stored, its score cut at its outer fold's voting threshold."""
    if not runs:
        return []
    split = runs[0].get("split_hash") or store.get_run(runs[0]["run_id"])["split_hash"]
    out = []
    for run in runs:
        stored = store.get_run(run["run_id"])
        if stored["split_hash"] != split or stored["status"] != "finished":
            continue
        val = store.outer_val_f1(run["run_id"])
        thresholds = {
            m["outer_fold"]: m["threshold"]
            for m in store.outer_votes(run["run_id"])
            if (m["scope"], m["split"]) == ("slice", "test")
        }
        candidate = Candidate(run["run_id"])
        for outer in sorted(thresholds):
            slices = store.vote_slices(run["run_id"], outer)
            decided = store.vote_patients(run["run_id"], outer)
            test = np.asarray(decided.split) == "test"
            decisions = slices["decision"]
            if np.isnan(decisions).any():
                decisions = slices["prob"] >= thresholds[outer]
            candidate.outers[outer] = OuterResult(
                mean_val_f1=val.get(outer),
                slice_labels=slices["label"],
                slice_patients=slices["patient_id"],
                slice_scores=slices["prob"],
                slice_decisions=np.asarray(decisions, dtype=bool)
                if decisions.dtype == bool
                else decisions == 1.0,
                patient_labels=decided.label[test],
                patient_scores=decided.score[test],
                patient_decisions=decided.decision[test],
            )
        if candidate.outers:
            out.append(candidate)
    return out
