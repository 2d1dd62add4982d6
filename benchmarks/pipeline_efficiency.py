"""How close the real training loop comes to the bare cost of the model.

pipeline throughput = training images per second of `ichbench.training.train_fold` on a
`DeviceImages` of a synthetic dataset, with a plan whose rows are flagged for on-the-fly
augmentation at a given fraction (default one half): batch indexing, uint8 → float,
augmentation, normalisation, forward, loss, backward, Adam, the loss summed on the device
and events. Only the training phase of each epoch is timed (from the epoch's start to its
last batch), not the validation pass that follows it.

bare throughput = the same network's forward + backward + Adam step on one batch already
on the device and already preprocessed (same batch size, device, precision, memory format,
the loop's own optimiser: fused Adam on CUDA; compiled as the loop compiles, CUDA graphs
on CUDA).

efficiency = pipeline / bare: the share of the model's own speed the loop delivers. The
two are measured in alternating rounds (bare for one epoch's worth of steps, then one
pipeline epoch) after a warm-up round. The headline is the best pipeline round over the
best bare round: other work on a shared machine only ever slows a round down, so the
fastest rounds are the closest to the machine's own speed (as `timeit` takes the
minimum). The median of the per-round ratios is reported beside it.

    python benchmarks/pipeline_efficiency.py                     # tinycnn at 64 px, CPU
    python benchmarks/pipeline_efficiency.py --backbone timm:resnet18 --image-size 96
    python benchmarks/pipeline_efficiency.py --device cuda --backbone resnet50 \\
        --image-size 224 --patients 80 [--compile]
    python benchmarks/pipeline_efficiency.py --profile           # where the time goes
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _bench import command_line, machine, machine_line, md_table, synthetic, timed, write_result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--backbone",
        default="tinycnn",
        help="a backbone spec (tinycnn, timm:resnet18, efficientnet_lite0, resnet50, ...)",
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patients", type=int, default=20, help="synthetic patients")
    p.add_argument(
        "--native", type=int, default=None, help="synthetic volume size (default: the image size)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=8, help="measured rounds (after a warm-up)")
    p.add_argument("--augment-fraction", type=float, default=0.5)
    p.add_argument(
        "--bare-steps",
        type=int,
        default=None,
        help="timed bare steps (default: one epoch's worth of batches)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (both: the loop through `ichbench run --compile`'s setting)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="torch.profiler over pipeline batches: the top operators go into the Markdown summary",
    )
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default: a temp)")
    p.add_argument("--name", default=None, help="output name (default from the settings)")
    return p.parse_args(argv)


def build(backbone: str, seed: int = 0) -> torch.nn.Module:
    from ichbench.interfaces import BuildOptions
    from ichbench.plugins import get_registry

    torch.manual_seed(seed)
    plugin = get_registry().create("backbone", backbone)
    return plugin.build(BuildOptions(in_chans=1, pretrained=False)).model


def prepare(model: torch.nn.Module, device: torch.device, compile_: bool) -> torch.nn.Module:
    """The network on the device as the loop holds it, compiled as the loop compiles it."""
    from ichbench.training import TrainSettings, compiled

    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if not compile_:
        return model
    settings = TrainSettings(
        epochs=1, batch_size=1, lr=1e-3, patience=1, seed=0, device=device, compile=True
    )
    return compiled(model, settings)


def make_plan(dataset, train_rows: np.ndarray, fraction: float, seed: int = 0):
    from ichbench.interfaces import TrainPlan

    rng = np.random.default_rng(seed)
    flags = rng.random(len(train_rows)) < fraction
    return TrainPlan(indices=train_rows.astype(np.int64), augment=flags, class_weights=(1.0, 4.0))


def bare_throughput(model, data, settings, loss_fn, steps: int, warmup: int = 3) -> float:
    """Images/s of forward + backward + Adam on a batch prepared once, outside the timing."""
    from ichbench.training import _autocast, _logits, make_optimizer

    graphed = settings.cuda and isinstance(model, torch._dynamo.eval_frame.OptimizedModule)
    gen = torch.Generator().manual_seed(1)
    index = torch.randint(0, len(data.labels), (settings.batch_size,), generator=gen)
    index = index.to(data.device)
    x = data.batch(index, None, settings, None)
    y = data.labels[index]
    optimizer = make_optimizer(model, settings)
    model.train()

    def step() -> None:
        if graphed:
            torch.compiler.cudagraph_mark_step_begin()
        with _autocast(settings):
            loss = loss_fn(_logits(model(x)).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    with timed(settings.cuda) as t:
        for _ in range(steps):
            step()
    return steps * settings.batch_size / t.seconds


def batch_prep_ms(data, plan, settings, n: int = 50) -> float:
    """Median milliseconds `DeviceImages.batch` takes for a training batch of the plan
    (gather, uint8 → float, augmentation of the flagged rows, normalisation): the loop's
    own work per step, measured apart from the noise of whole epochs."""
    gen = torch.Generator().manual_seed(2)
    aug_gen = torch.Generator(device=data.device).manual_seed(3)
    times = []
    for i in range(n + 3):
        pick = torch.randint(0, len(plan.indices), (settings.batch_size,), generator=gen)
        index = torch.from_numpy(plan.indices)[pick].to(data.device)
        flags = torch.nonzero(torch.from_numpy(plan.augment)[pick]).squeeze(1).to(data.device)
        with timed(settings.cuda) as t:
            data.batch(index, flags, settings, aug_gen)
        if i >= 3:
            times.append(t.seconds * 1000)
    return statistics.median(times)


class BatchClock:
    """Observer of train_fold's events: when each epoch's training phase starts and ends.
    On a GPU it waits for the device at an epoch's last batches, so that the end is when
    the work is done, not when it was queued."""

    def __init__(self, cuda: bool = False) -> None:
        self.cuda = cuda
        self.start = time.perf_counter()
        self.phases: dict[int, list[float]] = {}
        self.batches: dict[int, int] = {}

    def __call__(self, event) -> None:
        kind, data = event.kind, event.data
        if self.cuda and kind == "batch_finished" and data["batch"] >= data["batches"] - 1:
            torch.cuda.synchronize()
        now = time.perf_counter()
        if kind == "batch_finished":
            phase = self.phases.setdefault(data["epoch"], [self.start, now])
            phase[1] = now
            self.batches[data["epoch"]] = data["batch"]
        elif kind == "epoch_finished":
            self.start = now  # the next epoch starts after validation and the state copy


def images_per_epoch(rows: int, batch: int, static_shapes: bool = False) -> int:
    """Samples train_fold actually steps on: a last batch of one is skipped (batch norm);
    with static shapes (compiled on CUDA) the ragged last batch is dropped."""
    from ichbench.training import drop_ragged

    if drop_ragged(rows, batch, static_shapes):
        return rows - rows % batch
    return rows - 1 if rows % batch == 1 and rows >= 2 else rows


def profile_pipeline(model, plan, data, val_rows, settings, batches: int = 20) -> str:
    """The top operators by self CPU (or CUDA) time over `batches` pipeline batches."""
    from torch.profiler import ProfilerActivity, profile

    from ichbench.training import train_fold

    rows = plan.indices[: batches * settings.batch_size]
    small = plan.with_(indices=rows, augment=plan.augment[: len(rows)])
    one = replace(settings, epochs=1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if settings.cuda else [])
    with profile(activities=activities) as prof:
        train_fold(model, small, data, val_rows, one, lambda *a, **k: None, 0)
    key = "self_device_time_total" if settings.cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=25)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from ichbench.training import DeviceImages, TrainSettings, make_loss, train_fold

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="ichbench-bench-"))
    native = args.native or args.image_size
    with timed() as t_data:
        dataset = synthetic(args.patients, native, args.image_size, cache)
    patients = np.unique(dataset.patient_ids)
    val_patients = patients[:2]  # a small validation pass: it is not what is measured
    val_rows = np.flatnonzero(np.isin(dataset.patient_ids, val_patients))
    train_rows = np.flatnonzero(~np.isin(dataset.patient_ids, val_patients))
    plan = make_plan(dataset, train_rows, args.augment_fraction)
    data = DeviceImages(dataset.images, dataset.labels, device)
    settings = TrainSettings(
        epochs=1, batch_size=args.batch_size, lr=1e-3, patience=2, seed=0, device=device
    )
    loss_fn = make_loss(plan, device)
    steps = args.bare_steps or max(10, len(train_rows) // args.batch_size)
    loop_settings = replace(settings, compile=args.compile)
    per_epoch = images_per_epoch(len(plan.indices), args.batch_size, loop_settings.fixed_shapes)

    bare_model = prepare(build(args.backbone), device, args.compile)
    model = prepare(build(args.backbone), device, False)  # train_fold compiles it
    rounds = []
    for r in range(args.rounds + 1):  # round 0 warms both up and is not counted
        bare = bare_throughput(bare_model, data, settings, loss_fn, steps if r else 3)
        clock = BatchClock(cuda=device.type == "cuda")
        train_fold(model, plan, data, val_rows, loop_settings, clock, r)
        start, end = clock.phases[1]
        pipeline = per_epoch / (end - start)
        if r:
            rounds.append(
                {
                    "round": r,
                    "bare_images_per_s": bare,
                    "pipeline_images_per_s": pipeline,
                    "ratio": pipeline / bare,
                    "load_average": list(os.getloadavg()),
                }
            )
    prep_ms = batch_prep_ms(data, plan, settings)
    bare_all = [x["bare_images_per_s"] for x in rounds]
    pipe_all = [x["pipeline_images_per_s"] for x in rounds]
    result = {
        "benchmark": "pipeline_efficiency",
        "command": command_line(),
        "machine": machine(args.device),
        "settings": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "native": native,
            "train_rows": int(len(plan.indices)),
            "augmented_rows": int(plan.augment.sum()),
            "val_rows": int(len(val_rows)),
            "bare_steps": steps,
            "dataset_load_s": round(t_data.seconds, 2),
        },
        "rounds": rounds,
        "bare_images_per_s": max(bare_all),
        "pipeline_images_per_s": max(pipe_all),
        "efficiency": max(pipe_all) / max(bare_all),
        "batch_prep_ms": prep_ms,
        "bare_step_ms": 1000 * args.batch_size / max(bare_all),
        "efficiency_from_components": 1 / (1 + prep_ms * max(bare_all) / 1000 / args.batch_size),
        "median": {
            "bare_images_per_s": statistics.median(bare_all),
            "pipeline_images_per_s": statistics.median(pipe_all),
            "ratio": statistics.median(x["ratio"] for x in rounds),
        },
    }
    if args.profile:
        result["profile"] = profile_pipeline(
            prepare(build(args.backbone), device, False), plan, data, val_rows, loop_settings
        )
    name = args.name or (
        f"pipeline_efficiency-{args.device}-{args.backbone.replace(':', '_')}"
        f"-{args.image_size}px" + ("-compiled" if args.compile else "")
    )
    write_result(name, result, summary(result))
    return result


def summary(r: dict) -> str:
    s = r["settings"]
    med = r["median"]
    rows = [
        [
            s["backbone"],
            f"{s['image_size']} px",
            s["batch_size"],
            (r["machine"].get("gpu") or "cpu") + (" (compiled)" if s["compile"] else ""),
            f"{r['pipeline_images_per_s']:.1f}",
            f"{r['bare_images_per_s']:.1f}",
            f"**{r['efficiency']:.3f}**",
            f"{med['pipeline_images_per_s']:.1f} / {med['bare_images_per_s']:.1f} / "
            f"{med['ratio']:.3f}",
        ]
    ]
    text = [
        f"## Pipeline efficiency: {s['backbone']} at {s['image_size']} px on {s['device']}",
        "",
        f"`{r['command']}`",
        "",
        machine_line(r["machine"]),
        "",
        md_table(
            [
                "backbone",
                "size",
                "batch",
                "device",
                "pipeline img/s (best)",
                "bare img/s (best)",
                "pipeline ÷ bare",
                "median: pipeline / bare / ratio per round",
            ],
            rows,
        ),
        "",
        f"{s['train_rows']} training rows per epoch, {s['augmented_rows']} flagged for "
        f"augmentation; {len(r['rounds'])} rounds after a warm-up round; per-round "
        f"ratios {', '.join(f'{x:.3f}' for x in (x['ratio'] for x in r['rounds']))}.",
        "",
        f"Components: preparing a batch takes {r['batch_prep_ms']:.2f} ms (median), a "
        f"bare step {r['bare_step_ms']:.1f} ms (best), so the loop's own work alone would "
        f"give {r['efficiency_from_components']:.3f}.",
    ]
    if "profile" in r:
        text += ["", "Top operators over 20 pipeline batches:", "", "```", r["profile"], "```"]
    return "\n".join(text)


if __name__ == "__main__":
    main()
