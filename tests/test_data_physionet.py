"""The PhysioNet reader: both layouts on real and hand-made data, orientation, and every
malformed input reported as a DataError naming the file or patient."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ichbench.data.labels import COLUMNS, read_labels
from ichbench.data.physionet import (
    PhysioNetSource,
    detect_layout,
    open_folder,
    read_nifti,
)
from ichbench.data.windows import WINDOWS, to_uint8
from ichbench.errors import DataError
from ichbench.interfaces import SUBTYPES, LoadOptions, SliceDataset

BRAIN = LoadOptions(image_size=32, windows=("brain",), exclude=())


def load(root, cache, **options) -> SliceDataset:
    return PhysioNetSource(root).load(LoadOptions(**{**BRAIN.__dict__, **options}), cache)


# --------------------------------------------------------------------------- JPG (real sample)


def test_sample_is_detected_as_jpg(jpg_sample_dir):
    layout, labels = detect_layout(jpg_sample_dir)
    assert layout == "jpg" and labels.name == "hemorrhage_diagnosis.csv"


def test_real_jpg_sample_loads_with_the_brain_window(jpg_sample_dir, tmp_path):
    ds = load(jpg_sample_dir, tmp_path)
    assert ds.images.shape == (99, 1, 32, 32) and ds.images.dtype == np.uint8
    assert ds.masks is None and ds.windows == ("brain",)
    per_patient = {
        pid: (int((ds.patient_ids == pid).sum()), int(ds.labels[ds.patient_ids == pid].sum()))
        for pid in ds.patients
    }
    assert per_patient == {49: (33, 9), 84: (36, 4), 100: (30, 0)}
    assert ds.patient_labels() == {49: 1, 84: 1, 100: 0}
    table = read_labels(jpg_sample_dir / "hemorrhage_diagnosis.csv")
    assert (ds.subtypes == table.subtypes).all() and (ds.slice_numbers == table.slice_numbers).all()
    first = ds.patient_ids == 49
    assert ds.positions[first][0] == 0 and ds.positions[first][-1] == 1
    assert np.allclose(ds.positions[first], (ds.slice_numbers[first] - 1) / 32)
    assert len(ds.dataset_hash) == 64 and ds.name.startswith("physionet:")


def test_jpg_pixels_are_the_files_resized_without_flips(jpg_sample_dir, tmp_path):
    ds = load(jpg_sample_dir, tmp_path, image_size=64)
    row = int(np.flatnonzero((ds.patient_ids == 49) & (ds.slice_numbers == 15))[0])
    with Image.open(jpg_sample_dir / "Patients_CT/049/brain/15.jpg") as im:
        expected = np.asarray(im.convert("L").resize((64, 64), Image.BILINEAR), dtype=float)
    got = ds.images[row, 0].astype(float)
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.97
    assert np.corrcoef(got.ravel(), expected[::-1].ravel())[0, 1] < 0.9


def test_missing_bone_slice_is_named_when_bone_is_asked(jpg_sample_dir, tmp_path):
    with pytest.raises(DataError, match=r"Patient 084: missing bone slice 36: .*084/bone/36\.jpg"):
        load(jpg_sample_dir, tmp_path, windows=("brain", "bone"))


def test_brain_and_bone_channels_without_the_defective_patient(jpg_sample_dir, tmp_path):
    ds = load(jpg_sample_dir, tmp_path, windows=("brain", "bone"), exclude=(84,))
    assert ds.images.shape == (63, 2, 32, 32) and ds.windows == ("brain", "bone")
    assert not np.array_equal(ds.images[:, 0], ds.images[:, 1])


def test_hu_windows_are_refused_on_jpg_data(jpg_sample_dir, tmp_path):
    with pytest.raises(DataError, match=r"'subdural' is not available for JPG data"):
        load(jpg_sample_dir, tmp_path, windows=("brain", "subdural"))


def copy_sample(jpg_sample_dir, tmp_path):
    root = tmp_path / "sample"
    shutil.copytree(jpg_sample_dir, root)
    return root


def test_jpg_that_is_not_an_image(jpg_sample_dir, tmp_path):
    root = copy_sample(jpg_sample_dir, tmp_path)
    (root / "Patients_CT/100/brain/5.jpg").write_text("not a picture")
    with pytest.raises(DataError, match=r"100/brain/5\.jpg: not a readable image"):
        load(root, tmp_path / "cache")


def test_truncated_jpg(jpg_sample_dir, tmp_path):
    root = copy_sample(jpg_sample_dir, tmp_path)
    path = root / "Patients_CT/049/brain/3.jpg"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=r"049/brain/3\.jpg: not a readable image"):
        load(root, tmp_path / "cache")


def test_missing_brain_folder(jpg_sample_dir, tmp_path):
    root = copy_sample(jpg_sample_dir, tmp_path)
    shutil.rmtree(root / "Patients_CT/100/brain")
    with pytest.raises(DataError, match=r"Patient 100: missing folder .*100/brain"):
        load(root, tmp_path / "cache")


def test_jpg_masks_are_loaded_when_the_release_has_them(jpg_sample_dir, tmp_path):
    root = copy_sample(jpg_sample_dir, tmp_path)
    mask = np.zeros((650, 650), dtype=np.uint8)
    mask[300:400, 100:200] = 255
    Image.fromarray(mask).save(root / "Patients_CT/049/brain/16_HGE_Seg.jpg")
    ds = load(root, tmp_path / "cache")
    assert ds.masks is not None and ds.masks.shape == (99, 32, 32)
    row = int(np.flatnonzero((ds.patient_ids == 49) & (ds.slice_numbers == 16))[0])
    assert ds.masks[row].sum() > 0 and ds.masks.sum() == ds.masks[row].sum()
    assert set(np.unique(ds.masks).tolist()) == {0, 1}


def test_rows_without_images_and_images_without_rows(jpg_sample_dir, tmp_path):
    root = copy_sample(jpg_sample_dir, tmp_path)
    shutil.copytree(root / "Patients_CT/100", root / "Patients_CT/101")
    with pytest.raises(DataError, match=r"Patients_CT/101: patient 101 has images but no rows"):
        open_folder(root)
    assert open_folder(root, exclude=(101,)).layout == "jpg"
    shutil.rmtree(root / "Patients_CT/101")
    shutil.rmtree(root / "Patients_CT/049")
    with pytest.raises(DataError, match=r"Patient 049 has 33 rows in .* but no images"):
        open_folder(root)


# --------------------------------------------------------------------------- NIfTI


def write_labels(path, rows):
    lines = [",".join(COLUMNS)] + [",".join(map(str, r)) for r in rows]
    path.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode())


def label_row(pid, k, subtypes=()):
    flags = [1 if name in subtypes else 0 for name in SUBTYPES]
    return [pid, k, *flags, 0 if subtypes else 1, 0]


def nifti_folder(tmp_path, patients, *, n=5, size=16):
    """A minimal v1.3.x folder: patient p's canonical slice k holds HU 20 * k - 20."""
    root = tmp_path / "nifti"
    (root / "ct_scans").mkdir(parents=True)
    rows = []
    for pid in patients:
        hu = np.stack([np.full((size, size), 20.0 * k - 20) for k in range(1, n + 1)], axis=-1)
        img = nib.Nifti1Image((hu + 1024).astype(np.int16), np.eye(4))
        img.header.set_slope_inter(1.0, -1024.0)
        img.to_filename(str(root / "ct_scans" / f"{pid:03d}.nii"))
        rows += [label_row(pid, k) for k in range(1, n + 1)]
    write_labels(root / "hemorrhage_diagnosis_raw_ct.csv", rows)
    return root


FLIPS = {
    "flipped z": np.diag([1.0, 1.0, -1.0, 1.0]),
    "LPS": np.diag([-1.0, -1.0, 1.0, 1.0]),
    "LPI and axes swapped": np.array(
        [[0, -1.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, -1.0, 0], [0, 0, 0, 1]]
    ),
}


def stored_for(canonical: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The voxel array that, with `affine`, shows the same anatomy as `canonical` in RAS."""
    ornt = nib.io_orientation(affine)
    inverse = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    return nib.orientations.apply_orientation(canonical, inverse)


@pytest.mark.parametrize("name", sorted(FLIPS))
def test_slice_k_is_slice_number_k_whatever_the_stored_orientation(tmp_path, name):
    x, y, n = 12, 10, 6
    canonical = np.zeros((x, y, n), dtype=np.float32)
    for k in range(n):
        canonical[..., k] = 10.0 * (k + 1)  # SliceNumber k+1 holds 10 * (k+1) HU
    canonical[0, y - 1, :] = 500.0  # the patient's left (x=0), anterior (y max)
    affine = FLIPS[name]
    stored = stored_for(canonical, affine)
    assert not np.array_equal(stored, canonical) or name == "none"
    img = nib.Nifti1Image((stored + 1024).astype(np.int16), affine)
    img.header.set_slope_inter(1.0, -1024.0)
    path = tmp_path / "001.nii"
    img.to_filename(str(path))
    hu = read_nifti(path)
    assert hu.shape == (n, y, x)
    for k in range(n):
        assert np.median(hu[k]) == pytest.approx(10.0 * (k + 1))
        assert hu[k, 0, x - 1] == 500.0  # radiological display: anterior up, left on the right


def test_nifti_labels_and_masks_follow_reorientation(tmp_path):
    """A flipped-z volume whose lesion is on SliceNumber 2: the loaded row for slice 2 is the
    bright one and carries the mask."""
    n, size = 5, 16
    canonical = np.zeros((size, size, n), dtype=np.float32)
    mask = np.zeros((size, size, n), dtype=np.uint8)
    mask[4:9, 4:9, 1] = 1
    canonical[mask == 1] = 70.0
    affine = FLIPS["flipped z"]
    root = tmp_path / "ds"
    (root / "ct_scans").mkdir(parents=True)
    (root / "masks").mkdir()
    img = nib.Nifti1Image((stored_for(canonical, affine) + 1024).astype(np.int16), affine)
    img.header.set_slope_inter(1.0, -1024.0)
    img.to_filename(str(root / "ct_scans/060.nii"))
    nib.Nifti1Image(stored_for(mask, affine), affine).to_filename(str(root / "masks/060.nii"))
    write_labels(
        root / "hemorrhage_diagnosis_raw_ct.csv",
        [label_row(60, k, ("Subdural",) if k == 2 else ()) for k in range(1, n + 1)],
    )
    ds = load(root, tmp_path / "cache", image_size=16)
    assert ds.masks is not None
    lesion_rows = np.flatnonzero(ds.masks.reshape(n, -1).any(axis=1))
    assert ds.slice_numbers[lesion_rows].tolist() == [2]
    assert ds.labels.tolist() == [0, 1, 0, 0, 0]
    assert ds.images[1].max() > ds.images[0].max()


def test_hounsfield_units_use_slope_and_intercept(tmp_path):
    root = nifti_folder(tmp_path, [49], n=3)
    assert read_nifti(root / "ct_scans/049.nii")[:, 0, 0].tolist() == [0.0, 20.0, 40.0]
    ds = load(root, tmp_path / "cache", image_size=16, windows=("brain", "subdural", "bone"))
    assert ds.images.shape == (3, 3, 16, 16)
    for c, window in enumerate(("brain", "subdural", "bone")):
        expected = to_uint8(WINDOWS[window].apply(np.array([0.0, 20.0, 40.0])))
        assert ds.images[:, c, 0, 0].tolist() == expected.tolist()


def test_gzipped_volumes_are_read(tmp_path):
    root = nifti_folder(tmp_path, [49, 50])
    path = root / "ct_scans/050.nii"
    (root / "ct_scans/050.nii.gz").write_bytes(gzip.compress(path.read_bytes(), mtime=0))
    path.unlink()
    ds = load(root, tmp_path / "cache", image_size=16)
    assert ds.patients.tolist() == [49, 50] and len(ds) == 10


def test_default_exclusion_drops_58_and_79(tmp_path):
    root = nifti_folder(tmp_path, [57, 58, 79, 80], n=3)
    ds = PhysioNetSource(root).load(LoadOptions(image_size=16), tmp_path / "cache")
    assert ds.patients.tolist() == [57, 80]


def edit_labels(root, transform):
    path = root / "hemorrhage_diagnosis_raw_ct.csv"
    lines = path.read_bytes().decode("utf-8-sig").split("\r\n")
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(transform(lines)).encode())


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_float_volume(path, data):
    nib.Nifti1Image(data.astype(np.float32), np.eye(4)).to_filename(str(path))


BAD_NIFTI = {
    "missing column": (
        lambda r: edit_labels(
            r, lambda ls: [ls[0].replace(",Subdural", "")] + [x.rsplit(",", 1)[0] for x in ls[1:]]
        ),
        r"missing column\(s\) Subdural",
    ),
    "non-numeric value": (
        lambda r: edit_labels(r, lambda ls: ls[:3] + [ls[3].replace("49,3", "49,three")] + ls[4:]),
        r"line 4: SliceNumber 'three'",
    ),
    "duplicate row": (
        lambda r: edit_labels(r, lambda ls: ls[:3] + [ls[2]] + ls[3:]),
        r"duplicate row for patient 049 slice 2",
    ),
    "slice out of range": (
        lambda r: edit_labels(r, lambda ls: [x.replace("50,5,", "50,9,") for x in ls]),
        r"Patient 050: SliceNumber 9 in .* is out of range: .*050.nii has "
        r"5 slices",
    ),
    "rows but no volume": (
        lambda r: (r / "ct_scans/050.nii").unlink(),
        r"Patient 050 has 5 rows in .* but no images .*050\.nii",
    ),
    "volume with no rows": (
        lambda r: shutil.copy(r / "ct_scans/049.nii", r / "ct_scans/077.nii"),
        r"077\.nii: patient 077 has images but no rows",
    ),
    "fewer rows than slices": (
        lambda r: edit_labels(r, lambda ls: [x for x in ls if not x.startswith("50,5,")]),
        r"Patient 050: .* has 4 rows but .*050.nii has 5 slices",
    ),
    "truncated": (lambda r: truncate(r / "ct_scans/049.nii"), r"049\.nii: truncated"),
    "zero bytes": (
        lambda r: (r / "ct_scans/050.nii").write_bytes(b""),
        r"050\.nii: empty file \(0 bytes\)",
    ),
    "not NIfTI": (
        lambda r: (r / "ct_scans/050.nii").write_text("hello"),
        r"050\.nii: not a readable NIfTI",
    ),
    "2-D": (
        lambda r: write_float_volume(r / "ct_scans/050.nii", np.zeros((16, 16))),
        r"050\.nii: expected a 3-D volume, found shape \(16, 16\)",
    ),
    "4-D": (
        lambda r: write_float_volume(r / "ct_scans/050.nii", np.zeros((16, 16, 5, 2))),
        r"050\.nii: expected a 3-D volume",
    ),
    "NaN voxels": (
        lambda r: write_float_volume(
            r / "ct_scans/050.nii",
            np.where(np.eye(16)[..., None] > 0, np.nan, np.zeros((16, 16, 5))),
        ),
        r"050\.nii: 80 voxel\(s\) are NaN or infinite",
    ),
    "infinite voxels": (
        lambda r: write_float_volume(r / "ct_scans/050.nii", np.full((16, 16, 5), np.inf)),
        r"050\.nii: 1280 voxel\(s\) are NaN or infinite",
    ),
    "no ct_scans folder": (
        lambda r: shutil.rmtree(r / "ct_scans"),
        r"found hemorrhage_diagnosis_raw_ct.csv but not the folder",
    ),
    "no label file": (
        lambda r: (r / "hemorrhage_diagnosis_raw_ct.csv").unlink(),
        r"found ct_scans/ but not its label file",
    ),
    "mask without volume": (
        lambda r: (
            (r / "masks").mkdir(),
            nib.Nifti1Image(np.zeros((16, 16, 5), np.uint8), np.eye(4)).to_filename(
                str(r / "masks/061.nii")
            ),
        ),
        r"Mask .*masks/061\.nii has no volume",
    ),
    "mask of another shape": (
        lambda r: (
            (r / "masks").mkdir(),
            [
                nib.Nifti1Image(np.zeros((16, 16, s), np.uint8), np.eye(4)).to_filename(
                    str(r / "masks" / f"{p:03d}.nii")
                )
                for p, s in ((49, 5), (50, 4))
            ],
        ),
        r"masks/050\.nii: shape \(16, 16, 4\) differs from its volume",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_NIFTI))
def test_bad_nifti_input_is_a_named_data_error(tmp_path, case):
    root = nifti_folder(tmp_path, [49, 50])
    corrupt, message = BAD_NIFTI[case]
    corrupt(root)
    with pytest.raises(DataError, match=message):
        load(root, tmp_path / "cache", image_size=16)


def test_truncated_gzip_volume(tmp_path):
    root = nifti_folder(tmp_path, [49, 50])
    raw = gzip.compress((root / "ct_scans/050.nii").read_bytes(), mtime=0)
    (root / "ct_scans/050.nii").unlink()
    (root / "ct_scans/050.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"050\.nii\.gz: "):
        load(root, tmp_path / "cache", image_size=16)


def test_two_files_for_one_patient(tmp_path):
    root = nifti_folder(tmp_path, [49, 50])
    shutil.copy(root / "ct_scans/050.nii", root / "ct_scans/50.nii")
    with pytest.raises(DataError, match=r"Two volume files numbered 50: .*050\.nii and .*/50\.nii"):
        load(root, tmp_path / "cache")


def test_missing_and_unrecognised_folders(tmp_path):
    with pytest.raises(DataError, match=r"Dataset folder .*nowhere not found"):
        load(tmp_path / "nowhere", tmp_path / "cache")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"plain is not a PhysioNet CT-ICH folder"):
        load(tmp_path / "plain", tmp_path / "cache")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match=r"file.txt is not a folder"):
        load(tmp_path / "file.txt", tmp_path / "cache")


def test_everyone_excluded(tmp_path):
    root = nifti_folder(tmp_path, [58])
    with pytest.raises(DataError, match=r"no patient left after excluding 58"):
        PhysioNetSource(root).load(LoadOptions(image_size=16), tmp_path / "cache")


def test_excluded_patient_needs_no_images(tmp_path):
    root = nifti_folder(tmp_path, [49, 50])
    (root / "ct_scans/050.nii").unlink()
    ds = load(root, tmp_path / "cache", image_size=16, exclude=(50,))
    assert ds.patients.tolist() == [49]


# --------------------------------------------------------------------------- resolving


@pytest.fixture
def dataset_registry():
    import ichbench_plugins.datasets as datasets_plugin
    from ichbench.plugins import Plugins

    plugins = Plugins(load_entry_points=False)
    plugins.register(datasets_plugin, name="datasets", distribution="ichbench")
    return plugins.registry


def test_resolve_specs_and_folders(dataset_registry, jpg_sample_dir):
    from ichbench.data.resolve import resolve_dataset
    from ichbench.data.synth import SyntheticSource

    assert isinstance(resolve_dataset("synthetic:3,1,32", dataset_registry), SyntheticSource)
    by_path = resolve_dataset(str(jpg_sample_dir), dataset_registry)
    by_spec = resolve_dataset(f"physionet:{jpg_sample_dir}", dataset_registry)
    assert isinstance(by_path, PhysioNetSource) and by_path.name == by_spec.name
    assert by_path.name == f"physionet:{jpg_sample_dir.resolve()}"


def test_resolve_unknown_dataset(dataset_registry, tmp_path):
    from ichbench.data.resolve import resolve_dataset

    with pytest.raises(
        DataError,
        match=r"^Dataset 'synthetik' not found: not a registered "
        r"dataset \(cq500, dicom, physionet, rsna, synthetic\) nor an existing "
        r"folder$",
    ):
        resolve_dataset("synthetik", dataset_registry)
    with pytest.raises(DataError, match=r"not found"):
        resolve_dataset(str(tmp_path / "missing"), dataset_registry)


def test_the_reader_parts_are_importable_from_physionet():
    from ichbench.data import folder, jpg, layout, nifti, physionet

    assert physionet.detect_layout is layout.detect_layout
    assert physionet.open_folder is folder.open_folder
    assert physionet.read_nifti is nifti.read_nifti
    assert physionet.jpg_slices is jpg.jpg_slices
    for name in physionet.__all__:
        assert hasattr(physionet, name), name
