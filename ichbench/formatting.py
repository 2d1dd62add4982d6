"""How numbers read, in the terminal and in reports alike."""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable
from datetime import datetime

DASH = "\u2013"
# `new_run_id`'s shape: the UTC start time, then a random part
TIMESTAMPED_ID = re.compile(r"\d{8}-\d{6}-[0-9a-z]+")
ID_TIME = len("20261201-005716")


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


def fmt_wall(seconds: float | None, short: bool = False) -> str:
    """`1 min 02 s`; `short` (`1m02s`) for a column that must stay one word wide."""
    if seconds is None:
        return DASH
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if short:
        if hours:
            return f"{hours}h{minutes:02d}m"
        return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


def fmt_time(value: datetime | None) -> str:
    return DASH if value is None else value.strftime("%Y-%m-%d %H:%M")


def fmt_list(values: Iterable[str] | None) -> str:
    """Spec strings separated by spaces, as they are typed on the command line."""
    items = list(values or [])
    return " ".join(items) if items else "none"


def short_run_ids(shown: Iterable[str], known: Collection[str]) -> dict[str, str]:
    """Each shown run id as the shortest prefix no other known run id starts with, so it
    can be typed back to `show`, `compare` or `report` (they take unique prefixes). A
    prefix never stops inside the start time, so it still reads as a date and time;
    ids of another shape are kept whole."""
    ordered = sorted(set(known) | set(shown))
    at = {run_id: i for i, run_id in enumerate(ordered)}
    short = {}
    for run_id in shown:
        if not TIMESTAMPED_ID.fullmatch(run_id):
            short[run_id] = run_id
            continue
        i = at[run_id]
        neighbours = ordered[max(i - 1, 0) : i] + ordered[i + 1 : i + 2]
        length = max([ID_TIME, *(_common(run_id, n) + 1 for n in neighbours)])
        if length == ID_TIME + 1:  # not a prefix ending in the dash
            length += 1
        short[run_id] = run_id[:length]
    return short


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
