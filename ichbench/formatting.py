"""How numbers read, in the terminal and in reports alike."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime

DASH = "\u2013"


def fmt(
    value: float | None, lo: float | None = None, hi: float | None = None, digits: int = 2
) -> str:
    """`0.91 [0.85\u20130.95]`; a dash for a metric that is undefined (NULL or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    text = f"{value:.{digits}f}"
    if lo is not None and hi is not None:
        text += f" [{lo:.{digits}f}{DASH}{hi:.{digits}f}]"
    return text


def fmt_wall(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


def fmt_time(value: datetime | None) -> str:
    return DASH if value is None else value.strftime("%Y-%m-%d %H:%M")


def fmt_list(values: Iterable[str] | None) -> str:
    """Spec strings separated by spaces, as they are typed on the command line."""
    items = list(values or [])
    return " ".join(items) if items else "none"
