"""Shared fixtures: an isolated environment for every test, the real fixtures' paths, and
tiny synthetic datasets generated once per test run."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"

# Nothing in the suite may reach the network, wide-scoped fixtures included.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["ICHBENCH_LOAD_PLUGINS"] = ""

# The tests that interrupt a run send this process a real SIGINT. A shell that starts the
# suite in the background without job control starts it with SIGINT ignored (and Python
# then leaves it ignored): give Ctrl-C back its usual meaning, as in a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path_factory):
    """No test reads the user's cache or store, and installed third-party plugins stay out."""
    base = tmp_path_factory.mktemp("env")
    monkeypatch.setenv("ICHBENCH_CACHE", str(base / "cache"))
    monkeypatch.setenv("ICHBENCH_DB", str(base / "runs.duckdb"))
    monkeypatch.setenv("ICHBENCH_LOAD_PLUGINS", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("ICHBENCH_DEBUG", raising=False)


@pytest.fixture(scope="session")
def real_labels_csv() -> Path:
    """The full v1.0.0 label file (82 patients, 2,501 slices)."""
    return FIXTURES / "ct-ich-v1.0.0" / "hemorrhage_diagnosis.csv"


@pytest.fixture(scope="session")
def jpg_sample_dir() -> Path:
    """The real 3-patient v1.0.0 folder (JPG layout; patient 084 lacks bone slice 36)."""
    return FIXTURES / "ct-ich-v1.0.0-sample"


@pytest.fixture(scope="session")
def synth_factory(tmp_path_factory) -> Callable[..., Path]:
    """make(patients, seed=0, size=32) -> folder of a synthetic dataset, generated once."""
    from ichbench.data.synth import generate

    made: dict[tuple[int, int, int], Path] = {}

    def make(patients: int, seed: int = 0, size: int = 32) -> Path:
        key = (patients, seed, size)
        if key not in made:
            out = tmp_path_factory.mktemp("synth") / f"p{patients}-s{seed}-px{size}"
            generate(out, patients, seed, size)
            made[key] = out
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_synth_dir(synth_factory) -> Path:
    """8 synthetic patients (049-056) at 32 px in the v1.3.x NIfTI layout. Read-only."""
    return synth_factory(8, 0, 32)


@pytest.fixture(scope="session")
def tiny_dataset(tiny_synth_dir, tmp_path_factory):
    """`tiny_synth_dir` loaded at 32 px, brain window, nobody excluded. Read-only arrays."""
    from ichbench.data.physionet import PhysioNetSource
    from ichbench.interfaces import LoadOptions

    cache = tmp_path_factory.mktemp("tiny-cache")
    return PhysioNetSource(tiny_synth_dir).load(LoadOptions(image_size=32, exclude=()), cache)
