"""What users of `data check`, `data stats` and the report found, on real data and a real
tiny run: a dataset with a volume or a patient folder gone is not counted as whole, the
report numbers its figures in page order and shows the configuration as a table, a
bootstrap interval of zero width is flagged and explained, and no legend hides a bar."""

from __future__ import annotations

import json
import re
import shutil

import duckdb
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import ichbench_plugins.datasets as datasets_plugin
from ichbench.cli import data_cmd
from ichbench.config import RunConfig
from ichbench.data.labels import read_labels
from ichbench.errors import ExitCode
from ichbench.lifecycle import run_config
from ichbench.plugins import Plugins
from ichbench.report.build import ReportOptions, build_report
from ichbench.report.config_table import setting_text
from ichbench.store import Store
from ichbench.views import load_run_data
from ichbench.views.metrics import DEGENERATE_NOTE, metrics_table, run_tables

try:
    from cli_run import TINY_CONFIG, run_main
except ImportError:  # the tests folder imported as a package
    from tests.cli_run import TINY_CONFIG, run_main

FAST = ReportOptions(cam=False, tsne=False)
NOTE_START = "* A zero-width interval"


@pytest.fixture(autouse=True)
def datasets_only(monkeypatch):
    """Resolve datasets with the built-in dataset plugin alone, whatever else is installed."""
    plugins = Plugins(load_entry_points=False)
    plugins.register(datasets_plugin, name="ichbench_plugins.datasets", distribution="ichbench")
    monkeypatch.setattr(data_cmd, "get_registry", lambda: plugins.registry)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 2-fold run of the tiny CNN on 10 synthetic patients, in its own store."""
    root = tmp_path_factory.mktemp("small-things-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICHBENCH_LOAD_PLUGINS", "")
        mp.setenv("HF_HUB_OFFLINE", "1")
        store = Store(root / "runs.duckdb")
        result = run_config(RunConfig(**TINY_CONFIG), store, cache_dir=root / "cache")
    return root, store, result.run_id


@pytest.fixture(scope="module")
def full_report(tiny_run, tmp_path_factory):
    """The run's report with every figure, Grad-CAM and t-SNE included: (result, page)."""
    root, store, run_id = tiny_run
    out = tmp_path_factory.mktemp("small-things-report") / "report"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICHBENCH_CACHE", str(root / "cache"))
        mp.setenv("ICHBENCH_LOAD_PLUGINS", "")
        mp.setenv("HF_HUB_OFFLINE", "1")
        result = build_report([run_id], db=store.path, out=out)
    return result, result.html.read_text(encoding="utf-8")


def _section(page: str, section_id: str) -> str:
    match = re.search(rf'<section id="{re.escape(section_id)}">(.*?)</section>', page, re.S)
    assert match, f"no section {section_id}"
    return match.group(1)


# ---------------------------------------------------------------- data check / stats


def test_check_does_not_count_a_patient_whose_volume_is_gone(tiny_synth_dir, tmp_path, capsys):
    root = tmp_path / "gone"
    shutil.copytree(tiny_synth_dir, root)
    (root / "ct_scans/050.nii").unlink()
    rows_050 = int((read_labels(root / "hemorrhage_diagnosis_raw_ct.csv").patient_ids == 50).sum())

    code, stdout, err = run_main(capsys, "data", "check", str(root), "--exclude", "none", "--json")
    assert code == ExitCode.DATA
    report = json.loads(stdout)
    assert not report["ok"]
    assert report["all"]["patients"] == 8
    assert report["used"]["patients"] == 7
    assert report["used"]["slices"] == report["all"]["slices"] - rows_050
    assert report["missing"]["patients"] == [50]
    assert report["missing"]["slices"] == rows_050
    assert any("Patient 050" in e and "ct_scans/050.nii" in e for e in report["errors"])
    assert err.startswith("Error: Patient 050 has")

    code, stdout, _ = run_main(capsys, "data", "check", str(root), "--exclude", "none")
    assert code == ExitCode.DATA
    assert f"Not counted as used (in the label file, but no image): {rows_050} slices of " in (
        stdout
    )
    assert "patient 050" in stdout and "No fatal problem found" not in stdout

    png = tmp_path / "stats.png"
    code, stdout, err = run_main(
        capsys, "data", "stats", str(root), "--exclude", "none", "--out", str(png), "--json"
    )
    assert code == 0, err
    stats = json.loads(stdout)
    assert stats["patients"] == 7 and stats["missing"] == {"patients": [50], "slices": rows_050}
    assert "Warning: not counted" in err and "patient 050" in err


def test_check_does_not_count_a_jpg_patient_folder_or_slice_that_is_gone(
    jpg_sample_dir, tmp_path, capsys
):
    root = tmp_path / "sample"
    shutil.copytree(jpg_sample_dir, root)
    labels = read_labels(root / "hemorrhage_diagnosis.csv")
    shutil.rmtree(root / "Patients_CT/049")
    (root / "Patients_CT/100/brain/12.jpg").unlink()

    code, stdout, _ = run_main(capsys, "data", "check", str(root), "--exclude", "none", "--json")
    assert code == ExitCode.DATA
    report = json.loads(stdout)
    rows_049 = int((labels.patient_ids == 49).sum())
    assert report["all"]["slices"] == len(labels)
    assert report["used"]["slices"] == len(labels) - rows_049 - 1
    assert report["used"]["patients"] == 2  # 084, and 100 less one slice
    assert report["missing"]["by_patient"] == {"049": rows_049, "100": 1}
    errors = " ".join(report["errors"])
    assert "Patients_CT/049" in errors and "100/brain/12.jpg" in errors


# ---------------------------------------------------------------- report: figures, settings


def test_figures_are_numbered_in_page_order_and_cite_the_paper(full_report):
    result, page = full_report
    toc = re.search(r"<nav>(.*?)</nav>", page, re.S).group(1)
    entries = re.findall(r"<li><a [^>]*>(.*?)</a></li>", toc)
    numbers = [int(m.group(1)) for e in entries if (m := re.match(r"Figure (\d+)\. ", e))]
    assert numbers == list(range(1, len(result.figures) + 1))
    assert len(numbers) == 9  # every figure drawn, Grad-CAM and t-SNE included
    assert not any(re.search(r"\(Figures? \d", e) for e in entries)  # the paper's numbers
    for section_id, paper in (
        ("fig-dataset", "Fig. 1"),
        ("fig-threshold", "Fig. 4"),
        ("fig-confusion", "Figs. 5 and 8"),
        ("fig-gradcam", "Fig. 7"),
        ("fig-tsne", "Fig. 6"),
    ):
        section = _section(page, section_id)
        number = re.search(r"<h2>Figure (\d+)\. ", section).group(1)
        caption = re.search(r"<figcaption>(.*?)</figcaption>", section, re.S).group(1)
        assert caption.startswith(f"Figure {number}. ")
        assert f"the paper&#x27;s {paper}." in caption
    gradcam = int(re.search(r"Figure (\d+)\. Grad-CAM", toc).group(1))
    tsne = int(re.search(r"Figure (\d+)\. t-SNE", toc).group(1))
    assert tsne == gradcam + 1
    markdown = result.markdown.read_text(encoding="utf-8")
    headings = re.findall(r"^## Figure (\d+)\. ", markdown, re.M)
    assert [int(n) for n in headings] == numbers
    assert "_Figure 1. " in markdown and "Compare the paper's Fig. 7." in markdown


def test_configuration_is_a_table_of_settings(full_report, tiny_run):
    result, page = full_report
    _, store, run_id = tiny_run
    config = load_run_data(store, run_id, results=False).config
    section = _section(page, "config")
    assert "<th" in section and ">Setting</th>" in section and ">Value</th>" in section
    rows = dict(
        re.findall(r'<tr class=""><td class="">([^<]*)</td><td class="">([^<]*)</td></tr>', section)
    )
    assert set(rows) == set(config)
    assert rows["exclude"] == "58, 79"
    assert rows["windows"] == "brain"
    assert rows["strategies"] == "none"
    assert rows["epochs"] == "1" and rows["backbone"] == "tinycnn"
    assert rows["pretrained"] == "false"
    assert "{&quot;" not in page  # no JSON blob anywhere on the page
    assert ">Configuration</td>" not in _section(page, "provenance")
    markdown = result.markdown.read_text(encoding="utf-8")
    assert "| Setting | Value |" in markdown and "| exclude | 58, 79 |" in markdown
    assert '"augment_all"' not in markdown


def test_nested_settings_read_as_compact_json():
    assert setting_text([58, 79]) == "58, 79"
    assert setting_text([]) == "none"
    assert setting_text(None) == "–"
    assert setting_text({"ich": 4, "healthy": [0.5]}) == '{"healthy":[0.5],"ich":4}'
    assert setting_text([{"a": 1}, "b"]) == '{"a":1}, b'


# ---------------------------------------------------------------- degenerate intervals


def test_zero_width_intervals_are_flagged_where_they_are_stored(tiny_run):
    _, store, run_id = tiny_run
    data = load_run_data(store, run_id)
    for scope in ("slice", "patient"):
        table = metrics_table(data, store.baselines(), scope, f"table-{scope}")
        for m in data.metrics:
            if m["scope"] != scope or m["split"] != "test" or m["model"] not in ("fold", "vote"):
                continue
            label = "Voting" if m["model"] == "vote" else f"Fold {m['fold']}"
            row = next(r for r in table.rows if r.cells[0] == label)
            for i, name in enumerate(("sensitivity", "specificity", "precision", "f1")):
                lo, hi, cell = m[f"{name}_lo"], m[f"{name}_hi"], row.cells[2 + i]
                if m[name] is None or lo is None:
                    assert not cell.endswith("*"), (label, name, cell)
                else:
                    assert cell.endswith("*") == (lo == hi), (label, name, cell)
        marked = any(c.endswith("*") for r in table.rows for c in r.cells)
        assert (DEGENERATE_NOTE in table.caption) == marked


def test_a_patient_auc_interval_of_zero_width_is_marked_and_explained(tiny_run, tmp_path):
    root, store, run_id = tiny_run
    db = tmp_path / "copy.duckdb"
    shutil.copy(store.path, db)
    con = duckdb.connect(str(db))
    con.execute(  # what every resample gives when each class has one or two test patients
        "UPDATE metrics SET auc = 1.0, auc_lo = 1.0, auc_hi = 1.0 "
        "WHERE model = 'vote' AND scope = 'patient' AND split = 'test'"
    )
    con.execute(
        "UPDATE metrics SET f1 = 0.8, f1_lo = 0.5, f1_hi = 1.0 "
        "WHERE model = 'vote' AND scope = 'patient' AND split = 'test'"
    )
    con.close()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICHBENCH_CACHE", str(root / "cache"))
        result = build_report([run_id], db=db, out=tmp_path / "out", options=FAST)
    page = result.html.read_text(encoding="utf-8")
    table = _section(page, "table-patient")
    vote = next(r for r in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S) if "Voting" in r)
    assert '1.00<span class="ci">[1.00–1.00]*</span>' in vote
    assert '0.80<span class="ci">[0.50–1.00]</span>' in vote  # a real interval: no mark
    caption = re.search(r'<p class="tcaption">(.*?)</p>', table, re.S).group(1)
    assert NOTE_START in caption and "too few patients" in caption
    markdown = result.markdown.read_text(encoding="utf-8")
    assert "1.00 [1.00–1.00]\\*" in markdown and "\\* A zero-width interval" in markdown
    copy = Store(db, create=False)
    ours, _ = run_tables(load_run_data(copy, run_id), copy.baselines(), "patient")
    vote_row = next(r for r in ours.rows if r.cells[0] == "vote")
    assert vote_row.cells[7] == "1.00 [1.00–1.00]*"
    assert NOTE_START in ours.note  # what a terminal prints under the table


# ---------------------------------------------------------------- legends


def _overlaps(fig: Figure) -> list[tuple[str, str]]:
    """(legend, bar) pairs whose boxes on the drawn canvas overlap; a legend that leaves
    the figure counts as overlapping it."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends, "no legend drawn"
    bars = [
        (ax.get_title() or "axes", patch)
        for ax in fig.axes
        for container in ax.containers
        for patch in getattr(container, "patches", [])
        if patch.get_height() > 0
    ]
    assert bars, "no bar drawn"
    page = fig.bbox
    found = []
    for legend in legends:
        box = legend.get_window_extent(renderer)
        if box.x0 < page.x0 or box.y0 < page.y0 or box.x1 > page.x1 or box.y1 > page.y1:
            found.append((legend.get_texts()[0].get_text(), "the figure's edge"))
        for where, patch in bars:
            bar = patch.get_window_extent(renderer)
            width = min(box.x1, bar.x1) - max(box.x0, bar.x0)
            height = min(box.y1, bar.y1) - max(box.y0, bar.y0)
            if width > 0 and height > 0:
                found.append((legend.get_texts()[0].get_text(), where))
    return found


def test_the_stats_png_legend_hides_no_bar(tiny_synth_dir, tmp_path, capsys, monkeypatch):
    drawn: list[Figure] = []
    save = Figure.savefig

    def keep(fig, *args, **kwargs):
        drawn.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    png = tmp_path / "stats.png"
    code, _, err = run_main(capsys, "data", "stats", str(tiny_synth_dir), "--out", str(png))
    assert code == 0, err
    assert png.is_file() and len(drawn) == 1
    assert _overlaps(drawn[0]) == []


def test_the_report_dataset_figure_legend_hides_no_bar(tiny_dataset):
    from ichbench.report import figures as F
    from ichbench.report.dataset_figures import distribution_figure

    patients = np.unique(np.asarray(tiny_dataset.patient_ids))
    with F.style():
        fig = distribution_figure(
            np.asarray(tiny_dataset.labels),
            np.asarray(tiny_dataset.patient_ids),
            np.asarray(tiny_dataset.positions),
            test_patients=patients[:2].tolist(),
            source="synthetic",
        )
        assert _overlaps(fig) == []


def test_markdown_escapes_html_from_the_store() -> None:
    """A dataset named like HTML stays text in report.md, whose renderers pass raw HTML
    through: in a table cell, a note and a caption alike."""
    from ichbench.report.markdown import _section_md, table_md
    from ichbench.report.page import Section
    from ichbench.views.model import Row, TableData

    evil = "<img src=x onerror=alert(1)>"
    table = TableData(id="t", title="T", columns=["", ""], rows=[Row(["Dataset", evil])])
    section = Section("s", "S", table=table, notes=[f"from {evil}"])
    text = table_md(table) + _section_md(section)
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text


def test_a_checkpoint_field_of_a_wrong_type_is_a_problem_named_not_a_crash(tmp_path) -> None:
    """`load_fold_models` (the report's, evaluate's and predict's) names a checkpoint whose
    fields are damaged instead of raising."""
    import torch

    from ichbench.checkpoints import checkpoint_path, load_fold_models
    from ichbench.interfaces import BuildOptions
    from ichbench.plugins import get_registry

    built = get_registry().create("backbone", "tinycnn").build(BuildOptions(in_chans=1))
    path = checkpoint_path(tmp_path / "runs.duckdb", "r1", 0)
    path.parent.mkdir(parents=True)
    ckpt = dict(
        state_dict=built.model.state_dict(),
        backbone="tinycnn",
        in_chans=1,
        image_size="big",
        windows=["brain"],
        fold=0,
    )
    torch.save(ckpt, path)
    loaded = load_fold_models(tmp_path / "runs.duckdb", "r1", [0], torch.device("cpu"))
    assert not loaded.any
    (problem,) = loaded.problems
    assert problem.startswith("fold 0: cannot load") and "big" in problem
