"""Hostile files and hostile states against the DICOM readers, the CQ500 reads, `evaluate`
and `predict`: each case was once accepted silently, reported over several lines, or
ended in exit 1. Each must now give one `Error:` line naming the file or value, its
documented exit code, and leave nothing half-written.

Running as root makes an unreadable-permission file readable, so that case is not here:
it cannot fail as a user would see it."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import duckdb
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from ichbench.config import RunConfig
from ichbench.data.cq500 import read_reads
from ichbench.data.dicom import read_series
from ichbench.data.scan import read_scan
from ichbench.data.synth_dicom import uid, write_slice
from ichbench.errors import DataError
from ichbench.lifecycle import run_config
from ichbench.paths import run_dir
from ichbench.store import Store
from tests.cli_run import error_lines, run_main

N, SIZE = 4, 16


def head(size: int = SIZE, n: int = N) -> np.ndarray:
    """Air around a water-like square: plausible Hounsfield units for every reader."""
    hu = np.full((n, size, size), -1000.0, dtype=np.float32)
    hu[:, size // 4 : -size // 4, size // 4 : -size // 4] = 40
    return hu


def write_series(folder: Path, hu: np.ndarray, series: str = "s1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, plane in enumerate(hu):
        write_slice(
            folder / f"{k:03d}.dcm",
            plane,
            patient_id="P1",
            study_uid=uid("study"),
            series_uid=uid(series),
            sop_uid=uid(series, k),
            z_mm=100 + 5 * k,
            instance=k + 1,
        )
    return folder


def edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def drop_rescale(ds) -> None:
    del ds.RescaleSlope
    del ds.RescaleIntercept


# --------------------------------------------------------------------------- DICOM


def test_a_slice_without_rescale_tags_among_slices_with_them_is_named(tmp_path):
    """Read with the defaults it sat 1024 HU above its neighbours, without a word."""
    folder = write_series(tmp_path / "s", head())
    edit(folder / "002.dcm", drop_rescale)
    with pytest.raises(DataError, match="no RescaleSlope or RescaleIntercept") as info:
        read_series(folder)
    assert str(folder / "002.dcm") in str(info.value)


def test_a_series_without_any_rescale_tags_is_read_as_stored_and_noted(tmp_path):
    folder = write_series(tmp_path / "s", head())
    for path in sorted(folder.iterdir()):
        edit(path, drop_rescale)
    series = read_series(folder)
    assert series.hu.min() == 24  # -1000 HU stored as 24 with intercept -1024
    assert any("no RescaleSlope or RescaleIntercept" in n for n in series.notes)


def test_a_series_of_one_pixel_images_is_refused(tmp_path):
    folder = write_series(tmp_path / "s", head(size=1))
    with pytest.raises(DataError, match="1x1 pixels") as info:
        read_series(folder)
    assert str(folder / "000.dcm") in str(info.value)


def test_a_decoder_failure_is_one_line_naming_the_file(tmp_path):
    """pydicom's message for a damaged compressed frame is a paragraph."""
    folder = write_series(tmp_path / "s", head())

    def damaged_rle(ds) -> None:
        ds.file_meta.TransferSyntaxUID = RLELossless
        ds.PixelData = encapsulate([b"\x00" * 64])
        ds["PixelData"].VR = "OB"

    edit(folder / "001.dcm", damaged_rle)
    with pytest.raises(DataError) as info:
        read_series(folder)
    message = str(info.value)
    assert "\n" not in message and str(folder / "001.dcm") in message
    assert "RLE Lossless" in message and "segments" in message


# --------------------------------------------------------------------------- scans


def test_slice_images_of_a_few_pixels_are_no_scan(tmp_path):
    folder = tmp_path / "icons"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(folder / f"{k + 1}.png")
    with pytest.raises(DataError, match="4x4 pixels") as info:
        read_scan(folder, ("brain",), 32)
    assert str(folder / "1.png") in str(info.value)


def test_a_nifti_of_a_few_pixels_a_slice_is_no_scan(tmp_path):
    path = tmp_path / "tiny.nii"
    data = np.full((3, 3, 12), -1000, dtype=np.int16)
    data[1, 1] = 40
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with pytest.raises(DataError, match="3x3 pixels") as info:
        read_scan(path, ("brain",), 32)
    assert str(path) in str(info.value)


def test_a_study_folder_is_told_to_give_one_series(tmp_path):
    study = tmp_path / "study"
    write_series(study / "thin", head(), "thin")
    write_series(study / "thick", head(), "thick")
    with pytest.raises(DataError, match=r"holds series folders \(thick, thin\)"):
        read_scan(study, ("brain",), 32)


def test_a_scan_far_outside_hounsfield_units_is_refused(tmp_path):
    """A wrong scale (1e30) passed the air check, and every window saturated."""
    path = tmp_path / "scaled.nii"
    hu = np.moveaxis(head(size=16, n=6), 0, -1).astype(np.float32) * np.float32(1e30)
    nib.save(nib.Nifti1Image(hu, np.eye(4)), str(path))
    with pytest.raises(DataError, match="far outside Hounsfield units") as info:
        read_scan(path, ("brain",), 32)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- labels edited


@pytest.mark.parametrize("layout", ["rsna", "cq500"])
def test_labels_edited_after_a_load_are_read_again(layout, tmp_path):
    """The label file did not enter the cache key: a corrected label file was ignored
    and the first load's labels came back from the cache."""
    from ichbench.data.cq500 import Cq500Source
    from ichbench.data.rsna import RsnaSource
    from ichbench.data.synth_dicom import CQ500_READS, RSNA_LABELS, generate_dicom
    from ichbench.interfaces import LoadOptions

    root = generate_dicom(tmp_path / layout, layout, 3, 2, 16).out
    source = RsnaSource(root) if layout == "rsna" else Cq500Source(root)
    options, cache = LoadOptions(image_size=16, exclude=()), tmp_path / "cache"

    def positives() -> int:
        data = source.load(options, cache)
        truth = data.patient_truth if layout == "cq500" else None
        return int(sum(truth.values())) if truth is not None else int(data.labels.sum())

    assert positives() > 0
    labels = root / (RSNA_LABELS if layout == "rsna" else CQ500_READS)
    lines = labels.read_text().splitlines()
    kept = 1 if layout == "rsna" else 2  # the ID; or the name and category
    cleared = [lines[0]] + [
        ",".join(v if i < kept else "0" for i, v in enumerate(r.split(","))) for r in lines[1:]
    ]
    labels.write_text("\n".join(cleared) + "\n")
    assert positives() == 0


# --------------------------------------------------------------------------- CQ500 reads


def reads_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return path


HEADER = ["name", "R1:ICH", "R2:ICH", "R3:ICH"]


def test_a_reads_row_with_extra_fields_is_named(tmp_path):
    """Its values were read under the header's first columns and the rest dropped."""
    path = reads_csv(tmp_path / "reads.csv", HEADER, [["CQ500-CT-1", "1", "1", "0", "1"]])
    with pytest.raises(DataError, match=r"line 2: 5 field\(s\), while the header has 4"):
        read_reads(path)


def test_reads_header_names_are_read_without_surrounding_spaces(tmp_path):
    path = reads_csv(tmp_path / "reads.csv", [f" {c} " for c in HEADER], [["a", "1", "0", "1"]])
    assert read_reads(path).truth == {"a": 1}


def test_a_reader_column_twice_is_named(tmp_path):
    path = reads_csv(tmp_path / "reads.csv", [*HEADER, "R1:ICH"], [["a", "1", "0", "1", "0"]])
    with pytest.raises(DataError, match="column R1:ICH appears twice"):
        read_reads(path)


# --------------------------------------------------------------------------- a real run

TINY = dict(
    data="synthetic:6,0,32",
    backbone="tinycnn",
    folds=2,
    epochs=1,
    image_size=32,
    batch_size=16,
    preset="quick",
    device="cpu",
)
OTHER = "synthetic:3,5,32"
TABLES = ("evaluations", "evaluation_metrics", "evaluation_predictions", "evaluation_patients")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-fold run of the tiny CNN, its store and cache, and a scan it never saw."""
    root = tmp_path_factory.mktemp("hostile-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICHBENCH_LOAD_PLUGINS", "")
        mp.setenv("HF_HUB_OFFLINE", "1")
        store = Store(root / "runs.duckdb")
        result = run_config(RunConfig(**TINY), store, cache_dir=root / "cache")
    scan = write_series(root / "scan", head(size=32, n=6))
    return root, store.path, result.run_id, scan


@pytest.fixture
def copy(finished, tmp_path, monkeypatch):
    """A copy of the store and the run's checkpoints, to damage."""
    root, db, run_id, scan = finished
    monkeypatch.setenv("ICHBENCH_CACHE", str(root / "cache"))
    target = tmp_path / "store" / "runs.duckdb"
    target.parent.mkdir()
    shutil.copy2(db, target)
    shutil.copytree(run_dir(db, run_id), run_dir(target, run_id))
    return target, run_id, scan


def counts(db: Path) -> list[int]:
    with duckdb.connect(str(db), read_only=True) as con:
        return [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES]


def refused(capsys, db: Path, run_id: str, scan: Path, code: int, *words: str) -> str:
    """`evaluate` and `predict` both refuse with one line naming `words`; nothing stored."""
    for args in (
        ("evaluate", run_id, "--data", OTHER, "--db", str(db)),
        ("predict", str(scan), "--run", run_id, "--db", str(db)),
    ):
        got, out, err = run_main(capsys, *args)
        assert got == code, err
        (line,) = error_lines(err)
        assert "Traceback" not in err and out == ""
        for word in words:
            assert word in line, line
    assert counts(db) == [0, 0, 0, 0]
    return line


def checkpoint(db: Path, run_id: str) -> Path:
    return run_dir(db, run_id) / "fold0.pt"


@pytest.mark.slow
def test_a_checkpoint_of_random_bytes_is_one_line(copy, capsys):
    db, run_id, scan = copy
    path = checkpoint(db, run_id)
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    line = refused(capsys, db, run_id, scan, 3, str(path))
    assert "weights_only" not in line  # torch's advice to load it unsafely is not passed on


@pytest.mark.slow
def test_a_checkpoint_that_would_run_code_is_refused_and_never_run(copy, capsys, tmp_path):
    db, run_id, scan = copy
    mark = tmp_path / "ran"
    torch.save({"x": _Payload(str(mark))}, checkpoint(db, run_id))
    refused(capsys, db, run_id, scan, 3, str(checkpoint(db, run_id)), "could run code")
    assert not mark.exists()


class _Payload:
    def __init__(self, mark: str) -> None:
        self.mark = mark

    def __reduce__(self):
        return (Path.touch, (Path(self.mark),))


@pytest.mark.slow
def test_a_truncated_checkpoint_is_one_short_line(copy, capsys):
    db, run_id, scan = copy
    path = checkpoint(db, run_id)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    line = refused(capsys, db, run_id, scan, 3, str(path))
    assert len(line) < 700


@pytest.mark.slow
def test_a_checkpoint_field_of_a_wrong_type_is_a_data_error(copy, capsys):
    """It ended in exit 1: `int('big')` outside the loader's own guard."""
    db, run_id, scan = copy
    path = checkpoint(db, run_id)
    ckpt = torch.load(path, weights_only=True)
    ckpt["image_size"] = "big"
    torch.save(ckpt, path)
    refused(capsys, db, run_id, scan, 3, str(run_dir(db, run_id)), "'big'")


@pytest.mark.slow
def test_damaged_thresholds_are_refused(copy, capsys):
    """A NaN voting threshold decided every slice negative, and a fold without one ended
    in exit 1."""
    db, run_id, scan = copy
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE runs SET threshold = 'NaN'::DOUBLE WHERE run_id = ?", [run_id])
    refused(capsys, db, run_id, scan, 3, run_id, "no voting threshold")
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE runs SET threshold = 0.5 WHERE run_id = ?", [run_id])
        con.execute("UPDATE folds SET threshold = NULL WHERE run_id = ?", [run_id])
    refused(capsys, db, run_id, scan, 3, run_id, "fold(s) 0, 1 record no threshold")


@pytest.mark.slow
def test_a_run_whose_configuration_was_lost_is_still_evaluated(copy, capsys):
    """It ended in exit 1: the image size came from the configuration, not the models."""
    db, run_id, _ = copy
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE runs SET config = NULL WHERE run_id = ?", [run_id])
    code, _, err = run_main(capsys, "evaluate", run_id, "--data", OTHER, "--db", str(db))
    assert code == 0, err
    assert "not checked against the run's training" in err  # and says what it could not do
    assert counts(db)[0] == 1


@pytest.mark.slow
def test_an_exclusion_that_names_nobody_is_said(copy, capsys):
    db, run_id, _ = copy
    code, _, err = run_main(
        capsys, "evaluate", run_id, "--data", OTHER, "--exclude", "999", "--db", str(db)
    )
    assert code == 0, err
    assert "--exclude 999: no such patient in synthetic:3,5,32" in err


@pytest.mark.slow
def test_evaluating_twice_on_the_same_data_records_it_once(copy, capsys):
    db, run_id, _ = copy
    args = ("evaluate", run_id, "--data", OTHER, "--db", str(db), "--json")
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    first = json.loads(out)
    before = counts(db)
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    assert json.loads(out)["evaluation_id"] == first["evaluation_id"]
    assert "nothing recorded again" in err
    assert counts(db) == before
    code, _, err = run_main(capsys, *args[:-1], "--exclude", "50")  # other patients: recorded
    assert code == 0, err
    assert counts(db)[0] == 2


@pytest.mark.slow
def test_ctrl_c_while_an_evaluation_is_written_leaves_no_row(copy, capsys, monkeypatch):
    """A real SIGINT once every row is inserted, before the commit."""
    import ichbench.store.writes as writes

    db, run_id, _ = copy
    insert = writes.insert_evaluation

    def then_interrupt(con, evaluation) -> None:
        insert(con, evaluation)
        assert con.execute("SELECT count(*) FROM evaluation_predictions").fetchone()[0] > 0
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(writes, "insert_evaluation", then_interrupt)
    code, _, err = run_main(capsys, "evaluate", run_id, "--data", OTHER, "--db", str(db))
    assert code == 130, err
    assert counts(db) == [0, 0, 0, 0]


@pytest.mark.slow
def test_a_page_asked_into_a_folder_is_refused_before_scoring(copy, capsys, tmp_path):
    db, run_id, scan = copy
    code, out, err = run_main(
        capsys, "predict", str(scan), "--run", run_id, "--db", str(db), "--html", str(tmp_path)
    )
    assert code == 2 and out == ""
    (line,) = error_lines(err)
    assert f"--html {tmp_path} is a folder" in line
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.slow
def test_a_page_that_cannot_be_written_names_the_page(copy, capsys, tmp_path):
    db, run_id, scan = copy
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    page = blocker / "page.html"
    code, _, err = run_main(
        capsys, "predict", str(scan), "--run", run_id, "--db", str(db), "--html", str(page)
    )
    assert code == 6
    (line,) = error_lines(err)
    assert str(page) in line and "Cannot write the page" in line


@pytest.mark.slow
def test_a_dataset_named_like_markup_is_printed_as_named(copy, capsys, tmp_path):
    """`[red]` in a folder's name was read as a colour and dropped from the summary."""
    from ichbench.data.synth import generate

    db, run_id, _ = copy
    folder = tmp_path / "site[red]b"
    generate(folder, 2, 5, 32)
    code, _, err = run_main(capsys, "evaluate", run_id, "--data", str(folder), "--db", str(db))
    assert code == 0, err
    assert f"on physionet:{folder}:" in err


def test_a_dataset_named_with_dollar_signs_draws_its_evaluation(tmp_path):
    """matplotlib read `$...$` in a dataset's name as mathematics: the report failed."""
    from types import SimpleNamespace

    from ichbench.report import figures as F
    from ichbench.report.evaluation_section import _forest

    patient = {"sensitivity": 0.5, "sensitivity_lo": 0.1, "sensitivity_hi": 0.9}
    fig = _forest(
        SimpleNamespace(run={"dataset": r"own$\frac$"}),
        {"patient": patient},
        [{"dataset": r"site$\frac$x", "evaluation_id": "eval-1-abcdef", "metrics": {}}],
    )
    with F.style():
        assert F.png_bytes(fig).startswith(b"\x89PNG")
