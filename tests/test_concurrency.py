"""Several `ichbench run` processes started together on one store and one cold cache,
with `ichbench sql` and `ichbench runs` reading while they write.

DuckDB lets one process write a file at a time; the store opens a connection per
operation and retries while another process holds the lock. This proves that the retry
is enough: every writer finishes every fold, every reader gets its answer, and the
synthetic data and the preprocessing cache, built by all three at once, are built right.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from ichbench.store import Store

pytestmark = pytest.mark.slow

WRITERS = 3
FOLDS = 3
RUN = [
    "run",
    "--data",
    "synthetic:14,1,32",
    "--backbone",
    "tinycnn",
    "--folds",
    str(FOLDS),
    "--epochs",
    "1",
    "--image-size",
    "32",
    "--batch-size",
    "16",
    "--device",
    "cpu",
]
CURVE_POINTS = 101


def cli_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICHBENCH_")}
    env.update(
        ICHBENCH_CACHE=str(root / "cache"),
        ICHBENCH_DB=str(root / "runs.duckdb"),
        ICHBENCH_LOAD_PLUGINS="",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        COLUMNS="200",
    )
    return env


def ichbench(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ichbench", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    """Three runs (seeds 0, 1, 2) started at once; readers query until all have ended."""
    root = tmp_path_factory.mktemp("crowd")
    env = cli_env(root)
    Store(Path(env["ICHBENCH_DB"]))  # an empty store, so readers have something to open
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "ichbench", *RUN, "--seed", str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for seed in range(WRITERS)
    ]
    reads: list[subprocess.CompletedProcess] = []
    try:
        while any(w.poll() is None for w in writers) or len(reads) < 2:
            reads.append(ichbench(["sql", "--json", "SELECT count(*) AS n FROM folds"], env))
            reads.append(ichbench(["runs", "--json"], env))
        outcomes = [(w.returncode, *w.communicate(timeout=600)) for w in writers]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait(timeout=60)
    return Path(env["ICHBENCH_DB"]), outcomes, reads


def test_every_writer_exits_zero(crowd):
    _, outcomes, _ = crowd
    for rc, _, stderr in outcomes:
        assert rc == 0, stderr


def test_every_read_during_the_runs_succeeds(crowd):
    _, _, reads = crowd
    assert len(reads) >= 2
    for done in reads:
        assert done.returncode == 0, done.stderr
        json.loads(done.stdout)


def test_every_run_is_finished_with_all_its_rows(crowd):
    db, outcomes, _ = crowd
    con = duckdb.connect(str(db), read_only=True)
    try:
        runs = con.execute("SELECT run_id, status, seed FROM runs ORDER BY seed").fetchall()
        assert [(status, seed) for _, status, seed in runs] == [
            ("finished", s) for s in range(WRITERS)
        ]
        for run_id, _, _ in runs:

            def count(table: str, cond: str = "TRUE", run_id: str = run_id) -> int:
                return con.execute(
                    f"SELECT count(*) FROM {table} WHERE run_id = ? AND {cond}", [run_id]
                ).fetchone()[0]

            assert count("folds", "status = 'finished'") == FOLDS
            assert count("epochs") >= FOLDS
            assert count("metrics", "model = 'fold'") == FOLDS * 4
            assert count("metrics", "model = 'vote'") == 4
            assert count("curves") == (FOLDS + 1) * CURVE_POINTS
            assert count("predictions", "fold IS NULL") > 0
            assert (
                con.execute(
                    "SELECT count(*) FROM (SELECT fold, split, patient_id, slice "
                    "FROM predictions WHERE run_id = ? GROUP BY ALL "
                    "HAVING count(*) > 1)",
                    [run_id],
                ).fetchone()[0]
                == 0
            )
    finally:
        con.close()
    printed = {
        line.split()[3]
        for _, _, stderr in outcomes
        for line in stderr.splitlines()
        if line.startswith("Stored as run")
    }
    assert printed == {run_id for run_id, _, _ in runs}


def test_concurrent_builders_agree_on_the_dataset(crowd):
    """The three processes generated and cached the same data: one dataset hash, one
    split per seed as a lone run would make it."""
    db, _, _ = crowd
    con = duckdb.connect(str(db), read_only=True)
    try:
        hashes = con.execute("SELECT DISTINCT dataset_hash FROM runs").fetchall()
        patients = con.execute(
            "SELECT run_id, count(DISTINCT patient_id) FROM splits GROUP BY run_id"
        ).fetchall()
    finally:
        con.close()
    assert len(hashes) == 1
    assert {n for _, n in patients} == {13}  # synthetic:14 without the excluded patient 58
