"""Data that looks plausible but holds wrong values: each case is written as the real file
(a 16-bit PNG under a .jpg name, a NIfTI header with a zero slope, ...) and must end as a
DataError naming the file, never as a silently wrong number or an internal error."""

from __future__ import annotations

import json
import shutil
import struct

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import ichbench_plugins.datasets as datasets_plugin
from ichbench.cli import data_cmd
from ichbench.cli.app import main
from ichbench.data.labels import COLUMNS
from ichbench.data.physionet import PhysioNetSource
from ichbench.errors import DataError, ExitCode
from ichbench.interfaces import LoadOptions, SliceDataset
from ichbench.plugins import Plugins

OPTIONS = LoadOptions(image_size=16, windows=("brain",), exclude=())


def load(root, cache, **options) -> SliceDataset:
    return PhysioNetSource(root).load(LoadOptions(**{**OPTIONS.__dict__, **options}), cache)


@pytest.fixture(autouse=True)
def datasets_only(monkeypatch):
    """Resolve datasets with the built-in dataset plugin alone, whatever else is installed."""
    plugins = Plugins(load_entry_points=False)
    plugins.register(datasets_plugin, name="ichbench_plugins.datasets", distribution="ichbench")
    monkeypatch.setattr(data_cmd, "get_registry", lambda: plugins.registry)


def run(capsys, *args):
    """(exit code, stdout, stderr) of `ichbench ARGS`."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- JPG


@pytest.fixture
def sample(jpg_sample_dir, tmp_path):
    """A writable copy of the real 3-patient JPG release."""
    root = tmp_path / "sample"
    shutil.copytree(jpg_sample_dir, root)
    return root


def test_a_16_bit_png_named_jpg_is_refused(sample, tmp_path):
    """Converted to 8 bits, every value above 255 would become white."""
    path = sample / "Patients_CT/049/brain/3.jpg"
    pixels = np.linspace(0, 4000, 650 * 650).reshape(650, 650).astype(np.uint16)
    Image.fromarray(pixels).save(path, format="PNG")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode.startswith("I")
    with pytest.raises(DataError, match=r"049/brain/3\.jpg: a 16-bit PNG image"):
        load(sample, tmp_path / "cache")


@pytest.mark.parametrize("mode, dtype", [("I", np.int32), ("F", np.float32)])
def test_a_32_bit_tiff_named_jpg_is_refused(sample, tmp_path, mode, dtype):
    path = sample / "Patients_CT/100/brain/7.jpg"
    pixels = np.linspace(-1000, 3000, 650 * 650).reshape(650, 650).astype(dtype)
    Image.fromarray(pixels, mode=mode).save(path, format="TIFF")
    with pytest.raises(DataError, match=r"100/brain/7\.jpg: a 32-bit TIFF image"):
        load(sample, tmp_path / "cache")


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header declares width x height pixels."""
    import io

    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_a_400_megapixel_jpg_is_a_data_error_naming_it(sample, tmp_path, capsys):
    """Pillow refuses it as a decompression bomb when opening, before any pixel is decoded."""
    path = sample / "Patients_CT/084/brain/2.jpg"
    path.write_bytes(_jpeg_declaring(20000, 20000))
    with pytest.raises(DataError, match=r"084/brain/2\.jpg: 400,000,000 pixels"):
        load(sample, tmp_path / "cache")
    code, _, err = run(capsys, "data", "check", str(sample), "--deep", "--exclude", "none")
    assert code == ExitCode.DATA and "084/brain/2.jpg: 400,000,000 pixels" in err


# --------------------------------------------------------------------------- NIfTI


def write_labels(root, patients, n):
    lines = [",".join(COLUMNS)] + [
        f"{pid},{k},0,0,0,0,0,1,0" for pid in patients for k in range(1, n + 1)
    ]
    path = root / "hemorrhage_diagnosis_raw_ct.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode())


def head_hu(n=4, size=16) -> np.ndarray:
    """Air around a disc of brain (40 HU) inside bone (1000 HU): a plausible CT in HU."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(yy, xx)
    plane = np.where(r < size * 0.3, 40.0, np.where(r < size * 0.4, 1000.0, -1000.0))
    return np.repeat(plane[..., None], n, axis=-1)


def write_volume(path, hu, *, slope=1.0, inter=-1024.0, affine=None):
    """Stored int16 = (HU - inter) / slope, as the release writes it."""
    stored = np.rint((hu - inter) / slope).astype(np.int16)
    img = nib.Nifti1Image(stored, np.eye(4) if affine is None else affine)
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(slope, inter)
    img.to_filename(str(path))


def nifti_dataset(tmp_path, patients=(49, 50), n=4):
    root = tmp_path / "nifti"
    (root / "ct_scans").mkdir(parents=True)
    for pid in patients:
        write_volume(root / "ct_scans" / f"{pid:03d}.nii", head_hu(n))
    write_labels(root, patients, n)
    return root


def set_header_fields(path, **fields):
    """Rewrite raw header fields in place: nibabel itself resets scaling when saving."""
    with open(path, "r+b") as handle:
        header = nib.Nifti1Header.from_fileobj(handle)
        for name, value in fields.items():
            header[name] = value
        handle.seek(0)
        handle.write(header.binaryblock)


def test_the_plausible_volume_loads(tmp_path):
    ds = load(nifti_dataset(tmp_path), tmp_path / "cache")
    assert len(ds) == 8 and ds.images.max() == 255 and ds.images.min() == 0


@pytest.mark.parametrize("slope", [0.0, float("nan"), float("inf")])
def test_a_slope_that_drops_the_intercept_is_refused(tmp_path, slope):
    root = nifti_dataset(tmp_path)
    path = root / "ct_scans/050.nii"
    set_header_fields(path, scl_slope=slope, scl_inter=-1024.0)
    with open(path, "rb") as handle:
        raw = nib.Nifti1Header.from_fileobj(handle)
    assert raw["scl_inter"] == -1024.0 and str(raw["scl_slope"]) == str(np.float32(slope))
    with pytest.raises(DataError, match=r"050\.nii: scl_slope is (0|nan|inf)"):
        load(root, tmp_path / "cache")


def test_a_volume_without_the_intercept_is_refused_by_its_range(tmp_path):
    """Stored values (HU + 1024) read as HU: no air, everything brighter than water."""
    root = nifti_dataset(tmp_path)
    write_volume(root / "ct_scans/049.nii", head_hu() + 1024, slope=1.0, inter=0.0)
    with pytest.raises(DataError, match=r"049\.nii: lowest value is 24 HU"):
        load(root, tmp_path / "cache")


def test_a_volume_scaled_far_outside_hounsfield_units_is_refused(tmp_path):
    """A header scaled a million times over (air at about -1e9, bone at +1e9): every
    window would saturate, so the load stops and names the file."""
    root = nifti_dataset(tmp_path)
    set_header_fields(root / "ct_scans/049.nii", scl_slope=1e6, scl_inter=-1e9)
    with pytest.raises(DataError, match=r"049\.nii: values from .* far outside Hounsfield"):
        load(root, tmp_path / "cache")


def test_a_constant_volume_is_refused(tmp_path):
    root = nifti_dataset(tmp_path)
    write_volume(root / "ct_scans/050.nii", np.full((16, 16, 4), -1000.0))
    with pytest.raises(DataError, match=r"050\.nii: every voxel is -1000 HU"):
        load(root, tmp_path / "cache")


def test_a_volume_without_any_orientation_is_refused(tmp_path, capsys):
    root = nifti_dataset(tmp_path)
    path = root / "ct_scans/050.nii"
    set_header_fields(path, qform_code=0, sform_code=0)
    assert nib.load(str(path)).header.get_best_affine()[0, 0] < 0  # nibabel's guess mirrors x
    with pytest.raises(DataError, match=r"050\.nii: no orientation \(qform_code and sform_code"):
        load(root, tmp_path / "cache")
    code, stdout, _ = run(capsys, "data", "check", str(root), "--json", "--exclude", "none")
    assert code == ExitCode.DATA
    assert any("050.nii: no orientation" in e for e in json.loads(stdout)["errors"])


# --------------------------------------------------------------------------- data check


def test_shallow_check_finds_a_missing_brain_slice(sample, capsys):
    (sample / "Patients_CT/100/brain/12.jpg").unlink()
    code, stdout, err = run(capsys, "data", "check", str(sample), "--exclude", "none")
    assert code == ExitCode.DATA
    assert "No fatal problem found" not in stdout
    assert "Patient 100: missing brain slice 12:" in err and "100/brain/12.jpg" in err


def test_a_stray_file_among_the_volumes_is_named_and_ignored(tmp_path, capsys):
    root = nifti_dataset(tmp_path)
    before = load(root, tmp_path / "cache")
    (root / "ct_scans/README.txt").write_text("Volumes in Hounsfield units.\n")
    after = load(root, tmp_path / "cache")
    assert after.dataset_hash == before.dataset_hash
    code, stdout, _ = run(capsys, "data", "check", str(root), "--json", "--exclude", "none")
    report = json.loads(stdout)
    assert code == 0 and report["ok"]
    assert any("ct_scans/README.txt" in w and "ignored" in w for w in report["warnings"])


# --------------------------------------------------------------------------- exclusion


def test_excluded_patients_that_are_not_in_the_dataset_are_reported(tmp_path):
    root = nifti_dataset(tmp_path)
    ds = load(root, tmp_path / "cache", exclude=(50, 58, 999))
    assert ds.patients.tolist() == [49] and ds.not_found_excluded == (58, 999)
    again = load(root, tmp_path / "cache", exclude=(50, 58, 999))
    assert again.not_found_excluded == (58, 999)
    assert load(root, tmp_path / "cache", exclude=(50,)).not_found_excluded == ()


def test_the_default_exclusion_on_a_dataset_without_58_and_79(tiny_synth_dir, tmp_path):
    ds = PhysioNetSource(tiny_synth_dir).load(LoadOptions(image_size=32), tmp_path / "cache")
    assert ds.patients.tolist() == list(range(49, 57)) and ds.not_found_excluded == (58, 79)
