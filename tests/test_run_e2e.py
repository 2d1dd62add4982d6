"""The protocol end to end on a tiny synthetic dataset with a tiny backbone, and the
stored results recomputed from the store alone."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ichbench.config import RunConfig
from ichbench.lifecycle import run_config
from ichbench.metrics import point_metrics
from ichbench.store import Store
from ichbench.vote import THRESHOLDS, best_threshold

TINY = dict(
    data="synthetic:14,1,32",
    backbone="tinycnn",
    folds=3,
    epochs=2,
    image_size=32,
    batch_size=16,
    preset="quick",
    device="cpu",
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    store = Store(root / "runs.duckdb")
    events = []
    result = run_config(
        RunConfig(**TINY, weights=["ich:4"]),
        store,
        observers=[events.append],
        cache_dir=root / "cache",
    )
    return store, result, events


def q(store, sql):
    cols, rows = store.query(sql)
    return [dict(zip(cols, r)) for r in rows]


def test_run_is_finished_with_every_fold(finished_run):
    store, result, events = finished_run
    run = store.get_run(result.run_id)
    assert run["status"] == "finished"
    assert sorted(store.finished_folds(result.run_id)) == [(0, 0), (0, 1), (0, 2)]
    kinds = [e.kind for e in events]
    assert kinds.count("fold_finished") == 3 and kinds[-1] == "run_finished"
    assert "ich:4" in run["strategies"]  # as typed: --weight ich:4


def test_voting_threshold_recomputed_from_stored_curves(finished_run):
    store, result, _ = finished_run
    rows = q(
        store,
        f"SELECT fold, threshold, f1 FROM curves WHERE run_id = '{result.run_id}' "
        "AND fold IS NOT NULL ORDER BY fold, threshold",
    )
    curves = {}
    for r in rows:
        curves.setdefault(r["fold"], []).append(r["f1"])
    assert len(curves) == 3 and all(len(c) == len(THRESHOLDS) for c in curves.values())
    mean = np.mean([curves[k] for k in sorted(curves)], axis=0)
    assert best_threshold(mean) == pytest.approx(store.get_run(result.run_id)["threshold"])
    for fold, curve in curves.items():
        stored = q(
            store, f"SELECT threshold FROM folds WHERE run_id = '{result.run_id}' AND fold = {fold}"
        )[0]["threshold"]
        assert best_threshold(np.array(curve)) == pytest.approx(stored)


def _check_metric(stored: dict, labels, scores, threshold):
    decisions = np.asarray(scores) >= threshold
    expected = point_metrics(labels, decisions, scores)
    for name in ("tp", "fp", "tn", "fn"):
        assert stored[name] == expected[name], name
    for name in ("sensitivity", "specificity", "precision", "f1", "accuracy", "auc"):
        if expected[name] is None:
            assert stored[name] is None
        else:
            assert stored[name] == pytest.approx(expected[name], abs=1e-9), name


def test_every_stored_test_metric_recomputed_from_predictions(finished_run):
    store, result, _ = finished_run
    rid = result.run_id
    metrics = q(store, f"SELECT * FROM metrics WHERE run_id = '{rid}'")
    assert len(metrics) == 3 * 2 * 2 + 2 * 2  # folds x splits x scopes + vote
    for m in metrics:
        fold_clause = "fold IS NULL" if m["fold"] is None else f"fold = {m['fold']}"
        split = m["split"]
        if m["model"] == "vote" and split == "val":
            preds = q(
                store,
                f"SELECT * FROM predictions WHERE run_id = '{rid}' AND "
                "fold IS NOT NULL AND split = 'val' ORDER BY patient_id, slice",
            )
        else:
            preds = q(
                store,
                f"SELECT * FROM predictions WHERE run_id = '{rid}' AND "
                f"{fold_clause} AND split = '{split}' ORDER BY patient_id, slice",
            )
        assert preds, m
        labels = np.array([p["label"] for p in preds])
        probs = np.array([p["prob"] for p in preds])
        if m["scope"] == "slice":
            _check_metric(m, labels, probs, m["threshold"])
        else:  # the default patient rule: positive if any slice is positive
            by_patient = {}
            for p in preds:
                lab, prob = by_patient.get(p["patient_id"], (0, 0.0))
                by_patient[p["patient_id"]] = (max(lab, p["label"]), max(prob, p["prob"]))
            p_labels = np.array([v[0] for v in by_patient.values()])
            p_scores = np.array([v[1] for v in by_patient.values()])
            _check_metric(m, p_labels, p_scores, m["threshold"])
        assert m["f1_lo"] is None or m["f1_lo"] <= m["f1"] <= m["f1_hi"]


def test_no_patient_in_two_roles(finished_run):
    store, result, _ = finished_run
    rows = q(store, f"SELECT fold, patient_id, role FROM splits WHERE run_id = '{result.run_id}'")
    test = {r["patient_id"] for r in rows if r["role"] == "test"}
    for fold in range(3):
        train = {r["patient_id"] for r in rows if r["fold"] == fold and r["role"] == "train"}
        val = {r["patient_id"] for r in rows if r["fold"] == fold and r["role"] == "val"}
        assert train and val and test
        assert not (train & val) and not (train & test) and not (val & test)
    preds = q(
        store,
        f"SELECT DISTINCT fold, patient_id FROM predictions WHERE run_id = "
        f"'{result.run_id}' AND split = 'val'",
    )
    for p in preds:
        train = {r["patient_id"] for r in rows if r["fold"] == p["fold"] and r["role"] == "train"}
        assert p["patient_id"] not in train


def test_cpu_run_is_deterministic(finished_run, tmp_path):
    store, result, _ = finished_run
    again = run_config(
        RunConfig(**TINY, weights=["ich:4"]),
        Store(tmp_path / "b.duckdb"),
        cache_dir=tmp_path / "cache",
    )
    assert again.threshold == result.threshold
    a = result.vote.predictions.prob
    b = again.vote.predictions.prob
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_cli_run_then_sql_returns_what_was_printed(tmp_path):
    env = {
        "ICHBENCH_CACHE": str(tmp_path / "cache"),
        "ICHBENCH_LOAD_PLUGINS": "",
        "PATH": "",
        "HF_HUB_OFFLINE": "1",
    }
    db = tmp_path / "runs.duckdb"
    cmd = [
        sys.executable,
        "-m",
        "ichbench",
        "run",
        "--data",
        "synthetic:14,1,32",
        "--backbone",
        "tinycnn",
        "--folds",
        "3",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--db",
        str(db),
        "--weight",
        "ich:4",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    sql = subprocess.run(
        [
            sys.executable,
            "-m",
            "ichbench",
            "sql",
            "--db",
            str(db),
            "--json",
            "select * from metrics where model='vote' and split='test' and scope='slice'",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert sql.returncode == 0, sql.stderr
    rows = json.loads(sql.stdout)
    assert len(rows) == 1
    assert f"{rows[0]['f1']:.2f}" in done.stdout
