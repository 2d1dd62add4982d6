"""`ichbench runs | show | compare | sql` on a store filled with hand-built records."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from ichbench.cli import common, store_cmd
from ichbench.cli.render import print_run_tables
from ichbench.errors import StoreError, UsageError
from ichbench.formatting import fmt
from ichbench.store import Store

try:
    from test_store import fill
except ImportError:  # the tests folder imported as a package
    from tests.test_store import fill


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    store_cmd.register(app)
    return app


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once; each test gets its own copy."""
    path = tmp_path_factory.mktemp("store") / "runs.duckdb"
    store = Store(path)
    fill(store, "alpha-1", grid_id="g1", f1=0.70)
    fill(store, "beta-2", grid_id="g1", backbone="vgg16", f1=0.55)
    fill(store, "gamma-3", finish=False)
    store.mark_run("gamma-3", "interrupted", error="KeyboardInterrupt")
    return path


@pytest.fixture
def db(filled: Path, tmp_path: Path) -> Path:
    path = tmp_path / "runs.duckdb"
    shutil.copyfile(filled, path)
    return path


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as a wide terminal would show them, so cells are not wrapped."""
    monkeypatch.setattr(common.out, "width", 400)


def invoke(app: typer.Typer, *args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.exception


def test_runs_json_and_filters(app: typer.Typer, db: Path) -> None:
    code, stdout, exc = invoke(app, "runs", "--json", "--db", str(db))
    assert (code, exc) == (0, None)
    rows = {r["run_id"]: r for r in json.loads(stdout)}
    assert set(rows) == {"alpha-1", "beta-2", "gamma-3"}
    assert rows["alpha-1"]["slice_f1"] == pytest.approx(0.70)
    assert rows["gamma-3"]["status"] == "interrupted"
    assert rows["gamma-3"]["slice_f1"] is None  # no vote for an unfinished run
    for args, expected in (
        (["--status", "finished"], {"alpha-1", "beta-2"}),
        (["--backbone", "vgg16"], {"beta-2"}),
        (["--grid", "g1"], {"alpha-1", "beta-2"}),
        (["--status", "interrupted"], {"gamma-3"}),
    ):
        _, stdout, _ = invoke(app, "runs", "--json", "--db", str(db), *args)
        assert {r["run_id"] for r in json.loads(stdout)} == expected, args
    _, stdout, _ = invoke(app, "runs", "--json", "--limit", "1", "--db", str(db))
    assert len(json.loads(stdout)) == 1


def test_runs_table(app: typer.Typer, db: Path) -> None:
    code, stdout, _ = invoke(app, "runs", "--db", str(db))
    assert code == 0
    for text in (
        "alpha-1",
        "beta-2",
        "gamma-3",
        "interrupted",
        "vgg16",
        "augment:3.3 weight:ich:4",
        "0.70",
        "0.55",
    ):
        assert text in stdout, text


def test_show_prints_fold_vote_and_paper_tables(app: typer.Typer, db: Path) -> None:
    code, stdout, exc = invoke(app, "show", "alpha", "--db", str(db))  # a unique prefix
    assert (code, exc) == (0, None)
    for text in (
        "alpha-1",
        "resnet50",
        "mean / any",
        "Slice level, test set",
        "Patient level, test set",
        "fold 0",
        "fold 1",
        "vote",
        "0.70 [0.60–0.80]",
        "0.60 [0.50–0.70]",
        "Table I",
        "Table III",
        "paper vote",
        "paper fold 4",
        "Neethi 2024",
        "Kyung 2022",
        "abc123",
        "torch.compile",
        "Excluded patients",
        "Plugins",
        "Strategy notes",
    ):
        assert text in stdout, text


def test_show_json(app: typer.Typer, db: Path) -> None:
    code, stdout, _ = invoke(app, "show", "beta-2", "--json", "--db", str(db))
    assert code == 0
    data = json.loads(stdout)
    assert data["run"]["backbone"] == "vgg16"
    assert data["run"]["config"]["epochs"] == 2
    assert [f["fold"] for f in data["folds"]] == [0, 1]
    votes = [m for m in data["metrics"] if m["model"] == "vote"]
    assert {(m["scope"], m["fold"]) for m in votes} == {("slice", None), ("patient", None)}
    assert all(b["citation"] for b in data["baselines"])


def test_show_an_unfinished_run_says_so(app: typer.Typer, db: Path) -> None:
    code, stdout, _ = invoke(app, "show", "gamma-3", "--db", str(db))
    assert code == 0
    assert "run is interrupted: no vote yet" in stdout
    assert "KeyboardInterrupt" in stdout


def test_unknown_run_is_a_store_error(app: typer.Typer, db: Path) -> None:
    _, _, exc = invoke(app, "show", "nope", "--db", str(db))
    assert isinstance(exc, StoreError)
    assert str(exc).startswith("Unknown run 'nope'. Recent runs: ")
    _, _, exc = invoke(app, "compare", "alpha-1", "nope", "--db", str(db))
    assert isinstance(exc, StoreError)


def test_missing_store_is_reported_and_not_created(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.duckdb"
    for args in (["runs"], ["show", "x"], ["compare", "x"], ["sql", "SELECT 1"]):
        _, _, exc = invoke(app, *args, "--db", str(missing))
        assert isinstance(exc, StoreError), args
        assert str(exc) == f"No store at {missing}; run `ichbench run` first"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ICHBENCH_DB", raising=False)
    _, _, exc = invoke(app, "runs")
    assert isinstance(exc, StoreError) and "runs.duckdb" in str(exc)
    assert list(tmp_path.iterdir()) == []


def test_default_db_comes_from_the_environment(
    app: typer.Typer, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICHBENCH_DB", str(db))
    _, stdout, exc = invoke(app, "runs", "--json")
    assert exc is None
    assert len(json.loads(stdout)) == 3


def test_compare_runs_and_grid(app: typer.Typer, db: Path) -> None:
    code, stdout, _ = invoke(app, "compare", "beta", "alpha-1", "--json", "--db", str(db))
    assert code == 0
    data = json.loads(stdout)
    assert [r["run_id"] for r in data["runs"]] == ["beta-2", "alpha-1"]
    assert data["runs"][1]["patient_f1"] == pytest.approx(0.70)
    assert data["runs"][1]["mean_val_f1"] == pytest.approx(0.65)
    assert {b["model"] for b in data["baselines"]} == {"vote", "single"}

    _, stdout, _ = invoke(app, "compare", "gamma-3", "--grid", "g1", "--json", "--db", str(db))
    assert [r["run_id"] for r in json.loads(stdout)["runs"]] == ["gamma-3", "alpha-1", "beta-2"]
    code, stdout, _ = invoke(app, "compare", "--grid", "g1", "--db", str(db))
    assert code == 0
    for text in (
        "alpha-1",
        "beta-2",
        "Vote, test set",
        "Reported in the literature",
        "inception_v3",
        "untuned",
        "kyung2022",
    ):
        assert text in stdout, text


def test_compare_needs_runs(app: typer.Typer, db: Path) -> None:
    _, _, exc = invoke(app, "compare", "--db", str(db))
    assert isinstance(exc, UsageError)
    _, _, exc = invoke(app, "compare", "--grid", "nope", "--db", str(db))
    assert isinstance(exc, UsageError) and "nope" in str(exc)


def test_sql_outputs(app: typer.Typer, db: Path) -> None:
    query = "SELECT run_id, status FROM runs ORDER BY run_id"
    _, stdout, _ = invoke(app, "sql", query, "--csv", "--db", str(db))
    assert stdout == ("run_id,status\nalpha-1,finished\nbeta-2,finished\ngamma-3,interrupted\n")
    _, stdout, _ = invoke(app, "sql", query, "--json", "--db", str(db))
    assert json.loads(stdout)[2] == {"run_id": "gamma-3", "status": "interrupted"}
    code, stdout, _ = invoke(app, "sql", "SELECT NULL AS x, '[red]y[/]' AS y", "--db", str(db))
    assert code == 0 and "NULL" in stdout and "[red]y[/]" in stdout
    _, _, exc = invoke(app, "sql", query, "--csv", "--json", "--db", str(db))
    assert isinstance(exc, UsageError)


def test_sql_rejects_writes_and_leaves_the_store_unchanged(app: typer.Typer, db: Path) -> None:
    _, _, exc = invoke(app, "sql", "DELETE FROM runs", "--db", str(db))
    assert isinstance(exc, StoreError)
    assert str(exc).startswith("ichbench sql is read-only: ")
    _, stdout, _ = invoke(app, "sql", "SELECT count(*) AS n FROM runs", "--json", "--db", str(db))
    assert json.loads(stdout) == [{"n": 3}]


def test_print_run_tables_for_the_runner(db: Path) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=300, color_system=None)
    print_run_tables(console, Store(db, create=False), "alpha-1")
    text = buffer.getvalue()
    assert "0.70 [0.60–0.80]" in text and "paper vote" in text
    assert text.count("fold 0") >= 2  # ours and the paper's, slice and patient tables


def test_fmt() -> None:
    assert fmt(0.912, 0.851, 0.949) == "0.91 [0.85–0.95]"
    assert fmt(None) == "–"
    assert fmt(0.5) == "0.50"
