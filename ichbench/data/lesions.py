"""Synthetic hemorrhages of the five subtypes, painted into a phantom head.

Each subtype has its own shape and place (a lens against the skull, a crescent, blood in
the sulci or the ventricles, a blob in the parenchyma) and spans consecutive slices. The
subtype flags are read back from what was actually drawn, so a label never claims a
lesion that is too small to see.

A difficulty shrinks the lesions (`scale`) and lowers their density (`level`): a thin
crescent at 40 HU against the inner table is what a reader misses on a real scan. With
the easy defaults every draw is the original generator's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ichbench.data.phantom import Head, smooth_noise
from ichbench.interfaces import SUBTYPES

if TYPE_CHECKING:
    from ichbench.data.synth_patients import Template


def _angle_gap(phi: np.ndarray, theta: float) -> np.ndarray:
    return np.abs((phi - theta + np.pi) % (2 * np.pi) - np.pi)


def _region(
    rng: np.random.Generator,
    subtype: str,
    head: Head,
    zs: np.ndarray,
    sl: slice,
    scale: float = 1.0,
) -> np.ndarray:
    """The voxels of one lesion over slices `sl`; `zs` (m, 1, 1) shrinks it towards its ends
    and `scale` shrinks its thickness, extent and radius (the ventricles bound IVH)."""
    brain, rho_b, phi = head.brain[sl], head.rho_brain[sl], head.phi
    depth = 1 - rho_b
    theta = float(rng.uniform(-np.pi, np.pi))
    if subtype == "Epidural":  # biconvex lens against the inner table
        hw, thick = float(rng.uniform(0.25, 0.5)) * scale, float(rng.uniform(0.08, 0.2)) * scale
        profile = np.clip(1 - (_angle_gap(phi, theta) / hw) ** 2, 0, None)
        return brain & (depth < thick * zs * profile)
    if subtype == "Subdural":  # thin crescent following the skull
        hw, thick = float(rng.uniform(0.6, 1.3)) * scale, float(rng.uniform(0.025, 0.07)) * scale
        profile = np.clip(1 - (_angle_gap(phi, theta) / hw) ** 6, 0, None)
        return brain & (depth < thick * zs * profile)
    if subtype == "Subarachnoid":  # thin, along the sulci at the surface
        hw, thick = float(rng.uniform(0.4, 1.2)) * scale, float(rng.uniform(0.03, 0.06)) * scale
        freq, phase = int(rng.integers(14, 26)), float(rng.uniform(0, 2 * np.pi))
        return (
            brain
            & (depth < thick * zs)
            & (_angle_gap(phi, theta) < hw)
            & (np.sin(phi * freq + phase) > 0.1)
        )
    if subtype == "Intraventricular":  # blood layering in the posterior horns
        cut = float(rng.uniform(-0.12, 0.12))
        return head.ventricles[sl] & (head.b[sl] > cut + (1 - zs) * 0.25)
    radius = float(rng.uniform(0.06, 0.2)) * scale  # Intraparenchymal: an irregular blob
    r0 = float(np.sqrt(rng.uniform(0, 1))) * 0.55
    a0, b0 = r0 * np.cos(theta), r0 * np.sin(theta)
    dist = np.sqrt((head.a[sl] - a0) ** 2 + (head.b[sl] - b0) ** 2)
    wobble = smooth_noise(rng, dist.shape, max(dist.shape[-1] / 30, 1.0))
    return brain & (dist + 0.25 * radius * wobble < radius * zs)


def draw_lesions(
    rng: np.random.Generator,
    head: Head,
    hu: np.ndarray,
    template: Template,
    size: int,
    *,
    level: tuple[float, float] = (50, 90),
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint lesions into `hu`, each at a density drawn from `level` (HU) and `scale` times
    the easy size; returns the mask and the (n, 5) subtype flags drawn."""
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
            region = _region(rng, subtype, head, zs, sl, scale)
            region &= (region.sum(axis=(1, 2)) >= min_px)[:, None, None]
            density = float(rng.uniform(*level))
            texture = 2.0 * rng.standard_normal(region.shape, dtype=np.float32)
            block = hu[sl]
            block[region] = density + texture[region]
            mask[sl][region] = 1
            flags[lo : hi + 1, SUBTYPES.index(subtype)] |= region.any(axis=(1, 2))
        if flags.any():
            break
    return mask, flags
