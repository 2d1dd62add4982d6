"""The paper's recipe against the `modern` preset's, on the same network, the same data
and the same nested split, compared patient by patient: does the field's recipe beat the
paper's, by more than the noise of a few dozen patients?

Both runs use `--outer K` (nested cross-validation: every patient tested once, by fold
models that never saw it) on a `real`-difficulty synthetic dataset, and one network and
training length (by default the quick preset's tiny CNN at 64 px, so it runs on a CPU).
Only the recipe differs:

- paper: `--preset paper` — one brain window, each slice alone, the paper's augment:3.3
  and ich:4, constant learning rate, Adam, any-slice patient rule;
- modern: `--preset modern` — the preset's recipe (see `ichbench run --help`).

Each run is a fresh `python -m ichbench run` subprocess on one store; the comparison is
`ichbench compare PAPER MODERN --json` (paired bootstrap over patients, DeLong, McNemar).

    python benchmarks/modern_vs_paper.py                        # ~25 min on 2 CPU cores
    python benchmarks/modern_vs_paper.py --smoke                # ~1 min: tiny data, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import command_line, machine, machine_line, md_table, write_result

RECIPES = {"paper": ["--preset", "paper"], "modern": ["--preset", "modern"]}
SHOWN = ("f1", "auc", "sensitivity", "specificity")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patients", type=int, default=40, help="synthetic patients")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--native", type=int, default=128, help="synthetic slice size in px")
    p.add_argument("--difficulty", default="real", help="easy, real or hard")
    p.add_argument("--outer", type=int, default=5, help="outer folds (nested CV)")
    p.add_argument("--folds", type=int, default=5, help="inner folds")
    p.add_argument("--seed", type=int, default=0, help="the runs' seed (split, init)")
    p.add_argument("--backbone", default="tinycnn")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", type=Path, default=None, help="keep the store and cache here")
    p.add_argument("--smoke", action="store_true", help="tiny data, 2 epochs: the script works")
    p.add_argument("--name", default="modern_vs_paper")
    return p.parse_args(argv)


def run_args(args: argparse.Namespace, db: Path) -> list[str]:
    """The options both recipes share: data, split, network and training length."""
    data = f"synthetic:{args.patients},{args.data_seed},{args.native},{args.difficulty}"
    return [
        "run",
        "--data",
        data,
        "--outer",
        str(args.outer),
        "--folds",
        str(args.folds),
        "--seed",
        str(args.seed),
        "--backbone",
        args.backbone,
        "--image-size",
        str(args.image_size),
        "--epochs",
        str(args.epochs),
        "--lr",
        str(args.lr),
        "--batch-size",
        str(args.batch_size),
        "--patience",
        str(args.patience),
        "--no-pretrained",
        "--device",
        args.device,
        "--db",
        str(db),
    ]


def ichbench(argv: list[str], env: dict[str, str], log: Path) -> subprocess.CompletedProcess:
    with log.open("a") as handle:
        return subprocess.run(
            [sys.executable, "-m", "ichbench", *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
            check=False,
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args.patients, args.native, args.epochs, args.outer = 16, 32, 2, 2
        args.image_size, args.folds = 32, 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="modern-vs-paper-"))
    work.mkdir(parents=True, exist_ok=True)
    db, log = work / "runs.duckdb", work / "ichbench.log"
    env = {**os.environ, "ICHBENCH_CACHE": str(work / "cache")}
    runs: dict[str, dict] = {}
    for recipe, extra in RECIPES.items():
        started = time.perf_counter()
        done = ichbench(run_args(args, db) + extra, env, log)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            print(f"{recipe}: ichbench run exited {done.returncode}; see {log}", file=sys.stderr)
            return 1
        latest = ichbench(
            ["sql", "--json", "SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1", "--db"]
            + [str(db)],
            env,
            log,
        )
        run_id = json.loads(latest.stdout)[0]["run_id"]
        runs[recipe] = {"run_id": run_id, "wall_s": round(wall, 1)}
        print(f"{recipe}: run {run_id} in {wall:.0f} s", file=sys.stderr)
    compared = ichbench(
        ["compare", runs["paper"]["run_id"], runs["modern"]["run_id"], "--json", "--db", str(db)],
        env,
        log,
    )
    if compared.returncode != 0:
        print(f"ichbench compare exited {compared.returncode}; see {log}", file=sys.stderr)
        return 1
    paired = json.loads(compared.stdout)["paired"]
    rows = [
        (
            r["scope"],
            r["name"],
            _fmt(r["a"]),
            _fmt(r["b"]),
            _fmt(r["diff"], sign=True),
            f"[{_fmt(r['lo'], sign=True)}, {_fmt(r['hi'], sign=True)}]",
            r.get("test") or "",
            _fmt(r.get("p")),
        )
        for r in paired["rows"]
        if r["name"] in SHOWN
    ]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    info = machine(args.device)
    markdown = "\n".join(
        [
            f"# Paper recipe (A) vs modern recipe (B), --outer {args.outer}",
            "",
            f"Data `synthetic:{args.patients},{args.data_seed},{args.native},{args.difficulty}`, "
            f"{args.backbone} at {args.image_size} px, {args.epochs} epochs at most; "
            f"{paired.get('patients', '?')} patients, {paired.get('slices', '?')} slices, "
            f"{paired['resamples']} paired bootstrap resamples. "
            + "; ".join(f"{k} run {v['run_id']} ({v['wall_s']} s)" for k, v in runs.items()),
            "",
            md_table(("scope", "metric", "paper", "modern", "B - A", "95% CI", "test", "p"), rows)
            if rows
            else f"No paired rows: {paired.get('note')}",
            "",
            machine_line(info),
            f"`{command_line()}`",
        ]
    )
    print(markdown)
    write_result(
        args.name,
        {"settings": settings, "machine": info, "runs": runs, "paired": paired},
        markdown,
    )
    return 0


def _fmt(value, sign: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.3f}" if sign else f"{value:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
