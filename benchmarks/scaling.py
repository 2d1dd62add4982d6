"""How time and memory grow with the dataset: patients × image size.

For each point a fresh subprocess measures, on synthetic volumes generated beforehand:
the first load (decode, window, resize into the cache), a cached load, the device tensor
(`DeviceImages`: the dataset as one uint8 tensor, as training holds it), and a training
slice of the quick preset's network (a fixed number of samples after two warm-up
batches, so its time does not grow with the dataset; a full epoch is extrapolated).

Memory: the process's peak RSS (VmHWM) and the peak of its anonymous part, sampled every
20 ms, after loading and at the end. Memory-mapped cache pages are file-backed, so loading
should add little anonymous memory however large the dataset; the device tensor adds
exactly its size.

    python benchmarks/scaling.py                          # 20, 80, 320 patients × 64, 128, 224 px
    python benchmarks/scaling.py --patients 20,80 --sizes 64,128 --train-samples 128
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _bench import (
    command_line,
    machine,
    machine_line,
    md_table,
    peak_rss_mb,
    rss_parts_mb,
    timed,
    write_result,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patients", default="20,80,320")
    p.add_argument("--sizes", default="64,128,224")
    p.add_argument("--native", type=int, default=256, help="generated volume size in px")
    p.add_argument(
        "--train-samples",
        type=int,
        default=256,
        help="samples in the training slice of each point (0: no training)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--backbone", default="tinycnn")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep data and caches here (default: a temp folder, removed afterwards)",
    )
    p.add_argument("--name", default="scaling")
    p.add_argument("--point", default=None, help=argparse.SUPPRESS)  # child: DATA,CACHE,SIZE
    return p.parse_args(argv)


class AnonPeak:
    """Samples RssAnon in a thread: the kernel keeps a peak only for the total RSS."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.peak = 0.0
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_parts_mb().get("RssAnon", 0.0))
            time.sleep(self.every_s)

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_parts_mb().get("RssAnon", 0.0))


def measure_point(data: Path, cache: Path, size: int, args: argparse.Namespace) -> dict:
    """One point, in its own process so that peak memory is its own."""
    import torch

    from ichbench.data.physionet import PhysioNetSource
    from ichbench.interfaces import BuildOptions, LoadOptions, TrainPlan
    from ichbench.plugins import get_registry
    from ichbench.training import DeviceImages, TrainSettings, train_fold

    out: dict = {"rss_start_mb": rss_parts_mb()}
    options = LoadOptions(image_size=size, exclude=())
    source = PhysioNetSource(data)
    with AnonPeak() as anon_load:
        with timed() as t_cold:
            dataset = source.load(options, cache)
        with timed() as t_warm:
            dataset = source.load(options, cache)
        with timed() as t_read:
            int(np.asarray(dataset.images).sum(dtype=np.int64))  # every page read once
    out.update(
        slices=len(dataset),
        first_load_s=t_cold.seconds,
        cached_load_s=t_warm.seconds,
        read_all_s=t_read.seconds,
        images_mb=dataset.images.nbytes / 2**20,
        peak_rss_after_load_mb=peak_rss_mb(),
        peak_anon_load_mb=anon_load.peak,
        rss_after_load=rss_parts_mb(),
    )
    if args.train_samples:
        with AnonPeak() as anon_train:
            with timed() as t_dev:
                device_data = DeviceImages(dataset.images, dataset.labels, torch.device("cpu"))
            rng = np.random.default_rng(0)
            rows = rng.choice(
                len(dataset), size=min(args.train_samples, len(dataset)), replace=False
            )
            plan = TrainPlan(
                indices=np.sort(rows).astype(np.int64), augment=rng.random(len(rows)) < 0.5
            )
            val_rows = np.arange(min(64, len(dataset)))
            settings = TrainSettings(
                epochs=1,
                batch_size=args.batch_size,
                lr=1e-3,
                patience=2,
                seed=0,
                device=torch.device("cpu"),
            )
            torch.manual_seed(0)
            model = (
                get_registry()
                .create("backbone", args.backbone)
                .build(BuildOptions(in_chans=1, pretrained=False))
                .model
            )
            warmup = plan.with_(
                indices=plan.indices[: 2 * args.batch_size],
                augment=plan.augment[: 2 * args.batch_size],
            )
            train_fold(model, warmup, device_data, val_rows, settings, lambda *a, **k: None, 0)
            marks: list[float] = []

            def clock(kind: str, **_) -> None:
                if kind == "batch_finished":
                    marks.append(time.perf_counter())

            started = time.perf_counter()
            train_fold(model, plan, device_data, val_rows, settings, clock, 0)
            call_s = time.perf_counter() - started
        train_s = marks[-1] - started  # the training phase, without the validation pass
        rate = len(rows) / train_s
        out.update(
            device_tensor_s=t_dev.seconds,
            train_samples=len(rows),
            train_s=train_s,
            train_call_s=call_s,
            train_images_per_s=rate,
            epoch_estimate_s=len(dataset) * 0.8 / rate,
            peak_anon_train_mb=anon_train.peak,
        )
    out.update(peak_rss_mb=peak_rss_mb(), rss_end=rss_parts_mb())
    return out


def run_point(data: Path, cache: Path, size: int, args: argparse.Namespace) -> dict:
    argv = [
        sys.executable,
        __file__,
        "--point",
        f"{data},{cache},{size}",
        "--train-samples",
        str(args.train_samples),
        "--batch-size",
        str(args.batch_size),
        "--backbone",
        args.backbone,
    ]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"point {data.name} at {size} px failed:\n{done.stderr[-3000:]}")
    point = json.loads(done.stdout.strip().splitlines()[-1])
    point["process_wall_s"] = time.perf_counter() - started
    return point


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.point:
        data, cache, size = args.point.split(",")
        print(json.dumps(measure_point(Path(data), Path(cache), int(size), args)))
        return None
    from ichbench.data.synth import generate

    patients = [int(p) for p in args.patients.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ichbench-scaling-"))
    points, generated = [], {}
    started = time.perf_counter()
    try:
        for n in patients:
            folder = work / f"p{n}-px{args.native}"
            if not folder.exists():
                with timed() as t_gen:
                    generate(folder, n, 0, args.native)
                generated[n] = t_gen.seconds
            for size in sizes:
                cache = work / f"cache-p{n}-px{size}"
                shutil.rmtree(cache, ignore_errors=True)  # every first load is a cold one
                point = run_point(folder, cache, size, args)
                point.update(patients=n, size=size, load_average=list(os.getloadavg()))
                points.append(point)
                print(
                    f"{n} patients at {size} px: {point['process_wall_s']:.1f} s, peak RSS "
                    f"{point['peak_rss_mb']:.0f} MiB",
                    file=sys.stderr,
                )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "scaling",
        "command": command_line(),
        "machine": machine(),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "point"
        },
        "generate_s": generated,
        "points": points,
        "total_s": time.perf_counter() - started,
    }
    write_result(args.name, result, summary(result))
    return result


def summary(r: dict) -> str:
    rows = []
    for p in r["points"]:
        rows.append(
            [
                p["patients"],
                p["size"],
                p["slices"],
                f"{p['images_mb']:.0f}",
                f"{p['rss_start_mb'].get('RssAnon', 0):.0f}",
                f"{p['first_load_s']:.1f}",
                f"{p['slices'] / p['first_load_s']:.0f}",
                f"{p['cached_load_s'] * 1000:.0f}",
                f"{p['peak_anon_load_mb']:.0f}",
                f"{p['peak_rss_after_load_mb']:.0f}",
                _opt(p.get("train_images_per_s"), "{:.0f}"),
                _opt(p.get("epoch_estimate_s"), "{:.0f}"),
                f"{p['peak_rss_mb']:.0f}",
                f"{p['process_wall_s']:.1f}",
            ]
        )
    gen = ", ".join(f"{n} patients {s:.1f} s" for n, s in r["generate_s"].items())
    s = r["settings"]
    return "\n".join(
        [
            f"## Scaling with patients and image size (from {s['native']} px volumes)",
            "",
            f"`{r['command']}`",
            "",
            machine_line(r["machine"]),
            "",
            md_table(
                [
                    "patients",
                    "px",
                    "slices",
                    "images MiB",
                    "anon at start MiB",
                    "first load s",
                    "slices/s",
                    "cached load ms",
                    "peak anon after load MiB",
                    "peak RSS after load MiB",
                    f"train img/s ({s['backbone']})",
                    "epoch est. s (80% rows)",
                    "peak RSS MiB",
                    "process s",
                ],
                rows,
            ),
            "",
            f"Generation beforehand: {gen or 'reused'}. Total {r['total_s']:.0f} s. "
            "Peak anon is sampled every 20 ms; file-backed pages of the memory-mapped cache "
            "count in RSS but not in anon.",
        ]
    )


def _opt(value, form: str) -> str:
    return "–" if value is None else form.format(value)


if __name__ == "__main__":
    main()
