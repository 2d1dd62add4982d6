"""The RSNA 2019 and CQ500 layouts (and the generic DICOM tree) on synthetic DICOM files
pydicom wrote: labels, the split by PatientID, the release's pitfalls, patient-level-only
data and the refusal to train on it."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from ichbench.data.cq500 import Cq500Source
from ichbench.data.dicom_dataset import DicomSource, plan_rows
from ichbench.data.resolve import resolve_dataset
from ichbench.data.rsna import RsnaSource, open_rsna, read_rsna_labels
from ichbench.data.synth_dicom import (
    CQ500_READS,
    RSNA_LABELS,
    RSNA_TRAIN,
    RSNA_UNREADABLE,
    generate_dicom,
)
from ichbench.errors import DataError
from ichbench.interfaces import LoadOptions
from ichbench.plugins import get_registry
from ichbench.split import make_nested_split
from tests.cli_run import error_lines, run_main

PATIENTS, SIZE = 6, 32
OPTIONS = LoadOptions(image_size=SIZE, exclude=())


@pytest.fixture(scope="session")
def rsna_dir(tmp_path_factory) -> Path:
    """6 RSNA-layout patients (the first with two studies), no pitfalls. Read-only."""
    out = tmp_path_factory.mktemp("rsna") / "clean"
    return generate_dicom(out, "rsna", PATIENTS, 0, SIZE).out


@pytest.fixture(scope="session")
def rsna_pitfalls_dir(tmp_path_factory) -> Path:
    """The same patients with the release's pitfalls. Read-only."""
    out = tmp_path_factory.mktemp("rsna") / "pitfalls"
    return generate_dicom(out, "rsna", PATIENTS, 0, SIZE, pitfalls=True).out


@pytest.fixture(scope="session")
def cq500_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cq500") / "cq500"
    return generate_dicom(out, "cq500", PATIENTS, 0, SIZE).out


def copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def rsna_csv(folder: Path) -> dict[str, int]:
    with open(folder / RSNA_LABELS, newline="") as handle:
        return {row["ID"]: int(row["Label"]) for row in csv.DictReader(handle)}


# --------------------------------------------------------------------------- RSNA


def test_a_bare_folder_is_claimed_by_its_layout(rsna_dir, cq500_dir):
    registry = get_registry()
    assert isinstance(resolve_dataset(str(rsna_dir), registry), RsnaSource)
    assert isinstance(resolve_dataset(str(cq500_dir), registry), Cq500Source)


def test_rsna_labels_follow_each_slice_through_the_tags(rsna_dir, tmp_path):
    dataset = RsnaSource(rsna_dir).load(OPTIONS, tmp_path)
    opened = open_rsna(rsna_dir)
    plan = plan_rows(opened, ())
    labels = rsna_csv(rsna_dir)
    stems = [h.path.stem for _, scan in plan.scans for h in scan]
    assert len(dataset) == len(stems) == len(list((rsna_dir / RSNA_TRAIN).iterdir()))
    np.testing.assert_array_equal(dataset.labels, [labels[f"{s}_any"] for s in stems])
    sdh = [labels[f"{s}_subdural"] for s in stems]
    np.testing.assert_array_equal(dataset.subtypes[:, 4], sdh)
    assert dataset.labels.sum() > 0 and dataset.has_slice_labels
    names = dataset.patient_names
    assert sorted(names) == list(range(1, PATIENTS + 1))
    assert [names[k] for k in sorted(names)] == sorted(opened.tree.patients)
    assert dataset.patient_ids.dtype == np.int64


def test_two_studies_of_one_patient_never_straddle_the_split(rsna_dir, tmp_path):
    dataset = RsnaSource(rsna_dir).load(OPTIONS, tmp_path)
    opened = open_rsna(rsna_dir)
    twice = [n for n, studies in opened.tree.patients.items() if len(studies) == 2]
    assert len(twice) == 1
    plan = plan_rows(opened, ())
    starts = np.cumsum([0] + [len(scan) for _, scan in plan.scans])
    studies = [
        dataset.patient_ids[starts[i] : starts[i + 1]]
        for i, (pid, _) in enumerate(plan.scans)
        if plan.names[pid] == twice[0]
    ]
    assert len(studies) == 2
    for seed in range(5):
        split = make_nested_split(dataset.patient_ids, dataset.labels, n_folds=2, seed=seed)
        for outer in split.outers:
            for fold in outer.folds:
                sides = [
                    {
                        side
                        for side, members in (
                            ("test", outer.test),
                            ("train", fold.train),
                            ("val", fold.val),
                        )
                        if set(ids.tolist()) & set(members)
                    }
                    for ids in studies
                ]
                assert len(sides[0]) == 1 and sides[0] == sides[1], (seed, sides)


def test_the_pitfalls_are_handled_to_the_same_slices(rsna_dir, rsna_pitfalls_dir, tmp_path):
    clean = RsnaSource(rsna_dir).load(OPTIONS, tmp_path / "a")
    messy = RsnaSource(rsna_pitfalls_dir).load(OPTIONS, tmp_path / "b")
    np.testing.assert_array_equal(messy.labels, clean.labels)
    np.testing.assert_array_equal(messy.patient_ids, clean.patient_ids)
    np.testing.assert_array_equal(messy.images, clean.images)  # the 12-bit patient corrected
    warnings = " ".join(open_rsna(rsna_pitfalls_dir).warnings)
    assert "6 duplicated label row(s)" in warnings
    assert f"{RSNA_UNREADABLE}.dcm" in warnings and "12-bit" in warnings


def test_without_the_twelve_bit_fix_the_images_would_differ(rsna_pitfalls_dir, tmp_path):
    from ichbench.data.dicom_dataset import build_arrays

    opened = open_rsna(rsna_pitfalls_dir)
    assert opened.tree.twelve_bit
    opened.fix_twelve_bit = False
    build_arrays(opened, OPTIONS, tmp_path)
    raw = np.load(tmp_path / "images.npy")
    fixed = RsnaSource(rsna_pitfalls_dir).load(OPTIONS, tmp_path / "cache").images
    assert not np.array_equal(raw, fixed)


def test_duplicated_rows_that_disagree_name_the_id(rsna_dir, tmp_path):
    path = tmp_path / RSNA_LABELS
    text = (rsna_dir / RSNA_LABELS).read_text()
    first = text.splitlines()[1]
    ident, value = first.split(",")
    path.write_text(text + f"{ident},{1 - int(value)}\n")
    with pytest.raises(DataError, match=ident):
        read_rsna_labels(path)


def test_an_image_without_labels_is_named(rsna_dir, tmp_path):
    folder = copy(rsna_dir, tmp_path)
    lines = (folder / RSNA_LABELS).read_text().splitlines(keepends=True)
    image = lines[1].split(",")[0].rsplit("_", 1)[0]
    (folder / RSNA_LABELS).write_text("".join(x for x in lines if not x.startswith(image + "_")))
    with pytest.raises(DataError, match=f"{image}.dcm: no label rows"):
        RsnaSource(folder).load(OPTIONS, tmp_path / "cache")


def test_data_check_reports_the_pitfalls(rsna_pitfalls_dir, capsys):
    code, out, err = run_main(capsys, "data", "check", str(rsna_pitfalls_dir))
    assert code == 0, err
    text = " ".join(out.split())
    assert "duplicated label row" in text and RSNA_UNREADABLE in text
    assert "12-bit" in text and "RSNA 2019" in text


@pytest.mark.slow
def test_a_run_trains_on_an_rsna_layout_end_to_end(rsna_dir, tmp_path, capsys):
    db = tmp_path / "runs.duckdb"
    args = ["--backbone", "tinycnn", "--folds", "2", "--epochs", "1", "--image-size", "32"]
    code, out, err = run_main(
        capsys,
        "run",
        "--data",
        f"rsna:{rsna_dir}",
        *args,
        "--preset",
        "quick",
        "--device",
        "cpu",
        "--json",
        "--db",
        str(db),
    )
    assert code == 0, err
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT status, dataset, dataset_hash FROM runs").fetchall()
    assert len(rows) == 1 and rows[0][:2] == ("finished", f"rsna:{rsna_dir}") and rows[0][2]


# --------------------------------------------------------------------------- CQ500


def test_cq500_is_patient_level_only_with_the_majority_read(cq500_dir, tmp_path):
    folder = copy(cq500_dir, tmp_path)
    reads = list(csv.DictReader(open(folder / CQ500_READS, newline="")))
    for row, votes in zip(reads, ((1, 1, 0), (1, 0, 0))):
        for reader, vote in zip(("R1", "R2", "R3"), votes):
            row[f"{reader}:ICH"] = str(vote)
    with open(folder / CQ500_READS, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(reads[0]))
        writer.writeheader()
        writer.writerows(reads)
    dataset = Cq500Source(folder).load(OPTIONS, tmp_path / "cache")
    assert not dataset.has_slice_labels and set(dataset.labels.tolist()) == {-1}
    by_name = {dataset.patient_names[k]: v for k, v in dataset.patient_labels().items()}
    assert by_name["CQ500-CT-0"] == 1 and by_name["CQ500-CT-1"] == 0
    five_mm = [len(list(p.glob("*/CT 5mm/*.dcm"))) for p in sorted(folder.glob("CQ500CT*"))]
    assert len(dataset) == sum(five_mm)  # the 5 mm brain series, not the thin nor the bone


def test_cq500_keeps_its_truth_through_the_cache(cq500_dir, tmp_path):
    first = Cq500Source(cq500_dir).load(OPTIONS, tmp_path)
    again = Cq500Source(cq500_dir).load(OPTIONS, tmp_path)
    assert again.patient_truth == first.patient_truth and again.patient_truth
    assert again.patient_names == first.patient_names


def test_training_on_cq500_is_refused_before_anything_is_stored(cq500_dir, tmp_path, capsys):
    db = tmp_path / "runs.duckdb"
    code, _, err = run_main(
        capsys,
        "run",
        "--data",
        str(cq500_dir),
        "--backbone",
        "tinycnn",
        "--folds",
        "2",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--device",
        "cpu",
        "--db",
        str(db),
    )
    assert code == 2, err
    (line,) = error_lines(err)
    assert str(cq500_dir) in line and "only patient-level labels" in line
    assert "ichbench evaluate RUN --data" in line
    assert not db.exists()


# --------------------------------------------------------------------------- generic tree


def test_a_dicom_tree_with_sop_keyed_labels_reads_as_rsna_does(rsna_dir, tmp_path):
    folder = tmp_path / "tree"
    shutil.copytree(rsna_dir / RSNA_TRAIN, folder / "series")
    plan = plan_rows(open_rsna(rsna_dir), ())
    labels = rsna_csv(rsna_dir)
    rows = ["SOPInstanceUID,ICH,Subdural"]
    for _, scan in plan.scans:
        for h in scan:
            stem = h.path.stem
            rows.append(f"{h.sop_uid},{labels[stem + '_any']},{labels[stem + '_subdural']}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    generic = DicomSource(folder).load(OPTIONS, tmp_path / "a")
    rsna = RsnaSource(rsna_dir).load(OPTIONS, tmp_path / "b")
    np.testing.assert_array_equal(generic.labels, rsna.labels)
    np.testing.assert_array_equal(generic.images, rsna.images)
    np.testing.assert_array_equal(generic.subtypes[:, 4], rsna.subtypes[:, 4])


def test_a_dicom_tree_with_patient_labels_is_patient_level_only(rsna_dir, tmp_path):
    folder = tmp_path / "tree"
    shutil.copytree(rsna_dir / RSNA_TRAIN, folder / "series")
    names = sorted(open_rsna(rsna_dir).tree.patients)
    body = "".join(f"{n},{i % 2}\n" for i, n in enumerate(names))
    (folder / "labels.csv").write_text("PatientID,ICH\n" + body)
    dataset = DicomSource(folder).load(OPTIONS, tmp_path / "cache")
    assert not dataset.has_slice_labels
    assert dataset.patient_labels() == {i + 1: i % 2 for i in range(len(names))}


# --------------------------------------------------------------------------- generator


def test_the_same_seed_writes_the_same_bytes(tmp_path, capsys):
    digests = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = ["--patients", "2", "--size", "16", "--seed", "3"]
        code, _, err = run_main(
            capsys, "data", "synth", "--format", "cq500", "--out", str(out), *args
        )
        assert code == 0, err
        h = hashlib.sha256()
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            h.update(path.relative_to(out).as_posix().encode() + path.read_bytes())
        digests.append(h.hexdigest())
    assert digests[0] == digests[1]
    assert (tmp_path / "a" / CQ500_READS).is_file()


def test_an_unknown_format_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "x"
    code, _, err = run_main(capsys, "data", "synth", "--format", "dcm", "--out", str(out))
    assert code == 2 and "--format 'dcm'" in err and not out.exists()


def test_a_dicom_tree_with_patient_and_slice_keyed_labels(rsna_dir, tmp_path):
    folder = tmp_path / "tree"
    shutil.copytree(rsna_dir / RSNA_TRAIN, folder / "series")
    plan = plan_rows(open_rsna(rsna_dir), ())
    labels = rsna_csv(rsna_dir)
    rows = ["PatientID,SliceNumber,ICH"]
    number: dict[int, int] = {}
    for pid, scan in plan.scans:
        for h in scan:
            number[pid] = number.get(pid, 0) + 1
            rows.append(f"{plan.names[pid]},{number[pid]},{labels[h.path.stem + '_any']}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    generic = DicomSource(folder).load(OPTIONS, tmp_path / "a")
    np.testing.assert_array_equal(generic.labels, plan.labels)
    (folder / "labels.csv").write_text("\n".join(rows[:-1]) + "\n")  # the last slice unlabelled
    with pytest.raises(DataError, match="no row for"):
        DicomSource(folder).load(OPTIONS, tmp_path / "b")


def test_a_deep_check_names_a_file_no_decoder_reads(rsna_dir, tmp_path, capsys):
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    folder = copy(rsna_dir, tmp_path)
    victim = sorted((folder / RSNA_TRAIN).iterdir())[3]
    ds = pydicom.dcmread(victim)
    ds.PixelData = encapsulate([ds.PixelData])
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.save_as(victim)
    code, _, err = run_main(capsys, "data", "check", str(folder), "--deep")
    assert code == 3, err
    (line,) = error_lines(err)
    assert victim.name in line and "decoder" in line


def test_exclusion_refers_to_the_int_ids_and_the_default_does_not_apply(rsna_dir, tmp_path):
    everyone = RsnaSource(rsna_dir).load(LoadOptions(image_size=SIZE), tmp_path)
    assert set(everyone.patients.tolist()) == set(range(1, PATIENTS + 1))
    assert everyone.not_found_excluded == ()
    some = RsnaSource(rsna_dir).load(LoadOptions(image_size=SIZE, exclude=(2, 99)), tmp_path)
    assert 2 not in some.patients and some.not_found_excluded == (99,)
    assert 2 not in some.patient_names and some.patient_names[3] == everyone.patient_names[3]


def test_reads_without_a_readers_column_name_the_file(cq500_dir, tmp_path):
    folder = copy(cq500_dir, tmp_path)
    text = (folder / CQ500_READS).read_text().replace("R2:ICH", "R2:ICHX")
    (folder / CQ500_READS).write_text(text)
    with pytest.raises(DataError, match=r"reads\.csv: no column R2:ICH"):
        Cq500Source(folder).load(OPTIONS, tmp_path / "cache")
