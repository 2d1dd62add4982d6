"""Grid expansion: the cartesian product of option lists, from the command line or TOML.

Each repeated `--strategy` or `--weight` is one axis; within an option, commas list
alternatives: `augment:1,2,3.3` is three values of one axis, `none,augment:2,3.3` adds
"no strategy on this axis". A TOML file gives the same axes plus fixed run options
(see benchmarks/paper_grid.toml): its `[run]` table takes `RunConfig`'s field names with
the types of their annotations, checked here before anything runs. An option given on
the command line wins over the file, and the file over the options' defaults; a `[run]`
key that an axis also sets (`strategies` and a strategy axis) is an error, not a merge.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ichbench.config import RunConfig, canonical_spec
from ichbench.errors import UsageError
from ichbench.exclusion import DEFAULT_EXCLUDE_TEXT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

AXIS_OPTIONS = ("strategy", "weight", "backbone")
AXIS_FIELDS = {"strategy": "strategies", "weight": "weights", "backbone": "backbone"}

# `[run]` keys that also take the text of their command-line option
TEXT_FORMS = {"exclude": f"the text of --exclude ('{DEFAULT_EXCLUDE_TEXT}' or 'none')"}


@dataclass(frozen=True)
class Axis:
    option: str  # strategy | weight | backbone
    values: tuple[str | None, ...]  # None = leave this axis out of the configuration


@dataclass
class Grid:
    axes: list[Axis]
    base: RunConfig
    fixed: dict = field(default_factory=dict)

    def configs(self) -> list[RunConfig]:
        """One configuration per combination of axis values; a setting no axis varies
        keeps the base's value."""
        varied = {axis.option for axis in self.axes}
        out = []
        for combo in itertools.product(*(axis.values for axis in self.axes)):
            strategies = [] if "strategy" in varied else list(self.base.strategies)
            weights = [] if "weight" in varied else list(self.base.weights)
            backbone = self.base.backbone
            for axis, value in zip(self.axes, combo):
                if value is None:
                    continue
                if axis.option == "strategy":
                    strategies.append(value)
                elif axis.option == "weight":
                    weights.append(value)
                else:
                    backbone = value
            out.append(
                replace(self.base, strategies=strategies, weights=weights, backbone=backbone)
            )
        return out

    @property
    def grid_id(self) -> str:
        blob = json.dumps(
            {"axes": [(a.option, a.values) for a in self.axes], "base": self.base.identity()},
            sort_keys=True,
            default=str,
        )
        return "g-" + hashlib.sha256(blob.encode()).hexdigest()[:10]


def expand_values(text: str) -> tuple[str | None, ...]:
    """`augment:1,2,3.3` -> ('augment:1', 'augment:2', 'augment:3.3');
    `none,bootstrap:2` -> (None, 'bootstrap:2').

    Values are canonical and listed once (`augment:3.3,3.30` is one value), so a grid's
    id and its configurations depend on what it runs, not on how it was spelled."""
    values: list[str | None] = []
    name = None
    for token in (t.strip() for t in text.split(",")):
        if not token:
            raise UsageError(f"Grid value {text!r} has an empty item")
        if token.lower() == "none":
            values.append(None)
            name = None
        elif ":" in token:
            name, _, arg = token.partition(":")
            values.append(f"{name}:{arg}")
        elif name is None:
            values.append(token)  # a bare name: a backbone, or a plugin without argument
        else:
            values.append(f"{name}:{token}")
    canonical = (v if v is None else canonical_spec(v) for v in values)
    return tuple(dict.fromkeys(canonical))


def axes_from_options(
    strategies: list[str], weights: list[str], backbones: list[str]
) -> list[Axis]:
    axes = [Axis("strategy", expand_values(s)) for s in strategies]
    axes += [Axis("weight", expand_values(w)) for w in weights]
    axes += [Axis("backbone", expand_values(b)) for b in backbones]
    return axes


def load_toml(path: Path) -> tuple[list[Axis], dict]:
    """Axes and fixed run options of a grid file."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"Grid file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"Grid file {path} is not valid TOML: {exc}") from None
    axes = []
    for i, axis in enumerate(data.get("axis", [])):
        option = axis.get("option")
        if option not in AXIS_OPTIONS:
            raise UsageError(
                f"Grid file {path}: axis {i + 1} has option {option!r}; expected "
                f"one of {', '.join(AXIS_OPTIONS)}"
            )
        values: tuple[str | None, ...] = ()
        for v in axis.get("values", []):
            values += expand_values(str(v))
        if not values:
            raise UsageError(f"Grid file {path}: axis {i + 1} ({option}) has no values")
        axes.append(Axis(option, values))
    fixed = data.get("run", {})
    if not isinstance(fixed, dict):
        raise UsageError(f"Grid file {path}: [run] must be a table of run options")
    known = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(fixed) - known)
    if unknown:
        raise UsageError(f"Grid file {path}: unknown run option(s) {', '.join(unknown)}")
    for key, value in fixed.items():
        check_run_value(path, key, value)
    return axes, fixed


def check_run_value(path: Path, key: str, value) -> None:
    """Raise unless `value` has the type of `RunConfig`'s field `key` and passes the
    checks a command-line value passes; the error names the file and the key."""
    hint = typing.get_type_hints(RunConfig)[key]
    text_form = TEXT_FORMS.get(key)
    if not (_is_a(value, hint) or (text_form and isinstance(value, str))):
        expected = _describe(hint) + (f" or {text_form}" if text_form else "")
        shown = json.dumps(value, default=str)
        raise UsageError(f"Grid file {path}: [run] {key} = {shown}: expected {expected}")
    try:
        RunConfig(**{key: value}).validate()
    except UsageError as exc:
        raise UsageError(f"Grid file {path}: [run] {key}: {exc}") from None


def _options(hint) -> tuple:
    """The types a hint allows, `None` left out (TOML has no null)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(a for a in typing.get_args(hint) if a is not type(None))
    return (hint,)


def _is_a(value, hint) -> bool:
    for option in _options(hint):
        if typing.get_origin(option) is list:
            (item,) = typing.get_args(option)
            if isinstance(value, list) and all(_is_a(v, item) for v in value):
                return True
        elif option is bool:
            if isinstance(value, bool):
                return True
        elif option is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return True
        elif isinstance(value, option) and not isinstance(value, bool):
            return True
    return False


def _describe(hint) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
    out = []
    for option in _options(hint):
        if typing.get_origin(option) is list:
            out.append(f"a list of {plural[typing.get_args(option)[0]]}")
        else:
            out.append(names[option])
    return " or ".join(out)


def base_config(
    options: RunConfig,
    fixed: dict,
    *,
    explicit: Iterable[str],
    axes: list[Axis],
    source: Path | None,
) -> RunConfig:
    """A grid's base configuration: the file's `[run]` values over the options' defaults,
    an option given on the command line (`explicit`: `RunConfig` field names) over the
    file. A `[run]` key that an axis also sets would leave one of them silently unused."""
    for axis in axes:
        key = AXIS_FIELDS[axis.option]
        if key in fixed:
            raise UsageError(
                f"Grid file {source}: [run] {key} and a {axis.option} axis both set the "
                f"{key} of every configuration; keep one (a fixed {axis.option} is an "
                "axis of one value)"
            )
    explicit = set(explicit)
    from_file = {k: v for k, v in fixed.items() if k not in explicit}
    return RunConfig.from_dict({**options.as_dict(), **from_file})
