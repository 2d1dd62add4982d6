"""A synthetic CT-ICH dataset in exactly the PhysioNet v1.3.x layout, for use without the data.

Each patient is a stack of axial head-CT phantoms in Hounsfield units: air, scalp, a skull
ring, textured parenchyma, ventricles and sulci, scanner noise, and for ICH patients
hyperdense lesions of the five subtypes spanning consecutive slices. Slice counts, subtype
combinations and bleeding positions are drawn from the real label file packaged with
ichbench (v1.0.0, CC BY 4.0), so bleeding concentrates where it does in the real data. The
label rows are derived from the masks actually drawn, so labels and images never disagree.

The output goes through the same reader as the real data. Same seed, same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from ichbench.data.labels import COLUMNS, read_labels
from ichbench.data.physionet import MASKS, NIFTI_LABELS, SCANS, PhysioNetSource, Progress
from ichbench.errors import UsageError
from ichbench.interfaces import SUBTYPES, LoadOptions, SliceDataset
from ichbench.paths import cache_dir as default_cache_dir

GENERATOR_VERSION = 1
FIRST_PATIENT = 49
ICH_FRACTION = 0.45
FOV_MM = 240.0
SLICE_MM = 5.0
HU_OFFSET = 1024  # stored int16 = HU + 1024; scl_slope 1, scl_inter -1024
PARAMS_FILE = "ichbench-synth.json"
DEMOGRAPHICS = "Patient_demographics.csv"
LIMITS = {"patients": (1, 10_000), "size": (16, 1024)}


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


# --------------------------------------------------------------------------- phantom


@dataclass
class Head:
    """Per-slice geometry in normalised coordinates (rows: anterior -> posterior)."""

    rho: np.ndarray  # (n, H, W) head-ellipse radius, 1 at the outer skull surface
    phi: np.ndarray  # (H, W) angle around the head centre (the same on every slice)
    a: np.ndarray  # lateral coordinate normalised by the brain half-width
    b: np.ndarray  # antero-posterior coordinate normalised by the brain half-length
    brain: np.ndarray  # bool (n, H, W)
    ventricles: np.ndarray  # bool (n, H, W)
    skull_k: float  # skull thickness as a fraction of the radius

    @property
    def rho_brain(self) -> np.ndarray:
        return self.rho / (1 - self.skull_k)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int],
                  sigma_px: float) -> np.ndarray:
    """Unit-variance noise with a correlation length of about `sigma_px` pixels; drawn at a
    coarser grid when the blur allows it (the same texture, far fewer random numbers)."""
    from scipy.ndimage import gaussian_filter

    step = max(1, min(4, int(sigma_px // 1.5)))
    coarse = tuple(max(2, -(-s // step)) for s in shape[1:])
    field = gaussian_filter(rng.standard_normal((shape[0], *coarse), dtype=np.float32),
                            sigma=(0.8, sigma_px / step, sigma_px / step), mode="wrap")
    if step > 1:
        field = _upsample(_upsample(field, shape[1], axis=1), shape[2], axis=2)
    return field / max(float(field.std()), 1e-6)


def _upsample(field: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Linear interpolation of a periodic field along one axis to `length` samples."""
    n = field.shape[axis]
    x = (np.arange(length, dtype=np.float32) + 0.5) * n / length - 0.5
    i0 = np.floor(x).astype(int)
    w = (x - i0).astype(np.float32)
    shape = [1] * field.ndim
    shape[axis] = length
    w = w.reshape(shape)
    lo = np.take(field, i0 % n, axis=axis)
    hi = np.take(field, (i0 + 1) % n, axis=axis)
    return lo + (hi - lo) * w


def _head(rng: np.random.Generator, n: int, size: int, scale: float) -> Head:
    """The head ellipse shrinks towards the skull base and the vertex; its shape in the
    plane does not change along z, so the angle is computed once per patient."""
    t = ((np.arange(n) + 0.5) / n).astype(np.float32)[:, None, None]
    profile = np.maximum(np.sqrt(np.clip(1 - ((t - 0.4) / 0.65) ** 2, 0, None)), 0.3)
    grid = ((np.arange(size) + 0.5) / size * 2 - 1).astype(np.float32)
    y, x = grid[:, None], grid[None, :]
    tilt = float(rng.uniform(-0.14, 0.14))
    cx, cy = (float(c) for c in rng.uniform(-0.04, 0.04, size=2))
    u = np.cos(tilt) * (x - cx) + np.sin(tilt) * (y - cy)
    v = -np.sin(tilt) * (x - cx) + np.cos(tilt) * (y - cy)
    u0, v0 = u / (scale * 0.78), v / (scale * 0.95)  # (H, W), the ellipse at full size
    rho = np.sqrt(u0**2 + v0**2) / profile
    skull_k = float(rng.uniform(0.05, 0.08))
    brain = rho < 1 - skull_k
    a, b = u0 / (1 - skull_k) / profile, v0 / (1 - skull_k) / profile
    vent_profile = np.sqrt(np.clip(1 - ((t - 0.56) / 0.17) ** 2, 0, None))
    offset, half_w = float(rng.uniform(0.12, 0.17)), float(rng.uniform(0.06, 0.1))
    half_l = 0.32
    ventricles = np.zeros_like(brain)
    zs = np.flatnonzero(vent_profile[:, 0, 0] > 0)
    if zs.size:
        sl = slice(int(zs[0]), int(zs[-1]) + 1)
        for side in (-1, 1):
            ventricles[sl] |= ((a[sl] - side * offset) / half_w) ** 2 \
                + ((b[sl] + 0.03) / half_l) ** 2 < vent_profile[sl] ** 2
    return Head(rho, np.arctan2(v0, u0), a, b, brain, ventricles & brain, skull_k)


def _anatomy(rng: np.random.Generator, head: Head, size: int) -> np.ndarray:
    """HU of the healthy head: air, scalp, skull, parenchyma, sulci, ventricles."""
    shape = head.rho.shape
    texture = _smooth_noise(rng, shape, size / 40)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    scalp = head.rho < 1.035
    hu[scalp] = 35.0 + 6.0 * texture[scalp]
    skull = scalp & ~head.brain & (head.rho < 1.0)
    base = float(rng.uniform(950, 1250))
    hu[skull] = np.clip(base + 180.0 * texture[skull], 720, 1480)
    parenchyma = 31.0 + 4.0 * texture + 4.0 * (head.rho_brain > 0.82)
    hu[head.brain] = np.clip(parenchyma[head.brain], 21, 44)
    phase, freq = float(rng.uniform(0, 2 * np.pi)), int(rng.integers(18, 30))
    sulci = head.brain & (head.rho_brain > 0.9) & (np.sin(head.phi * freq + phase
                                                          + 2.5 * texture) > 0.35)
    hu[sulci] = 7.0 + 2.0 * texture[sulci]
    hu[head.ventricles] = np.clip(8.0 + 2.5 * texture[head.ventricles], 1, 14)
    return hu


def _angle_gap(phi: np.ndarray, theta: float) -> np.ndarray:
    return np.abs((phi - theta + np.pi) % (2 * np.pi) - np.pi)


def _region(rng: np.random.Generator, subtype: str, head: Head, zs: np.ndarray,
            sl: slice) -> np.ndarray:
    """The voxels of one lesion over slices `sl`; `zs` (m, 1, 1) shrinks it towards its ends."""
    brain, rho_b, phi = head.brain[sl], head.rho_brain[sl], head.phi
    depth = 1 - rho_b
    theta = float(rng.uniform(-np.pi, np.pi))
    if subtype == "Epidural":  # biconvex lens against the inner table
        hw, thick = float(rng.uniform(0.25, 0.5)), float(rng.uniform(0.08, 0.2))
        profile = np.clip(1 - (_angle_gap(phi, theta) / hw) ** 2, 0, None)
        return brain & (depth < thick * zs * profile)
    if subtype == "Subdural":  # thin crescent following the skull
        hw, thick = float(rng.uniform(0.6, 1.3)), float(rng.uniform(0.025, 0.07))
        profile = np.clip(1 - (_angle_gap(phi, theta) / hw) ** 6, 0, None)
        return brain & (depth < thick * zs * profile)
    if subtype == "Subarachnoid":  # thin, along the sulci at the surface
        hw, thick = float(rng.uniform(0.4, 1.2)), float(rng.uniform(0.03, 0.06))
        freq, phase = int(rng.integers(14, 26)), float(rng.uniform(0, 2 * np.pi))
        return brain & (depth < thick * zs) & (_angle_gap(phi, theta) < hw) \
            & (np.sin(phi * freq + phase) > 0.1)
    if subtype == "Intraventricular":  # blood layering in the posterior horns
        cut = float(rng.uniform(-0.12, 0.12))
        return head.ventricles[sl] & (head.b[sl] > cut + (1 - zs) * 0.25)
    radius = float(rng.uniform(0.06, 0.2))  # Intraparenchymal: an irregular blob
    r0 = float(np.sqrt(rng.uniform(0, 1))) * 0.55
    a0, b0 = r0 * np.cos(theta), r0 * np.sin(theta)
    dist = np.sqrt((head.a[sl] - a0) ** 2 + (head.b[sl] - b0) ** 2)
    wobble = _smooth_noise(rng, dist.shape, max(dist.shape[-1] / 30, 1.0))
    return brain & (dist + 0.25 * radius * wobble < radius * zs)


def _draw_lesions(rng: np.random.Generator, head: Head, hu: np.ndarray, template: Template,
                  size: int) -> tuple[np.ndarray, np.ndarray]:
    """Paint lesions into `hu`; returns the mask and the (n, 5) subtype flags drawn."""
    n = hu.shape[0]
    mask = np.zeros(hu.shape, dtype=np.uint8)
    flags = np.zeros((n, len(SUBTYPES)), dtype=np.uint8)
    min_px = max(2, round(6 * (size / 128) ** 2))
    plan = list(template.subtypes.items())
    for attempt in range(4):
        if attempt:  # nothing visible was drawn: add a clear parenchymal bleed mid-stack
            plan = [("Intraparenchymal", (rng.uniform(0.4, 0.6), 3 / n))]
        for subtype, (position, fraction) in plan:
            center = float(np.clip(position * (n - 1) + rng.normal(0, 0.04 * n), 0, n - 1))
            half = max(1.0, fraction * n / 2 * rng.uniform(0.8, 1.25))
            lo, hi = max(0, round(center - half)), min(n - 1, round(center + half))
            sl = slice(lo, hi + 1)
            z = np.arange(lo, hi + 1, dtype=np.float32)[:, None, None]
            zs = 0.5 + 0.5 * np.sqrt(np.clip(1 - ((z - center) / (half + 0.5)) ** 2, 0, None))
            region = _region(rng, subtype, head, zs, sl)
            region &= (region.sum(axis=(1, 2)) >= min_px)[:, None, None]
            level = float(rng.uniform(50, 90))
            texture = 2.0 * rng.standard_normal(region.shape, dtype=np.float32)
            block = hu[sl]
            block[region] = level + texture[region]
            mask[sl][region] = 1
            flags[lo:hi + 1, SUBTYPES.index(subtype)] |= region.any(axis=(1, 2))
        if flags.any():
            break
    return mask, flags


@dataclass
class SynthPatient:
    patient: int
    hu: np.ndarray  # float32 (n, H, W), display orientation, slice 0 = most inferior
    mask: np.ndarray  # uint8 (n, H, W)
    flags: np.ndarray  # uint8 (n, 5) in SUBTYPES order
    age: float
    sex: str


def synth_patient(rng: np.random.Generator, patient: int, template: Template, ich: bool,
                  size: int) -> SynthPatient:
    """One patient: head size from child to adult, anatomy, noise and (if ICH) lesions."""
    child = rng.uniform() < 0.25
    age = float(rng.uniform(0.5, 16) if child else rng.uniform(18, 85))
    scale = 0.62 + 0.3 * min(age, 18) / 18 + rng.uniform(-0.03, 0.03)
    head = _head(rng, template.n_slices, size, min(scale, 0.97))
    hu = _anatomy(rng, head, size)
    if ich:
        mask, flags = _draw_lesions(rng, head, hu, template, size)
    else:
        mask = np.zeros(hu.shape, dtype=np.uint8)
        flags = np.zeros((template.n_slices, len(SUBTYPES)), dtype=np.uint8)
    hu += float(rng.uniform(3, 7)) * rng.standard_normal(hu.shape, dtype=np.float32)
    np.clip(hu, -HU_OFFSET, 3000, out=hu)
    sex = "Male" if rng.uniform() < 0.55 else "Female"
    return SynthPatient(patient, hu, mask, flags, round(age, 1), sex)


# --------------------------------------------------------------------------- writing


def _to_ras(display: np.ndarray) -> np.ndarray:
    """Display stack (z, row, col) -> voxel array (x, y, z) for a RAS+ affine (the reader's
    inverse: anterior up, patient's left on the image's right)."""
    return np.ascontiguousarray(display[:, ::-1, ::-1].transpose(2, 1, 0))


def _affine(size: int, n: int) -> np.ndarray:
    spacing = FOV_MM / size
    affine = np.diag([spacing, spacing, SLICE_MM, 1.0])
    affine[:3, 3] = [-FOV_MM / 2, -FOV_MM / 2, -SLICE_MM * (n - 1) / 2]
    return affine


def _write_nifti(path: Path, voxels: np.ndarray, affine: np.ndarray, *, hu: bool) -> None:
    import nibabel as nib

    data = (np.rint(voxels) + HU_OFFSET).astype(np.int16) if hu else voxels.astype(np.uint8)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    if hu:
        img.header.set_slope_inter(1.0, float(-HU_OFFSET))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.to_filename(str(path))


def _csv_bytes(rows: list[list[object]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return b"\xef\xbb\xbf" + buffer.getvalue().encode("utf-8")


def _label_rows(p: SynthPatient) -> list[list[object]]:
    rows = []
    for k, flags in enumerate(p.flags.tolist(), start=1):
        healthy = 0 if any(flags) else 1
        rows.append([p.patient, k, *flags, healthy, 0])
    return rows


def _demographics_rows(people: list[SynthPatient]) -> list[list[object]]:
    head1 = ["Patient Number", "Age\n(years)", "Gender", "Hemorrhage type based on the "
             "radiologist diagnosis", "", "", "", "", "Fracture (yes 1/no 0)", "Note"]
    head2 = ["", "", "", *SUBTYPES, "", ""]
    rows: list[list[object]] = [head1, head2]
    for p in people:
        present = p.flags.any(axis=0)
        rows.append([p.patient, p.age, p.sex, *[1 if f else "" for f in present], 0,
                     "synthetic"])
    return rows


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


def generate(out: Path, patients: int = 40, seed: int = 0, size: int = 128, *,
             force: bool = False, progress: Progress | None = None) -> SynthSummary:
    """Write a synthetic dataset to `out` atomically: built in a temp folder, then renamed."""
    check_params(patients, seed, size)
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise UsageError(f"{out} already exists and is not empty (use --force to replace it)")
        if not _looks_generated(out):
            raise UsageError(f"Refusing to replace {out}: it does not look like a generated "
                             "dataset")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        summary = _write_dataset(tmp, patients, seed, size, progress)
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary.out = out
    return summary


def _remove_dead_temps(out: Path) -> None:
    """Temp folders of generators that were killed are never read; reclaim their space."""
    from ichbench.data.cache import pid_alive

    for old in out.parent.glob(f".{out.name}.tmp-*"):
        pid = old.name[len(f".{out.name}.tmp-"):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


def _looks_generated(folder: Path) -> bool:
    """--force replaces a previous dataset, never an unrelated folder given by mistake."""
    return folder.is_dir() and ((folder / PARAMS_FILE).is_file()
                                or (folder / NIFTI_LABELS).is_file() or (folder / SCANS).is_dir())


def _replace(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        tmp.rename(out)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        tmp.rename(out)


def _write_dataset(folder: Path, patients: int, seed: int, size: int,
                   progress: Progress | None) -> SynthSummary:
    ich_templates, healthy_templates = real_templates()
    root = np.random.default_rng(np.random.SeedSequence([seed, GENERATOR_VERSION]))
    n_ich = int(round(ICH_FRACTION * patients))
    is_ich = np.zeros(patients, dtype=bool)
    is_ich[root.permutation(patients)[:n_ich]] = True
    children = np.random.SeedSequence([seed, GENERATOR_VERSION, 1]).spawn(patients)
    (folder / SCANS).mkdir(parents=True)
    (folder / MASKS).mkdir()
    label_rows: list[list[object]] = [list(COLUMNS)]
    people: list[SynthPatient] = []
    for i in range(patients):
        rng = np.random.default_rng(children[i])
        pool = ich_templates if is_ich[i] else healthy_templates
        template = pool[int(rng.integers(len(pool)))]
        p = synth_patient(rng, FIRST_PATIENT + i, template, bool(is_ich[i]), size)
        affine = _affine(size, p.hu.shape[0])
        _write_nifti(folder / SCANS / f"{p.patient:03d}.nii", _to_ras(p.hu), affine, hu=True)
        _write_nifti(folder / MASKS / f"{p.patient:03d}.nii", _to_ras(p.mask), affine, hu=False)
        label_rows.extend(_label_rows(p))
        p.hu = p.mask = np.empty(0)  # keep only what the CSVs need
        people.append(p)
        if progress is not None:
            progress(i + 1, patients)
    (folder / NIFTI_LABELS).write_bytes(_csv_bytes(label_rows))
    (folder / DEMOGRAPHICS).write_bytes(_csv_bytes(_demographics_rows(people)))
    params = {"generator": "ichbench synthetic", "version": GENERATOR_VERSION,
              "patients": patients, "seed": seed, "size": size}
    (folder / PARAMS_FILE).write_text(json.dumps(params, indent=1) + "\n")
    ich_slices = sum(int(p.flags.any(axis=1).sum()) for p in people)
    return SynthSummary(folder, patients, sum(bool(p.flags.any()) for p in people),
                        len(label_rows) - 1, ich_slices, seed, size)


# --------------------------------------------------------------------------- dataset source


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
        if not (target / NIFTI_LABELS).is_file():
            generate(target, self.patients, self.seed, self.size, force=True)
        return target

    def load(self, options: LoadOptions, cache_dir: Path,
             progress: Callable[[int, int], None] | None = None) -> SliceDataset:
        root = self.folder(cache_dir)
        return PhysioNetSource(root, name=self.name).load(options, cache_dir, progress)
