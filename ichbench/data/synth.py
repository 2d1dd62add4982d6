"""A synthetic CT-ICH dataset in exactly the PhysioNet v1.3.x layout, for use without the data.

Each patient is a stack of axial head-CT phantoms in Hounsfield units (`ichbench.data.phantom`)
and, for ICH patients, hyperdense lesions of the five subtypes spanning consecutive slices
(`ichbench.data.lesions`), modelled on a real patient of the packaged label file
(`ichbench.data.synth_patients`). The label rows are derived from the masks actually drawn,
so labels and images never disagree.

The output goes through the same reader as the real data. Same seed, same bytes: every
patient draws from its own child of one seed sequence, in a fixed order.

The difficulty (`easy`, `real`, `hard`; see `Difficulty`) says how much of what makes real
scans hard is added. `easy` writes exactly what the generator wrote before difficulties
existed, mark included: a mark without a `difficulty` is an easy dataset.
"""

from __future__ import annotations

import fcntl
import inspect
import json
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
from ichbench.data.synth_patients import (
    DIFFICULTIES,
    Difficulty,
    SynthPatient,
    Template,
    real_templates,
    synth_patient,
)
from ichbench.data.synth_target import built_beside
from ichbench.errors import UsageError
from ichbench.interfaces import LoadOptions, SliceDataset
from ichbench.paths import cache_dir as default_cache_dir

__all__ = [
    "DEFAULT_DIFFICULTY",
    "DEMOGRAPHICS",
    "DIFFICULTIES",
    "FIRST_PATIENT",
    "FOV_MM",
    "GENERATOR_VERSION",
    "HU_OFFSET",
    "ICH_FRACTION",
    "LIMITS",
    "PARAMS_FILE",
    "SLICE_MM",
    "Difficulty",
    "Head",
    "SynthPatient",
    "SynthSummary",
    "SyntheticSource",
    "Template",
    "check_params",
    "difficulty_choices",
    "generate",
    "made_with",
    "real_templates",
    "synth_patient",
]

GENERATOR_VERSION = 1
ICH_FRACTION = 0.45
LIMITS = {"patients": (1, 10_000), "size": (16, 1024)}
DEFAULT_DIFFICULTY = "easy"


@dataclass
class SynthSummary:
    out: Path
    patients: int
    ich_patients: int
    slices: int
    ich_slices: int
    seed: int
    size: int
    difficulty: str = DEFAULT_DIFFICULTY


def difficulty_choices() -> str:
    """The difficulty names for a message: `easy, real or hard`."""
    names = list(DIFFICULTIES)
    return ", ".join(names[:-1]) + " or " + names[-1]


def check_params(patients: int, seed: int, size: int, difficulty: str = DEFAULT_DIFFICULTY) -> None:
    lo, hi = LIMITS["patients"]
    if not lo <= patients <= hi:
        raise UsageError(f"--patients {patients}: expected {lo} to {hi}")
    if seed < 0:
        raise UsageError(f"--seed {seed}: expected an integer >= 0")
    lo, hi = LIMITS["size"]
    if not lo <= size <= hi:
        raise UsageError(f"--size {size}: expected {lo} to {hi} pixels")
    if difficulty not in DIFFICULTIES:
        raise UsageError(f"--difficulty {difficulty!r}: expected {difficulty_choices()}")


def generate(
    out: Path,
    patients: int = 40,
    seed: int = 0,
    size: int = 128,
    difficulty: str = DEFAULT_DIFFICULTY,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> SynthSummary:
    """Write a synthetic dataset to `out` atomically: built in a temp folder, then renamed."""
    check_params(patients, seed, size, difficulty)
    out = Path(out).expanduser()
    with built_beside(out, force) as tmp:
        summary = _write_dataset(tmp, patients, seed, size, DIFFICULTIES[difficulty], progress)
    summary.out = out
    return summary


def _write_dataset(
    folder: Path,
    patients: int,
    seed: int,
    size: int,
    difficulty: Difficulty,
    progress: Progress | None,
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
        p = synth_patient(rng, FIRST_PATIENT + i, template, bool(is_ich[i]), size, difficulty)
        affine = volume_affine(size, p.hu.shape[0])
        _write_nifti(folder / SCANS / f"{p.patient:03d}.nii", to_ras(p.hu), affine, hu=True)
        _write_nifti(folder / MASKS / f"{p.patient:03d}.nii", to_ras(p.mask), affine, hu=False)
        labels.extend(label_rows(p))
        p.hu = p.mask = np.empty(0)  # keep only what the CSVs need
        p.mimics = None
        people.append(p)
        if progress is not None:
            progress(i + 1, patients)
    (folder / NIFTI_LABELS).write_bytes(csv_bytes(labels))
    (folder / DEMOGRAPHICS).write_bytes(csv_bytes(demographics_rows(people)))
    written = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    params: dict[str, object] = {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "patients": patients,
        "seed": seed,
        "size": size,
    }
    if difficulty.name != DEFAULT_DIFFICULTY:  # an easy mark stays the one it always was
        params["difficulty"] = difficulty.name
    params["files"] = [*written, PARAMS_FILE]
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
        difficulty.name,
    )


def made_with(folder: Path, patients: int, seed: int, size: int, difficulty: str) -> bool:
    """Whether `folder` holds a finished dataset the generator wrote with these parameters,
    by its mark (a mark without `difficulty` is easy): a folder generated at one difficulty
    is never taken for another."""
    if not (folder / NIFTI_LABELS).is_file():
        return False
    try:
        params = json.loads((folder / PARAMS_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(params, dict) or params.get("generator") != GENERATOR_NAME:
        return False
    wanted = {"patients": patients, "seed": seed, "size": size}
    return all(params.get(k) == v for k, v in wanted.items()) and (
        params.get("difficulty", DEFAULT_DIFFICULTY) == difficulty
    )


def _staged(progress: Callable[..., None] | None, stage: str) -> Progress | None:
    """`progress` told which stage it hears of, where it takes a `description` (the
    core's do); a caller's plain `(done, total)` callback hears the counts alone."""
    if progress is None:
        return None
    try:
        params = inspect.signature(progress).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: no signature to read
        return progress
    if any(p.name == "description" or p.kind is p.VAR_KEYWORD for p in params):
        return lambda done, total: progress(done, total, description=stage)
    return progress


@dataclass
class SyntheticSource:
    """The `synthetic[:PATIENTS[,SEED[,SIZE[,DIFFICULTY]]]]` dataset: generated once into the
    cache folder, then read by the PhysioNet reader like real data. An easy dataset keeps
    the name and folder it had before difficulties existed; another level adds its name to
    both."""

    patients: int = 40
    seed: int = 0
    size: int = 128
    difficulty: str = DEFAULT_DIFFICULTY

    def __post_init__(self) -> None:
        check_params(self.patients, self.seed, self.size, self.difficulty)
        self.name = f"synthetic:{self.patients},{self.seed},{self.size}"
        if self.difficulty != DEFAULT_DIFFICULTY:
            self.name += f",{self.difficulty}"

    def _ready(self, target: Path) -> bool:
        return made_with(target, self.patients, self.seed, self.size, self.difficulty)

    def folder(
        self, cache_dir: Path | None = None, progress: Callable[..., None] | None = None
    ) -> Path:
        """The generated folder, generating it first when absent or when its mark says it
        was generated with other parameters; `progress(done, total, description=...)`
        hears of the generation, which takes a while on first use."""
        base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        name = f"p{self.patients}-s{self.seed}-px{self.size}"
        if self.difficulty != DEFAULT_DIFFICULTY:
            name += f"-{self.difficulty}"
        target = base / "synthetic" / name
        if self._ready(target):
            return target
        # one process generates, the others wait and use its folder: a second generation
        # would replace the folder under a process already reading it
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / f".{target.name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                if not self._ready(target):
                    stage = f"Generating {self.name} (first use; kept in {target})"
                    generate(
                        target,
                        self.patients,
                        self.seed,
                        self.size,
                        self.difficulty,
                        force=True,
                        progress=_staged(progress, stage),
                    )
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return target

    def load(
        self,
        options: LoadOptions,
        cache_dir: Path,
        progress: Callable[[int, int], None] | None = None,
    ) -> SliceDataset:
        root = self.folder(cache_dir, progress)
        return PhysioNetSource(root, name=self.name).load(options, cache_dir, progress)
