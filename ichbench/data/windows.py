"""CT display windows: how Hounsfield units become the [0, 1] intensities a network sees.

A window (level, width) maps HU linearly onto [0, 1] over [level - width/2, level + width/2]
and clips outside it. Several windows stacked as channels give a multi-window input.
JPG releases come already windowed, so only the windows they were exported with exist there.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from ichbench.errors import DataError, UsageError


@dataclass(frozen=True)
class Window:
    name: str
    level: float
    width: float

    @property
    def low(self) -> float:
        return self.level - self.width / 2

    def apply(self, hu: np.ndarray) -> np.ndarray:
        """HU -> float32 in [0, 1]."""
        out = (np.asarray(hu, dtype=np.float32) - np.float32(self.low)) / np.float32(self.width)
        return np.clip(out, 0.0, 1.0, out=out)


WINDOWS: dict[str, Window] = {
    w.name: w
    for w in (
        Window("brain", 40, 120),
        Window("subdural", 80, 200),
        Window("bone", 600, 2800),
        Window("stroke", 40, 40),
        Window("soft", 50, 350),
    )
}
"""Named windows for HU data (NIfTI). The brain window is the protocol's default."""

JPG_WINDOWS = ("brain", "bone")
"""The windows the v1.0/1.2 release was exported with (one JPG folder each)."""


def check_windows(names: tuple[str, ...], *, layout: str = "nifti") -> tuple[Window, ...]:
    """Validate requested window names for a layout; the error lists what is available."""
    if not names:
        raise UsageError("No window requested: expected one or more of " + ", ".join(WINDOWS))
    if len(set(names)) != len(names):
        raise UsageError(f"Window listed twice in {', '.join(names)}")
    unknown = [n for n in names if n not in WINDOWS]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], [*WINDOWS, "stack"], n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise UsageError(
            f"Unknown window {unknown[0]!r}.{did_you_mean} Available: {', '.join(WINDOWS)} "
            "(or stack for brain, subdural and bone)"
        )
    if layout == "jpg":
        missing = [n for n in names if n not in JPG_WINDOWS]
        if missing:
            raise DataError(
                f"Window {missing[0]!r} is not available for JPG data, which comes already "
                f"windowed: use {' or '.join(repr(w) for w in JPG_WINDOWS)} (or the NIfTI release "
                "for other windows)"
            )
    return tuple(WINDOWS[n] for n in names)


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 [0, 255], rounded (the cache's storage format)."""
    return np.clip(np.rint(np.asarray(unit, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
