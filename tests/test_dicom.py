"""The DICOM series reader on files pydicom writes: order, orientation, Hounsfield units,
the series-choice rule, and one clear error naming the file for each malformed input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless

from ichbench.data.dicom import choose_series, read_header, read_series
from ichbench.data.synth_dicom import uid, write_slice
from ichbench.errors import DataError

N, SIZE = 5, 8


def volume() -> np.ndarray:
    """Slice k is k*100 HU above a base with an asymmetric mark (anterior, patient's left),
    so order and orientation show in the values."""
    hu = np.full((N, SIZE, SIZE), -1000.0, dtype=np.float32)
    for k in range(N):
        hu[k, 2:6, 2:6] = 20 + 100 * k
        hu[k, 0, SIZE - 1] = 1000  # row 0 = anterior, last column = patient's left
    return hu


def write_series(folder: Path, hu: np.ndarray, *, series: str = "s1", names=None, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"{k:03d}.dcm" for k in range(len(hu))]
    for k, name in enumerate(names):
        write_slice(
            folder / name,
            hu[k],
            patient_id="P1",
            study_uid=uid("study"),
            series_uid=uid(series),
            sop_uid=uid(series, k),
            z_mm=100 + 5 * k,
            instance=k + 1,
            **kw,
        )
    return folder


def edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def test_slices_are_ordered_by_position_not_by_name_or_instance(tmp_path):
    hu = volume()
    folder = write_series(tmp_path / "s", hu, names=[f"{9 - k}.dcm" for k in range(N)])
    for k in range(N):  # InstanceNumber counts the other way
        edit(folder / f"{9 - k}.dcm", lambda ds, k=k: setattr(ds, "InstanceNumber", N - k))
    series = read_series(folder)
    assert series.hu.shape == (N, SIZE, SIZE) and series.hu.dtype == np.float32
    np.testing.assert_allclose(series.hu, hu)
    assert series.spacing_mm == pytest.approx(5.0)
    assert series.sop_uids == [uid("s1", k) for k in range(N)]
    assert series.patient_id == "P1" and series.notes == []


def test_a_flipped_orientation_gives_the_same_display_image(tmp_path):
    hu = volume()
    folder = write_series(tmp_path / "s", hu[:, ::-1, ::-1].copy())
    for path in folder.iterdir():
        edit(path, lambda ds: setattr(ds, "ImageOrientationPatient", [-1, 0, 0, 0, -1, 0]))
    np.testing.assert_allclose(read_series(folder).hu, hu)


def test_a_series_stored_feet_last_is_still_read_inferior_first(tmp_path):
    hu = volume()
    folder = write_series(tmp_path / "s", hu)
    for k, path in enumerate(sorted(folder.iterdir())):  # normal points to the feet
        edit(path, lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, -1, 0]))
        flipped = (hu[k][::-1] + 1024).astype("<u2").tobytes()
        edit(path, lambda ds, data=flipped: setattr(ds, "PixelData", data))
    series = read_series(folder)
    assert series.hu[0, 3, 3] < series.hu[-1, 3, 3]


def test_without_positions_instance_number_orders_and_says_so(tmp_path):
    hu = volume()
    folder = write_series(tmp_path / "s", hu, names=[f"{9 - k}.dcm" for k in range(N)])
    for path in folder.iterdir():
        edit(path, lambda ds: delattr(ds, "ImagePositionPatient"))
    series = read_series(folder)
    np.testing.assert_allclose(series.hu, hu)
    assert any("InstanceNumber" in note for note in series.notes)


def test_hounsfield_units_come_from_slope_and_intercept(tmp_path):
    hu = volume()
    folder = write_series(tmp_path / "s", hu)
    path = folder / "002.dcm"
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32)

    def halve(ds):
        ds.RescaleSlope = 2
        ds.RescaleIntercept = -2048
        ds.PixelData = np.rint((raw + 1024) / 2).astype("<u2").tobytes()

    edit(path, halve)
    assert read_series(folder).hu[2, 3, 3] == pytest.approx(hu[2, 3, 3], abs=1)


def test_the_twelve_bit_correction_is_applied_only_when_asked(tmp_path):
    hu = volume()
    folder = write_series(tmp_path / "s", hu, twelve_bit_bug=True)
    wrong = read_series(folder).hu
    assert wrong.min() >= 0  # air read as bone: the release's bug
    fixed = read_series(folder, fix_twelve_bit=True)
    np.testing.assert_allclose(fixed.hu, hu)
    assert any("12-bit" in note for note in fixed.notes)


def one_error(folder: Path) -> str:
    with pytest.raises(DataError) as info:
        read_series(folder)
    return str(info.value)


def test_mixed_series_in_one_folder_name_the_file(tmp_path):
    folder = write_series(tmp_path / "s", volume())
    write_series(folder, volume()[:1], series="other", names=["other.dcm"])
    message = one_error(folder)
    assert "other.dcm" in message and "mixed" in message


def test_a_slice_without_its_position_is_named(tmp_path):
    folder = write_series(tmp_path / "s", volume())
    edit(folder / "003.dcm", lambda ds: delattr(ds, "ImagePositionPatient"))
    message = one_error(folder)
    assert "003.dcm" in message and "ImagePositionPatient" in message


def test_no_position_and_no_instance_number_is_an_error(tmp_path):
    folder = write_series(tmp_path / "s", volume())
    for path in folder.iterdir():
        edit(path, lambda ds: delattr(ds, "ImagePositionPatient"))
    edit(folder / "001.dcm", lambda ds: delattr(ds, "InstanceNumber"))
    assert "001.dcm" in one_error(folder)


def test_two_slices_at_one_position_are_named(tmp_path):
    folder = write_series(tmp_path / "s", volume())
    edit(folder / "004.dcm", lambda ds: setattr(ds, "ImagePositionPatient", [-120, -120, 105]))
    message = one_error(folder)
    assert "same position" in message and "001.dcm" in message and "004.dcm" in message


def test_a_non_ct_series_is_named(tmp_path):
    folder = write_series(tmp_path / "s", volume())
    edit(folder / "002.dcm", lambda ds: setattr(ds, "Modality", "MR"))
    message = one_error(folder)
    assert "002.dcm" in message and "MR" in message and "not CT" in message


def test_compressed_pixels_without_a_decoder_name_the_file(tmp_path):
    folder = write_series(tmp_path / "s", volume())

    def compress(ds):
        ds.PixelData = encapsulate([ds.PixelData])
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless

    edit(folder / "001.dcm", compress)
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    with pytest.raises(RuntimeError):  # pydicom itself refuses: nothing mocked
        _ = pydicom.dcmread(folder / "001.dcm").pixel_array
    message = one_error(folder)
    assert "001.dcm" in message and "JPEG-LS" in message and "decoder" in message


def test_an_unreadable_file_is_named(tmp_path):
    folder = write_series(tmp_path / "s", volume())
    (folder / "001.dcm").write_bytes(b"\x00" * 40)
    message = one_error(folder)
    assert "001.dcm" in message and "not a readable DICOM file" in message


def test_an_empty_folder_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no DICOM file" in one_error(tmp_path / "empty")


def test_the_series_nearest_five_millimetres_wins_and_bone_loses_a_tie(tmp_path):
    hu = volume()
    thin = write_series(tmp_path / "thin", hu, series="thin")
    for k, path in enumerate(sorted(thin.iterdir())):
        edit(path, lambda ds, k=k: setattr(ds, "ImagePositionPatient", [-120, -120, 100 + k]))
    bone = write_series(tmp_path / "bone", hu, series="bone", description="CT 5mm BONE")
    brain = write_series(tmp_path / "brain", hu, series="brain", description="CT 5mm")
    series = {
        name: [read_header(p) for p in sorted(folder.iterdir())]
        for name, folder in (("thin", thin), ("bone", bone), ("brain", brain))
    }
    assert choose_series(series) == "brain"
    assert choose_series({k: series[k] for k in ("thin", "bone")}) == "bone"
    coronal = write_series(tmp_path / "coronal", hu, series="coronal")
    for k, path in enumerate(sorted(coronal.iterdir())):
        edit(path, lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]))
        edit(path, lambda ds, k=k: setattr(ds, "ImagePositionPatient", [-120, 5 * k, 100]))
    series["coronal"] = [read_header(p) for p in sorted(coronal.iterdir())]
    assert choose_series({k: series[k] for k in ("thin", "coronal")}) == "thin"
    with pytest.raises(DataError, match="not axial"):
        read_series(coronal)
