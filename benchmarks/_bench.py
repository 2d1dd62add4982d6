"""What every benchmark script shares: the machine it ran on, synthetic data, timing and
memory probes, and writing `benchmarks/out/<name>.json` plus a Markdown summary.

Imported by the scripts in this folder (`python benchmarks/<script>.py` puts the folder on
sys.path); not part of the installed package.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: timings are only comparable on a quiet machine."""
    return [round(v, 2) for v in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict[str, Any]:
    """The facts a reader needs to compare a figure with their own."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average": load_average(),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MiB; getrusage where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_parts_mb() -> dict[str, float]:
    """Current anonymous and file-backed resident memory, in MiB (Linux only): memory-mapped
    cache pages count as file-backed, so they can be told apart from copies."""
    parts: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                parts[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return parts


@dataclass
class Timer:
    seconds: float = 0.0


@contextmanager
def timed(sync_cuda: bool = False):
    """`with timed() as t: ...` then `t.seconds`; waits for the GPU when asked."""
    import torch

    timer = Timer()
    if sync_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    try:
        yield timer
    finally:
        if sync_cuda:
            torch.cuda.synchronize()
        timer.seconds = time.perf_counter() - started


def synthetic(patients: int, native: int, image_size: int, cache_dir: Path, seed: int = 0):
    """A synthetic dataset through the real generator, reader and cache (nobody excluded)."""
    from ichbench.data.synth import SyntheticSource
    from ichbench.interfaces import LoadOptions

    source = SyntheticSource(patients, seed, native)
    return source.load(LoadOptions(image_size=image_size, exclude=()), Path(cache_dir))


def write_result(name: str, data: dict[str, Any], markdown: str) -> Path:
    """benchmarks/out/<name>.json and <name>.md; returns the JSON path."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
    (OUT / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(markdown.rstrip())
    print(f"\nwrote {path} and {path.with_suffix('.md')}", file=sys.stderr)
    return path


def md_table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    return (
        f"{info['cpu']} ({info['cores']} cores, {info['torch_threads']} torch threads){gpu}; "
        f"torch {info['torch']}; load average {info['load_average']} at {info['when']}"
    )


def command_line() -> str:
    """The command as run from the repository root."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}"] + sys.argv[1:])
