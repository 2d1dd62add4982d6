"""Resume trusts nothing it has not checked; a full disk is the system's refusal, never a
bug; a closed pipe is not an error; what a CPU result depends on is recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from cli_run import TINY_ARGS, error_lines, interrupted_trial, run_main
from small_fs import tmpfs

from ichbench.cli.app import main
from ichbench.errors import ExitCode

TINY = [*TINY_ARGS, "--batch-size", "16"]


def one(db: Path, sql: str, *params):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, list(params)).fetchone()


def interrupted_run(capsys, monkeypatch, db: Path, *extra: str) -> str:
    """A run whose fold 0 is kept and fold 1 was interrupted (a real SIGINT)."""

    from ichbench.protocol import RunProtocol

    monkeypatch.setattr(RunProtocol, "fold_trial", interrupted_trial((0, 1)))
    code, _, err = run_main(capsys, "run", *TINY, *extra, "--db", str(db))
    monkeypatch.undo()
    assert code == ExitCode.INTERRUPTED, err
    run_id, status = one(db, "SELECT run_id, status FROM runs")
    assert status == "interrupted"
    return run_id


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("value", ["", "  "])
def test_resume_of_an_empty_id_is_refused(capsys, tmp_path, value):
    db = tmp_path / "runs.duckdb"
    code, _, err = run_main(capsys, "run", "--resume", value, "--db", str(db))
    assert code == ExitCode.USAGE and len(error_lines(err)) == 1, err
    assert "--resume ''" in err and not db.exists()


def test_resume_refuses_options_it_would_ignore(capsys, tmp_path, monkeypatch):
    db = tmp_path / "runs.duckdb"
    run_id = interrupted_run(capsys, monkeypatch, db)
    code, _, err = run_main(
        capsys,
        "run",
        "--resume",
        run_id,
        "--epochs",
        "3",
        "--data",
        "synthetic:12",
        "--db",
        str(db),
    )
    assert code == ExitCode.USAGE, err
    (line,) = error_lines(err)
    assert "--epochs" in line and "--data" in line
    assert one(db, "SELECT status FROM runs")[0] == "interrupted"  # untouched


def test_resume_refuses_a_configuration_that_does_not_match_its_hash(capsys, tmp_path, monkeypatch):
    db = tmp_path / "runs.duckdb"
    run_id = interrupted_run(capsys, monkeypatch, db)
    config = json.loads(one(db, "SELECT config FROM runs")[0])
    config["patient_rule"] = "max-prob"  # another vote rule than the one recorded
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE runs SET config = ?", [json.dumps(config)])
    code, _, err = run_main(capsys, "run", "--resume", run_id, "--db", str(db))
    assert code == ExitCode.STORE, err
    (line,) = error_lines(err)
    assert "refusing to resume" in line and run_id in line
    assert one(db, "SELECT count(*) FROM folds")[0] == 1  # nothing trained


def test_resume_warns_of_a_kept_fold_whose_checkpoint_is_gone(capsys, tmp_path, monkeypatch):
    db = tmp_path / "runs.duckdb"
    run_id = interrupted_run(capsys, monkeypatch, db)
    checkpoint = db.parent / f"{db.name}.runs" / run_id / "fold0.pt"
    checkpoint.unlink()
    code, _, err = run_main(capsys, "run", "--resume", run_id, "--db", str(db))
    assert code == 0, err
    assert "fold 0 is kept, but its checkpoint" in err and str(checkpoint) in err
    assert one(db, "SELECT status FROM runs")[0] == "finished"


# --------------------------------------------------------------------------- full disks


def test_a_full_disk_under_a_checkpoint_is_the_systems_refusal(capsys, tmp_path):
    """torch raises a RuntimeError when the disk fills under `torch.save`; the user sees
    the system's refusal (exit 6) naming the checkpoint, and the run is marked failed."""
    db = tmp_path / "runs.duckdb"
    with tmpfs(tmp_path / "runs.duckdb.runs", "64k"):  # the journal fits, a checkpoint not
        code, _, err = run_main(capsys, "run", *TINY, "--db", str(db))
        assert code == ExitCode.SYSTEM, err
        (line,) = error_lines(err)
        assert "No space left on device" in line and "fold0.pt" in line
        assert "Traceback" not in err
        run_id, status = one(db, "SELECT run_id, status FROM runs")
        assert status == "failed"
        folder = tmp_path / "runs.duckdb.runs" / run_id
        assert [p.name for p in folder.iterdir() if ".pt" in p.name] == []


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("finished") / "runs.duckdb"
    main_args = ["run", *TINY, "--db", str(db)]
    try:
        main(main_args)
    except SystemExit as exit_info:
        assert exit_info.code == 0
    return db


def test_a_report_on_a_full_disk_leaves_no_temporary_file(capsys, tmp_path, finished):
    run_id = one(finished, "SELECT run_id FROM runs")[0]
    with tmpfs(tmp_path / "out", "48k") as out:
        code, _, err = run_main(
            capsys,
            "report",
            run_id,
            "--db",
            str(finished),
            "--out",
            str(out),
            "--no-cam",
            "--no-tsne",
        )
        assert code == ExitCode.SYSTEM, err
        assert len(error_lines(err)) == 1 and "No space left" in err
        assert [p.name for p in out.rglob("*") if ".tmp" in p.name] == []


# --------------------------------------------------------------------------- output


def test_a_closed_pipe_is_not_an_error(finished):
    """`ichbench sql ... | head -1`: the reader stops early, ichbench ends quietly with 0."""
    script = (
        f'"{sys.executable}" -m ichbench sql "SELECT * FROM range(300000)" '
        f'--db "{finished}" | head -1 > /dev/null; echo "status=${{PIPESTATUS[0]}}" >&2'
    )
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "ICHBENCH_LOAD_PLUGINS": ""},
        timeout=120,
    )
    assert done.stderr.strip().splitlines() == ["status=0"], done.stderr


def test_the_thread_count_is_recorded(finished):
    import torch

    versions = json.loads(one(finished, "SELECT versions FROM runs")[0])
    assert versions["torch_threads"] == str(torch.get_num_threads())


def _weights_file(path: Path, scale: float = 1.0) -> Path:
    import torch

    from ichbench.interfaces import BuildOptions
    from ichbench.plugins import get_registry

    torch.manual_seed(7)
    model = (
        get_registry()
        .create("backbone", "tinycnn")
        .build(BuildOptions(in_chans=1, pretrained=False))
        .model
    )
    torch.save({k: v * scale for k, v in model.state_dict().items()}, path)
    return path


def test_a_weights_file_is_identified_by_its_content(tmp_path):
    from ichbench.config import RunConfig

    weights = _weights_file(tmp_path / "w.pt")
    config = RunConfig(backbone="tinycnn", weights_file=str(weights), preset="quick")
    before = config.resolved("cpu")
    _weights_file(weights, scale=0.5)  # same path, same size, other weights
    after = config.resolved("cpu")
    assert before.weights_digest != after.weights_digest
    assert before.hash != after.hash  # a grid reruns it
    plain = RunConfig(backbone="tinycnn", preset="quick").resolved("cpu")
    assert "weights_digest" not in plain.identity()  # hashes without a file unchanged


def test_resume_refuses_a_replaced_weights_file(capsys, tmp_path, monkeypatch):
    weights = _weights_file(tmp_path / "w.pt")
    db = tmp_path / "runs.duckdb"
    run_id = interrupted_run(capsys, monkeypatch, db, "--weights", str(weights))
    _weights_file(weights, scale=0.5)
    code, _, err = run_main(capsys, "run", "--resume", run_id, "--db", str(db))
    assert code == ExitCode.USAGE, err
    (line,) = error_lines(err)
    assert "refusing to resume with other initial weights" in line
    assert one(db, "SELECT count(*) FROM folds")[0] == 1
