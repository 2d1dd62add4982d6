"""The healthy synthetic head, in Hounsfield units: air, scalp, a skull ring, textured
parenchyma, sulci and ventricles, shaped slice by slice from the skull base to the vertex.

Every random number is drawn from the caller's generator in a fixed order, so the same
seed draws the same head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
