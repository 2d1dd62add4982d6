"""Which patients a dataset leaves out by default, and the one parser of `--exclude`.

Patients 58 and 79 of the PhysioNet CT-ICH release have poor image quality (Kyung et
al.); the study and ichbench leave them out unless told otherwise. Every command that
takes `--exclude` reads it here, so `none` means the same everywhere.
"""

from __future__ import annotations

from ichbench.errors import UsageError

DEFAULT_EXCLUDE: tuple[int, ...] = (58, 79)
DEFAULT_EXCLUDE_TEXT = ",".join(map(str, DEFAULT_EXCLUDE))
NONE_WORDS = ("", "none")
MAX_PATIENT = 2**63 - 1  # datasets hold patient numbers as int64


def parse_exclude(text: str, *, option: str = "--exclude") -> tuple[int, ...]:
    """`58,79` -> (58, 79); `none` or '' -> (); sorted, without repeats."""
    if text.strip().lower() in NONE_WORDS:
        return ()
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        numbers = {int(t) for t in items}
    except ValueError:
        raise UsageError(
            f"{option} {text!r}: expected patient numbers separated by commas, "
            f"e.g. {DEFAULT_EXCLUDE_TEXT}, or 'none'"
        ) from None
    check_patient_numbers(numbers, f"{option} {text!r}")
    return tuple(sorted(numbers))


def check_patient_numbers(numbers, where: str) -> None:
    """Raise unless every number can be a patient's: not negative, and within int64, the
    type datasets hold them in (a larger one would fail inside the dataset's code)."""
    negative = sorted(n for n in numbers if n < 0)
    if negative:
        raise UsageError(f"{where}: patient numbers are not negative ({negative[0]})")
    if any(n > MAX_PATIENT for n in numbers):
        raise UsageError(f"{where}: patient numbers are at most {MAX_PATIENT}")
