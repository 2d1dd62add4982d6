"""Preprocessing speed: a first load (NIfTI decode, HU windowing, resize, write to the cache,
content hash) in slices per second, and a cached load (fingerprint the files, map the
arrays) in milliseconds.

The first load is timed once per worker count of `--workers` (each into a fresh cache:
patients decoded in that many processes, `ichbench.data.cache.fill_rows`), and the
entries they build are checked to be the same bytes.

The dataset is generated first by the synthetic generator in the PhysioNet v1.3.x layout
(timed separately) and then read by the same reader as real data.

    python benchmarks/preprocessing.py                              # 40 patients, 256 → 128 px
    python benchmarks/preprocessing.py --patients 80 --native 512 --image-size 224
    python benchmarks/preprocessing.py --workers 1,2,4
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
from _bench import command_line, machine, machine_line, md_table, timed, write_result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patients", type=int, default=40)
    p.add_argument("--native", type=int, default=256, help="generated volume size in px")
    p.add_argument("--image-size", type=int, default=128, help="cached image size in px")
    p.add_argument("--windows", default="brain", help="comma-separated CT windows")
    p.add_argument("--warm-repeats", type=int, default=5)
    p.add_argument(
        "--workers",
        default="1,2",
        help="comma-separated worker process counts, one cold load each (1: in-process)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the data and cache go (default: a temp folder, removed afterwards)",
    )
    p.add_argument("--name", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from ichbench.data.physionet import PhysioNetSource, load_folder
    from ichbench.data.synth import generate
    from ichbench.interfaces import LoadOptions

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ichbench-prep-"))
    try:
        folder = work / "data"
        if folder.exists():
            shutil.rmtree(folder)
        with timed() as t_gen:
            generate(folder, args.patients, 0, args.native)
        options = LoadOptions(
            image_size=args.image_size, windows=tuple(args.windows.split(",")), exclude=()
        )
        source = PhysioNetSource(folder)
        by_workers = []
        first = None
        for count in [int(w) for w in args.workers.split(",")]:
            fresh = work / f"cache-{count}w"
            shutil.rmtree(fresh, ignore_errors=True)
            with timed() as t_built:
                built = load_folder(folder, options, fresh, name=source.name, workers=count)
            images = np.asarray(built.images).tobytes()
            first = images if first is None else first
            assert images == first, f"{count} workers built other bytes"
            by_workers.append(
                {
                    "workers": count,
                    "first_load_s": t_built.seconds,
                    "slices_per_s": len(built) / t_built.seconds,
                }
            )
            shutil.rmtree(fresh, ignore_errors=True)
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        with timed() as t_cold:
            dataset = source.load(options, cache)
        slices = len(dataset)
        warm, read = [], []
        for _ in range(args.warm_repeats):
            with timed() as t_warm:
                again = source.load(options, cache)
            warm.append(t_warm.seconds)
            with timed() as t_read:
                checksum = int(np.asarray(again.images).sum(dtype=np.int64))
            read.append(t_read.seconds)
        assert checksum == int(np.asarray(dataset.images).sum(dtype=np.int64))
        volume_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
        cache_mb = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "preprocessing",
        "command": command_line(),
        "machine": machine(),
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}},
        "slices": slices,
        "patients": args.patients,
        "generate_s": t_gen.seconds,
        "first_load_s": t_cold.seconds,
        "first_load_slices_per_s": slices / t_cold.seconds,
        "cached_load_s": statistics.median(warm),
        "cached_load_all_s": warm,
        "cached_read_all_images_s": statistics.median(read),
        "source_mb": volume_mb,
        "cache_mb": cache_mb,
        "by_workers": by_workers,
    }
    name = args.name or f"preprocessing-{args.patients}p-{args.native}to{args.image_size}px"
    write_result(name, result, summary(result))
    return result


def summary(r: dict) -> str:
    s = r["settings"]
    rows = [
        [
            r["patients"],
            r["slices"],
            f"{s['native']} → {s['image_size']} px",
            s["windows"],
            f"{r['generate_s']:.1f} s",
            f"{r['first_load_s']:.2f} s",
            f"**{r['first_load_slices_per_s']:.0f}**",
            f"**{r['cached_load_s'] * 1000:.1f} ms**",
            f"{r['cached_read_all_images_s'] * 1000:.1f} ms",
        ]
    ]
    return "\n".join(
        [
            f"## Preprocessing: {r['patients']} synthetic patients, {s['native']} → "
            f"{s['image_size']} px",
            "",
            f"`{r['command']}`",
            "",
            machine_line(r["machine"]),
            "",
            md_table(
                [
                    "patients",
                    "slices",
                    "size",
                    "windows",
                    "generate",
                    "first load",
                    "first load slices/s",
                    "cached load (median)",
                    "read all cached images",
                ],
                rows,
            ),
            "",
            f"Source volumes {r['source_mb']:.0f} MiB; cache entry {r['cache_mb']:.0f} MiB.",
            "",
            "First load by worker processes (same bytes each; 1 = in-process):",
            "",
            md_table(
                ["workers", "first load", "slices/s"],
                [
                    [w["workers"], f"{w['first_load_s']:.2f} s", f"**{w['slices_per_s']:.0f}**"]
                    for w in r.get("by_workers", [])
                ],
            ),
        ]
    )


if __name__ == "__main__":
    main()
