"""Grid expansion from options and from the paper's TOML."""

from __future__ import annotations

from pathlib import Path

import pytest

from ichbench.config import RunConfig
from ichbench.errors import UsageError
from ichbench.grid import Grid, axes_from_options, expand_values, load_toml

ROOT = Path(__file__).resolve().parents[1]


def test_expand_values():
    assert expand_values("augment:1,2,3.3") == ("augment:1", "augment:2", "augment:3.3")
    assert expand_values("none,bootstrap:2") == (None, "bootstrap:2")
    assert expand_values("resnet50,vgg16") == ("resnet50", "vgg16")
    with pytest.raises(UsageError, match="empty item"):
        expand_values("augment:1,,2")


def test_cartesian_product_of_axes():
    axes = axes_from_options(["augment:1,3.3"], ["ich:1,4"], [])
    configs = Grid(axes, RunConfig(preset="quick")).configs()
    assert len(configs) == 4
    assert [(c.strategies, c.weights) for c in configs] == [
        (["augment:1"], ["ich:1"]),
        (["augment:1"], ["ich:4"]),
        (["augment:3.3"], ["ich:1"]),
        (["augment:3.3"], ["ich:4"]),
    ]
    assert len({c.hash for c in configs}) == 4


def test_grid_id_is_stable_and_depends_on_axes():
    a = Grid(axes_from_options(["augment:1,2"], [], []), RunConfig())
    b = Grid(axes_from_options(["augment:1,2"], [], []), RunConfig())
    c = Grid(axes_from_options(["augment:1,3"], [], []), RunConfig())
    assert a.grid_id == b.grid_id != c.grid_id


def test_paper_grid_file():
    axes, fixed = load_toml(ROOT / "benchmarks" / "paper_grid.toml")
    configs = Grid(axes, RunConfig(**fixed)).configs()
    assert len(configs) == 14 * 6 * 4
    assert RunConfig(**fixed).folds == 5
    assert any(c.strategies == ["augment:3.3"] and c.weights == ["ich:4"] for c in configs)
    assert any(c.strategies == [] and c.weights == [] for c in configs)


def test_bad_grid_file(tmp_path):
    bad = tmp_path / "g.toml"
    bad.write_text("[[axis]]\noption = 'colour'\nvalues = ['red']\n")
    with pytest.raises(UsageError, match="option 'colour'"):
        load_toml(bad)
    bad.write_text("not toml = = =")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_toml(bad)
    with pytest.raises(UsageError, match="not found"):
        load_toml(tmp_path / "missing.toml")


def test_grid_values_are_canonical_and_listed_once():
    assert expand_values("augment:3.3,3.30,4.0") == ("augment:3.3", "augment:4")
    assert expand_values("None,ICH:4") == (None, "ich:4")
    a = Grid(axes_from_options(["augment:1,3.30"], ["ICH:4"], []), RunConfig())
    b = Grid(axes_from_options(["augment:1.0,3.3"], ["ich:4"], []), RunConfig())
    assert a.grid_id == b.grid_id
    assert [c.hash for c in a.configs()] == [c.hash for c in b.configs()]
