"""The synthetic generator: PhysioNet layout, determinism, plausible HU and statistics, the
round trip through the real reader, and atomic writes."""

from __future__ import annotations

import filecmp
import os

import nibabel as nib
import numpy as np
import pytest

from ichbench.data import synth as synth_module
from ichbench.data.labels import COLUMNS, read_labels
from ichbench.data.physionet import PhysioNetSource, detect_layout
from ichbench.data.synth import PARAMS_FILE, SyntheticSource, generate
from ichbench.errors import UsageError
from ichbench.interfaces import LoadOptions
from ichbench.spec import parse_spec
from ichbench_plugins.datasets import synthetic


def files_of(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_layout_is_physionet_v13(tiny_synth_dir):
    layout, labels = detect_layout(tiny_synth_dir)
    assert layout == "nifti" and labels.name == "hemorrhage_diagnosis_raw_ct.csv"
    names = files_of(tiny_synth_dir)
    assert [n for n in names if n.startswith("ct_scans/")] == [
        f"ct_scans/{p:03d}.nii" for p in range(49, 57)
    ]
    assert [n for n in names if n.startswith("masks/")] == [
        f"masks/{p:03d}.nii" for p in range(49, 57)
    ]
    assert "Patient_demographics.csv" in names and PARAMS_FILE in names
    raw = labels.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf" + ",".join(COLUMNS).encode() + b"\r\n")


def test_volumes_are_int16_with_slope_and_intercept(tiny_synth_dir):
    img = nib.load(str(tiny_synth_dir / "ct_scans/049.nii"))
    assert img.get_data_dtype() == np.int16
    assert (img.dataobj.slope, img.dataobj.inter) == (1.0, -1024.0)
    raw = np.asarray(img.dataobj.get_unscaled())
    assert raw.min() >= 0  # air is stored shifted, not negative
    assert img.get_fdata().min() < -900
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a, b, c = (
        generate(tmp_path / name, 3, seed, 32).out for name, seed in (("a", 5), ("b", 5), ("c", 6))
    )
    names = files_of(a)
    assert names == files_of(b) == files_of(c)
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert mismatch == [] and errors == [] and match == names
    _, differ, _ = filecmp.cmpfiles(a, c, names, shallow=False)
    assert "ct_scans/049.nii" in differ and "ct_scans/051.nii" in differ


def test_ich_fraction_and_slice_counts_follow_the_real_data(synth_factory):
    table = read_labels(synth_factory(40, 0, 32) / "hemorrhage_diagnosis_raw_ct.csv")
    patients = table.patients()
    assert patients == list(range(49, 89))
    ich = {p for p in patients if table.labels[table.rows_of(p)].any()}
    assert 0.35 <= len(ich) / 40 <= 0.55
    counts = table.slice_counts()
    assert 19 <= min(counts.values()) and max(counts.values()) <= 40
    positions = (table.slice_numbers - 1) / np.array(
        [counts[p] - 1 for p in table.patient_ids.tolist()]
    )
    ich_positions = positions[table.labels == 1]
    assert 0.3 < ich_positions.mean() < 0.75  # bleeding concentrates in the middle slices
    assert (positions[table.labels == 1] > 0.05).mean() > 0.9
    assert (table.labels == 1).mean() < 0.3
    subtypes_seen = table.subtypes.sum(axis=0)
    assert (subtypes_seen > 0).sum() >= 3
    has_subtype = table.subtypes.any(axis=1)
    assert (has_subtype == (table.labels == 1)).all()


def test_lesions_span_consecutive_slices(synth_factory):
    table = read_labels(synth_factory(40, 0, 32) / "hemorrhage_diagnosis_raw_ct.csv")
    runs = []
    for p in table.patients():
        ich = table.labels[table.rows_of(p)]
        if ich.any():
            edges = np.flatnonzero(np.diff(np.r_[0, ich, 0]))
            runs += (edges[1::2] - edges[::2]).tolist()
    assert max(runs) >= 3 and np.mean(runs) >= 2


def test_hounsfield_ranges_of_skull_brain_lesion_and_air(synth_factory):
    root = synth_factory(12, 3, 64)
    table = read_labels(root / "hemorrhage_diagnosis_raw_ct.csv")
    lesion, brain, skull = [], [], []
    for pid in table.patients():
        hu = nib.load(str(root / f"ct_scans/{pid:03d}.nii")).get_fdata()
        mask = np.asarray(nib.load(str(root / f"masks/{pid:03d}.nii")).dataobj) > 0
        assert hu[0, 0, 0] < -950  # air in the corner
        lesion.append(hu[mask])
        skull.append(hu[hu > 500])
        brain.append(hu[(hu > -100) & (hu < 100) & ~mask])
    lesion, brain, skull = (np.concatenate(v) for v in (lesion, brain, skull))
    assert lesion.size > 0
    assert 50 <= np.median(lesion) <= 90
    assert np.percentile(lesion, 5) > 30 and np.percentile(lesion, 95) < 110
    assert 20 <= np.median(brain) <= 45
    assert 700 <= np.median(skull) <= 1500
    assert np.percentile(skull, 99) < 1600


def test_head_sizes_range_from_child_to_adult(synth_factory):
    root = synth_factory(40, 0, 32)
    areas = []
    for path in sorted((root / "ct_scans").glob("*.nii")):
        hu = nib.load(str(path)).get_fdata()
        areas.append(max((hu[..., k] > -500).sum() for k in range(hu.shape[2])))
    assert max(areas) / min(areas) > 1.4


def test_head_outline_is_smaller_at_the_top_and_bottom(tiny_synth_dir):
    hu = nib.load(str(tiny_synth_dir / "ct_scans/049.nii")).get_fdata()
    area = (hu > -500).sum(axis=(0, 1))
    assert area[0] < area.max() and area[-1] < area.max()
    assert area[-1] < 0.6 * area.max()


def test_round_trip_through_the_physionet_reader(tiny_synth_dir, tiny_dataset):
    table = read_labels(tiny_synth_dir / "hemorrhage_diagnosis_raw_ct.csv")
    ds = tiny_dataset
    assert len(ds) == len(table) and ds.images.shape[1:] == (1, 32, 32)
    assert (ds.labels == table.labels).all() and (ds.subtypes == table.subtypes).all()
    assert ds.masks is not None
    drawn = ds.masks.reshape(len(ds), -1).any(axis=1)
    assert drawn[ds.labels == 0].sum() == 0
    assert drawn[ds.labels == 1].mean() > 0.8  # a few thin lesions vanish at 32 px
    assert ds.images.mean() > 20  # brain-window intensities, not an empty image


def test_labels_match_masks_at_full_resolution(synth_factory):
    root = synth_factory(12, 3, 64)
    ds = PhysioNetSource(root).load(LoadOptions(image_size=64, exclude=()), root.parent / "c")
    drawn = ds.masks.reshape(len(ds), -1).any(axis=1)
    assert (drawn == (ds.labels == 1)).all()


def test_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"ds already exists and is not empty"):
        generate(out, 2, 0, 32)
    with pytest.raises(UsageError, match=r"Refusing to replace .*ds"):
        generate(out, 2, 0, 32, force=True)
    assert (out / "keep.txt").read_text() == "mine"


def test_force_replaces_a_generated_dataset(tmp_path):
    out = generate(tmp_path / "ds", 2, 0, 32).out
    generate(out, 3, 0, 32, force=True)
    assert len(list((out / "ct_scans").iterdir())) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_the_mark_lists_every_file_the_generator_wrote(tmp_path):
    """--force may replace exactly these files, so the list must be complete."""
    import json

    out = generate(tmp_path / "ds", 2, 0, 16).out
    params = json.loads((out / PARAMS_FILE).read_text())
    assert params["generator"] == "ichbench synthetic" and params["patients"] == 2
    assert sorted(params["files"]) == files_of(out)


def test_interrupted_generation_leaves_nothing_that_looks_valid(tmp_path, monkeypatch):
    calls = []
    real = synth_module.synth_patient

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synth_module, "synth_patient", dying)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "ds", 4, 0, 32)
    assert list(tmp_path.iterdir()) == []


def test_volumes_are_written_through_the_synth_module(tmp_path, monkeypatch):
    """Replacing `synth._write_nifti` intercepts every volume (the kill tests park there)."""
    written = []
    real = synth_module._write_nifti

    def counting(path, *args, **kwargs):
        written.append(path.relative_to(path.parent.parent).as_posix())
        return real(path, *args, **kwargs)

    monkeypatch.setattr(synth_module, "_write_nifti", counting)
    generate(tmp_path / "ds", 2, 0, 16)
    assert written == ["ct_scans/049.nii", "masks/049.nii", "ct_scans/050.nii", "masks/050.nii"]


@pytest.mark.parametrize(
    "patients, seed, size, difficulty, message",
    [
        (0, 0, 32, "easy", "--patients 0"),
        (2, -1, 32, "easy", "--seed -1"),
        (2, 0, 8, "easy", "--size 8"),
        (2, 0, 32, "Real", "--difficulty 'Real': expected easy, real or hard"),
    ],
)
def test_bad_parameters(tmp_path, patients, seed, size, difficulty, message):
    with pytest.raises(UsageError, match=message):
        generate(tmp_path / "x", patients, seed, size, difficulty)
    assert not (tmp_path / "x").exists()


def test_synthetic_spec_parsing():
    assert synthetic(parse_spec("synthetic")).name == "synthetic:40,0,128"
    assert synthetic(parse_spec("synthetic:6")).name == "synthetic:6,0,128"
    assert synthetic(parse_spec("synthetic:6,2,32")).name == "synthetic:6,2,32"
    assert synthetic(parse_spec("synthetic:6,2,32,real")).name == "synthetic:6,2,32,real"
    with pytest.raises(
        UsageError,
        match=r"synthetic: 'x' is not an integer; expected "
        r"synthetic\[:PATIENTS\[,SEED\[,SIZE\[,DIFFICULTY\]\]\]\]",
    ):
        synthetic(parse_spec("synthetic:x"))
    with pytest.raises(UsageError, match=r"expected synthetic\[:PATIENTS"):
        synthetic(parse_spec("synthetic:1,2,3,real,5"))
    with pytest.raises(UsageError, match=r"difficulty '4' is not one of easy, real or hard"):
        synthetic(parse_spec("synthetic:1,2,16,4"))
    with pytest.raises(UsageError, match=r"'real' is not an integer"):
        synthetic(parse_spec("synthetic:real"))
    with pytest.raises(UsageError, match=r"synthetic: 9 must be >= 16; expected synthetic\["):
        synthetic(parse_spec("synthetic:4,0,9"))
    with pytest.raises(UsageError, match=r"synthetic: 4096 must be <= 1024"):
        synthetic(parse_spec("synthetic:4,0,4096"))


def test_synthetic_source_generates_once_into_the_cache(tmp_path):
    source = SyntheticSource(3, 1, 32)
    ds = source.load(LoadOptions(image_size=32, exclude=()), tmp_path)
    folder = tmp_path / "synthetic" / "p3-s1-px32"
    assert (folder / "hemorrhage_diagnosis_raw_ct.csv").is_file()
    assert ds.name == "synthetic:3,1,32" and ds.patients.tolist() == [49, 50, 51]
    stamp = os.stat(folder / "ct_scans/049.nii").st_mtime_ns
    again = source.load(LoadOptions(image_size=32, exclude=()), tmp_path)
    assert os.stat(folder / "ct_scans/049.nii").st_mtime_ns == stamp
    assert again.dataset_hash == ds.dataset_hash
    assert np.array_equal(again.images, ds.images)


def test_sources_satisfy_the_dataset_protocol(tiny_synth_dir):
    from ichbench.interfaces import DatasetSource

    assert isinstance(SyntheticSource(2, 0, 32), DatasetSource)
    assert isinstance(PhysioNetSource(tiny_synth_dir), DatasetSource)


def test_importing_the_plugin_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, ichbench_plugins.datasets, ichbench.cli.data_cmd; "
        "print(sorted(m for m in ('torch', 'nibabel', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_synthetic_folder_defaults_to_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ICHBENCH_CACHE", str(tmp_path / "c"))
    assert SyntheticSource(2, 0, 32).folder() == tmp_path / "c" / "synthetic" / "p2-s0-px32"
