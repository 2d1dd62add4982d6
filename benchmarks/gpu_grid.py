"""A grid on one device, packed against one by one: the same (configuration, fold)
trials trained first one after the other in this process, then `--trials-per-gpu` at a
time in worker processes sharing the device (`LocalExecutor(trials_at_once=N)`, what
`ichbench grid --trials-per-gpu N` runs).

Reports, for each way, the wall time of all the trials and the aggregate training images
per second (samples of every epoch every trial trained, over that wall time: startup,
evaluation and all included, so it is what a grid gets), their ratio, and the study's
336-configuration grid extrapolated from the packed rate. It checks, too, that both ways
gave every trial the same validation threshold (on the CPU the same bits; on a GPU within
the device's nondeterminism).

No store: trials go straight through the executor, as the lifecycle would hand them, so
the figure is the training's alone and the script runs where DuckDB is not installed.
Initial weights are random: speed does not depend on them.

    python benchmarks/gpu_grid.py                           # on a CUDA machine, ~2 min
    python benchmarks/gpu_grid.py --trials-per-gpu 8 --configs 8 --patients 40
    python benchmarks/gpu_grid.py --smoke                   # tiny, on the CPU
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from _bench import command_line, machine, machine_line, md_table, timed, write_result

SMOKE = {
    "patients": 8,
    "native": 32,
    "image_size": 32,
    "backbone": "tinycnn",
    "epochs": 1,
    "folds": 2,
    "configs": 2,
    "batch_size": 16,
    "trials_per_gpu": 2,
    "device": "cpu",
    "threads": 1,
}
STUDY_CONFIGS = 336  # the paper's grid
STUDY_FOLDS = 5
STUDY_SLICES = 2369  # the paper-sized synthetic dataset (80 patients, 58 and 79 kept)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", type=int, default=8, help="configurations (ich:1 … ich:N)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--patients", type=int, default=40)
    p.add_argument("--native", type=int, default=256, help="generated volume size")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--trials-per-gpu",
        type=int,
        default=None,
        help="trials at once when packed (default: what `ichbench grid` would choose)",
    )
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of this process (packed workers get them shared out, at "
        "least one each); the same count both ways gives the same bits on the CPU",
    )
    p.add_argument(
        "--study-epochs",
        type=float,
        default=10,
        help="mean epochs a study trial runs, for the extrapolation (30 at most, fewer "
        "with early stopping)",
    )
    p.add_argument(
        "--packed-only", action="store_true", help="skip the one-by-one run (no ratio then)"
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny settings on the CPU: " + ", ".join(f"{k}={v}" for k, v in SMOKE.items()),
    )
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.configs < 1 or args.folds < 2:
        p.error("--configs must be 1 or more and --folds 2 or more")
    return args


def make_jobs(args: argparse.Namespace, cache: Path) -> list:
    """One job per configuration, made as the lifecycle makes them but without a store:
    data loaded and split once per configuration (through one cache), every fold to run."""
    from ichbench.config import RunConfig
    from ichbench.jobs import Job
    from ichbench.protocol import RunProtocol

    jobs = []
    for i in range(1, args.configs + 1):
        config = RunConfig(
            data=f"synthetic:{args.patients},0,{args.native}",
            preset="paper",
            backbone=args.backbone,
            image_size=args.image_size,
            epochs=args.epochs,
            folds=args.folds,
            batch_size=args.batch_size,
            patience=args.epochs + 1,
            pretrained=False,
            weights=[f"ich:{i}"],
            device=args.device,
        )
        protocol = RunProtocol(config, cache_dir=cache)
        dataset = protocol.load_data()
        split = protocol.split_of(dataset)
        built = protocol.build_model(0, protocol.in_chans(dataset))
        jobs.append(
            Job(
                protocol,
                f"gpu-grid-{i}",
                dataset,
                split,
                set(),
                split.trials(),
                built.pretrained,
                built.pretrained_source,
            )
        )
    return jobs


def run_trials(jobs: list, trials_at_once: int, cuda: bool) -> dict:
    """Every trial of `jobs` through the local executor: wall time, images trained, and
    each trial's threshold and epochs, keyed by (job, outer, fold)."""
    from ichbench.executors import LocalExecutor

    executor = LocalExecutor(trials_at_once)
    images, trials = 0, {}
    with timed(sync_cuda=cuda) as wall:
        for result in executor.trials(jobs):
            record = result.record
            per_epoch = record.train_ich + record.train_healthy
            images += per_epoch * len(record.epochs)
            trials[f"{result.job}:{result.fold[0]}:{result.fold[1]}"] = {
                "threshold": record.threshold,
                "epochs": len(record.epochs),
                "images_per_epoch": per_epoch,
                "wall_s": record.wall_s,
            }
    return {
        "trials_at_once": executor.used,
        "wall_s": wall.seconds,
        "trained_images": images,
        "images_per_s": images / wall.seconds,
        "trials": trials,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from ichbench.executors import auto_trials_at_once

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("No CUDA device here: run on a GPU machine, or use --smoke on the CPU")
    packed_n = args.trials_per_gpu or auto_trials_at_once(torch.device(args.device))
    work = Path(tempfile.mkdtemp(prefix="ichbench-gpu-grid-"))
    os.environ["ICHBENCH_CACHE"] = str(work / "cache")  # the workers' cache, too
    try:
        with timed() as t_data:
            jobs = make_jobs(args, work / "cache")
        slices = len(jobs[0].dataset)
        one = None if args.packed_only else run_trials(jobs, 1, cuda)
        packed = run_trials(jobs, packed_n, cuda)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    same = None
    if one is not None:
        same = all(
            one["trials"][k]["threshold"] == packed["trials"][k]["threshold"] for k in one["trials"]
        )
    per_trial_epoch = packed["trained_images"] / sum(t["epochs"] for t in packed["trials"].values())
    study_images = (
        STUDY_CONFIGS * STUDY_FOLDS * args.study_epochs * per_trial_epoch * STUDY_SLICES / slices
    )
    out = {
        "benchmark": "gpu_grid",
        "command": command_line(),
        "machine": machine(args.device),
        "settings": vars(args),
        "slices": slices,
        "trials": len(packed["trials"]),
        "data_s": t_data.seconds,
        "one_by_one": one,
        "packed": packed,
        "speedup": one["wall_s"] / packed["wall_s"] if one else None,
        "same_thresholds": same,
        "study_extrapolation": {
            "configs": STUDY_CONFIGS,
            "folds": STUDY_FOLDS,
            "epochs_per_trial": args.study_epochs,
            "slices": STUDY_SLICES,
            "images": study_images,
            "hours_packed": study_images / packed["images_per_s"] / 3600,
            "hours_one_by_one": study_images / one["images_per_s"] / 3600 if one else None,
        },
    }
    name = args.name or ("gpu_grid-smoke" if args.smoke else "gpu_grid")
    write_result(name, out, summary(out))
    return out


def summary(r: dict) -> str:
    s, x = r["settings"], r["study_extrapolation"]
    rows = []
    for label, part in (("one by one", r["one_by_one"]), ("packed", r["packed"])):
        if part is not None:
            rows.append(
                [
                    label,
                    part["trials_at_once"],
                    f"{part['wall_s']:.1f} s",
                    part["trained_images"],
                    f"**{part['images_per_s']:.0f}**",
                ]
            )
    speed = f"Packed ÷ one by one: **{r['speedup']:.2f}×** in wall time" if r["speedup"] else ""
    same = {True: "the same in both", False: "NOT the same in both", None: "not compared"}[
        r["same_thresholds"]
    ]
    return "\n".join(
        [
            f"## Grid on one device: {s['configs']} configurations × {s['folds']} folds, "
            f"{s['backbone']} at {s['image_size']} px, batch {s['batch_size']}, "
            f"{s['epochs']} epoch(s), {r['slices']} slices",
            "",
            f"`{r['command']}`",
            "",
            machine_line(r["machine"]),
            "",
            md_table(["trials", "at once", "wall", "trained images", "aggregate img/s"], rows),
            "",
            (speed + "; " if speed else "") + f"every trial's validation threshold {same}.",
            "",
            f"Extrapolated: the study's {x['configs']} configurations × {x['folds']} folds at "
            f"{x['epochs_per_trial']:g} epochs each on {x['slices']} slices "
            f"({x['images']:.3g} training images) take **{x['hours_packed']:.1f} h** packed"
            + (
                f", {x['hours_one_by_one']:.1f} h one by one"
                if x["hours_one_by_one"] is not None
                else ""
            )
            + ", at this run's aggregate rates (evaluation and startup included).",
        ]
    )


if __name__ == "__main__":
    main()
