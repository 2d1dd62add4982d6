"""Small things a daily user trips on: a misspelt window, a split that moved with the
seed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_run import TINY_ARGS, TINY_CONFIG, error_lines, run_main

from ichbench.config import RunConfig
from ichbench.errors import UsageError
from ichbench.protocol import RunProtocol


def test_a_misspelt_window_gets_a_did_you_mean(capsys, tmp_path):
    db = tmp_path / "r.duckdb"
    code, _, err = run_main(capsys, "run", *TINY_ARGS, "--window", "brian", "--db", str(db))
    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith("Error: Unknown window 'brian'. Did you mean 'brain'? Available: ")
    assert not db.exists()


def _split_hash(tmp_path, **changes) -> str:
    cfg = RunConfig(**{**TINY_CONFIG, **changes})
    protocol = RunProtocol(cfg, cache_dir=tmp_path / "cache")
    return protocol.split_of(protocol.load_data()).hash


def test_split_seed_holds_the_split_while_the_seed_moves_training(tmp_path):
    moving = {_split_hash(tmp_path, seed=s) for s in (0, 1, 2)}
    assert len(moving) > 1  # as before: one seed moves the split too
    fixed = {_split_hash(tmp_path, seed=s, split_seed=7) for s in (0, 1, 2)}
    assert fixed == {_split_hash(tmp_path, seed=7)}
    # the same split spelled two ways is one configuration
    assert RunConfig(seed=3, split_seed=3).hash == RunConfig(seed=3).hash
    assert RunConfig(seed=3, split_seed=4).hash != RunConfig(seed=3).hash
    with pytest.raises(UsageError, match="--split-seed -1"):
        RunConfig(preset="quick", split_seed=-1).resolved("cpu")


def test_dry_run_says_what_would_happen_and_touches_nothing(capsys, tmp_path):
    db = tmp_path / "r.duckdb"
    cache = Path(os.environ["ICHBENCH_CACHE"])
    code, out, err = run_main(
        capsys,
        "run",
        "--dry-run",
        "--preset",
        "modern",
        "--data",
        "synthetic:10,1,32",
        "--db",
        str(db),
    )
    assert code == 0, err
    pairs = [line.strip().split(None, 1) for line in out.splitlines()[1:]]
    said = {p[0]: p[1].strip() for p in pairs if len(p) == 2}
    assert said["Device"] == "cpu" and said["Dataset"] == "synthetic:10,1,32"
    assert "tinycnn at 64 px; random initialisation" in out  # modern on a CPU: quick's net
    assert "brain, subdural, bone" in out and "context ±1 slice(s)" in out
    assert not db.exists()
    assert not cache.exists() or not any(cache.iterdir())  # no data generated or loaded


def test_a_run_says_its_resolved_configuration_before_it_starts(capsys, tmp_path):
    db = tmp_path / "r.duckdb"
    code, _, err = run_main(capsys, "run", *TINY_ARGS, "--db", str(db))
    assert code == 0, err
    before = err.split("Run 20")[0]  # said before the run exists
    assert "Resolved configuration" in before and "Config hash" in before
    # the id is taken back by its random part (its end) as well as by a prefix
    run_id = err.split("Run ")[1].split()[0]
    for given in (run_id[-6:], run_id[:15]):
        code, out, _ = run_main(capsys, "show", given, "--db", str(db))
        assert code == 0 and run_id in out


def test_compare_says_which_settings_differ(capsys, tmp_path):
    import json

    db = tmp_path / "r.duckdb"
    for extra in ([], ["--tta", "flip", "--strategy", "mixup"]):
        code, _, err = run_main(capsys, "run", *TINY_ARGS, *extra, "--db", str(db))
        assert code == 0, err
    code, out, _ = run_main(capsys, "runs", "--json", "--db", str(db))
    a, b = sorted(r["run_id"] for r in json.loads(out))
    code, out, err = run_main(capsys, "compare", a, b, "--json", "--db", str(db))
    assert code == 0, err
    diff = json.loads(out)["config_diff"]
    assert diff == {"strategies": {a: [], b: ["mixup"]}, "tta": {a: "none", b: "flip"}}
    code, out, _ = run_main(capsys, "compare", a, b, "--db", str(db))
    assert "Configuration differences" in out and "flip" in out


def test_h_is_help_and_run_ids_complete_from_the_store(capsys, tmp_path, monkeypatch):
    from ichbench.cli.common import complete_run_ids

    code, out, _ = run_main(capsys, "show", "-h")
    assert code == 0 and "show [OPTIONS] {RUN}" in " ".join(out.split())
    db = tmp_path / "r.duckdb"
    monkeypatch.setenv("ICHBENCH_DB", str(db))
    assert complete_run_ids("2026") == []  # no store: nothing, and nothing created
    assert not db.exists()
    code, _, err = run_main(capsys, "run", *TINY_ARGS)
    assert code == 0, err
    (run_id,) = complete_run_ids("")
    assert complete_run_ids(run_id[:8]) == [run_id] == complete_run_ids(run_id[-4:])
    assert complete_run_ids("nothing-like-it") == []


def test_run_json_is_the_id_and_the_vote_on_stdout_and_a_resume_counts_all_its_time(
    capsys, tmp_path, monkeypatch
):
    import json

    from cli_run import interrupted_trial

    from ichbench.store import Store

    db = tmp_path / "r.duckdb"
    original = RunProtocol.fold_trial
    monkeypatch.setattr(RunProtocol, "fold_trial", interrupted_trial((0, 1)))
    code, _, _ = run_main(capsys, "run", *TINY_ARGS, "--db", str(db))
    assert code == 130
    monkeypatch.setattr(RunProtocol, "fold_trial", original)
    (run,) = Store(db, create=False).list_runs()
    code, out, err = run_main(capsys, "run", "--resume", run["run_id"], "--json", "--db", str(db))
    assert code == 0, err
    said = json.loads(out)  # nothing but JSON on stdout
    assert said["run_id"] == run["run_id"]
    assert {(r["scope"], r["split"]) for r in said["vote"]} >= {
        ("slice", "test"),
        ("patient", "test"),
    }
    store = Store(db, create=False)
    folds = store.folds(run["run_id"])
    # fold 0 was trained by the first invocation: its time is part of the run's
    assert store.get_run(run["run_id"])["wall_s"] >= sum(f["wall_s"] for f in folds)
    code, _, err = run_main(capsys, "run", *TINY_ARGS, "--json", "--repeats", "2", "--db", str(db))
    assert code == 2 and "--json with --repeats" in err
