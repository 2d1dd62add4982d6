"""The one place where `name:arg1,arg2` plugin specs are parsed.

Factories receive the arguments as strings and validate them themselves, so each
plugin owns the message that explains its expected form.
"""

from __future__ import annotations

from dataclasses import dataclass

from ichbench.errors import UsageError


@dataclass(frozen=True)
class Spec:
    name: str
    args: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.name + (":" + ",".join(self.args) if self.args else "")


def parse_spec(text: str) -> Spec:
    """`augment:3.3` -> Spec('augment', ('3.3',)); `timm:resnet18` -> Spec('timm', ...)."""
    raw = text.strip()
    if not raw:
        raise UsageError("Empty plugin spec: expected NAME or NAME:ARG[,ARG...]")
    name, sep, rest = raw.partition(":")
    name = name.strip()
    if not name:
        raise UsageError(f"Plugin spec {text!r} has no name: expected NAME or NAME:ARG[,ARG...]")
    args = tuple(a.strip() for a in rest.split(",")) if sep else ()
    if sep and any(not a for a in args):
        raise UsageError(f"Plugin spec {text!r} has an empty argument: expected NAME:ARG[,ARG...]")
    return Spec(name, args)


def parse_float(
    spec: Spec,
    value: str,
    *,
    form: str,
    minimum: float | None = None,
    exclusive_minimum: bool = False,
) -> float:
    """Parse one numeric argument with an error that names the plugin and its form."""
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"{spec.name}: {value!r} is not a number; expected {form}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise UsageError(f"{spec.name}: {value!r} is not a finite number; expected {form}")
    if minimum is not None and (number < minimum or (exclusive_minimum and number == minimum)):
        bound = ">" if exclusive_minimum else ">="
        raise UsageError(f"{spec.name}: {value} must be {bound} {minimum:g}; expected {form}")
    return number


def parse_int(spec: Spec, value: str, *, form: str, minimum: int = 1) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"{spec.name}: {value!r} is not an integer; expected {form}") from None
    if number < minimum:
        raise UsageError(f"{spec.name}: {number} must be >= {minimum}; expected {form}")
    return number


def expect_args(spec: Spec, count: int | tuple[int, int], form: str) -> tuple[str, ...]:
    """Check the number of arguments a factory received."""
    lo, hi = (count, count) if isinstance(count, int) else count
    if not lo <= len(spec.args) <= hi:
        got = str(spec) if spec.args else spec.name
        raise UsageError(f"{spec.name}: got {got!r}; expected {form}")
    return spec.args
