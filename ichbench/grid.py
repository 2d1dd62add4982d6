"""Grid expansion: the cartesian product of option lists, from the command line or TOML.

Each repeated `--strategy` or `--weight` is one axis; within an option, commas list
alternatives: `augment:1,2,3.3` is three values of one axis, `none,augment:2,3.3` adds
"no strategy on this axis". A TOML file gives the same axes plus fixed run options
(see benchmarks/paper_grid.toml).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ichbench.config import RunConfig, canonical_spec
from ichbench.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

AXIS_OPTIONS = ("strategy", "weight", "backbone")


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
        out = []
        for combo in itertools.product(*(axis.values for axis in self.axes)):
            strategies, weights = [], []
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
    known = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(fixed) - known)
    if unknown:
        raise UsageError(f"Grid file {path}: unknown run option(s) {', '.join(unknown)}")
    return axes, fixed
