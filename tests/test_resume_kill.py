"""`kill -9` at the protocol's risky moments, then resume.

What a killed process leaves behind must never read as finished or as valid half-data,
and finishing the run must give exactly the numbers of an uninterrupted run (CPU runs
are deterministic). Every kill is a real SIGKILL of a real `ichbench` process.

Most kill points are exact: a small wrapper runs the unchanged CLI but parks at one
named moment (an event, a store write, the inside of the final transaction) and says
so on stderr, and the test kills it there. One kill reacts to the CLI's own output
("fold 0: ..."), as a user watching the terminal would. So every scenario is a fixed
sequence of states, not a race against the clock.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pytest

pytestmark = pytest.mark.slow

TINY = [
    "--data",
    "synthetic:14,1,32",
    "--backbone",
    "tinycnn",
    "--folds",
    "3",
    "--epochs",
    "2",
    "--image-size",
    "32",
    "--batch-size",
    "16",
    "--device",
    "cpu",
    "--seed",
    "3",
]
SYNTH_FOLDER = "p14-s1-px32"
WAIT_S = 900  # a hang guard only: nothing asserts on time
CURVE_POINTS = 101

PARK_SCRIPT = r'''
"""The ichbench CLI, parked at the moment named by $ICHBENCH_TEST_PARK until killed."""
import os
import sys
import time


def park(where):
    os.write(2, f"PARKED {where}\n".encode())
    time.sleep(3600)
    os._exit(99)


def install(spec):
    head, _, arg = spec.partition(":")
    if head == "synth-write":  # the Nth volume written by the synthetic generator
        from ichbench.data import synth
        original, calls = synth._write_nifti, []

        def write(*args, **kwargs):
            calls.append(1)
            if len(calls) == int(arg):
                park(spec)
            return original(*args, **kwargs)

        synth._write_nifti = write
    elif head == "event":  # right after the Nth such event: fold_started:fold=1@2
        from ichbench.events import Emitter
        arg, _, nth = arg.partition("@")
        kind, _, cond = arg.partition(":")
        want = dict(p.split("=", 1) for p in cond.split(",")) if cond else {}
        original, seen = Emitter.__call__, []

        def call(self, event):
            original(self, event)
            data = event.data
            if event.kind == kind and all(str(data.get(k)) == v for k, v in want.items()):
                seen.append(1)
                if len(seen) == int(nth or 1):
                    park(spec)

        Emitter.__call__ = call
    elif head == "write-fold":  # the fold's checkpoint is saved, its rows not yet written
        from ichbench.store.store import Store
        original = Store.write_fold

        def write_fold(self, run_id, fold):
            if int(fold.fold) == int(arg):
                park(spec)
            return original(self, run_id, fold)

        Store.write_fold = write_fold
    elif head == "finish-txn":  # inside finish_run's transaction, vote rows in, no commit
        from ichbench.store import writes
        original = writes.insert_predictions

        def insert(con, run_id, fold, preds, *rest):
            original(con, run_id, fold, preds, *rest)
            if fold is None:
                park(spec)

        writes.insert_predictions = insert
    else:
        raise SystemExit(f"unknown park point {spec!r}")


install(os.environ["ICHBENCH_TEST_PARK"])
from ichbench.cli.app import main  # noqa: E402

main(sys.argv[1:])
'''


# --------------------------------------------------------------------------- processes


def cli_env(root: Path, cache: str = "cache") -> dict[str, str]:
    """Isolated cache and store; built-in plugins only; no hub; one thread per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICHBENCH_")}
    env.update(
        ICHBENCH_CACHE=str(root / cache),
        ICHBENCH_DB=str(root / "runs.duckdb"),
        ICHBENCH_LOAD_PLUGINS="",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    return env


class Cli:
    """A running `ichbench` process whose stderr lines are collected as they arrive."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        *,
        park: str | None = None,
        script: Path | None = None,
    ) -> None:
        if park:
            assert script is not None
            env = {**env, "ICHBENCH_TEST_PARK": park}
            cmd = [sys.executable, str(script), *args]
        else:
            cmd = [sys.executable, "-m", "ichbench", *args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._cursor = 0
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, predicate: Callable[[str], bool]) -> str:
        """The next stderr line (after the last one matched) that satisfies `predicate`;
        fails if the process ends first."""
        with self._changed:
            while True:
                for i in range(self._cursor, len(self.lines)):
                    if predicate(self.lines[i]):
                        self._cursor = i + 1
                        return self.lines[i]
                if self._eof:
                    self.proc.wait()
                    raise AssertionError(
                        f"ichbench exited ({self.proc.returncode}) before the "
                        f"expected line; stderr:\n{self.stderr}"
                    )
                if not self._changed.wait(timeout=WAIT_S):
                    raise AssertionError(f"no expected line in {WAIT_S} s:\n{self.stderr}")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        self._pump.join(timeout=60)
        assert self.proc.returncode == -signal.SIGKILL

    def stop(self) -> None:
        """Kill the process if it still runs (a failed test leaves nothing behind)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)

    def finish(self) -> int:
        self.proc.wait(timeout=WAIT_S)
        self._pump.join(timeout=60)
        return self.proc.returncode


def run_to_park(args: list[str], env: dict[str, str], park: str, script: Path) -> Cli:
    """Start the CLI parked at `park`, wait until it is there, SIGKILL it."""
    cli = Cli(args, env, park=park, script=script)
    try:
        cli.wait_line(lambda line: line.startswith(f"PARKED {park}"))
        cli.kill()
    finally:
        cli.stop()
    return cli


def ichbench_json(args: list[str], env: dict[str, str]):
    done = subprocess.run(
        [sys.executable, "-m", "ichbench", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT_S,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def run_id_of(cli: Cli) -> str:
    line = cli.wait_line(lambda s: s.startswith(("Run ", "Resuming ")))
    return line.split()[1]


# --------------------------------------------------------------------------- the store


def query(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def fold_written_at(db: Path, run_id: str) -> dict[int, object]:
    return dict(query(db, "SELECT fold, written_at FROM folds WHERE run_id = ?", [run_id]))


def checkpoint_problems(db: Path, run_id: str, finished: set[int]) -> list[str]:
    """Under a final name `fold<k>.pt` only whole checkpoints of fold k; every finished
    fold's checkpoint is there."""
    import torch

    problems = []
    folder = db.parent / f"{db.name}.runs" / run_id
    for path in sorted(folder.glob("fold*.pt")) if folder.is_dir() else []:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means a half-written file
            problems.append(f"{path.name} does not load: {type(exc).__name__}: {exc}")
            continue
        if f"fold{ckpt.get('fold')}.pt" != path.name or "state_dict" not in ckpt:
            problems.append(f"{path.name} holds fold {ckpt.get('fold')}")
    for fold, name in query(db, "SELECT fold, checkpoint FROM folds WHERE run_id = ?", [run_id]):
        if fold in finished and not (name and (folder / name).is_file()):
            problems.append(f"finished fold {fold} has no checkpoint file ({name})")
    return problems


def store_problems(db: Path, run_id: str) -> list[str]:
    """Every way a run's rows could be half-written: a fold is all there or not at all,
    and the vote's rows exist exactly when the run is finished."""
    problems: list[str] = []
    status = query(db, "SELECT status FROM runs WHERE run_id = ?", [run_id])[0][0]
    roles: dict[tuple[int | None, str], set[int]] = {}
    for fold, pid, role in query(
        db, "SELECT fold, patient_id, role FROM splits WHERE run_id = ?", [run_id]
    ):
        roles.setdefault((fold, role), set()).add(pid)
    test = roles[(None, "test")]
    fold_rows = dict(query(db, "SELECT fold, status FROM folds WHERE run_id = ?", [run_id]))
    split_folds = sorted({f for f, _ in roles if f is not None})

    def count(table: str, cond: str, params: list) -> int:
        return query(
            db, f"SELECT count(*) FROM {table} WHERE run_id = ? AND {cond}", [run_id, *params]
        )[0][0]

    def pred_patients(cond: str, params: list, split: str) -> set[int]:
        return {
            r[0]
            for r in query(
                db,
                "SELECT DISTINCT patient_id FROM predictions WHERE "
                f"run_id = ? AND {cond} AND split = ?",
                [run_id, *params, split],
            )
        }

    for k in split_folds:
        counts = {
            "metrics": count("metrics", "fold = ? AND model = 'fold'", [k]),
            "curves": count("curves", "fold = ?", [k]),
            "predictions": count("predictions", "fold = ?", [k]),
            "epochs": count("epochs", "fold = ?", [k]),
        }
        if k not in fold_rows:
            if any(counts.values()):
                problems.append(f"fold {k} has no folds row but rows elsewhere: {counts}")
            continue
        if fold_rows[k] != "finished":
            problems.append(f"fold {k} row has status {fold_rows[k]!r}")
        if counts["metrics"] != 4 or counts["curves"] != CURVE_POINTS or not counts["epochs"]:
            problems.append(f"fold {k} rows are incomplete: {counts}")
        if (
            pred_patients("fold = ?", [k], "val") != roles[(k, "val")]
            or pred_patients("fold = ?", [k], "test") != test
        ):
            problems.append(f"fold {k} predictions do not cover its val and test patients")
    dupes = query(
        db,
        "SELECT fold, split, patient_id, slice, count(*) FROM predictions "
        "WHERE run_id = ? GROUP BY ALL HAVING count(*) > 1",
        [run_id],
    )
    if dupes:
        problems.append(f"duplicate prediction rows: {dupes[:3]}")
    vote = {
        "metrics": count("metrics", "model = 'vote'", []),
        "curves": count("curves", "fold IS NULL", []),
        "predictions": count("predictions", "fold IS NULL", []),
    }
    if status == "finished":
        if sorted(fold_rows) != split_folds:
            problems.append(f"finished run with folds {sorted(fold_rows)} of {split_folds}")
        if (
            vote["metrics"] != 4
            or vote["curves"] != CURVE_POINTS
            or pred_patients("fold IS NULL", [], "test") != test
        ):
            problems.append(f"finished run with incomplete vote rows: {vote}")
    elif any(vote.values()):
        problems.append(f"unfinished run ({status}) has vote rows: {vote}")
    finished = {k for k, s in fold_rows.items() if s == "finished"}
    return problems + checkpoint_problems(db, run_id, finished)


def vote_results(db: Path, run_id: str) -> dict[str, object]:
    """What must not depend on interruptions: thresholds, vote metrics, vote probabilities."""
    metric_cols = (
        "sensitivity, specificity, precision, f1, accuracy, auc, tp, fp, tn, fn, n, threshold"
    )
    return {
        "threshold": query(db, "SELECT threshold FROM runs WHERE run_id = ?", [run_id])[0][0],
        "fold_thresholds": query(
            db, "SELECT fold, threshold FROM folds WHERE run_id = ? ORDER BY fold", [run_id]
        ),
        "metrics": query(
            db,
            f"SELECT scope, split, {metric_cols} FROM metrics WHERE "
            "run_id = ? AND model = 'vote' ORDER BY scope, split",
            [run_id],
        ),
        "probs": np.array(
            [
                r[0]
                for r in query(
                    db,
                    "SELECT prob FROM predictions WHERE run_id = ? AND fold IS NULL "
                    "ORDER BY patient_id, slice",
                    [run_id],
                )
            ]
        ),
        "keys": query(
            db,
            "SELECT patient_id, slice FROM predictions WHERE run_id = ? AND "
            "fold IS NULL ORDER BY patient_id, slice",
            [run_id],
        ),
    }


def valid_cache_entries(cache: Path) -> list[str]:
    """Entries of the preprocessing cache that read as valid (temp folders never do)."""
    from ichbench.data.cache import CorruptEntry, open_entry

    valid = []
    slices = cache / "slices"
    for entry in sorted(slices.iterdir()) if slices.is_dir() else []:
        if ".tmp-" in entry.name:
            continue
        try:
            open_entry(entry, name="x", source="x")
        except CorruptEntry:
            continue
        valid.append(entry.name)
    return valid


def runs_by_id(env: dict[str, str]) -> dict[str, str]:
    db = Path(env["ICHBENCH_DB"])
    if not db.exists():
        return {}
    return {r["run_id"]: r["status"] for r in ichbench_json(["runs"], env)}


# --------------------------------------------------------------------------- the scenario


@dataclass
class Step:
    """What was observed right after one kill (or after the final resume)."""

    name: str
    stderr: str
    status: dict[str, str] = field(default_factory=dict)  # `ichbench runs` after the step
    problems: list[str] = field(default_factory=list)
    written_at: dict[int, object] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class Scenario:
    db: Path
    env: dict[str, str]
    run_id: str
    steps: dict[str, Step]
    reference_db: Path
    reference_id: str


def _after(name: str, cli: Cli, env: dict[str, str], run_id: str | None) -> Step:
    db = Path(env["ICHBENCH_DB"])
    step = Step(name, cli.stderr, status=runs_by_id(env))
    if run_id:
        step.problems = store_problems(db, run_id)
        step.written_at = fold_written_at(db, run_id)
    return step


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Scenario:
    """One run killed six times in a row, each time at a later point, then finished; and,
    in parallel, the same configuration run without interruption in another store."""
    root = tmp_path_factory.mktemp("kill")
    script = root / "parked_cli.py"
    script.write_text(PARK_SCRIPT)
    env = cli_env(root)
    ref_env = cli_env(root / "ref")
    reference = Cli(["run", *TINY], ref_env)
    try:
        return _kill_and_resume(env, script, reference, ref_env)
    finally:
        reference.stop()


def _kill_and_resume(
    env: dict[str, str], script: Path, reference: Cli, ref_env: dict[str, str]
) -> Scenario:
    cache = Path(env["ICHBENCH_CACHE"])
    steps: dict[str, Step] = {}

    cli = run_to_park(["run", *TINY], env, "synth-write:3", script)
    steps["synth"] = _after("synth", cli, env, None)
    steps["synth"].extra["synthetic"] = sorted(p.name for p in (cache / "synthetic").iterdir())

    cli = run_to_park(["run", *TINY], env, "event:data_progress:done=2", script)
    steps["preprocess"] = _after("preprocess", cli, env, None)
    steps["preprocess"].extra["valid_entries"] = valid_cache_entries(cache)

    cli = Cli(["run", *TINY], env)  # the plain CLI, killed when it reports fold 0
    try:
        run_id = run_id_of(cli)
        cli.wait_line(lambda s: s.startswith("  fold 0:"))
        cli.kill()
    finally:
        cli.stop()
    steps["fold0"] = _after("fold0", cli, env, run_id)
    steps["fold0"].extra["temps"] = sorted(
        f"{d}/{p.name}"
        for d in ("synthetic", "slices")
        for p in (cache / d).iterdir()
        if ".tmp-" in p.name
    )

    resume = ["run", "--resume", run_id]
    for name, park in (
        ("fold1-training", "event:epoch_finished:fold=1,epoch=1"),
        ("fold2-before-write", "write-fold:2"),
        ("finish-transaction", "finish-txn"),
    ):
        cli = run_to_park(resume, env, park, script)
        steps[name] = _after(name, cli, env, run_id)

    cli = Cli(resume, env)
    rc = cli.finish()
    steps["final"] = _after("final", cli, env, run_id)
    steps["final"].extra["rc"] = rc

    assert reference.finish() == 0, reference.stderr
    reference_id = run_id_of(reference)
    return Scenario(
        Path(env["ICHBENCH_DB"]), env, run_id, steps, Path(ref_env["ICHBENCH_DB"]), reference_id
    )


def test_kill_while_generating_synthetic_data_leaves_no_complete_looking_folder(scenario):
    step = scenario.steps["synth"]
    assert SYNTH_FOLDER not in step.extra["synthetic"], step.extra
    assert step.status == {}, "a run was created before its data was ready"


def test_kill_while_preprocessing_leaves_no_valid_cache_entry(scenario):
    step = scenario.steps["preprocess"]
    assert step.extra["valid_entries"] == []
    assert step.status == {}, "a run was created before its data was ready"


def test_rerun_after_early_kills_starts_a_run_and_finishes_it(scenario):
    assert list(scenario.steps["fold0"].status) == [scenario.run_id]
    assert scenario.steps["final"].extra["rc"] == 0, scenario.steps["final"].stderr


def test_rerun_reclaims_the_temp_folders_of_killed_builds(scenario):
    """Temp folders are never read, but on a nearly full disk they must not pile up."""
    assert scenario.steps["fold0"].extra["temps"] == []


def test_killed_run_is_listed_running_never_finished(scenario):
    for name in ("fold0", "fold1-training", "fold2-before-write", "finish-transaction"):
        assert scenario.steps[name].status == {scenario.run_id: "running"}, name
    assert scenario.steps["final"].status == {scenario.run_id: "finished"}


def test_no_half_written_rows_or_checkpoints_after_any_kill(scenario):
    for name, step in scenario.steps.items():
        assert step.problems == [], name


def test_fold_reported_finished_is_kept_by_resume(scenario):
    """A user who saw 'fold 0: threshold ...' and then lost the process keeps fold 0."""
    assert 0 in scenario.steps["fold0"].written_at, "fold 0 was reported but not stored"
    assert "fold 0: already finished, kept" in scenario.steps["fold1-training"].stderr


def test_finished_folds_are_never_recomputed(scenario):
    steps = scenario.steps
    order = ["fold0", "fold1-training", "fold2-before-write", "finish-transaction", "final"]
    for before, after in zip(order, order[1:]):
        for fold, stamp in steps[before].written_at.items():
            assert steps[after].written_at.get(fold) == stamp, (before, after, fold)
            assert f"fold {fold}: already finished, kept" in steps[after].stderr
    assert sorted(steps["fold2-before-write"].written_at) == [0, 1]
    assert sorted(steps["finish-transaction"].written_at) == [0, 1, 2]
    final = [line.strip() for line in steps["final"].stderr.splitlines()]
    assert [f"fold {k}: already finished, kept" in final for k in range(3)] == [True] * 3
    assert not [line for line in final if re.match(r"\s*fold \d+: threshold", line)]


def test_checkpoint_saved_before_the_kill_is_whole_and_replaced(scenario):
    folder = scenario.db.parent / f"{scenario.db.name}.runs" / scenario.run_id
    names = sorted(p.name for p in folder.iterdir())
    assert [n for n in names if n.endswith(".pt") and not n.startswith(".")] == [
        "fold0.pt",
        "fold1.pt",
        "fold2.pt",
    ]
    assert scenario.steps["final"].problems == []


def test_resumed_run_equals_uninterrupted_run(scenario):
    got = vote_results(scenario.db, scenario.run_id)
    want = vote_results(scenario.reference_db, scenario.reference_id)
    assert got["keys"] == want["keys"] and len(got["keys"]) > 0
    np.testing.assert_allclose(got["probs"], want["probs"], atol=1e-6)
    assert got["threshold"] == want["threshold"]
    assert got["fold_thresholds"] == want["fold_thresholds"]
    assert len(got["metrics"]) == 4
    for a, b in zip(got["metrics"], want["metrics"]):
        assert a[:2] == b[:2]
        np.testing.assert_allclose(
            np.array(a[2:], dtype=float), np.array(b[2:], dtype=float), atol=1e-9, equal_nan=True
        )


# --------------------------------------------------------------------------- grid


GRID = [
    "grid",
    "--strategy",
    "augment:1.5,2",
    "--data",
    "synthetic:14,1,32",
    "--epochs",
    "1",
    "--image-size",
    "32",
    "--folds",
    "2",
    "--device",
    "cpu",
]


def test_grid_killed_midway_resumes_without_redoing_finished_configurations(tmp_path):
    """Killed while the second configuration trains its second fold."""
    script = tmp_path / "parked_cli.py"
    script.write_text(PARK_SCRIPT)
    env = cli_env(tmp_path)
    db = Path(env["ICHBENCH_DB"])
    cli = run_to_park(GRID, env, "event:fold_started:fold=1@2", script)
    second = [line.split()[1] for line in cli.lines if line.startswith("Run ")][-1]
    runs = runs_by_id(env)
    assert runs[second] == "running" and len(runs) == 2
    first = next(r for r in runs if r != second)
    assert runs[first] == "finished"
    first_written = fold_written_at(db, first)
    assert store_problems(db, second) == []

    again = Cli(GRID, env)
    assert again.finish() == 0, again.stderr
    assert f"already finished as {first}" in again.stderr
    assert f"Resuming {second}" in again.stderr
    assert runs_by_id(env) == {first: "finished", second: "finished"}
    assert fold_written_at(db, first) == first_written
    assert store_problems(db, first) == [] and store_problems(db, second) == []
    second_written = fold_written_at(db, second)

    third = Cli(GRID, env)
    assert third.finish() == 0, third.stderr
    assert f"already finished as {first}" in third.stderr
    assert f"already finished as {second}" in third.stderr
    assert not any(s.startswith(("Run ", "Resuming ")) for s in third.lines)
    assert runs_by_id(env) == {first: "finished", second: "finished"}
    assert fold_written_at(db, second) == second_written
