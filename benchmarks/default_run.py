"""`ichbench run` with no arguments, as a new user first meets it: wall time with a cold
cache (synthetic data generated and preprocessed first) and with a warm one, its split into
data / training / evaluation / store, and the test metrics it reaches. Goal: under 2 minutes
on a laptop CPU.

Each timed run is a fresh `python -m ichbench run --db <tmp>` subprocess with its own
ICHBENCH_CACHE, so imports and start-up count. The split comes from one more warm run made
in this process with the run's own timings (its `run_finished` event).

    python benchmarks/default_run.py
    python benchmarks/default_run.py --no-split       # only the two timed subprocesses
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import command_line, machine, machine_line, md_table, write_result

METRICS = ("sensitivity", "specificity", "f1", "auc")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--no-split",
        action="store_true",
        help="skip the in-process run that "
        "splits the time into data, training, evaluation and store",
    )
    p.add_argument(
        "--args",
        default="",
        help="extra `ichbench run` arguments, for a smoke "
        'test (e.g. "--data synthetic:14,1,32 --epochs 1 --folds 2")',
    )
    p.add_argument("--name", default="default_run")
    return p.parse_args(argv)


def run_cli(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> dict:
    """One `ichbench` subprocess: wall time, exit code and peak RSS (from wait4)."""
    started = time.perf_counter()
    with log.open("w") as handle:
        child = subprocess.Popen(
            [sys.executable, "-m", "ichbench", *args],
            cwd=cwd,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(
            f"ichbench {' '.join(args)} failed ({child.returncode}); see {log}:\n"
            + log.read_text()[-2000:]
        )
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "log": str(log)}


def vote_metrics(db: Path) -> dict:
    """The finished run's vote metrics on the test set, by scope, from the store."""
    from ichbench.store import Store

    store = Store(db, create=False)
    (run,) = store.list_runs()
    rows = [
        m for m in store.run_metrics(run["run_id"]) if m["model"] == "vote" and m["split"] == "test"
    ]
    out = {
        "run_id": run["run_id"],
        "status": run["status"],
        "threshold": run["threshold"],
        "preset": run.get("preset"),
        "backbone": run.get("backbone"),
    }
    for m in rows:
        out[m["scope"]] = {k: m[k] for k in METRICS}
    return out


def split_run(cache: Path, db: Path, extra: list[str]) -> dict:
    """A warm run in this process with the run's own timings."""
    from ichbench.config import RunConfig
    from ichbench.lifecycle import run_config

    config = RunConfig(**_config_overrides(extra))
    events = []
    started = time.perf_counter()
    run_config(config, db, observers=[events.append], cache_dir=cache)
    wall = time.perf_counter() - started
    finished = next(e for e in events if e.kind == "run_finished")
    timings = dict(finished.data["timings"])
    timings["other"] = wall - sum(timings.values())
    return {"wall_s": wall, "timings": timings}


def _config_overrides(extra: list[str]) -> dict:
    """The few `ichbench run` options a smoke test passes, as RunConfig fields."""
    names = {
        "--data": ("data", str),
        "--epochs": ("epochs", int),
        "--folds": ("folds", int),
        "--image-size": ("image_size", int),
        "--backbone": ("backbone", str),
    }
    out = {}
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag not in names:
            raise SystemExit(f"--args: {flag} is not supported here (use {', '.join(names)})")
        field, kind = names[flag]
        out[field] = kind(value)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    extra = args.args.split()
    work = Path(tempfile.mkdtemp(prefix="ichbench-default-"))
    try:
        cache = work / "cache"
        env = {**os.environ, "ICHBENCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        env.pop("ICHBENCH_DB", None)
        cold = run_cli(
            ["run", "--db", str(work / "cold.duckdb"), *extra], env, work, work / "cold.log"
        )
        warm = run_cli(
            ["run", "--db", str(work / "warm.duckdb"), *extra], env, work, work / "warm.log"
        )
        metrics = vote_metrics(work / "warm.duckdb")
        cold_metrics = vote_metrics(work / "cold.duckdb")
        split = None if args.no_split else split_run(cache, work / "split.duckdb", extra)
        logs = {
            "cold": (work / "cold.log").read_text()[-3000:],
            "warm": (work / "warm.log").read_text()[-3000:],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "default_run",
        "command": command_line(),
        "machine": machine(),
        "ichbench_args": ["run", *extra],
        "cold": cold,
        "warm": warm,
        "split": split,
        "metrics": metrics,
        "same_result_cold_and_warm": metrics["threshold"] == cold_metrics["threshold"]
        and metrics.get("slice") == cold_metrics.get("slice"),
        "logs": logs,
    }
    write_result(args.name, result, summary(result))
    return result


def summary(r: dict) -> str:
    m = r["metrics"]
    lines = [
        f"## `ichbench {' '.join(r['ichbench_args'])}` on CPU",
        "",
        f"`{r['command']}`",
        "",
        machine_line(r["machine"]),
        "",
        md_table(
            ["cache", "wall time", "peak RSS"],
            [
                [
                    "cold (generate + preprocess + run)",
                    f"**{r['cold']['wall_s']:.1f} s**",
                    f"{r['cold']['peak_rss_mb']:.0f} MiB",
                ],
                ["warm", f"**{r['warm']['wall_s']:.1f} s**", f"{r['warm']['peak_rss_mb']:.0f} MiB"],
            ],
        ),
    ]
    if r["split"]:
        t = r["split"]["timings"]
        lines += [
            "",
            f"Split of a warm run made in-process ({r['split']['wall_s']:.1f} s):",
            "",
            md_table(
                ["data", "training", "evaluation", "store", "other"],
                [[f"{t[k]:.1f} s" for k in ("data", "train", "eval", "store", "other")]],
            ),
        ]
    lines += [
        "",
        f"Test metrics of the vote (run {m['run_id']}, preset {m['preset']}, "
        f"{m['backbone']}, threshold {m['threshold']:.2f}):",
        "",
        md_table(
            ["scope", *METRICS],
            [
                [scope, *[_fmt(m[scope][k]) for k in METRICS]]
                for scope in ("slice", "patient")
                if scope in m
            ],
        ),
        "",
        "Cold and warm runs reached the same result: "
        f"{'yes' if r['same_result_cold_and_warm'] else 'no'}.",
    ]
    return "\n".join(lines)


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
