"""`ichbench report` on a tiny real run: every table and figure is there and drawn, a
comparison has Table II's rows, missing checkpoints or an unfinished run are said, not
hidden, and bad run ids or stores are StoreErrors."""

from __future__ import annotations

import base64
import io
import re
import shutil

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from ichbench.cli import report_cmd
from ichbench.config import RunConfig
from ichbench.errors import StoreError
from ichbench.formatting import fmt
from ichbench.lifecycle import run_config
from ichbench.paths import run_dir
from ichbench.report.build import COMPARE_ID, SECTION_IDS, ReportOptions, build_report
from ichbench.store import Store

TINY = dict(
    data="synthetic:14,1,32",
    backbone="tinycnn",
    folds=3,
    epochs=1,
    image_size=32,
    batch_size=16,
    preset="quick",
    device="cpu",
)
FIGURES = [s for s in SECTION_IDS if s.startswith("fig-")]
TABLES = [s for s in SECTION_IDS if not s.startswith("fig-")]
CI = re.compile(r"\d\.\d\d \[\d\.\d\d–\d\.\d\d\]")  # Markdown: `0.91 [0.85–0.95]`
CI_HTML = re.compile(r'\d\.\d\d<span class="ci">\[\d\.\d\d–\d\.\d\d\]</span>')
FAST = ReportOptions(cam=False, tsne=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 3-fold run of the tiny CNN on 14 synthetic patients, in its own store."""
    root = tmp_path_factory.mktemp("report-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICHBENCH_LOAD_PLUGINS", "")
        mp.setenv("HF_HUB_OFFLINE", "1")
        store = Store(root / "runs.duckdb")
        result = run_config(RunConfig(**TINY), store, cache_dir=root / "cache")
    return root, store, result.run_id


@pytest.fixture
def env(tiny_run, monkeypatch):
    """The report reloads the run's dataset from the same cache the run filled."""
    root, store, run_id = tiny_run
    monkeypatch.setenv("ICHBENCH_CACHE", str(root / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root, store, run_id


@pytest.fixture(scope="module")
def full_report(tiny_run, tmp_path_factory):
    root, store, run_id = tiny_run
    out = tmp_path_factory.mktemp("report-out") / "report"
    steps: list[tuple[str, int, int]] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICHBENCH_CACHE", str(root / "cache"))
        mp.setenv("ICHBENCH_LOAD_PLUGINS", "")
        mp.setenv("HF_HUB_OFFLINE", "1")
        result = build_report(
            [run_id],
            db=store.path,
            out=out,
            progress=lambda d, done, total: steps.append((d, done, total)),
        )
    return result, result.html.read_text(encoding="utf-8"), steps


def _section(page: str, section_id: str) -> str:
    match = re.search(rf'<section id="{re.escape(section_id)}">(.*?)</section>', page, re.S)
    assert match, f"no section {section_id}"
    return match.group(1)


def _png_images(fragment: str) -> list[np.ndarray]:
    payloads = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', fragment)
    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(p))).convert("L"), dtype=float)
        for p in payloads
    ]


# ---------------------------------------------------------------- one run


def test_every_section_is_in_the_page_in_order(full_report):
    result, page, _ = full_report
    positions = [page.index(f'<section id="{s}">') for s in SECTION_IDS]
    assert positions == sorted(positions)
    assert result.sections == list(SECTION_IDS)
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "--accent:#1f4e79" in page  # the style sheet shipped beside the package
    assert "http://" not in page and "https://" not in page  # opens offline
    # nothing was missing; the one note says the tiny synthetic run is no match for the paper
    assert [n.split(":")[0] for n in result.notes] == ["Not like for like"]
    assert "Not like for like" in page


def test_every_figure_is_embedded_and_not_blank(full_report):
    result, page, _ = full_report
    for section_id in FIGURES:
        images = _png_images(_section(page, section_id))
        assert len(images) == 1, section_id
        image = images[0]
        assert image.shape[0] > 200 and image.shape[1] > 400, section_id
        assert image.std() > 10, f"{section_id} looks blank"
    assert sorted(p.name for p in result.figures) == sorted(f"{s}.png" for s in FIGURES)
    for path in result.figures:
        assert path.stat().st_size > 10_000, path
        pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
        assert pixels.std() > 10 and (pixels < 128).mean() > 0.01, path


def test_metric_tables_have_folds_vote_cis_and_the_paper(full_report, tiny_run):
    _, page, _ = full_report
    _, store, run_id = tiny_run
    for section_id, paper_vote in (
        ("table-slice", ("0.94", "0.91", "0.49", "0.64")),
        ("table-patient", ("1.00", "0.80", "0.75", "0.86")),
    ):
        table = _section(page, section_id)
        rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
        labels = [re.sub(r"<.*?>", "", r).strip() for r in rows]
        for fold in range(3):
            assert any(label.startswith(f"Fold {fold}") for label in labels)
        assert sum(label.startswith("Voting") for label in labels) == 2  # ours and the paper's
        assert len(CI_HTML.findall(table)) >= 4 * 5  # 3 folds + vote, most metrics with CIs
        assert "Reported by Hoseyni et al." in table
        paper_row = [r for r in rows if "Voting" in r][1]
        cells = re.findall(r"<td[^>]*>(.*?)</td>", paper_row)
        assert tuple(cells[2:6]) == paper_vote
    scope_rows = store.run_metrics(run_id)
    vote = next(
        m
        for m in scope_rows
        if m["model"] == "vote" and m["scope"] == "slice" and m["split"] == "test"
    )
    value, interval = fmt(vote["f1"], vote["f1_lo"], vote["f1_hi"]).split(" ")
    assert f'{value}<span class="ci">{interval}</span>' in _section(page, "table-slice")


def test_provenance_names_what_ran(full_report, tiny_run):
    _, page, _ = full_report
    _, store, run_id = tiny_run
    run = store.get_run(run_id)
    table = _section(page, "provenance")
    for value in (
        run_id,
        run["dataset_hash"],
        "tinycnn",
        "quick",
        run["split_hash"],
        "finished",
        "torch",
    ):
        assert value in table
    assert "NOT finished" not in page and "badge finished" in page
    assert re.search(r"<td[^>]*>torch.compile</td><td[^>]*>no</td>", table)


def test_provenance_says_which_folds_trained_compiled():
    from ichbench.views.provenance import compiled_text as _compiled_text

    assert _compiled_text([]) == "–"
    assert _compiled_text([{"fold": 0, "compiled": False}, {"fold": 1}]) == "no"
    assert (
        _compiled_text([{"fold": 0, "compiled": True}, {"fold": 1, "compiled": True}])
        == "yes, every fold"
    )
    assert (
        _compiled_text([{"fold": 0, "compiled": False}, {"fold": 1, "compiled": True}])
        == "folds 1 only"
    )


def test_markdown_has_the_tables_and_the_pngs_beside_it(full_report):
    result, _, _ = full_report
    text = result.markdown.read_text(encoding="utf-8")
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert sorted(linked) == sorted(f"{s}.png" for s in FIGURES)
    for name in linked:
        assert (result.markdown.parent / name).is_file()
    assert text.count("| Model | Threshold | Sensitivity") == 2
    assert CI.search(text)


def test_progress_reports_every_step(full_report):
    _, _, steps = full_report
    totals = {total for _, _, total in steps}
    assert len(totals) == 1
    assert [done for _, done, _ in steps] == list(range(totals.pop()))
    assert any("Grad-CAM" in d for d, _, _ in steps)


# ---------------------------------------------------------------- several runs


def test_two_runs_give_table_ii_rows(env, tmp_path):
    root, store, run_id = env
    other = run_config(RunConfig(**TINY, weights=["ich:4"]), store, cache_dir=root / "cache")
    result = build_report([run_id, other.run_id], db=store.path, out=tmp_path / "cmp", options=FAST)
    page = result.html.read_text(encoding="utf-8")
    table = _section(page, COMPARE_ID)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
    ours = [r for r in rows if run_id in r or other.run_id in r]
    assert len(ours) == 2
    assert "ich:4" in ours[1] and CI_HTML.search(ours[0])
    for backbone in ("resnet50", "vgg16", "mobilenetv2", "inception_v3"):
        assert backbone in table
    for rid in (run_id, other.run_id):  # each run keeps its own sections
        assert f'id="table-slice--{rid}"' in page
    # the runs' curves overlaid once; the dataset figure, the same for both, drawn once
    names = {p.name for p in result.figures}
    assert "compare-curves.png" in names
    assert f"fig-dataset--{run_id}.png" in names
    assert f"fig-dataset--{other.run_id}.png" not in names
    assert f"The same as run {run_id}&#x27;s figure above" in page
    assert result.html.parent.name == "cmp"
    # the same test patients: the paired differences as a figure and the table compare prints
    paired = _section(page, "paired")
    assert "<img" in paired and "B−A [95% CI]" in paired and "McNemar" in paired
    assert (result.html.parent / "paired.png").is_file()
    assert "Paired comparison" in result.markdown.read_text(encoding="utf-8")


def test_default_output_folder_is_named_after_the_run(env, tmp_path, monkeypatch):
    _, store, run_id = env
    monkeypatch.chdir(tmp_path)
    result = build_report([run_id[:-2]], db=store.path, options=FAST)  # a unique prefix
    assert result.html.resolve() == (tmp_path / f"report-{run_id}" / "report.html").resolve()


# ---------------------------------------------------------------- what is missing


def test_missing_checkpoints_still_render_the_rest(env, tmp_path):
    root, store, run_id = env
    db = tmp_path / "copy.duckdb"
    shutil.copy(store.path, db)
    shutil.copytree(run_dir(store.path, run_id), run_dir(db, run_id))
    for path in run_dir(db, run_id).glob("fold*.pt"):
        path.unlink()
    result = build_report([run_id], db=db, out=tmp_path / "out")
    page = result.html.read_text(encoding="utf-8")
    for section_id in ("fig-gradcam", "fig-tsne"):
        section = _section(page, section_id)
        assert "checkpoints missing" in section
        assert "<img" not in section
    for section_id in (
        "fig-dataset",
        "fig-threshold",
        "fig-confusion",
        "fig-roc",
        "fig-strip",
        "fig-training",
    ):
        assert len(_png_images(_section(page, section_id))) == 1
    for section_id in TABLES:
        assert "<table" in _section(page, section_id)


def test_missing_dataset_falls_back_to_the_store(env, tmp_path, monkeypatch):
    _, store, run_id = env
    db = tmp_path / "copy.duckdb"
    shutil.copy(store.path, db)
    import duckdb

    con = duckdb.connect(str(db))
    con.execute("UPDATE runs SET config = json_object('data', '/nonexistent/ct-ich')")
    con.close()
    result = build_report([run_id], db=db, out=tmp_path / "out", options=FAST)
    section = _section(result.html.read_text(encoding="utf-8"), "fig-dataset")
    assert "Drawn from the store" in section and "/nonexistent/ct-ich" in section
    assert len(_png_images(section)) == 1


def test_a_run_without_stored_patient_decisions_says_so(env, tmp_path):
    _, store, run_id = env
    assert store.patient_decisions(run_id)  # what a run records today
    db = tmp_path / "copy.duckdb"
    shutil.copy(store.path, db)
    import duckdb

    con = duckdb.connect(str(db))
    con.execute("DELETE FROM patient_decisions")  # as a run recorded before they were
    con.close()
    result = build_report([run_id], db=db, out=tmp_path / "out", options=FAST)
    section = _section(result.html.read_text(encoding="utf-8"), "fig-strip")
    assert "recorded without its patient decisions" in section
    assert len(_png_images(section)) == 1  # the slices are still drawn


def test_unfinished_run_is_labelled_not_finished(env, tmp_path):
    root, store, _ = env

    def stop_at_second_fold(event):
        if event.kind == "fold_started" and event.fold == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_config(
            RunConfig(**TINY, seed=3),
            store,
            cache_dir=root / "cache",
            observers=[stop_at_second_fold],
        )
    rid = next(r["run_id"] for r in store.list_runs() if r["status"] == "interrupted")
    result = build_report(
        [rid], db=store.path, out=tmp_path / "out", options=ReportOptions(cam=True, tsne=False)
    )
    page = result.html.read_text(encoding="utf-8")
    assert 'class="badge finished"' not in page
    assert "INTERRUPTED" in page and 'class="banner"' in page
    assert "not finished" in _section(page, "table-slice")
    table = _section(page, "table-slice")
    assert "none: run interrupted" in table and "not recorded" in table  # folds 1 and 2
    assert len(CI_HTML.findall(table)) >= 5  # fold 0 was recorded
    assert "<img" in _section(page, "fig-gradcam")  # fold 0's checkpoint is there
    assert "No vote" in _section(page, "fig-confusion")
    md = result.markdown.read_text(encoding="utf-8")
    assert "INTERRUPTED — not finished" in md


# ---------------------------------------------------------------- errors and CLI


def test_unknown_run_id_is_a_store_error(env, tmp_path):
    _, store, _ = env
    with pytest.raises(StoreError, match="Unknown run 'nope'"):
        build_report(["nope"], db=store.path, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_store_is_a_store_error_and_is_not_created(tmp_path):
    db = tmp_path / "absent.duckdb"
    with pytest.raises(StoreError, match="No store at"):
        build_report(["x"], db=db, out=tmp_path / "out")
    assert not db.exists()


def _cli() -> typer.Typer:
    app = typer.Typer()
    report_cmd.register(app)

    @app.callback()
    def _root() -> None:
        """A throwaway root so `report` stays a subcommand."""

    return app


def test_cli_prints_the_paths_on_stdout(env, tmp_path):
    _, store, run_id = env
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        _cli(),
        ["report", run_id, "--db", str(store.path), "--out", str(out), "--no-cam", "--no-tsne"],
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines == [str(out / "report.html"), str(out / "report.md")]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "--no-cam" in _section(page, "fig-gradcam")


def test_cli_unknown_run_raises_the_store_error(env, tmp_path):
    _, store, _ = env
    result = CliRunner().invoke(_cli(), ["report", "nope", "--db", str(store.path)])
    assert isinstance(result.exception, StoreError)
    assert "Unknown run 'nope'" in str(result.exception)


# ---------------------------------------------------------------- pieces


def test_ci_format():
    assert fmt(0.912, 0.851, 0.953) == "0.91 [0.85–0.95]"
    assert fmt(None) == "–"
    assert fmt(0.5) == "0.50"


def test_cam_layer_and_final_linear_are_found_generically():
    import timm
    import torch

    from ichbench.interfaces import BuildOptions
    from ichbench.plugins import get_registry
    from ichbench.report.cam import cam_layer
    from ichbench.report.embeddings import embed, final_linear

    resnet = timm.create_model("resnet18", pretrained=False, num_classes=2, in_chans=1).eval()
    x = torch.zeros(2, 1, 64, 64)
    assert cam_layer(resnet, x) is resnet.layer4
    assert final_linear(resnet, x) is resnet.fc
    tiny = (
        get_registry()
        .create("backbone", "tinycnn")
        .build(BuildOptions(in_chans=1, pretrained=False))
        .model.eval()
    )
    assert cam_layer(tiny, x) is tiny.conv4
    assert embed(tiny, torch.rand(5, 1, 32, 32)).shape == (5, 64)


def test_app_reports_an_unknown_run_as_one_error_line(env, capsys):
    from ichbench.cli.app import main
    from ichbench.errors import ExitCode

    _, store, _ = env
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "nope", "--db", str(store.path)])
    assert exit_info.value.code == ExitCode.STORE
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: Unknown run 'nope'")
