"""Two stored runs as a paired comparison: their vote's test results aligned slice by
slice and patient by patient, or the reason they cannot be paired, and the table of
B - A that `ichbench compare A B` prints.

A paired test is only honest on the same patients and the same slices, so any mismatch
(another dataset, another split, a run without a vote) yields a reason, not numbers.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from ichbench.formatting import DASH, fmt
from ichbench.paired import (
    N_PAIRED_BOOTSTRAP,
    PairedRow,
    Scored,
    compare_paired,
    multiplicities,
    paired_rows,
)
from ichbench.views.model import Row, TableData

if TYPE_CHECKING:
    from ichbench.store import Store

PAIRED_SEED = 0
# ensemble rules whose vote does not cut the fold models' probabilities at the shared
# voting threshold: their out-of-fold validation decisions cannot be rebuilt from it
OWN_CUTS = ("fold-votes", "calibrated-mean")


def _vote_slices(store: Store, run: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The headline vote's test slices with the ensemble rule's stored decisions; for a
    run recorded before those were stored, the score cut at its voting threshold (or
    each outer fold's)."""
    picked = store.vote_slices(run["run_id"])
    if not len(picked["prob"]):
        return None
    known = ~np.isnan(picked["decision"])
    if known.all():
        picked["decision"] = picked["decision"] == 1.0
        return picked
    thresholds = _slice_thresholds(store, run, picked["patient_id"])
    if thresholds is None:
        return None
    picked["decision"] = picked["prob"] >= thresholds
    return picked


def _slice_thresholds(
    store: Store, run: dict[str, Any], patient_ids: np.ndarray
) -> np.ndarray | None:
    """The voting threshold each test slice was cut at (its patient's); None when one is
    not known."""
    cuts = store.patient_thresholds(run["run_id"])
    try:
        return np.array([cuts[int(p)] for p in patient_ids], dtype=float)
    except KeyError:
        return None


def _vote_patients(store: Store, run: dict[str, Any]) -> dict[str, np.ndarray] | None:
    decisions = store.patient_decisions(run["run_id"]).get(None)
    if decisions is None:
        return None
    keep = decisions.split == "test"
    if not keep.any():
        return None
    order = np.argsort(decisions.patient_id[keep], kind="stable")
    return {
        name: getattr(decisions, name)[keep][order]
        for name in ("patient_id", "label", "score", "decision")
    }


def load_pair(
    store: Store, run_a: dict[str, Any], run_b: dict[str, Any]
) -> tuple[Scored, Scored] | str:
    """(slices, patients) of both votes aligned, or one line saying why they cannot be
    paired."""
    a, b = run_a["run_id"], run_b["run_id"]
    for run in (run_a, run_b):
        if run["status"] != "finished":
            return f"Run {run['run_id']} is {run['status']}: no vote, so no paired test"
    different = (
        f"Runs {a} and {b} tested different patients: no paired test; "
        "the CIs above are each run's own"
    )
    if run_a.get("dataset_hash") != run_b.get("dataset_hash"):
        return different
    if sorted(store.split(a).test) != sorted(store.split(b).test):
        return different
    slices = [_vote_slices(store, run_a), _vote_slices(store, run_b)]
    patients = [_vote_patients(store, run_a), _vote_patients(store, run_b)]
    for run_id, s, p in zip((a, b), slices, patients, strict=True):
        if s is None or p is None:
            return f"Run {run_id} has no stored vote on the test set: no paired test"
    sa, sb = slices
    pa, pb = patients
    same_slices = all(
        np.array_equal(sa[k], sb[k]) for k in ("patient_id", "slice", "label")
    ) and np.array_equal(pa["patient_id"], pb["patient_id"])
    if not same_slices or not np.array_equal(np.unique(sa["patient_id"]), pa["patient_id"]):
        return different
    return (
        Scored(
            sa["label"], sa["patient_id"], sa["prob"], sb["prob"], sa["decision"], sb["decision"]
        ),
        Scored(
            pa["label"], pa["patient_id"], pa["score"], pb["score"], pa["decision"], pb["decision"]
        ),
    )


def paired_result(store: Store, run_a: dict[str, Any], run_b: dict[str, Any]) -> dict[str, Any]:
    """The paired comparison as plain data (what `--json` prints under `paired`): `note`
    is the reason there are no rows, None when there are."""
    pair = load_pair(store, run_a, run_b)
    result: dict[str, Any] = {
        "a": run_a["run_id"],
        "b": run_b["run_id"],
        "resamples": N_PAIRED_BOOTSTRAP,
        "seed": PAIRED_SEED,
        "note": None,
        "rows": [],
    }
    if isinstance(pair, str):
        result["note"] = pair
        return result
    slices, patients = pair
    rows = compare_paired(slices, patients, n_boot=N_PAIRED_BOOTSTRAP, seed=PAIRED_SEED)
    result.update(
        patients=int(len(patients.groups)),
        slices=int(len(slices.groups)),
        rows=[asdict(r) for r in rows],
    )
    return result


def _oof_validation(store: Store, run: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """A finished single-split run's out-of-fold validation slices (each scored by the
    fold model that did not train on it), ordered by patient and slice, cut at the run's
    voting threshold; None for another run."""
    if run["status"] != "finished" or run.get("threshold") is None:
        return None
    if str(run.get("ensemble") or "mean").split(":")[0] in OWN_CUTS:
        return None  # its vote never cut a fold's probability at the shared threshold
    cols = store.prediction_columns(run["run_id"])
    keep = (cols["fold"] >= 0) & (cols["split"] == "val")
    if not keep.any():
        return None
    picked = {name: values[keep] for name, values in cols.items()}
    order = np.lexsort((picked["slice"], picked["patient_id"]))
    picked = {name: values[order] for name, values in picked.items()}
    picked["decision"] = picked["prob"] >= float(run["threshold"])
    return picked


def indistinguishable_from_best(
    store: Store, ranked: list[dict[str, Any]], n_boot: int = N_PAIRED_BOOTSTRAP
) -> dict[str, bool | None]:
    """For each run of a grid ranked best first: True when its out-of-fold validation
    F1 cannot be told from the best run's (the paired bootstrap 95% CI of the
    difference, resampling patients with all their slices, contains 0), False when it
    can, None when the two cannot be paired (other validation slices, outer folds, no
    result). The best run itself is True."""
    if not ranked:
        return {}
    best = _oof_validation(store, ranked[0])
    out: dict[str, bool | None] = {ranked[0]["run_id"]: True if best is not None else None}
    for run in ranked[1:]:
        other = _oof_validation(store, run)
        same = (
            best is not None
            and other is not None
            and all(np.array_equal(best[k], other[k]) for k in ("patient_id", "slice", "label"))
        )
        if not same:
            out[run["run_id"]] = None
            continue
        scored = Scored(
            best["label"],
            best["patient_id"],
            best["prob"],
            other["prob"],
            best["decision"],
            other["decision"],
        )
        groups = np.unique(best["patient_id"])
        mult = multiplicities(len(groups), n_boot, PAIRED_SEED)
        f1 = next(r for r in paired_rows(scored, "slice", mult, groups) if r.name == "f1")
        out[run["run_id"]] = None if f1.lo is None or f1.hi is None else bool(f1.lo <= 0.0 <= f1.hi)
    return out


def _p(value: float | None) -> str:
    if value is None:
        return DASH
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _diff(row: PairedRow) -> str:
    """Signed, so that a negative bound is never read as a range's dash."""
    if row.diff is None:
        return DASH
    text = f"{row.diff:+.3f}"
    if row.lo is not None and row.hi is not None:
        text += f" [{row.lo:+.3f}, {row.hi:+.3f}]"
    return text


def paired_table(result: dict[str, Any]) -> TableData:
    """One row per metric and scope: A, B and B - A with its paired 95% CI, and the test
    that applies to that row."""
    rows = [
        Row([r.name, r.scope, fmt(r.a), fmt(r.b), _diff(r), r.test or DASH, _p(r.p)])
        for r in (PairedRow(**row) for row in result["rows"])
    ]
    how = (
        f"95% CIs: paired bootstrap over {result.get('patients')} test patients, each with all "
        f"its slices ({result['resamples']} resamples, seed {result['seed']}). DeLong treats "
        "slices as independent; McNemar compares patient decisions."
    )
    return TableData(
        id="paired",
        title=f"Paired: B = {result['b']} minus A = {result['a']}, same test patients",
        short_title=f"Paired, B {result['b']} \u2212 A {result['a']}",
        columns=["Metric", "Scope", "A", "B", "B\u2212A [95% CI]", "Test", "p"],
        rows=rows,
        numeric_from=2,
        caption=how,
        note=how,
    )
