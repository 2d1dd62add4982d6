"""`ichbench sql` on a store made by a real tiny run: a mistake in the user's SQL exits 2
with DuckDB's hints kept under the `Error:` line; a store that cannot be read still
exits 5; an empty result says "0 rows" without spoiling --json or --csv output."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_run import TINY_ARGS, error_lines, run_main

from ichbench.cli.app import main
from ichbench.errors import ExitCode


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A store holding one finished run of the tiny settings, made once by `ichbench run`.
    Tests only read it (each checks that it stays byte-identical where it matters)."""
    base = tmp_path_factory.mktemp("tiny-run")
    db = base / "runs.duckdb"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ICHBENCH_CACHE", str(base / "cache"))
        patch.setenv("ICHBENCH_LOAD_PLUGINS", "")
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.delenv("ICHBENCH_DEBUG", raising=False)
        try:
            main(["run", *TINY_ARGS, "--db", str(db)])
        except SystemExit as exit_info:
            assert not exit_info.code, f"the tiny run failed with {exit_info.code}"
    yield db


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sql(capsys, db: Path, query: str, *options: str) -> tuple[int, str, str]:
    return run_main(capsys, "sql", "--db", str(db), *options, query)


def test_a_misspelt_table_exits_2_with_did_you_mean(capsys, tiny_store: Path) -> None:
    before = digest(tiny_store)
    code, out, err = sql(capsys, tiny_store, "SELECT * FROM metric")
    assert code == ExitCode.USAGE, err
    lines = err.splitlines()
    assert error_lines(err) == [lines[0]]
    assert lines[0] == "Error: Catalog Error: Table with name metric does not exist!"
    assert 'Did you mean "metrics"?' in lines
    assert "LINE 1: SELECT * FROM metric" in lines
    assert out == ""
    assert digest(tiny_store) == before


def test_a_syntax_error_keeps_the_caret_under_the_fault(capsys, tiny_store: Path) -> None:
    code, out, err = sql(capsys, tiny_store, "SELECT run_id FROM runs WHERE WHERE")
    assert code == ExitCode.USAGE, err
    lines = err.splitlines()
    assert len(error_lines(err)) == 1
    assert lines[0].startswith("Error: Parser Error: syntax error at or near")
    query_line = next(i for i, line in enumerate(lines) if line.startswith("LINE 1: "))
    caret = lines[query_line + 1]
    assert set(caret.strip()) == {"^"}
    start = len(caret) - len(caret.lstrip())
    assert start == lines[query_line].rindex("WHERE"), (lines[query_line], caret)  # the 2nd
    assert out == ""


def test_an_unknown_column_lists_the_candidate_bindings(capsys, tiny_store: Path) -> None:
    code, _, err = sql(capsys, tiny_store, "SELECT run_idd FROM runs")
    assert code == ExitCode.USAGE, err
    assert len(error_lines(err)) == 1
    assert err.startswith('Error: Binder Error: Referenced column "run_idd" not found')
    bindings = [line for line in err.splitlines() if line.startswith("Candidate bindings:")]
    assert len(bindings) == 1 and '"run_id"' in bindings[0], err


def test_a_value_that_does_not_convert_is_a_usage_error(capsys, tiny_store: Path) -> None:
    code, _, err = sql(capsys, tiny_store, "SELECT CAST(status AS INTEGER) FROM runs")
    assert code == ExitCode.USAGE, err
    assert error_lines(err)[0].startswith("Error: Conversion Error:")


def test_a_write_is_still_refused_as_a_store_error(capsys, tiny_store: Path) -> None:
    before = digest(tiny_store)
    code, out, err = sql(capsys, tiny_store, "DELETE FROM runs")
    assert code == ExitCode.STORE, err
    assert err.strip() == (
        "Error: ichbench sql is read-only: DELETE statements are not allowed (use SELECT)"
    )
    assert out == ""
    assert digest(tiny_store) == before


def test_an_empty_result_says_0_rows(capsys, tiny_store: Path) -> None:
    query = "SELECT run_id, status FROM runs WHERE status = 'nothing'"
    code, out, err = sql(capsys, tiny_store, query)
    assert (code, err) == (0, "")
    assert out.startswith("0 rows") and "run_id, status" in out

    code, out, err = sql(capsys, tiny_store, query, "--json")
    assert code == 0
    assert json.loads(out) == []
    assert err.startswith("0 rows")

    code, out, err = sql(capsys, tiny_store, query, "--csv")
    assert code == 0
    assert out == "run_id,status\n"
    assert err.startswith("0 rows")


def test_a_result_is_not_called_empty(capsys, tiny_store: Path) -> None:
    code, out, err = sql(capsys, tiny_store, "SELECT count(*) AS n FROM runs", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == [{"n": 1}]


def test_a_missing_store_is_a_store_error(capsys, tmp_path: Path) -> None:
    missing = tmp_path / "missing.duckdb"
    code, _, err = sql(capsys, missing, "SELECT * FROM metric")
    assert code == ExitCode.STORE, err
    assert error_lines(err) == [f"Error: No store at {missing}; run `ichbench run` first"]
    assert not missing.exists()


@pytest.mark.parametrize("query", ["SELECT * FROM runs", "SELECT * FROM metric"])
def test_a_damaged_store_is_a_store_error(capsys, tiny_store: Path, tmp_path: Path, query) -> None:
    damaged = tmp_path / "runs.duckdb"
    damaged.write_bytes(b"not a duckdb file, whatever the query says\n" * 200)
    code, out, err = sql(capsys, damaged, query)
    assert code == ExitCode.STORE, err
    assert len(error_lines(err)) == 1 and "Did you mean" not in err
    assert out == ""


def test_a_truncated_store_is_a_store_error(capsys, tiny_store: Path, tmp_path: Path) -> None:
    cut = tmp_path / "runs.duckdb"
    cut.write_bytes(tiny_store.read_bytes()[:20_000])
    code, _, err = sql(capsys, cut, "SELECT * FROM metric")
    assert code == ExitCode.STORE, err
    assert len(error_lines(err)) == 1
