"""The paper preset on a GPU: the full 5-fold protocol (ResNet50, 224 px, augment:3.3,
ich:4, bf16 autocast, channels-last) on a synthetic dataset the size of the real one
(80 patients, ~2,800 slices), with few epochs so that it fits a few minutes of GPU time.

Reports the wall time and its split (data, training, evaluation, store), the training
images per second of the real loop (training phase of each epoch, from the run's
batch events) and the bare bound of the same network (forward + backward + Adam on a
batch already on the GPU), and their ratio. Initial weights are random: offline there are
no ResNet50 ImageNet weights, and speed does not depend on them.

    python benchmarks/gpu_paper_preset.py                     # on a CUDA machine, ~2-4 min
    python benchmarks/gpu_paper_preset.py --epochs 3 --native 512
    python benchmarks/gpu_paper_preset.py --compile           # torch.compile, both sides
    python benchmarks/gpu_paper_preset.py --smoke             # tiny, on CPU: the code works
    python benchmarks/gpu_paper_preset.py --cache DIR         # generated volumes kept, reused

With `--smoke --compile` the run compiles through TorchDynamo's eager backend: the
compiled path's plumbing in seconds on a CPU, not Inductor's code generation (minutes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _bench import command_line, machine, machine_line, md_table, timed, write_result

SMOKE = {
    "patients": 14,
    "native": 32,
    "image_size": 32,
    "epochs": 1,
    "folds": 2,
    "batch_size": 16,
    "bare_steps": 5,
    "device": "cpu",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patients", type=int, default=80)
    p.add_argument(
        "--native",
        type=int,
        default=256,
        help="generated volume size (real CT: "
        "512; 256 keeps generation short, the loader resizes to --image-size)",
    )
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bare-steps", type=int, default=50)
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--compile",
        action="store_true",
        help="train through torch.compile (the run's --compile; the bare bound compiled too)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny settings on the CPU: " + ", ".join(f"{k}={v}" for k, v in SMOKE.items()),
    )
    p.add_argument("--name", default=None)
    p.add_argument(
        "--parallel-folds",
        type=int,
        default=1,
        help="folds trained at once on the device (`ichbench run --parallel-folds`); above "
        "1 the loop's per-epoch figures are not taken (the folds' epochs overlap), the "
        "aggregate rate over the run's wall time is",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="data cache folder, kept (default: a temporary one): another benchmark of the "
        "same patients and volume size reuses the generated volumes",
    )
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    return args


class Clock:
    """Run observer: the training phase of every epoch (start to last batch) and the
    samples each fold trains on per epoch."""

    def __init__(self, cuda: bool = False, batch_size: int = 0, static: bool = False) -> None:
        self.cuda = cuda  # wait for the GPU at an epoch's last batches: work done, not queued
        self.batch_size, self.static = batch_size, static  # static: the ragged batch dropped
        self.start = time.perf_counter()
        self.last_batch: float | None = None
        self.train_s = 0.0
        self.images = 0
        self.samples: dict[int, int] = {}
        self.epochs_run: dict[int, int] = {}
        self.folds: list[dict] = []
        self.phases: list[dict] = []

    def first_epoch_overhead(self) -> float | None:
        """Seconds each fold's first epoch took beyond its images at the steady rate,
        summed over folds: the warm-up, and with --compile the compilation, apart from
        the training itself (None with one epoch per fold: nothing to tell it from)."""
        rate = self.steady_rate()
        if not rate:
            return None
        first = [p for p in self.phases if p["epoch"] == 1]
        return sum(max(0.0, p["train_s"] - p["images"] / rate) for p in first)

    def steady_rate(self) -> float | None:
        """Images/s over the epochs after each fold's first (which pays the warm-up)."""
        later = [p for p in self.phases if p["epoch"] > 1]
        seconds = sum(p["train_s"] for p in later)
        return sum(p["images"] for p in later) / seconds if seconds else None

    def __call__(self, event) -> None:
        d = event.data
        if self.cuda and event.kind == "batch_finished" and d["batch"] >= d["batches"] - 1:
            import torch

            torch.cuda.synchronize()
        now = time.perf_counter()
        if event.kind == "fold_started":
            from pipeline_efficiency import images_per_epoch

            self.samples[d["fold"]] = images_per_epoch(
                int(d["train_samples"]), self.batch_size, self.static
            )
            self.start = now
        elif event.kind == "batch_finished":
            self.last_batch = now
        elif event.kind == "epoch_finished":
            if self.last_batch is not None:
                seconds = self.last_batch - self.start
                self.train_s += seconds
                self.images += self.samples[d["fold"]]
                self.phases.append(
                    {
                        "fold": d["fold"],
                        "epoch": d["epoch"],
                        "train_s": seconds,
                        "images": self.samples[d["fold"]],
                    }
                )
            self.epochs_run[d["fold"]] = d["epoch"]
            self.start = now
            self.last_batch = None
        elif event.kind == "fold_finished":
            self.folds.append(
                {k: d[k] for k in ("fold", "threshold", "val_f1", "test_f1", "wall_s")}
            )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a network that is not there
    import torch
    from pipeline_efficiency import bare_throughput, build, prepare

    from ichbench.config import RunConfig
    from ichbench.executors import LocalExecutor
    from ichbench.lifecycle import Lifecycle
    from ichbench.protocol import RunProtocol
    from ichbench.training import DeviceImages, TrainSettings

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("No CUDA device here: run on a GPU machine, or use --smoke on the CPU")
    if args.smoke and args.compile:
        from ichbench import training

        training.COMPILE_BACKEND = "eager"  # the plumbing, not Inductor's minutes of codegen
    work = Path(tempfile.mkdtemp(prefix="ichbench-gpu-"))
    cache = args.cache or work / "cache"
    try:
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
            device=args.device,
            compile=args.compile,
        )
        cuda = args.device.startswith("cuda")
        clock = Clock(cuda=cuda, batch_size=args.batch_size, static=args.compile and cuda)
        protocol = RunProtocol(config, observers=[clock], cache_dir=cache)
        lifecycle = Lifecycle(work / "runs.duckdb")
        with timed() as t_gen:
            protocol.plugins.dataset.folder(cache)  # generate the volumes first
        device = torch.device(args.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with timed() as t_run:
            executor = LocalExecutor(args.parallel_folds)
            result = next(lifecycle.drive([lifecycle.open(protocol)], executor))
        peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        dataset = protocol.load_data()
        data = DeviceImages(dataset.images, dataset.labels, device)
        settings = TrainSettings(
            epochs=1,
            batch_size=args.batch_size,
            lr=protocol.cfg.lr,
            patience=2,
            seed=0,
            device=device,
        )
        loss = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 4.0], device=device))
        bare_model = prepare(build(args.backbone), device, args.compile)
        bare = bare_throughput(bare_model, data, settings, loss, args.bare_steps)
        metrics = {
            f"{m.scope}": {
                "sensitivity": m.sensitivity,
                "specificity": m.specificity,
                "f1": m.f1,
                "auc": m.auc,
            }
            for m in result.vote.metrics
            if m.split == "test"
        }
        run = lifecycle.store.get_run(result.run_id)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pipeline = clock.images / clock.train_s if clock.train_s else 0.0
    trained = sum((f.train_ich + f.train_healthy) * len(f.epochs) for f in result.folds.values())
    packed = args.parallel_folds > 1
    out = {
        "benchmark": "gpu_paper_preset",
        "command": command_line(),
        "machine": machine(args.device),
        "settings": {
            **vars(args),
            "strategies": protocol.cfg.strategy_specs(),
            "preset": protocol.cfg.preset,
            "lr": protocol.cfg.lr,
        },
        "slices": len(dataset),
        "patients": len(set(dataset.patient_ids.tolist())),
        "generate_s": t_gen.seconds,
        "run_wall_s": t_run.seconds,
        "timings": result.timings,
        "trained_images": trained if packed else clock.images,
        "train_phase_s": clock.train_s,
        "pipeline_images_per_s": None if packed else pipeline,
        "aggregate_images_per_s": trained / t_run.seconds,
        "parallel_folds": executor.used,
        "bare_images_per_s": bare,
        "efficiency": pipeline / bare if bare and not packed else None,
        "steady_images_per_s": None if packed else clock.steady_rate(),
        "first_epoch_overhead_s": None if packed else clock.first_epoch_overhead(),
        "epoch_phases": clock.phases,
        "epochs_run": clock.epochs_run,
        "folds": clock.folds,
        "vote_test": metrics,
        "threshold": result.threshold,
        "device_label": run["device"],
        "pretrained": run["pretrained"],
    }
    if peak_gib is not None:
        out["peak_gpu_memory_gib"] = peak_gib
    name = args.name or ("gpu_paper_preset-smoke" if args.smoke else "gpu_paper_preset")
    name += "-compiled" if args.compile and not args.name else ""
    write_result(name, out, summary(out))
    return out


def summary(r: dict) -> str:
    s, t = r["settings"], r["timings"]
    head = (
        f"## Paper preset, {s['folds']} folds × {s['epochs']} epochs: {s['backbone']} at "
        f"{s['image_size']} px, {r['patients']} patients / {r['slices']} slices"
        + (", torch.compile" if s.get("compile") else "")
        + (f", {r['parallel_folds']} folds at once" if r.get("parallel_folds", 1) > 1 else "")
    )
    rows = [
        [
            f"{r['run_wall_s']:.1f} s",
            f"{t['data']:.1f}",
            f"{t['train']:.1f}",
            f"{t['eval']:.1f}",
            f"{t['store']:.1f}",
            r["trained_images"],
            f"{r['pipeline_images_per_s']:.0f}" if r["pipeline_images_per_s"] else "–",
            f"{r['aggregate_images_per_s']:.0f}",
            f"{r['bare_images_per_s']:.0f}",
            f"**{r['efficiency']:.3f}**" if r["efficiency"] else "–",
            f"{r['steady_images_per_s'] / r['bare_images_per_s']:.3f}"
            if r["steady_images_per_s"]
            else "–",
        ]
    ]
    vote = [
        [scope, *(_fmt(m[k]) for k in ("sensitivity", "specificity", "f1", "auc"))]
        for scope, m in sorted(r["vote_test"].items())
    ]
    return "\n".join(
        [
            head,
            "",
            f"`{r['command']}`",
            "",
            machine_line(r["machine"]),
            "",
            f"Device recorded: {r['device_label']}; strategies {', '.join(s['strategies'])}; "
            f"generation of the volumes {r['generate_s']:.1f} s (not in the run)."
            + (
                f" First epochs beyond the steady rate (warm-up"
                f"{', compilation' if s.get('compile') else ''}): "
                f"{r['first_epoch_overhead_s']:.1f} s over {s['folds']} folds."
                if r.get("first_epoch_overhead_s") is not None
                else ""
            )
            + (
                f" Peak GPU memory of the run {r['peak_gpu_memory_gib']:.1f} GiB."
                if "peak_gpu_memory_gib" in r
                else ""
            ),
            "",
            md_table(
                [
                    "run wall",
                    "data s",
                    "train s",
                    "eval s",
                    "store s",
                    "trained images",
                    "loop img/s",
                    "run img/s (all folds ÷ wall)",
                    "bare img/s",
                    "loop ÷ bare",
                    "after warm-up epochs ÷ bare",
                ],
                rows,
            ),
            "",
            "Vote on the test set (random initial weights, few epochs: a smoke figure, not a "
            "result):",
            "",
            md_table(["scope", "sensitivity", "specificity", "F1", "AUC"], vote),
        ]
    )


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
