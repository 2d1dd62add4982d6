"""Training on a dataset larger than the memory it may use: the loop's throughput with the
images streamed from the memory-mapped cache (`ichbench.streaming.StreamedImages`) and
with the images resident (`DeviceImages`), each as a share of the bare model step.

The device memory allowed is set to a fraction of the dataset's images (default one half,
so the dataset is twice what is allowed): `images_for` then streams them, as a run with
`--device-memory` does. The same fold trains both ways, in alternating rounds after a
warm-up round; each round times one training epoch of `train_fold` and, before it, the
bare step (forward + backward + Adam on one batch prepared once, resident tensors: the
model's own speed). loop ÷ bare is the share of the model's speed the loop delivers; the
headline takes the best round of each (other work on a shared machine only slows a round
down), the median of the per-round ratios beside it, and the same ratio in images per
second of this process's CPU time (its threads, the read-ahead one included), which other
processes on a shared machine disturb far less than the wall clock.

On the CPU the "device" is host memory and the cache file sits in the page cache, so this
measures the cost of the streaming path itself (gather by pread, the read-ahead thread,
one more copy), not a disk; on CUDA it adds the pinned, asynchronous copy to the GPU.

    python benchmarks/streaming.py                                 # tinycnn, 128 px, CPU
    python benchmarks/streaming.py --device cuda --backbone resnet50 --image-size 224
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _bench import command_line, machine, machine_line, md_table, synthetic, timed, write_result
from pipeline_efficiency import BatchClock, bare_throughput, images_per_epoch, make_plan, prepare


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tinycnn")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--patients", type=int, default=40, help="synthetic patients")
    p.add_argument("--native", type=int, default=None, help="volume size (default: image size)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--context", type=int, default=0, help="neighbouring slices on each side")
    p.add_argument("--rounds", type=int, default=5, help="measured rounds (after a warm-up)")
    p.add_argument(
        "--budget-fraction",
        type=float,
        default=0.5,
        help="device memory allowed, as a fraction of the images' bytes (0.5: twice too big)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default: a temp)")
    p.add_argument("--name", default=None)
    return p.parse_args(argv)


def build(backbone: str, in_chans: int, seed: int = 0) -> torch.nn.Module:
    """The backbone, randomly initialised the same way for every copy."""
    from ichbench.interfaces import BuildOptions
    from ichbench.plugins import get_registry

    torch.manual_seed(seed)
    plugin = get_registry().create("backbone", backbone)
    return plugin.build(BuildOptions(in_chans=in_chans, pretrained=False)).model


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from ichbench.streaming import GIB, StreamedImages, images_for
    from ichbench.training import DeviceImages, TrainSettings, make_loss, train_fold

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="ichbench-stream-"))
    with timed() as t_data:
        dataset = synthetic(args.patients, args.native or args.image_size, args.image_size, cache)
    images_bytes = int(dataset.images.nbytes)
    budget_gib = images_bytes * args.budget_fraction / GIB
    patients = np.unique(dataset.patient_ids)
    # a token validation pass (train_fold runs one per epoch): not what is measured
    val_rows = np.flatnonzero(np.isin(dataset.patient_ids, patients[:2]))[:8]
    train_rows = np.flatnonzero(~np.isin(dataset.patient_ids, patients[:2]))
    plan = make_plan(dataset, train_rows, 0.5)
    kwargs = {"patient_ids": dataset.patient_ids, "context": args.context}
    holders = {
        "resident": DeviceImages(dataset.images, dataset.labels, device, **kwargs),
        "streamed": images_for(
            dataset.images, dataset.labels, device, device_memory=budget_gib, **kwargs
        ),
    }
    assert isinstance(holders["streamed"], StreamedImages), "the budget did not force streaming"
    settings = TrainSettings(
        epochs=1,
        batch_size=args.batch_size,
        lr=1e-3,
        patience=2,
        seed=0,
        device=device,
        context=args.context,
    )
    loss_fn = make_loss(plan, device)
    steps = max(10, len(train_rows) // args.batch_size)
    per_epoch = images_per_epoch(len(plan.indices), args.batch_size, settings.fixed_shapes)
    in_chans = dataset.images.shape[1] * (2 * args.context + 1)
    bare_model = prepare(build(args.backbone, in_chans=in_chans), device, False)
    models = {k: prepare(build(args.backbone, in_chans=in_chans), device, False) for k in holders}
    rounds: list[dict] = []
    for r in range(args.rounds + 1):  # round 0 warms up and is not counted
        row: dict = {"round": r, "load_average": list(os.getloadavg())}
        for path, data in holders.items():
            cpu = time.process_time()
            bare = bare_throughput(bare_model, holders["resident"], settings, loss_fn, steps)
            bare_cpu = (steps + 3) * args.batch_size / (time.process_time() - cpu)
            clock = BatchClock(cuda=device.type == "cuda")
            cpu = time.process_time()
            train_fold(models[path], plan, data, val_rows, settings, clock, r)
            loop_cpu = per_epoch / (time.process_time() - cpu)
            start, end = clock.phases[1]
            loop = per_epoch / (end - start)
            row[path] = {
                "bare": bare,
                "loop": loop,
                "ratio": loop / bare,
                "bare_per_cpu_s": bare_cpu,
                "loop_per_cpu_s": loop_cpu,
                "cpu_ratio": loop_cpu / bare_cpu,
            }
        if r:
            rounds.append(row)
    streamed = holders["streamed"]
    result = {
        "benchmark": "streaming",
        "command": command_line(),
        "machine": machine(args.device),
        "settings": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "train_rows": int(len(plan.indices)),
            "val_rows": int(len(val_rows)),
            "images_bytes": images_bytes,
            "budget_bytes": int(budget_gib * GIB),
            "dataset_load_s": round(t_data.seconds, 2),
        },
        "rounds": rounds,
        "batches_read_ahead": streamed.batches_read_ahead,
        "batches_read_now": streamed.batches_read_now,
    }
    for path in holders:
        bare = [x[path]["bare"] for x in rounds]
        loop = [x[path]["loop"] for x in rounds]
        result[path] = {
            "bare_images_per_s": max(bare),
            "loop_images_per_s": max(loop),
            "loop_over_bare": max(loop) / max(bare),
            "median_ratio": statistics.median(x[path]["ratio"] for x in rounds),
            "median_cpu_ratio": statistics.median(x[path]["cpu_ratio"] for x in rounds),
            "pooled_ratio": pooled_ratio(rounds, path),
        }
    streamed.close()
    if args.cache is None:
        shutil.rmtree(cache, ignore_errors=True)
    name = args.name or (
        f"streaming-{args.device}-{args.backbone.replace(':', '_')}-{args.image_size}px"
        f"-{args.patients}p"
    )
    write_result(name, result, summary(result))
    return result


def pooled_ratio(rounds: list[dict], path: str) -> float:
    """loop ÷ bare over every round's time together (the harmonic means of the rates):
    steadier than any one round where rounds vary as much as they do on a small CPU."""
    loop = statistics.harmonic_mean([x[path]["loop"] for x in rounds])
    return loop / statistics.harmonic_mean([x[path]["bare"] for x in rounds])


def summary(r: dict) -> str:
    s = r["settings"]
    rows = [
        [
            path,
            f"{r[path]['bare_images_per_s']:.0f}",
            f"{r[path]['loop_images_per_s']:.0f}",
            f"**{r[path]['loop_over_bare']:.2f}**",
            f"{r[path]['median_ratio']:.2f}",
            f"{r[path]['median_cpu_ratio']:.2f}",
            f"{r[path]['pooled_ratio']:.2f}",
        ]
        for path in ("resident", "streamed")
    ]
    mib = 2**20
    return "\n".join(
        [
            f"## Streaming from the cache: {s['backbone']} at {s['image_size']} px on "
            f"{s['device']}, a dataset twice the memory allowed",
            "",
            f"`{r['command']}`",
            "",
            machine_line(r["machine"]),
            "",
            f"Images {s['images_bytes'] / mib:.1f} MiB, device memory allowed "
            f"{s['budget_bytes'] / mib:.1f} MiB; {s['train_rows']} training slices, batch "
            f"{s['batch_size']}, context {s['context']}; best of {len(r['rounds'])} rounds.",
            "",
            md_table(
                [
                    "images",
                    "bare images/s",
                    "loop images/s",
                    "loop ÷ bare",
                    "median ratio",
                    "median ratio, CPU time",
                    "all rounds pooled",
                ],
                rows,
            ),
            "",
            f"Streamed batches served by the read-ahead thread: {r['batches_read_ahead']}; "
            f"gathered while the loop waited: {r['batches_read_now']}.",
        ]
    )


if __name__ == "__main__":
    main()
