"""One synthetic patient, modelled on a real one: the phantom head, scanner noise and, for
an ICH patient, lesions where the real patient's bleeding was.

Slice counts, subtype combinations and bleeding positions come from the real label file
packaged with ichbench (v1.0.0, CC BY 4.0), so bleeding concentrates where it does in the
real data.

A `Difficulty` says how much of what makes real scans hard is added: `easy` is the plain
phantom (the generator's original output, draw for draw); `real` and `hard` add dense
things that are not bleeding (calcifications, bone and streaks at the skull base, motion),
smaller and fainter lesions, and scanners that differ in noise and calibration. Their
extra draws come from the same patient generator, after the lesions, so the same seed
still gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from ichbench.data.labels import read_labels
from ichbench.data.lesions import draw_lesions
from ichbench.data.phantom import (
    anatomy,
    calcifications,
    head_geometry,
    motion_blur,
    scanner_offset,
    skull_base,
)
from ichbench.data.synth_files import HU_OFFSET
from ichbench.interfaces import SUBTYPES


@dataclass(frozen=True)
class Template:
    """What one real patient contributes: slice count and, per subtype, where and how long."""

    n_slices: int
    subtypes: dict[str, tuple[float, float]]  # name -> (mean relative position, slice fraction)


@lru_cache(maxsize=1)
def real_templates() -> tuple[tuple[Template, ...], tuple[Template, ...]]:
    """(ICH patients, healthy patients) of the packaged real label file."""
    ref = resources.files("ichbench.data") / "resources" / "hemorrhage_diagnosis.csv"
    with resources.as_file(ref) as path:
        table = read_labels(path)
    ich, healthy = [], []
    for pid in table.patients():
        rows = table.rows_of(pid)
        n = rows.size
        pos = (table.slice_numbers[rows] - 1) / max(n - 1, 1)
        found = {}
        for j, name in enumerate(SUBTYPES):
            hit = table.subtypes[rows, j] == 1
            if hit.any():
                found[name] = (float(pos[hit].mean()), float(hit.sum()) / n)
        (ich if table.labels[rows].any() else healthy).append(Template(n, found))
    return tuple(ich), tuple(healthy)


@dataclass(frozen=True)
class Difficulty:
    """What one difficulty level adds to the phantom; zero (or the easy range) adds nothing."""

    name: str
    noise_hu: tuple[float, float]  # range of a patient's noise SD (a scanner's dose)
    lesion_hu: tuple[float, float]  # range of a lesion's density
    lesion_scale: float  # lesion thickness, width and radius, relative to easy
    calcification: float  # chance of each calcified structure (choroid, pineal, falx)
    skull_base: float  # chance of bone and streaks low in the head; their strength too
    motion: float  # chance that a patient moved during a few slices
    hu_offset: float  # a scanner's calibration: tissue shifted by up to +- this many HU


DIFFICULTIES: dict[str, Difficulty] = {
    d.name: d
    for d in (
        Difficulty("easy", (3, 7), (50, 90), 1.0, 0.0, 0.0, 0.0, 0.0),
        Difficulty("real", (3, 8), (48, 90), 0.95, 0.3, 0.15, 0.1, 1.5),
        Difficulty("hard", (6, 20), (38, 80), 0.7, 0.8, 0.9, 0.5, 10.0),
    )
}
"""The difficulty levels, easiest first; `easy` is the default."""

EASY = DIFFICULTIES["easy"]


@dataclass
class SynthPatient:
    patient: int
    hu: np.ndarray  # float32 (n, H, W), display orientation, slice 0 = most inferior
    mask: np.ndarray  # uint8 (n, H, W)
    flags: np.ndarray  # uint8 (n, 5) in SUBTYPES order
    age: float
    sex: str
    mimics: np.ndarray | None = None  # bool (n, H, W): dense voxels that are not blood


def synth_patient(
    rng: np.random.Generator,
    patient: int,
    template: Template,
    ich: bool,
    size: int,
    difficulty: Difficulty = EASY,
) -> SynthPatient:
    """One patient: head size from child to adult, anatomy, noise and (if ICH) lesions, and
    what `difficulty` adds. Mimics go only where no lesion was drawn, so the mask (and the
    labels read from it) stays exactly the blood."""
    child = rng.uniform() < 0.25
    age = float(rng.uniform(0.5, 16) if child else rng.uniform(18, 85))
    scale = 0.62 + 0.3 * min(age, 18) / 18 + rng.uniform(-0.03, 0.03)
    head = head_geometry(rng, template.n_slices, size, min(scale, 0.97))
    hu = anatomy(rng, head, size)
    if ich:
        mask, flags = draw_lesions(
            rng,
            head,
            hu,
            template,
            size,
            level=difficulty.lesion_hu,
            scale=difficulty.lesion_scale,
        )
    else:
        mask = np.zeros(hu.shape, dtype=np.uint8)
        flags = np.zeros((template.n_slices, len(SUBTYPES)), dtype=np.uint8)
    mimics = None
    if difficulty != EASY:
        free = mask == 0
        mimics = calcifications(rng, head, hu, free, difficulty.calcification, size)
        mimics |= skull_base(rng, head, hu, free, difficulty.skull_base, size)
        motion_blur(rng, hu, difficulty.motion, size)
        scanner_offset(rng, hu, difficulty.hu_offset)
    hu += float(rng.uniform(*difficulty.noise_hu)) * rng.standard_normal(hu.shape, dtype=np.float32)
    np.clip(hu, -HU_OFFSET, 3000, out=hu)
    sex = "Male" if rng.uniform() < 0.55 else "Female"
    return SynthPatient(patient, hu, mask, flags, round(age, 1), sex, mimics)
