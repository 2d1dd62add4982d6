"""`runs`, `show`, `compare` and the grid's ranking read in an 80-column terminal: no line
is wider, no value is cut short with `…`, and every run id shown, however shortened, is
taken back by `show`. Piped output carries no padding; `--wide` shows everything."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.cells import cell_len

from ichbench.cli import common
from ichbench.cli.app import main
from ichbench.formatting import fmt_wall, short_run_ids
from ichbench.store import Store

try:
    from cli_run import TINY_ARGS, run_main
except ImportError:  # the tests folder imported as a package
    from tests.cli_run import TINY_ARGS, run_main

GRID = ["grid", "--strategy", "augment:1,2", *TINY_ARGS]
RUN_ID = re.compile(r"\b\d{8}-\d{6}(?:-[0-9a-f]+)?")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny real runs: a grid of two strategies and one run with a class weight."""
    root = tmp_path_factory.mktemp("layout")
    db = root / "runs.duckdb"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICHBENCH_CACHE", str(root / "cache"))
        for args in (GRID, ["run", *TINY_ARGS, "--strategy", "augment:2", "--weight", "ich:4"]):
            try:
                main([*args, "--db", str(db)])
            except SystemExit as exit_info:
                assert exit_info.code in (0, None)
    return db


@pytest.fixture
def ids(db: Path) -> list[str]:
    return [r["run_id"] for r in Store(db, create=False).list_runs()]


@pytest.fixture
def width(monkeypatch: pytest.MonkeyPatch):
    """Set the width of the console the commands print their data on."""

    def set_width(columns: int) -> None:
        monkeypatch.setattr(common.out, "width", columns)

    set_width(80)
    return set_width


def readable_at_80(text: str) -> None:
    assert text.strip()
    for line in text.splitlines():
        assert cell_len(line) <= 80, line
        assert line == line.rstrip(), f"trailing spaces: {line!r}"
    assert "…" not in text


def ids_resolve(capsys, db: Path, text: str, ids: list[str]) -> set[str]:
    """Every run id in `text`, whole or shortened, names one run to `show`: the runs it
    names are returned."""
    named = set()
    for shown in set(RUN_ID.findall(text)):
        code, out, err = run_main(capsys, "show", shown, "--db", str(db))
        assert code == 0, (shown, err)
        full = next(i for i in ids if i.startswith(shown))
        assert f"Run                       {full}" in out
        named.add(full)
    return named


def test_runs_at_80_columns(capsys, db: Path, ids: list[str], width) -> None:
    code, out, _ = run_main(capsys, "runs", "--db", str(db))
    assert code == 0
    readable_at_80(out)
    assert ids_resolve(capsys, db, out, ids) == set(ids)
    assert not any(i in out for i in ids)  # shortened: the random part is not needed
    assert "All: status finished; backbone tinycnn; preset quick." in out
    for strategy in ("augment:1", "augment:2", "ich:4"):
        assert strategy in out


def test_show_at_80_columns(capsys, db: Path, ids: list[str], width) -> None:
    code, out, _ = run_main(capsys, "show", ids[0][:15], "--db", str(db))
    assert code == 0
    readable_at_80(out)
    ids_resolve(capsys, db, out, ids)
    assert "Under each value: its 95% CI." in out
    assert re.search(r"\n\s*vote\s+\d\.\d\d\s", out)


def test_compare_at_80_columns(capsys, db: Path, ids: list[str], width) -> None:
    grid = [i for i in ids if i != ids[0]]  # the grid's two runs: same data, pairable
    code, out, _ = run_main(capsys, "compare", *grid, "--db", str(db))
    assert code == 0
    readable_at_80(out)
    assert ids_resolve(capsys, db, out, ids) == set(grid)
    for text in ("Vote, test set", "Paired, B", "McNemar", "Reported in the literature"):
        assert text in out
    assert "rsna-to-physionet" in out  # the longest word of the literature table, whole


def test_grid_ranking_at_80_columns(capsys, db: Path, ids: list[str], width) -> None:
    code, out, err = run_main(capsys, *GRID, "--db", str(db))  # finished: only ranks
    assert code == 0 and "already finished" in err
    readable_at_80(out)
    assert "ranked by mean validation F1" in out
    assert ids_resolve(capsys, db, out, ids) == set(ids[1:])


def test_wide_shows_everything(capsys, db: Path, ids: list[str], width) -> None:
    width(400)
    _, out, _ = run_main(capsys, "runs", "--wide", "--db", str(db))
    assert all(i in out for i in ids)
    assert "Started" in out and "tinycnn" in out
    _, out, _ = run_main(capsys, "show", ids[0], "--wide", "--db", str(db))
    assert re.search(r"\d\.\d\d \[\d\.\d\d–\d\.\d\d\]", out)


def test_piped_output_is_not_padded(capsys, db: Path, ids: list[str], width) -> None:
    width(200)  # what a pipe or a file gets
    for args in (["runs"], ["show", ids[0]], ["compare", *ids[1:]]):
        _, out, _ = run_main(capsys, *args, "--db", str(db))
        assert all(line == line.rstrip() for line in out.splitlines()), args
    _, out, _ = run_main(capsys, "runs", "--db", str(db))
    assert max(cell_len(line) for line in out.splitlines()[:-1]) < 120  # the table's own
    _, out, _ = run_main(capsys, "show", ids[0], "--db", str(db))
    assert re.search(r"\d\.\d\d \[\d\.\d\d–\d\.\d\d\]", out)  # room for the CIs in line


def test_short_run_ids() -> None:
    known = [
        "20261201-005716-3a5f51",
        "20261201-005716-3b0000",  # the same second
        "20261201-005717-aaaaaa",
        "alpha-1",
    ]
    short = short_run_ids(known, known)
    assert short == {
        "20261201-005716-3a5f51": "20261201-005716-3a",
        "20261201-005716-3b0000": "20261201-005716-3b",
        "20261201-005717-aaaaaa": "20261201-005717",
        "alpha-1": "alpha-1",  # not a generated id: kept whole
    }
    for run_id, prefix in short.items():
        assert [k for k in known if k.startswith(prefix)] == [run_id]
    # one shown, but unique among every run of the store
    assert short_run_ids(["20261201-005716-3a5f51"], known) == {
        "20261201-005716-3a5f51": "20261201-005716-3a"
    }
    assert short_run_ids(["20261201-005716-3a5f51"], ["20261201-005716-3a5f51"]) == {
        "20261201-005716-3a5f51": "20261201-005716"
    }


def test_fmt_wall_short() -> None:
    assert [fmt_wall(s, short=True) for s in (5.14, 62, 7500)] == ["5.1s", "1m02s", "2h05m"]
    assert fmt_wall(62) == "1 min 02 s"
