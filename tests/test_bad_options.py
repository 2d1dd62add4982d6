"""Absurd option values: each one a single `Error:` line and exit 2, caught before the
store is created (and, where the value alone is wrong, before the data is loaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_run import TINY_ARGS, error_lines, run_main

from ichbench.errors import ExitCode
from ichbench.store import Store


def cache_is_empty() -> bool:
    cache = Path(os.environ["ICHBENCH_CACHE"])
    return not cache.exists() or not any(cache.rglob("*"))


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--lr", "inf", "--lr inf: must be above 0 and at most 1e+37"),
        ("--lr", "nan", "--lr nan: must be above 0 and at most 1e+37"),
        ("--lr", "1e308", "--lr 1e+308: must be above 0 and at most 1e+37"),
        ("--seed", "-1", "--seed -1: must be between 0 and 4294967295"),
        ("--seed", "4294967296", "--seed 4294967296: must be between 0 and 4294967295"),
        ("--test-size", "1.5", "--test-size 1.5: expected a fraction between 0 and 1"),
        ("--test-size", "0", "--test-size 0.0: expected a fraction between 0 and 1"),
        (
            "--batch-size",
            "1",
            "--batch-size 1: must be at least 2 (a one-sample batch cannot train batch norm, "
            "so it is skipped)",
        ),
        (
            "--exclude",
            "99999999999999999999999",
            "--exclude '99999999999999999999999': patient numbers are at most 9223372036854775807",
        ),
    ],
)
def test_absurd_value_is_refused_before_data_and_store(capsys, tmp_path, option, value, message):
    db = tmp_path / "runs.duckdb"
    code, _, err = run_main(capsys, "run", *TINY_ARGS, option, value, "--db", str(db))
    assert code == ExitCode.USAGE, err
    assert error_lines(err) == [f"Error: {message}"]
    assert "Dataset:" not in err
    assert not db.exists()
    assert cache_is_empty()


def test_test_set_too_small_for_both_classes_is_the_split_error(capsys, tmp_path):
    db = tmp_path / "runs.duckdb"
    code, _, err = run_main(capsys, "run", *TINY_ARGS, "--test-size", "0.01", "--db", str(db))
    assert code == ExitCode.USAGE, err
    [line] = error_lines(err)
    assert line.startswith("Error: --folds 2 with --test-size 0.01: the dataset has 9 patients")
    assert "the test set needs at least one ICH and one healthy patient" in line
    assert not db.exists()


def test_a_loss_that_diverges_stops_the_fold_with_one_line(capsys, tmp_path):
    db = tmp_path / "runs.duckdb"
    code, _, err = run_main(
        capsys, "run", *TINY_ARGS, "--epochs", "2", "--lr", "1e30", "--db", str(db)
    )
    assert code == ExitCode.USAGE, err
    [line] = error_lines(err)
    assert line.startswith("Error: training diverged at fold 0 epoch ")
    assert line.endswith("; lower --lr")
    _, rows = Store(db, create=False).query("SELECT status FROM runs")
    assert rows == [("failed",)]
    _, folds = Store(db, create=False).query("SELECT count(*) FROM folds")
    assert folds == [(0,)]
