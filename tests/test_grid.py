"""Grid expansion from options and from the paper's TOML."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from cli_run import TINY_ARGS, run_main

from ichbench.config import RunConfig
from ichbench.errors import ExitCode, UsageError
from ichbench.grid import Grid, axes_from_options, expand_values, load_toml
from ichbench.store import Store

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


AXIS = "[[axis]]\noption = 'weight'\nvalues = ['ich:1']\n"


def grid_file(tmp_path, run_table: str, axes: str = AXIS) -> Path:
    path = tmp_path / "g.toml"
    path.write_text(f"[run]\n{run_table}\n{axes}")
    return path


@pytest.mark.parametrize(
    "line, message",
    [
        ('epochs = "x"', '[run] epochs = "x": expected an integer'),
        ("epochs = true", "[run] epochs = true: expected an integer"),
        ("epochs = 2.5", "[run] epochs = 2.5: expected an integer"),
        ('lr = "fast"', '[run] lr = "fast": expected a number'),
        ("pretrained = 1", "[run] pretrained = 1: expected true or false"),
        ('strategies = "augment:2"', '[run] strategies = "augment:2": expected a list of strings'),
        (
            "exclude = 53",
            "[run] exclude = 53: expected a list of integers or the text of --exclude",
        ),
        ("exclude = [58.5]", "[run] exclude = [58.5]: expected a list of integers"),
        ("exclude = [true]", "[run] exclude = [true]: expected a list of integers"),
        ("epochs = 0", "[run] epochs: --epochs 0: must be at least 1"),
        ("seed = -1", "[run] seed: --seed -1: must be between 0 and 4294967295"),
        ("lr = inf", "[run] lr: --lr inf: must be above 0 and at most 1e+37"),
        ('exclude = "5x"', "[run] exclude: --exclude '5x': expected patient numbers"),
    ],
)
def test_run_table_is_checked_like_the_options(tmp_path, line, message):
    path = grid_file(tmp_path, line)
    with pytest.raises(UsageError) as raised:
        load_toml(path)
    assert str(raised.value).startswith(f"Grid file {path}: {message}")


def test_run_table_exclude_takes_a_list_or_the_option_text(tmp_path):
    for line, expected in (
        ('exclude = "53"', [53]),
        ('exclude = "79, 58"', [58, 79]),
        ('exclude = "none"', []),
        ("exclude = [5, 3]", [3, 5]),
        ("exclude = []", []),
    ):
        _, fixed = load_toml(grid_file(tmp_path, line))
        assert RunConfig(**fixed).exclude == expected, line


def test_run_strategies_and_a_strategy_axis_is_an_error(capsys, tmp_path):
    axis = "[[axis]]\noption = 'strategy'\nvalues = ['augment:2,3']\n"
    path = grid_file(tmp_path, 'strategies = ["undersample:1"]', axis)
    db = tmp_path / "runs.duckdb"
    code, _, err = run_main(capsys, "grid", "--config", str(path), "--dry-run", "--db", str(db))
    assert code == ExitCode.USAGE, err
    assert err.strip().splitlines()[-1] == (
        f"Error: Grid file {path}: [run] strategies and a strategy axis both set the "
        "strategies of every configuration; keep one (a fixed strategy is an axis of one value)"
    )
    assert not db.exists()
    # an axis given on the command line conflicts with the file just the same
    path = grid_file(tmp_path, 'strategies = ["undersample:1"]')
    code, _, err = run_main(capsys, "grid", "--config", str(path), "--strategy", "augment:2")
    assert code == ExitCode.USAGE and "[run] strategies and a strategy axis" in err


def test_run_strategies_are_kept_when_no_axis_varies_them(capsys, tmp_path):
    path = grid_file(tmp_path, 'strategies = ["undersample:1"]')
    code, out, err = run_main(capsys, "grid", "--config", str(path), "--dry-run")
    assert code == 0, err
    assert out.split("\n")[0] == "--strategy undersample:1 --weight ich:1"


def test_an_option_on_the_command_line_wins_over_the_file(capsys, tmp_path):
    path = grid_file(tmp_path, "epochs = 3\nfolds = 3\nseed = 7\nexclude = [58]")
    db = tmp_path / "runs.duckdb"
    code, _, err = run_main(
        capsys,
        "grid",
        "--config",
        str(path),
        *TINY_ARGS,
        "--db",
        str(db),
    )
    assert code == 0, err
    [run] = Store(db, create=False).list_runs()
    config = Store(db, create=False).get_run(run["run_id"])["config"]
    # typed flags win over [run]; [run] wins over defaults the user did not type
    assert (config["epochs"], config["folds"]) == (1, 2)
    assert (config["seed"], config["exclude"]) == (7, [58])


def test_every_option_of_a_grid_names_a_configuration_field():
    import inspect

    from ichbench.cli.grid_cmd import OPTION_FIELDS
    from ichbench.cli.options import experiment_config

    known = {f.name for f in fields(RunConfig)}
    shared = [
        p.name
        for p in inspect.signature(experiment_config).parameters.values()
        if p.kind is p.KEYWORD_ONLY
    ]
    assert {OPTION_FIELDS.get(name, name) for name in shared} <= known
