"""One run lifecycle for every executor: `ichbench run` is a grid of one; the protocol
holds no store; a plugin that fails before the run starts leaves no run behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types

import duckdb
import pytest
import typer
from cli_run import TINY_ARGS as CLI_TINY
from cli_run import run_main

from ichbench.cli.app import create_app
from ichbench.config import RunConfig
from ichbench.errors import ExitCode, PluginError
from ichbench.hookspecs import hookimpl
from ichbench.plugins import registered

TINY_ARGS = [*CLI_TINY, "--batch-size", "16"]


def rows(db, sql: str, *params) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def test_the_protocol_runs_without_duckdb(tmp_path):
    """Data, split, every fold trial and the vote, in a process where DuckDB cannot even
    be imported: the protocol holds no store."""
    script = f"""
import sys
sys.modules["duckdb"] = None
from ichbench.config import RunConfig
from ichbench.protocol import RunProtocol
protocol = RunProtocol(RunConfig(data="synthetic:10,1,32", backbone="tinycnn", folds=2,
                                 epochs=1, image_size=32, preset="quick", device="cpu",
                                 weights=["ich:4"]), cache_dir=r"{tmp_path / "cache"}")
dataset = protocol.load_data()
split = protocol.split_of(dataset)
folds = {{k: protocol.fold_trial(dataset, split, k)[0] for k in range(2)}}
(vote,) = protocol.vote(dataset, split, folds)
assert "duckdb" not in {{m for m in sys.modules if sys.modules[m] is not None}}
print(vote.threshold, len(vote.patients), sorted(folds[0].notes))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"ICHBENCH_LOAD_PLUGINS": "", "HF_HUB_OFFLINE": "1", "PATH": ""},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    threshold, patients, notes = done.stdout.split(" ", 2)
    assert 0.0 <= float(threshold) <= 1.0
    assert int(patients) > 0
    assert "steps" in notes  # the weight strategy's notes travel with the fold record


def test_run_and_a_grid_of_one_store_the_same_results(capsys, tmp_path):
    """`ichbench run` and `ichbench grid` with one configuration go through the same
    lifecycle: same configuration hash, same split, the same numbers in every table."""
    run_db, grid_db = tmp_path / "run.duckdb", tmp_path / "grid.duckdb"
    code, _, err = run_main(capsys, "run", *TINY_ARGS, "--weight", "ich:4", "--db", str(run_db))
    assert code == 0, err
    code, _, err = run_main(capsys, "grid", *TINY_ARGS, "--weight", "ich:4", "--db", str(grid_db))
    assert code == 0, err
    (a,), (b,) = (
        rows(db, "SELECT config_hash, split_hash, threshold, status, plugins FROM runs")
        for db in (run_db, grid_db)
    )
    assert a == b and a[3] == "finished"
    assert "ichbench" in a[4]  # the plugins it used, with their versions
    for table, order in (
        ("metrics", "model, fold, scope, split"),
        ("curves", "fold, threshold"),
        ("predictions", "fold, split, patient_id, slice"),
        ("patient_decisions", "fold, split, patient_id"),
    ):
        cols = {
            "metrics": "model, fold, scope, split, threshold, f1, auc, tp, fp, tn, fn",
            "curves": "fold, threshold, f1",
            "predictions": "fold, split, patient_id, slice, label, prob",
            "patient_decisions": "fold, split, patient_id, label, score, decision",
        }[table]
        left = rows(run_db, f"SELECT {cols} FROM {table} ORDER BY {order}")
        right = rows(grid_db, f"SELECT {cols} FROM {table} ORDER BY {order}")
        assert left and left == right, table
    decided = rows(
        run_db, "SELECT count(*) FROM patient_decisions WHERE fold IS NULL AND split = 'test'"
    )
    assert decided[0][0] > 0


class _Raising:
    """A strategy whose first call raises, as a third party's bug would."""

    def apply(self, plan, ctx):
        raise ZeroDivisionError("the strategy divided by zero")


class _NotABackbone:
    """A 'backbone' factory result without `build`."""

    name = "notabackbone"


class _ReturnsNothing:
    """A strategy that forgets to return the plan."""

    def apply(self, plan, ctx):
        plan.notes["seen"] = True


class _FailsFromTheSecondFold:
    """A strategy that works on fold 0 and raises on fold 1."""

    def __init__(self) -> None:
        self.calls = 0

    def apply(self, plan, ctx):
        self.calls += 1
        if self.calls > 1:
            raise ValueError("a bug that only fold 1 meets")
        return plan


class _OneScore:
    """An ensemble rule that returns one score instead of one per slice."""

    def combine(self, probs, threshold):
        mean = probs.mean(axis=0)
        return mean[:1], mean[:1] >= threshold


class _ShortScansOnly:
    """A patient rule that breaks on a real scan's many slices."""

    def decide(self, scores, decisions, threshold):
        if len(scores) > 2:
            raise IndexError("more than two slices")
        return float(scores.max()), bool(decisions.any())


def _plugin(**factories) -> types.SimpleNamespace:
    def register_strategies(register):
        if "strategy" in factories:
            register("explodes", factories["strategy"], help="raises on first call")

    def register_backbones(register):
        if "backbone" in factories:
            register("notabackbone", factories["backbone"], help="returns the wrong kind")

    def register_aggregators(register):
        if "ensemble" in factories:
            register("onescore", factories["ensemble"], kind="ensemble", help="misshapen")
        if "patient" in factories:
            register("shortonly", factories["patient"], kind="patient", help="short scans")

    return types.SimpleNamespace(
        register_strategies=hookimpl(register_strategies),
        register_backbones=hookimpl(register_backbones),
        register_aggregators=hookimpl(register_aggregators),
    )


@pytest.mark.parametrize(
    "option, value, plugin, needle",
    [
        ("--strategy", "explodes", _plugin(strategy=lambda spec: _Raising()), "explodes"),
        (
            "--backbone",
            "notabackbone",
            _plugin(backbone=lambda spec: _NotABackbone()),
            "notabackbone",
        ),
        (
            "--strategy",
            "explodes",
            _plugin(strategy=lambda spec: _ReturnsNothing()),
            "not a TrainPlan",
        ),
        (
            "--strategy",
            "explodes",
            _plugin(strategy=lambda spec: _FailsFromTheSecondFold()),
            "only fold 1 meets",
        ),
        ("--ensemble", "onescore", _plugin(ensemble=lambda spec: _OneScore()), "one per slice"),
        (
            "--patient-rule",
            "shortonly",
            _plugin(patient=lambda spec: _ShortScansOnly()),
            "more than two slices",
        ),
    ],
)
def test_a_failing_plugin_is_blamed_and_leaves_no_run(
    capsys, tmp_path, option, value, plugin, needle
):
    db = tmp_path / "runs.duckdb"
    args = list(TINY_ARGS)
    if option == "--backbone":
        i = args.index("--backbone")
        args[i + 1] = value
    else:
        args += [option, value]
    with registered(plugin, "failing-test-plugin"):
        code, _, err = run_main(capsys, "run", *args, "--db", str(db))
    assert code == ExitCode.PLUGIN, err
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err
    assert not db.exists() or rows(db, "SELECT count(*) FROM runs") == [(0,)]


@pytest.mark.parametrize("name", ["", "a:b", "two words", "x,y"])
def test_a_name_that_cannot_be_chosen_is_refused(name):
    def register_strategies(register):
        register(name, lambda spec: _Raising(), help="unselectable")

    plugin = types.SimpleNamespace(register_strategies=hookimpl(register_strategies))
    with pytest.raises(PluginError, match="badly-named-plugin.*cannot be chosen"):
        with registered(plugin, "badly-named-plugin"):
            pass


def _options(command) -> set[str]:
    return {opt for p in command.params if p.param_type_name == "option" for opt in p.opts}


def test_grid_accepts_every_run_option():
    group = typer.main.get_command(create_app())
    run, grid = group.commands["run"], group.commands["grid"]
    assert {"--db", "--weights", "--exclude", "--lr", "--window"} <= _options(run)
    only_run = _options(run) - _options(grid)
    # resuming names one run (a grid has many); a run's --json is its one result; --from
    # starts from one stored configuration (a grid's base comes from its options or TOML)
    assert only_run == {"--resume", "--json", "--from"}, only_run


def test_exclude_none_means_nobody_everywhere(capsys, tmp_path):
    """One parser: `--exclude none` is accepted by run (and data check) alike."""
    code, _, err = run_main(
        capsys, "run", *TINY_ARGS, "--exclude", "none", "--db", str(tmp_path / "r.duckdb")
    )
    assert code == 0, err
    (config,) = rows(tmp_path / "r.duckdb", "SELECT config FROM runs")[0]
    assert RunConfig.from_dict(__import__("json").loads(config)).exclude == []


def test_grid_reruns_a_configuration_whose_plugins_changed(capsys, tmp_path):
    """A finished run made with another version of a plugin is not reused by a grid."""
    db = tmp_path / "runs.duckdb"
    code, _, err = run_main(capsys, "grid", *TINY_ARGS, "--weight", "ich:4", "--db", str(db))
    assert code == 0, err
    code, _, err = run_main(capsys, "grid", *TINY_ARGS, "--weight", "ich:4", "--db", str(db))
    assert code == 0 and "already finished" in err
    with duckdb.connect(str(db)) as con:
        con.execute("""UPDATE runs SET plugins = '{"ichbench": "0.0.1"}'""")
    code, _, err = run_main(capsys, "grid", *TINY_ARGS, "--weight", "ich:4", "--db", str(db))
    assert code == 0, err
    assert "already finished" not in err
    statuses = rows(db, "SELECT status FROM runs ORDER BY started_at")
    assert [s for (s,) in statuses] == ["finished", "finished"]


@pytest.mark.parametrize(
    "bad",
    [
        ["--folds", "0"],
        ["--ensemble", "nope"],
        ["--lr", "-1"],
        ["--data", "/nonexistent/folder"],
        ["--backbone", "nope"],
    ],
)
def test_a_bad_grid_value_creates_no_store(capsys, tmp_path, bad):
    db = tmp_path / "grid.duckdb"
    code, _, err = run_main(
        capsys, "grid", "--data", "synthetic:10,1,32", "--weight", "ich:1,4", *bad, "--db", str(db)
    )
    assert code in (ExitCode.USAGE, ExitCode.DATA, ExitCode.PLUGIN), err
    assert len([line for line in err.splitlines() if line.startswith("Error:")]) == 1
    assert not db.exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_vote_marks_the_run_interrupted(capsys, tmp_path, monkeypatch, signum):
    """The last fold is recorded and the vote is being computed when the signal comes: the
    run is not finished, so it must not stay `running`."""
    from ichbench.protocol import RunProtocol

    original = RunProtocol.vote

    def vote_then_signal(self, *args, **kwargs):
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the signal arrives here, as it would inside a long vote
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RunProtocol, "vote", vote_then_signal)
    db = tmp_path / "runs.duckdb"
    code, _, err = run_main(capsys, "run", *TINY_ARGS, "--db", str(db))
    assert code == ExitCode.INTERRUPTED, err
    ((status, folds),) = rows(
        db,
        "SELECT r.status, count(f.fold) FROM runs r JOIN folds f USING (run_id) GROUP BY r.status",
    )
    assert (status, folds) == ("interrupted", 2)


def test_a_dry_run_checks_every_configuration(capsys, tmp_path):
    code, out, err = run_main(
        capsys,
        "grid",
        "--weight",
        "ich:1,4",
        "--batch-size",
        "-5",
        "--dry-run",
        "--db",
        str(tmp_path / "g.duckdb"),
    )
    assert code == ExitCode.USAGE and "--batch-size" in err, err
    assert out == ""


def test_sql_json_has_no_nan(capsys, tmp_path):
    from ichbench.store import Store

    db = tmp_path / "runs.duckdb"
    Store(db)
    code, out, err = run_main(
        capsys,
        "sql",
        "select 1/0 as x, 'nan'::double as y, 2.5::double as z",
        "--json",
        "--db",
        str(db),
    )
    assert code == 0, err
    assert __import__("json").loads(out) == [{"x": None, "y": None, "z": 2.5}]


@pytest.mark.parametrize("spelling", [["--preset", "QUICK"], ["--device", "CPU"]])
def test_presets_and_devices_in_any_case(capsys, tmp_path, spelling):
    code, _, err = run_main(
        capsys,
        "grid",
        "--weight",
        "ich:1",
        *spelling,
        "--dry-run",
        "--db",
        str(tmp_path / "g.duckdb"),
    )
    assert code == 0, err
