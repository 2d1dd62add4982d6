"""The healthy synthetic head, in Hounsfield units: air, scalp, a skull ring, textured
parenchyma, sulci and ventricles, shaped slice by slice from the skull base to the vertex.

What makes a real scan harder than the plain head comes in small steps a difficulty level
turns on: calcifications that are dense but not blood (choroid plexus, pineal gland,
falx), partial-volume bone and beam-hardening streaks at the skull base, motion blur on a
few slices, and a scanner's calibration offset. A dense mimic is painted only where the
caller allows (never on a lesion), and each step returns where it painted.

Every random number is drawn from the caller's generator in a fixed order, so the same
seed draws the same head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ichbench.data.synth_files import FOV_MM


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


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], sigma_px: float
) -> np.ndarray:
    """Unit-variance noise with a correlation length of about `sigma_px` pixels; drawn at a
    coarser grid when the blur allows it (the same texture, far fewer random numbers)."""
    from scipy.ndimage import gaussian_filter

    step = max(1, min(4, int(sigma_px // 1.5)))
    coarse = tuple(max(2, -(-s // step)) for s in shape[1:])
    field = gaussian_filter(
        rng.standard_normal((shape[0], *coarse), dtype=np.float32),
        sigma=(0.8, sigma_px / step, sigma_px / step),
        mode="wrap",
    )
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


def head_geometry(rng: np.random.Generator, n: int, size: int, scale: float) -> Head:
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
            ventricles[sl] |= ((a[sl] - side * offset) / half_w) ** 2 + (
                (b[sl] + 0.03) / half_l
            ) ** 2 < vent_profile[sl] ** 2
    return Head(rho, np.arctan2(v0, u0), a, b, brain, ventricles & brain, skull_k)


def anatomy(rng: np.random.Generator, head: Head, size: int) -> np.ndarray:
    """HU of the healthy head: air, scalp, skull, parenchyma, sulci, ventricles."""
    shape = head.rho.shape
    texture = smooth_noise(rng, shape, size / 40)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    scalp = head.rho < 1.035
    hu[scalp] = 35.0 + 6.0 * texture[scalp]
    skull = scalp & ~head.brain & (head.rho < 1.0)
    base = float(rng.uniform(950, 1250))
    hu[skull] = np.clip(base + 180.0 * texture[skull], 720, 1480)
    parenchyma = 31.0 + 4.0 * texture + 4.0 * (head.rho_brain > 0.82)
    hu[head.brain] = np.clip(parenchyma[head.brain], 21, 44)
    phase, freq = float(rng.uniform(0, 2 * np.pi)), int(rng.integers(18, 30))
    sulci = (
        head.brain
        & (head.rho_brain > 0.9)
        & (np.sin(head.phi * freq + phase + 2.5 * texture) > 0.35)
    )
    hu[sulci] = 7.0 + 2.0 * texture[sulci]
    hu[head.ventricles] = np.clip(8.0 + 2.5 * texture[head.ventricles], 1, 14)
    return hu


# --------------------------------------------------------------------------- mimics


def _px_per_unit(head: Head, z: int) -> float:
    """Pixels per unit of the brain's normalised coordinates on slice `z` (laterally)."""
    a = head.a[z]
    return 1.0 / max(float(np.hypot(a[0, 1] - a[0, 0], a[1, 0] - a[0, 0])), 1e-6)


def _nearest_pixel(head: Head, z: int, a0: float, b0: float) -> tuple[int, int]:
    """The pixel of slice `z` at normalised brain coordinates (a0, b0)."""
    d2 = (head.a[z] - a0) ** 2 + (head.b[z] - b0) ** 2
    r, c = np.unravel_index(int(np.argmin(d2)), d2.shape)
    return int(r), int(c)


def _blend(hu: np.ndarray, weight: np.ndarray, peak: float, allowed: np.ndarray) -> np.ndarray:
    """Mix `hu` towards `peak` by `weight` (0..1) where allowed: a dense object that fills
    part of a voxel (partial volume). Returns where it painted."""
    painted = allowed & (weight > 0.05)
    hu[painted] += (peak - hu[painted]) * weight[painted]
    return painted


def _gaussian_spot(shape: tuple[int, int], centre: tuple[int, int], sigma_px: float) -> np.ndarray:
    rows = np.arange(shape[0], dtype=np.float32)[:, None] - centre[0]
    cols = np.arange(shape[1], dtype=np.float32)[None, :] - centre[1]
    return np.exp(-(rows**2 + cols**2) / (2 * sigma_px**2))


def _slice_between(rng: np.random.Generator, zs: np.ndarray, lo: float, hi: float) -> int:
    """One of the slices `zs`, between fractions `lo` and `hi` of their run."""
    first = int(zs.size * lo)
    return int(zs[int(rng.integers(first, max(first + 1, int(zs.size * hi))))])


def choroid_plexus(
    rng: np.random.Generator, head: Head, hu: np.ndarray, allowed: np.ndarray, size: int
) -> np.ndarray:
    """Calcified glomus of the choroid plexus, in the back of each lateral ventricle's
    atrium (on both sides three times in four), over three slices. Returns where painted."""
    painted = np.zeros(hu.shape, dtype=bool)
    vent = np.flatnonzero(head.ventricles.any(axis=(1, 2)))
    if not vent.size:
        return painted
    both = rng.uniform() < 0.75
    sides = (-1, 1) if both else (int(rng.choice((-1, 1))),)
    z0 = _slice_between(rng, vent, 1 / 3, 2 / 3)
    for side in sides:
        sigma = float(rng.uniform(1.5, 3.5)) * size / FOV_MM
        peak = float(rng.uniform(80, 300))
        for z in range(max(0, z0 - 1), min(hu.shape[0], z0 + 2)):
            atrium = head.ventricles[z] & (side * head.a[z] > 0)
            if not atrium.any():
                continue
            back = atrium & (head.b[z] >= np.quantile(head.b[z][atrium], 0.75))
            centre = tuple(int(round(float(i.mean()))) for i in np.nonzero(back))
            spot = _gaussian_spot(hu.shape[1:], centre, max(sigma, 0.6))
            painted[z] |= _blend(hu[z], spot, peak, allowed[z])
    return painted


def pineal_gland(
    rng: np.random.Generator, head: Head, hu: np.ndarray, allowed: np.ndarray, size: int
) -> np.ndarray:
    """A calcified pineal gland: a dense dot on the midline behind the third ventricle, on
    one or two slices. Returns where painted."""
    painted = np.zeros(hu.shape, dtype=bool)
    vent = np.flatnonzero(head.ventricles.any(axis=(1, 2)))
    if not vent.size:
        return painted
    z0 = _slice_between(rng, vent, 1 / 4, 1 / 2)
    b0 = float(rng.uniform(0.1, 0.22))
    sigma = float(rng.uniform(1.5, 3.0)) * size / FOV_MM
    peak = float(rng.uniform(80, 250))
    for z in range(z0, min(hu.shape[0], z0 + int(rng.integers(1, 3)))):
        spot = _gaussian_spot(hu.shape[1:], _nearest_pixel(head, z, 0.0, b0), max(sigma, 0.6))
        painted[z] |= _blend(hu[z], spot, peak, allowed[z])
    return painted


def falx_plaques(
    rng: np.random.Generator, head: Head, hu: np.ndarray, allowed: np.ndarray, size: int
) -> np.ndarray:
    """One to three calcified plaques along the falx, high in the head: short dense lines
    on the midline, much like a thin falcine bleed. Returns where painted."""
    painted = np.zeros(hu.shape, dtype=bool)
    n = hu.shape[0]
    for _ in range(int(rng.integers(1, 4))):
        z0 = int(rng.uniform(0.62, 0.9) * n)
        b0, half = float(rng.uniform(-0.75, 0.75)), float(rng.uniform(0.05, 0.2))
        sigma = float(rng.uniform(0.8, 1.6)) * size / FOV_MM
        peak = float(rng.uniform(70, 220))
        for z in range(z0, min(n, z0 + int(rng.integers(1, 3)))):
            across = np.abs(head.a[z]) * _px_per_unit(head, z)
            along = np.clip(1 - ((head.b[z] - b0) / half) ** 2, 0, None)
            weight = np.exp(-(across**2) / (2 * max(sigma, 0.5) ** 2)) * np.sqrt(along)
            painted[z] |= _blend(hu[z], weight, peak, allowed[z])
    return painted


def calcifications(
    rng: np.random.Generator,
    head: Head,
    hu: np.ndarray,
    free: np.ndarray,
    chance: float,
    size: int,
) -> np.ndarray:
    """Physiological calcifications, each present with probability `chance`: the choroid
    plexus, the pineal gland and plaques along the falx. They are 70-300 HU at their core
    and a few millimetres across, so once resized they look much like a small bleed.
    Painted only inside the brain where `free`; returns the voxels painted."""
    painted = np.zeros(hu.shape, dtype=bool)
    if chance <= 0:
        return painted
    allowed = free & head.brain
    has_ventricles = bool(head.ventricles.any())
    if rng.uniform() < chance and has_ventricles:
        painted |= choroid_plexus(rng, head, hu, allowed, size)
    if rng.uniform() < chance and has_ventricles:
        painted |= pineal_gland(rng, head, hu, allowed, size)
    if rng.uniform() < chance:
        painted |= falx_plaques(rng, head, hu, allowed, size)
    return painted


def skull_base(
    rng: np.random.Generator,
    head: Head,
    hu: np.ndarray,
    free: np.ndarray,
    chance: float,
    size: int,
) -> np.ndarray:
    """The lowest slices of a real scan, with probability `chance` (also their strength):
    the skull floor cut obliquely leaves partial-volume bone inside the brain outline
    (orbital roofs in front, petrous ridges behind), and dense bone hardens the beam into a
    dark band between the petrous ridges and streaks radiating across the posterior fossa.
    Bone is painted only where `free`; the streaks cross everything. Returns the voxels of
    bone painted."""
    painted = np.zeros(hu.shape, dtype=bool)
    if chance <= 0 or rng.uniform() >= chance:
        return painted
    n = hu.shape[0]
    px_mm = size / FOV_MM
    reach = float(rng.uniform(0.18, 0.3))  # the fraction of the stack the skull base spans
    field = smooth_noise(rng, hu.shape, max(size / 48, 1.0))
    peak = float(rng.uniform(90, 300))
    bar_b, bar_hu = float(rng.uniform(0.0, 0.2)), float(rng.uniform(12, 35)) * chance
    freq, phase = int(rng.integers(6, 14)), float(rng.uniform(0, 2 * np.pi))
    streak_hu = float(rng.uniform(6, 20)) * chance
    for z in range(n):
        w = 1 - ((z + 0.5) / n) / reach
        if w <= 0:
            break
        brain = head.brain[z]
        a, b, rho_b = head.a[z], head.b[z], head.rho_brain[z]
        px = _px_per_unit(head, z)
        rim = np.clip((rho_b - (1 - 0.3 * w)) / (0.3 * w), 0, 1)
        front = np.clip((-b - 0.35) / 0.4, 0, 1)
        ridge = np.clip(1 - np.abs(b - 0.55 * np.abs(a) - 0.05) * px / (2 * px_mm + 0.5), 0, 1)
        ridge *= (np.abs(a) > 0.2) & (np.abs(a) < 0.8)
        bone = np.clip(np.maximum(rim * front, ridge) * w * (0.6 + 0.4 * field[z]), 0, 1)
        painted[z] |= _blend(hu[z], bone**1.5, peak, free[z] & brain)
        bar = np.exp(-(((b - bar_b) * px / max(4 * px_mm, 1.0)) ** 2)) * (np.abs(a) < 0.45)
        streaks = np.cos(head.phi * freq + phase) * np.clip(1 - rho_b, 0, 1)
        hu[z][brain] += (w * (streak_hu * streaks - bar_hu * bar))[brain]
    return painted


def motion_blur(rng: np.random.Generator, hu: np.ndarray, chance: float, size: int) -> None:
    """With probability `chance` the patient moved during a run of one to four slices:
    each is smeared along a straight line of 3-10 mm, which drags the skull into the brain
    as a dense rim and blurs a small bleed away."""
    from scipy.ndimage import shift

    if chance <= 0 or rng.uniform() >= chance:
        return
    n = hu.shape[0]
    run = int(rng.integers(1, 5))
    start = int(rng.integers(0, max(1, n - run + 1)))
    for z in range(start, min(n, start + run)):
        angle = float(rng.uniform(0, np.pi))
        length = float(rng.uniform(3, 10)) * size / FOV_MM
        steps = np.linspace(-length / 2, length / 2, 7)
        plane = hu[z].copy()
        hu[z] = np.mean(
            [
                shift(plane, (t * np.sin(angle), t * np.cos(angle)), order=1, mode="nearest")
                for t in steps
            ],
            axis=0,
        )


def scanner_offset(rng: np.random.Generator, hu: np.ndarray, spread: float) -> None:
    """A scanner's calibration: everything but air shifted by up to +-`spread` HU, so a
    fixed window shows each patient's brain a little brighter or darker."""
    if spread <= 0:
        return
    offset = float(rng.uniform(-spread, spread))
    hu[hu > -500] += offset
