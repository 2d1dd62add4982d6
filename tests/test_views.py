"""One table view-model, three renderers: the terminal, the HTML page and the Markdown
file show the same cells, and `ichbench show` and the report the same provenance
(torch.compile per fold, excluded patients, plugin versions, strategy notes)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from ichbench.cli.render import print_run, rich_table
from ichbench.report.html import table_html
from ichbench.report.markdown import table_md
from ichbench.store import Store
from ichbench.views import load_run_data
from ichbench.views.metrics import metrics_table, run_tables
from ichbench.views.provenance import notes_text, plugins_text, provenance_table

try:
    from test_store import make_fold, make_run, make_vote
except ImportError:  # the tests folder imported as a package
    from tests.test_store import make_fold, make_run, make_vote

NOTES = {"augment": {"added": 69, "histogram": [0.123456, 0.5]}}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store(tmp_path_factory.mktemp("views") / "runs.duckdb")
    run = make_run("prov-1")
    run.config["exclude"] = [58, 79]
    run.plugins = {"ichbench": "0.1.0", "ichbench-extra": "2.0"}
    store.create_run(run)
    for k in (0, 1):
        fold = make_fold(k)
        fold.compiled = k == 1
        fold.notes = NOTES if k == 0 else {}
        store.write_fold("prov-1", fold)
    store.finish_run("prov-1", make_vote(), wall_s=3.0)
    return store


def _terminal(render) -> str:
    buffer = io.StringIO()
    render(Console(file=buffer, width=400, color_system=None))
    return buffer.getvalue()


def test_provenance_names_compile_exclusions_plugins_and_notes(store: Store) -> None:
    table = provenance_table(load_run_data(store, "prov", results=False))
    fields = {row.cells[0]: row.cells[1] for row in table.rows}
    assert fields["torch.compile"] == "folds 1 only"
    assert fields["Excluded patients"] == "58, 79"
    assert fields["Plugins"] == "ichbench 0.1.0, ichbench-extra 2.0"
    assert fields["Strategy notes"] == (
        'fold 0: {"augment": {"added": 69, "histogram": [0.1235, 0.5]}}; fold 1: none'
    )


def test_show_and_the_report_state_the_same_provenance(store: Store) -> None:
    table = provenance_table(load_run_data(store, "prov-1", results=False))
    shown = _terminal(lambda c: print_run(c, store, "prov-1"))
    page = table_html(table)
    markdown = table_md(table)
    for row in table.rows:
        field, value = row.cells
        if field == "Configuration":
            continue  # a long JSON line, folded differently by each medium
        assert field in shown and value in shown, field
        assert f'<td class="">{field}</td>' in page, field
        assert f"| {field} | " in markdown, field


def test_one_metrics_table_rendered_three_ways(store: Store) -> None:
    data = load_run_data(store, "prov-1", results=False)
    baselines = store.baselines()
    table = metrics_table(data, baselines, "slice", "table-slice")
    page, markdown = table_html(table), table_md(table)
    ours, reported = run_tables(data, baselines, "slice")
    shown = _terminal(lambda c: (c.print(rich_table(ours)), c.print(rich_table(reported))))
    vote_page = next(r for r in table.rows if r.cells[0] == "Voting" and not r.muted)
    vote_terminal = next(r for r in ours.rows if r.cells[0] == "vote")
    assert vote_page.cells[1:] == vote_terminal.cells[1:]  # the same numbers, worded apart
    f1 = vote_page.cells[5]
    assert f1 == "0.70 [0.60–0.80]"
    assert f1 in shown and f1 in markdown and '0.70<span class="ci">' in page
    for label in ("Reported by Hoseyni et al.", "Neethi 2024 (resnet50v2)"):
        assert label in page and label in markdown
    assert "paper vote" in shown and "Neethi 2024 (resnet50v2)" in shown


def test_runs_recorded_before_plugins_and_notes_say_so(tmp_path: Path) -> None:
    assert plugins_text(None) == plugins_text({}) == "not recorded"
    assert notes_text([{"fold": 0, "notes": None}]) == "not recorded"
    assert notes_text([{"fold": 0, "notes": {}}, {"fold": 1, "notes": {}}]) == "none"
    assert (
        notes_text([{"fold": 0, "notes": None}, {"fold": 1, "notes": {"a": 1}}])
        == 'fold 0: not recorded; fold 1: {"a": 1}'
    )
    assert notes_text([]) == "–"
