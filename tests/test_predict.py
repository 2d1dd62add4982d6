"""`ichbench predict SCAN --run RUN` on a tiny real run: a NIfTI volume written by the
synthetic generator, the same scan as a DICOM series and as a folder of slice images, the
page with Grad-CAM; the numbers are the run's vote (the same as an evaluation of the
scan's dataset gives); every wrong input is one line and an exit code; and the store is
never written: its file is byte for byte what it was."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ichbench.config import RunConfig
from ichbench.data.nifti import read_nifti
from ichbench.data.scan import read_scan
from ichbench.data.windows import WINDOWS, to_uint8
from ichbench.evaluation import evaluate
from ichbench.lifecycle import run_config
from ichbench.paths import run_dir
from ichbench.store import Store
from tests.cli_run import error_lines, run_main

TINY = dict(
    data="synthetic:8,0,32",
    backbone="tinycnn",
    folds=2,
    epochs=1,
    image_size=32,
    batch_size=16,
    preset="quick",
    device="cpu",
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 2-fold run of the tiny CNN on 8 synthetic patients, in its own store."""
    root = tmp_path_factory.mktemp("predict-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICHBENCH_LOAD_PLUGINS", "")
        mp.setenv("HF_HUB_OFFLINE", "1")
        store = Store(root / "runs.duckdb")
        result = run_config(RunConfig(**TINY), store, cache_dir=root / "cache")
    return store.path, result.run_id


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    """Three synthetic patients the run never saw, in the PhysioNet NIfTI layout."""
    from ichbench.data.synth import generate

    out = tmp_path_factory.mktemp("predict-other") / "other"
    generate(out, 3, 5, 32)
    return out


@pytest.fixture(scope="module")
def volume(other) -> Path:
    return sorted((other / "ct_scans").glob("*.nii"))[0]


def _predict(capsys, db: Path, run_id: str, scan: Path, *extra: str) -> tuple[int, str, str]:
    return run_main(capsys, "predict", str(scan), "--run", run_id, "--db", str(db), *extra)


def _json(capsys, db, run_id, scan, *extra) -> dict:
    code, out, err = _predict(capsys, db, run_id, scan, "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def _digest(db: Path, run_id: str) -> dict[str, str]:
    """Every byte of the store and of the run's folder."""
    files = [db, db.with_name(db.name + ".wal"), *sorted(run_dir(db, run_id).rglob("*"))]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def test_predict_a_nifti_volume(tiny_run, volume, capsys) -> None:
    db, run_id = tiny_run
    p = _json(capsys, db, run_id, volume)
    slices = nib.load(str(volume)).shape[2]
    assert p["kind"] == "nifti" and p["slices"] == slices == len(p["slice_scores"])
    run = Store(db, create=False).get_run(run_id)
    assert p["threshold"] == pytest.approx(run["threshold"])
    assert p["ensemble"] == "mean" and p["patient_rule"] == "any"
    folds = np.array(p["fold_probabilities"])
    assert folds.shape == (2, slices)
    np.testing.assert_allclose(folds.mean(axis=0), p["slice_scores"])
    flagged = [i + 1 for i, s in enumerate(p["slice_scores"]) if s >= p["threshold"]]
    assert p["flagged_slices"] == flagged
    assert p["ich"] == bool(flagged) and p["decision"] == ("ICH" if flagged else "no ICH")
    assert p["score"] == pytest.approx(max(p["slice_scores"]))


def test_the_text_output_is_a_strip_and_a_decision(tiny_run, volume, capsys) -> None:
    db, run_id = tiny_run
    code, out, err = _predict(capsys, db, run_id, volume)
    assert code == 0, err
    p = _json(capsys, db, run_id, volume)
    lines = out.splitlines()
    marks = [line for line in lines if set(line.strip()) <= {"^"} and line.strip()]
    assert sum(line.count("^") for line in marks) == len(p["flagged_slices"])
    assert any(line.startswith("Decision: ") for line in lines)
    assert f"threshold {p['threshold']:.2f}" in out


def test_predict_gives_what_an_evaluation_gives(
    tiny_run, other, volume, capsys, monkeypatch
) -> None:
    """The scan alone and the scan among its dataset are scored the same: one vote."""
    db, run_id = tiny_run
    monkeypatch.setenv("ICHBENCH_CACHE", str(db.parent / "cache"))  # the run's, for its data
    p = _json(capsys, db, run_id, volume)
    record = evaluate(Store(db, create=False), run_id, str(other))
    patient = int(volume.name.split(".")[0])
    mine = record.patient_id == patient
    order = np.argsort(record.slice_number[mine])
    np.testing.assert_allclose(record.score[mine][order], p["slice_scores"], atol=1e-6)
    at = list(record.patient_ids).index(patient)
    assert bool(record.patient_decision[at]) == p["ich"]


def test_the_same_scan_as_dicom_and_as_slice_images(tiny_run, volume, tmp_path, capsys) -> None:
    """One scan, three forms: a DICOM series (Hounsfield units as 12-bit integers, so
    within rounding) and a folder of brain-window PNGs (the same bytes the cache holds,
    so exactly) give the NIfTI volume's scores."""
    synth_dicom = pytest.importorskip("ichbench.data.synth_dicom")
    db, run_id = tiny_run
    nifti = _json(capsys, db, run_id, volume)
    hu = read_nifti(volume)
    series = tmp_path / "series"
    series.mkdir()
    for k, plane in enumerate(hu):
        synth_dicom.write_slice(
            series / f"CT{k:03d}.dcm",
            plane,
            patient_id="P1",
            study_uid=synth_dicom.uid("study"),
            series_uid=synth_dicom.uid("series"),
            sop_uid=synth_dicom.uid("slice", k),
            z_mm=5.0 * k,
            instance=len(hu) - k,  # listed backwards: the positions, not the numbers, order
        )
    nifti_images = read_scan(volume, ("brain",), 32).images
    assert np.abs(read_scan(series, ("brain",), 32).images.astype(int) - nifti_images).max() <= 1
    dicom = _json(capsys, db, run_id, series)
    assert dicom["kind"] == "dicom" and dicom["slices"] == nifti["slices"]
    np.testing.assert_allclose(dicom["slice_scores"], nifti["slice_scores"], atol=0.02)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for k, plane in enumerate(to_uint8(WINDOWS["brain"].apply(hu))):
        Image.fromarray(plane).save(pngs / f"{k + 1}.png")
    assert (read_scan(pngs, ("brain",), 32).images == nifti_images).all()
    images = _json(capsys, db, run_id, pngs)
    assert images["kind"] == "images" and images["slices"] == nifti["slices"]
    np.testing.assert_allclose(images["slice_scores"], nifti["slice_scores"], atol=1e-6)


def test_predict_never_writes_the_store(tiny_run, volume, tmp_path, capsys) -> None:
    db, run_id = tiny_run
    before = _digest(db, run_id)
    page = tmp_path / "triage" / "scan.html"
    code, out, err = _predict(capsys, db, run_id, volume, "--html", str(page))
    assert code == 0, err
    assert _digest(db, run_id) == before
    text = page.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 2
    assert "Grad-CAM" in text and "Decision:" in text
    assert not list(page.parent.glob(".*tmp*"))


@pytest.fixture
def broken(tiny_run, tmp_path) -> tuple[Path, str]:
    """A copy of the store and the run's checkpoints, to break."""
    db, run_id = tiny_run
    copy = tmp_path / "store" / "runs.duckdb"
    copy.parent.mkdir()
    shutil.copy2(db, copy)
    shutil.copytree(run_dir(db, run_id), run_dir(copy, run_id))
    return copy, run_id


def _refused(capsys, db, run_id, scan, code: int, *words: str) -> None:
    before = _digest(db, run_id)
    got, out, err = _predict(capsys, db, run_id, scan)
    assert got == code, err
    (line,) = error_lines(err)
    for word in words:
        assert word in line, line
    assert out == ""
    assert _digest(db, run_id) == before


def test_a_2d_image_is_refused(tiny_run, volume, tmp_path, capsys) -> None:
    db, run_id = tiny_run
    png = tmp_path / "slice.png"
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(png)
    _refused(capsys, db, run_id, png, 3, str(png), "2-D image")
    one = tmp_path / "one.nii"
    img = nib.load(str(volume))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :1], img.affine), str(one))
    _refused(capsys, db, run_id, one, 3, str(one), "2-D image")
    folder = tmp_path / "single"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(folder / "1.png")
    _refused(capsys, db, run_id, folder, 3, "2-D image")


def test_a_volume_that_is_not_ct_is_refused(tiny_run, volume, tmp_path, capsys) -> None:
    db, run_id = tiny_run
    img = nib.load(str(volume))
    mr = tmp_path / "mr.nii"
    data = np.abs(np.asarray(img.dataobj, dtype=np.float32)) + 10  # no air: not HU
    nib.save(nib.Nifti1Image(data, img.affine), str(mr))
    _refused(capsys, db, run_id, mr, 3, str(mr), "Hounsfield")


def test_a_series_that_is_not_ct_is_refused(tiny_run, volume, tmp_path, capsys) -> None:
    synth_dicom = pytest.importorskip("ichbench.data.synth_dicom")
    import pydicom

    db, run_id = tiny_run
    series = tmp_path / "mr-series"
    series.mkdir()
    for k, plane in enumerate(read_nifti(volume)[:3]):
        path = series / f"MR{k}.dcm"
        synth_dicom.write_slice(
            path,
            plane,
            patient_id="P2",
            study_uid=synth_dicom.uid("s2"),
            series_uid=synth_dicom.uid("r2"),
            sop_uid=synth_dicom.uid("mr", k),
            z_mm=5.0 * k,
            instance=k + 1,
        )
        ds = pydicom.dcmread(str(path))
        ds.Modality = "MR"
        ds.save_as(str(path))
    _refused(capsys, db, run_id, series, 3, "MR", "not CT")


def test_what_is_no_scan_is_refused(tiny_run, tmp_path, capsys) -> None:
    db, run_id = tiny_run
    _refused(capsys, db, run_id, tmp_path / "nothing-here", 3, "no such file")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    _refused(capsys, db, run_id, empty, 3, "holds no NIfTI, DICOM or slice image")


def test_an_unfinished_run_is_refused(broken, volume, capsys) -> None:
    db, run_id = broken
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE runs SET status = 'failed' WHERE run_id = ?", [run_id])
    _refused(capsys, db, run_id, volume, 2, run_id, "failed", "finished")


def test_missing_checkpoints_are_refused(broken, volume, capsys) -> None:
    db, run_id = broken
    gone = run_dir(db, run_id) / "fold0.pt"
    gone.unlink()
    _refused(capsys, db, run_id, volume, 3, str(gone))


def test_no_store_is_refused_and_not_created(tmp_path, volume, capsys) -> None:
    db = tmp_path / "none.duckdb"
    code, _, err = _predict(capsys, db, "x", volume)
    assert code == 5 and "No store" in error_lines(err)[0]
    assert not db.exists()
