"""A synthetic CT-ICH dataset in exactly the PhysioNet v1.3.x layout, for use without the data.

Each patient is a stack of axial head-CT phantoms in Hounsfield units (`ichbench.data.phantom`)
and, for ICH patients, hyperdense lesions of the five subtypes spanning consecutive slices
(`ichbench.data.lesions`), modelled on a real patient of the packaged label file
(`ichbench.data.synth_patients`). The label rows are derived from the masks actually drawn,
so labels and images never disagree.

The output goes through the same reader as the real data. Same seed, same bytes: every
patient draws from its own child of one seed sequence, in a fixed order.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ichbench.data.labels import COLUMNS
from ichbench.data.phantom import Head
from ichbench.data.physionet import MASKS, NIFTI_LABELS, SCANS, PhysioNetSource, Progress
from ichbench.data.synth_files import (
    DEMOGRAPHICS,
    FIRST_PATIENT,
    FOV_MM,
    GENERATOR_NAME,
    HU_OFFSET,
    PARAMS_FILE,
    SLICE_MM,
    csv_bytes,
    demographics_rows,
    label_rows,
    to_ras,
    volume_affine,
)
from ichbench.data.synth_files import write_nifti as _write_nifti
from ichbench.data.synth_patients import SynthPatient, Template, real_templates, synth_patient
from ichbench.data.synth_target import check_target, remove_dead_temps, replace, temp_folder
from ichbench.errors import UsageError
from ichbench.interfaces import LoadOptions, SliceDataset
from ichbench.paths import cache_dir as default_cache_dir

__all__ = [
    "DEMOGRAPHICS",
    "FIRST_PATIENT",
    "FOV_MM",
    "GENERATOR_VERSION",
    "HU_OFFSET",
    "ICH_FRACTION",
    "LIMITS",
    "PARAMS_FILE",
    "SLICE_MM",
    "Head",
    "SynthPatient",
    "SynthSummary",
    "SyntheticSource",
    "Template",
    "check_params",
    "generate",
    "real_templates",
    "synth_patient",
]

GENERATOR_VERSION = 1
ICH_FRACTION = 0.45
LIMITS = {"patients": (1, 10_000), "size": (16, 1024)}


@dataclass
class SynthSummary:
    out: Path
    patients: int
    ich_patients: int
    slices: int
    ich_slices: int
    seed: int
    size: int


def check_params(patients: int, seed: int, size: int) -> None:
    lo, hi = LIMITS["patients"]
    if not lo <= patients <= hi:
        raise UsageError(f"--patients {patients}: expected {lo} to {hi}")
    if seed < 0:
        raise UsageError(f"--seed {seed}: expected an integer >= 0")
    lo, hi = LIMITS["size"]
    if not lo <= size <= hi:
        raise UsageError(f"--size {size}: expected {lo} to {hi} pixels")


def generate(
    out: Path,
    patients: int = 40,
    seed: int = 0,
    size: int = 128,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> SynthSummary:
    """Write a synthetic dataset to `out` atomically: built in a temp folder, then renamed."""
    check_params(patients, seed, size)
    out = Path(out).expanduser()
    check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(out)
    tmp = temp_folder(out)
    try:
        summary = _write_dataset(tmp, patients, seed, size, progress)
        replace(tmp, out)
    except OSError as exc:
        if exc.filename or exc.errno is None:
            raise
        # A failed write() names no file; the temp folder is gone, so name the target.
        strerror = exc.strerror or os.strerror(exc.errno)
        raise OSError(exc.errno, f"{strerror}, writing the synthetic dataset", str(out)) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary.out = out
    return summary


def _write_dataset(
    folder: Path, patients: int, seed: int, size: int, progress: Progress | None
) -> SynthSummary:
    ich_templates, healthy_templates = real_templates()
    root = np.random.default_rng(np.random.SeedSequence([seed, GENERATOR_VERSION]))
    n_ich = int(round(ICH_FRACTION * patients))
    is_ich = np.zeros(patients, dtype=bool)
    is_ich[root.permutation(patients)[:n_ich]] = True
    children = np.random.SeedSequence([seed, GENERATOR_VERSION, 1]).spawn(patients)
    (folder / SCANS).mkdir(parents=True)
    (folder / MASKS).mkdir()
    labels: list[list[object]] = [list(COLUMNS)]
    people: list[SynthPatient] = []
    for i in range(patients):
        rng = np.random.default_rng(children[i])
        pool = ich_templates if is_ich[i] else healthy_templates
        template = pool[int(rng.integers(len(pool)))]
        p = synth_patient(rng, FIRST_PATIENT + i, template, bool(is_ich[i]), size)
        affine = volume_affine(size, p.hu.shape[0])
        _write_nifti(folder / SCANS / f"{p.patient:03d}.nii", to_ras(p.hu), affine, hu=True)
        _write_nifti(folder / MASKS / f"{p.patient:03d}.nii", to_ras(p.mask), affine, hu=False)
        labels.extend(label_rows(p))
        p.hu = p.mask = np.empty(0)  # keep only what the CSVs need
        people.append(p)
        if progress is not None:
            progress(i + 1, patients)
    (folder / NIFTI_LABELS).write_bytes(csv_bytes(labels))
    (folder / DEMOGRAPHICS).write_bytes(csv_bytes(demographics_rows(people)))
    written = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    params = {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "patients": patients,
        "seed": seed,
        "size": size,
        "files": [*written, PARAMS_FILE],
    }
    (folder / PARAMS_FILE).write_text(json.dumps(params, indent=1) + "\n")
    ich_slices = sum(int(p.flags.any(axis=1).sum()) for p in people)
    return SynthSummary(
        folder,
        patients,
        sum(bool(p.flags.any()) for p in people),
        len(labels) - 1,
        ich_slices,
        seed,
        size,
    )


@dataclass
class SyntheticSource:
    """The `synthetic[:PATIENTS[,SEED[,SIZE]]]` dataset: generated once into the cache folder,
    then read by the PhysioNet reader like real data."""

    patients: int = 40
    seed: int = 0
    size: int = 128

    def __post_init__(self) -> None:
        check_params(self.patients, self.seed, self.size)
        self.name = f"synthetic:{self.patients},{self.seed},{self.size}"

    def folder(self, cache_dir: Path | None = None) -> Path:
        """The generated folder, generating it first when absent."""
        base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        target = base / "synthetic" / f"p{self.patients}-s{self.seed}-px{self.size}"
        if (target / NIFTI_LABELS).is_file():
            return target
        # one process generates, the others wait and use its folder: a second generation
        # would replace the folder under a process already reading it
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / f".{target.name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                if not (target / NIFTI_LABELS).is_file():
                    generate(target, self.patients, self.seed, self.size, force=True)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return target

    def load(
        self,
        options: LoadOptions,
        cache_dir: Path,
        progress: Callable[[int, int], None] | None = None,
    ) -> SliceDataset:
        root = self.folder(cache_dir)
        return PhysioNetSource(root, name=self.name).load(options, cache_dir, progress)
