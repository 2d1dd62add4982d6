"""Output scripts can trust and reruns a user can ask for: `--csv` on `runs`, `show`,
`compare` and `sql` (lists as JSON cells); strategies stored and found as typed
(`--weight ich:4` is `ich:4`, older stores rewritten); `run --from RUN`; an explicit
`--pretrained` without weights stops the run unless `--allow-random-init`, whose warning is
said once."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import duckdb
import pytest

from ichbench.config import RunConfig
from ichbench.errors import ExitCode
from ichbench.store import Store, migrations
from ichbench.store.reads import strategy_terms

try:
    from cli_run import TINY_ARGS, error_lines, run_main
except ImportError:  # the tests folder imported as a package
    from tests.cli_run import TINY_ARGS, error_lines, run_main


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One tiny real run with a strategy and a class weight, made once."""
    from ichbench.cli.app import main

    root = tmp_path_factory.mktemp("scripting")
    db = root / "runs.duckdb"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICHBENCH_CACHE", str(root / "cache"))
        try:
            main(
                ["run", *TINY_ARGS, "--strategy", "augment:2", "--weight", "ich:4", "--db", str(db)]
            )
        except SystemExit as exc:
            assert exc.code in (0, None)
    (run,) = Store(db, create=False).list_runs()
    return db, run["run_id"]


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_runs_csv_has_one_row_per_run_and_lists_as_json(capsys, made) -> None:
    db, run_id = made
    code, out, _ = run_main(capsys, "runs", "--csv", "--db", str(db))
    assert code == 0
    rows = _csv(out)
    assert len(rows) == len(Store(db, create=False).list_runs())
    row = next(r for r in rows if r["run_id"] == run_id)
    assert json.loads(row["strategies"]) == ["augment:2", "ich:4"]
    assert json.loads(row["tags"]) == []
    assert row["name"] == ""  # NULL is an empty cell
    assert float(row["mean_val_f1"]) >= 0


def test_runs_csv_without_runs_is_the_header(capsys, made) -> None:
    db, _ = made
    code, out, err = run_main(capsys, "runs", "--status", "failed", "--csv", "--db", str(db))
    assert code == 0 and "No runs match." in err
    header = out.splitlines()
    assert len(header) == 1 and header[0].startswith("run_id,status,")


def test_show_csv_is_its_metrics(capsys, made) -> None:
    db, run_id = made
    code, out, _ = run_main(capsys, "show", run_id[-6:], "--csv", "--db", str(db))
    assert code == 0
    rows = _csv(out)
    stored = Store(db, create=False).run_metrics(run_id)
    assert len(rows) == len(stored) > 0
    assert {(r["model"], r["scope"], r["split"]) for r in rows} >= {
        ("vote", "slice", "test"),
        ("vote", "patient", "test"),
    }
    vote = next(
        r for r in rows if (r["model"], r["scope"], r["split"]) == ("vote", "slice", "test")
    )
    want = next(
        r for r in stored if (r["model"], r["scope"], r["split"]) == ("vote", "slice", "test")
    )
    assert float(vote["f1"]) == pytest.approx(want["f1"])


def test_compare_csv_and_sql_csv(capsys, made) -> None:
    db, run_id = made
    code, out, _ = run_main(capsys, "compare", run_id, "--csv", "--db", str(db))
    assert code == 0
    (row,) = _csv(out)
    assert row["run_id"] == run_id and json.loads(row["strategies"]) == ["augment:2", "ich:4"]
    code, out, _ = run_main(
        capsys, "sql", "select run_id, strategies from runs", "--csv", "--db", str(db)
    )
    assert code == 0
    row = next(r for r in _csv(out) if r["run_id"] == run_id)
    assert json.loads(row["strategies"]) == ["augment:2", "ich:4"]
    code, out, err = run_main(
        capsys, "sql", "select run_id from runs where false", "--csv", "--db", str(db)
    )
    assert code == 0 and out == "run_id\n" and "0 rows" in err  # the header stays


@pytest.mark.parametrize(
    "command", [["runs"], ["show", "RUN"], ["compare", "RUN"], ["sql", "select 1"]]
)
def test_csv_and_json_together_is_a_usage_error(capsys, made, command) -> None:
    db, run_id = made
    args = [run_id if a == "RUN" else a for a in command]
    code, out, err = run_main(capsys, *args, "--csv", "--json", "--db", str(db))
    assert code == ExitCode.USAGE and out == ""
    assert error_lines(err) == ["Error: --csv and --json are exclusive: choose one"]


def test_strategies_are_stored_as_typed_and_found_in_either_spelling(capsys, made) -> None:
    db, run_id = made
    stored = Store(db, create=False).get_run(run_id)
    assert stored["strategies"] == ["augment:2", "ich:4"]
    for text, found in [
        ("ich:4", True),
        ("ICH:4.0", True),
        ("weight:ich,4", True),
        ("ich", True),
        ("weight", True),
        ("augment:2.00", True),
        ("augment", True),
        ("ich:2", False),
        ("healthy", False),
        ("aug", False),
    ]:
        code, out, _ = run_main(capsys, "runs", "--strategy", text, "--json", "--db", str(db))
        assert code == 0
        assert [r["run_id"] for r in json.loads(out)] == ([run_id] if found else []), text


def test_strategy_terms_spellings() -> None:
    assert strategy_terms("weight:healthy,0.50") == (["weight:healthy,0.5", "healthy:0.5"], [])
    assert strategy_terms("mixup") == (["mixup"], ["mixup:", "weight:mixup,"])


def test_older_store_has_its_weights_rewritten_as_typed(tmp_path: Path) -> None:
    """A store written when weights were recorded as `weight:ich,4` reads `ich:4` once
    upgraded; strategies are untouched, and so is a run without weights."""
    path = tmp_path / "old.duckdb"
    Store(path)  # a store of today, whose last migration is then undone
    with duckdb.connect(str(path)) as con:
        con.execute("DELETE FROM _migrations WHERE name = 'm009_typed_strategies'")
        for run_id, strategies in (
            ("a", ["augment:3.3", "weight:ich,4", "weight:healthy,0.5"]),
            ("b", ["undersample:1"]),
            ("c", []),
        ):
            con.execute(
                "INSERT INTO runs (run_id, status, started_at, strategies) "
                "VALUES (?, 'finished', now(), ?)",
                [run_id, strategies],
            )
        assert migrations.pending(con) == ["m009_typed_strategies"]
        assert migrations.apply_migrations(con) == ["m009_typed_strategies"]
        got = dict(con.execute("SELECT run_id, strategies FROM runs ORDER BY run_id").fetchall())
    assert got == {"a": ["augment:3.3", "ich:4", "healthy:0.5"], "b": ["undersample:1"], "c": []}


def test_run_from_reruns_a_stored_configuration_with_options_replacing(capsys, made) -> None:
    db, run_id = made
    code, out, err = run_main(
        capsys, "run", "--from", run_id[-6:], "--epochs", "2", "--json", "--db", str(db)
    )
    assert code == 0, err
    new_id = json.loads(out)["run_id"]
    store = Store(db, create=False)
    old, new = store.get_run(run_id)["config"], store.get_run(new_id)["config"]
    assert new["epochs"] == 2 and old["epochs"] == 1
    assert {k: v for k, v in new.items() if k != "epochs"} == {
        k: v for k, v in old.items() if k != "epochs"
    }
    assert RunConfig.from_dict(new).hash != RunConfig.from_dict(old).hash
    assert store.get_run(new_id)["strategies"] == ["augment:2", "ich:4"]


def test_run_from_with_a_strategy_replaces_only_the_strategies(capsys, made) -> None:
    db, run_id = made
    code, out, _ = run_main(
        capsys, "run", "--from", run_id, "--strategy", "undersample:1", "--dry-run", "--db", str(db)
    )
    assert code == 0
    assert "undersample:1, ich:4" in out  # the weights stay the stored ones
    assert len(Store(db, create=False).list_runs()) >= 1  # a dry run stores nothing new


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--preset", "paper"], "--preset with --from"),
        (["--resume", "RUN"], "--resume and --from are exclusive"),
    ],
)
def test_run_from_refuses_what_cannot_apply(capsys, made, extra, message) -> None:
    db, run_id = made
    before = len(Store(db, create=False).list_runs())
    args = [run_id if a == "RUN" else a for a in extra]
    code, _, err = run_main(capsys, "run", "--from", run_id, *args, "--db", str(db))
    assert code == ExitCode.USAGE
    (line,) = error_lines(err)
    assert message in line
    assert len(Store(db, create=False).list_runs()) == before


def test_run_from_an_unknown_run_names_it(capsys, made) -> None:
    db, _ = made
    code, _, err = run_main(capsys, "run", "--from", "nosuchrun", "--db", str(db))
    assert code not in (0, 1)
    (line,) = error_lines(err)
    assert "nosuchrun" in line


def test_explicit_pretrained_without_weights_stops_before_the_store(capsys, tmp_path) -> None:
    db = tmp_path / "runs.duckdb"
    code, out, err = run_main(capsys, "run", *TINY_ARGS, "--pretrained", "--db", str(db))
    assert code == ExitCode.USAGE
    (line,) = error_lines(err)
    assert line.startswith("Error: --pretrained: tinycnn got no pretrained weights")
    assert "--allow-random-init" in line
    assert not db.exists()


def test_dry_run_says_the_same(capsys) -> None:
    code, out, err = run_main(capsys, "run", *TINY_ARGS, "--pretrained", "--dry-run")
    assert code == ExitCode.USAGE and "Resolved configuration" in out
    (line,) = error_lines(err)
    assert "--allow-random-init" in line


@pytest.mark.slow
def test_allow_random_init_goes_on_and_warns_once(capsys, tmp_path) -> None:
    """timm's resnet18 offline: no weights, said once (not once per fold, not as a Python
    UserWarning), recorded as not pretrained."""
    db = tmp_path / "runs.duckdb"
    args = [a if a != "tinycnn" else "timm:resnet18" for a in TINY_ARGS]
    code, out, err = run_main(
        capsys, "run", *args, "--pretrained", "--allow-random-init", "--json", "--db", str(db)
    )
    assert code == 0, err
    assert err.count("no pretrained weights") == 1
    assert "UserWarning" not in err
    run = Store(db, create=False).get_run(json.loads(out)["run_id"])
    assert run["pretrained"] is False


def test_show_has_the_validation_side(capsys, made, monkeypatch) -> None:
    """Each fold's validation F1 (what the grid selects by), the epoch kept and the
    samples per epoch, then the mean ± sd, all as stored."""
    db, run_id = made
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_main(capsys, "show", run_id, "--db", str(db))
    assert code == 0
    store = Store(db, create=False)
    folds = store.folds(run_id, outer=None)
    val = {
        r["fold"]: r["f1"]
        for r in store.run_metrics(run_id)
        if (r["model"], r["scope"], r["split"]) == ("fold", "slice", "val")
    }
    block = out[out.index("Validation (how each fold was chosen)") :]
    for fold in folds:
        line = next(x for x in block.splitlines() if x.startswith(f"fold {fold['fold']} "))
        cells = line.split()
        assert float(cells[2]) == pytest.approx(val[fold["fold"]], abs=0.005)
        assert int(cells[4]) == fold["best_epoch"]
        assert int(cells[5].replace(",", "")) == fold["train_ich"] + fold["train_healthy"]
    mean = sum(val.values()) / len(val)
    assert f"mean ± sd  {mean:.2f} ± " in block


def test_first_use_of_synthetic_data_says_it_is_generating(capsys) -> None:
    """A status line while the synthetic dataset is generated (the cache is this test's
    own, so empty), and none when it is reused."""
    code, _, err = run_main(capsys, "run", *TINY_ARGS, "--json")
    assert code == 0
    (line,) = [x for x in err.splitlines() if x.startswith("Generating ")]
    assert line.startswith("Generating synthetic:10,1,32 (first use; kept in ")
    code, _, err = run_main(capsys, "run", *TINY_ARGS, "--json")
    assert code == 0 and "Generating " not in err


@pytest.mark.parametrize("command", [["run"], ["grid"], ["runs"], ["show"], ["report"]])
def test_help_has_no_bool_noise(capsys, monkeypatch, command) -> None:
    """A flag takes no value: no `<bool>` beside it; options with values keep their type."""
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = run_main(capsys, *command, "--help")
    assert code == 0
    assert "<bool>" not in out
    (help_row,) = [line for line in out.splitlines() if "--help" in line]
    assert "<" not in help_row  # a flag's row, without a type
    assert "<path>" in out or "<str>" in out or "<int>" in out


def test_a_plain_progress_callback_still_hears_the_generation(tmp_path) -> None:
    """A caller's `(done, total)` callback is not given the stage it cannot take."""
    from ichbench.data.synth import SyntheticSource
    from ichbench.interfaces import LoadOptions

    heard: list[tuple[int, int]] = []
    dataset = SyntheticSource(4, 0, 32).load(
        LoadOptions(image_size=32, exclude=()),
        tmp_path,
        lambda done, total: heard.append((done, total)),
    )
    assert len(dataset.patients) == 4
    assert (4, 4) in heard  # the generation's last patient (and the preprocessing's)


def test_sql_json_gives_json_columns_as_objects(capsys, made) -> None:
    db, run_id = made
    code, out, _ = run_main(
        capsys,
        "sql",
        f"select run_id, config, tags from runs where run_id = '{run_id}'",
        "--json",
        "--db",
        str(db),
    )
    assert code == 0
    (row,) = json.loads(out)
    assert isinstance(row["config"], dict) and row["config"]["weights"] == ["ich:4"]
    assert row["tags"] == []
    code, out, _ = run_main(
        capsys,
        "sql",
        f"select config from runs where run_id = '{run_id}'",
        "--csv",
        "--db",
        str(db),
    )
    assert json.loads(_csv(out)[0]["config"])["epochs"] == 1


def test_grid_stops_on_missing_pretrained_weights_unless_allowed(capsys, tmp_path) -> None:
    db = tmp_path / "runs.duckdb"
    grid = ["grid", "--strategy", "augment:1,2", *TINY_ARGS, "--pretrained", "--db", str(db)]
    code, _, err = run_main(capsys, *grid)
    assert code == ExitCode.USAGE and not db.exists()
    (line,) = error_lines(err)
    assert "--allow-random-init" in line
    code, out, err = run_main(capsys, *grid, "--allow-random-init", "--dry-run")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 2  # the two configurations, nothing run


def test_a_dataset_name_beside_a_folder_of_that_name_says_how_to_mean_the_folder(
    capsys, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rsna").mkdir()
    code, _, err = run_main(capsys, "run", "--data", "rsna", "--dry-run")
    assert code == ExitCode.USAGE
    (line,) = error_lines(err)
    assert "rsna:PATH" in line and "give ./rsna to read it" in line


def test_sql_keeps_two_columns_of_one_name(capsys, made) -> None:
    """CSV keeps both (a row as a dict would have merged them); JSON, whose objects hold
    a name once, refuses rather than drop one."""
    db, _ = made
    code, out, _ = run_main(capsys, "sql", "select 1 as a, 2 as a", "--csv", "--db", str(db))
    assert code == 0 and out == "a,a\n1,2\n"
    code, out, err = run_main(capsys, "sql", "select 1 as a, 2 as a", "--json", "--db", str(db))
    assert code == ExitCode.USAGE and out == ""
    (line,) = error_lines(err)
    assert "'a' is named twice" in line


def test_a_mistyped_window_fails_the_dry_run_too(capsys) -> None:
    code, out, err = run_main(capsys, "run", *TINY_ARGS, "--window", "brian", "--dry-run")
    assert code == ExitCode.USAGE and out == ""
    (line,) = error_lines(err)
    assert "Unknown window 'brian'" in line and "Did you mean 'brain'?" in line


def test_explicit_pretrained_stop_is_said_once_without_a_contradicting_warning(capsys) -> None:
    """The error says why; no warning before it claims the run goes on from random
    initialisation."""
    args = [a if a != "tinycnn" else "timm:resnet18" for a in TINY_ARGS]
    code, _, err = run_main(capsys, "run", *args, "--pretrained")
    assert code == ExitCode.USAGE
    assert "Warning:" not in err
    (line,) = error_lines(err)
    assert "HF_HUB_OFFLINE" in line
