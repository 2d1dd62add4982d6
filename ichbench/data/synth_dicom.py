"""Synthetic head CT written as DICOM, in the RSNA 2019 layout or a CQ500-like layout, so
the DICOM readers are tested on files pydicom wrote, without the internet.

The heads and lesions are the PhysioNet generator's (`ichbench.data.synth_patients`);
only the files differ. Every identifier (UIDs, RSNA's `ID_` names) is derived from the
seed, so the same seed writes the same bytes.

- `rsna`: `stage_2_train/ID_<hex>.dcm`, one file per slice, and `stage_2_train.csv`
  (`ID_<hex>_<subtype>,Label`, six rows per image). The first patient has a second study
  (a follow-up scan), as many RSNA patients do. `pitfalls=True` adds what the real release
  holds: duplicated label rows, an unreadable file (named as the release's), and one
  patient stored as 12-bit values with a wrong RescaleIntercept.
- `cq500`: `CQ500CT<i> CQ500CT<i>/Unknown Study/<series>/CT<k>.dcm`, three series per study
  (5 mm, 5 mm bone kernel, 2.5 mm thin) and `reads.csv` with three readers' reads, the
  majority of which is the truth; no slice labels.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ichbench.data.synth_files import FOV_MM, GENERATOR_NAME, HU_OFFSET, PARAMS_FILE, SLICE_MM
from ichbench.data.synth_patients import DIFFICULTIES, real_templates, synth_patient
from ichbench.data.synth_target import built_beside
from ichbench.errors import UsageError
from ichbench.interfaces import SUBTYPES

FORMATS = ("nifti", "rsna", "cq500")
"""What `ichbench data synth --format` writes; `nifti` (the PhysioNet layout) is the default."""

DICOM_GENERATOR_VERSION = 1
ICH_FRACTION = 0.45
UID_ROOT = "1.2.826.0.1.3680043.10.1234."  # a private root: never a real scanner's UID
RSNA_TRAIN = "stage_2_train"
RSNA_LABELS = "stage_2_train.csv"
RSNA_SUBTYPES = {  # RSNA's label names, ichbench's subtype for each (`any` is the label)
    "epidural": "Epidural",
    "intraparenchymal": "Intraparenchymal",
    "intraventricular": "Intraventricular",
    "subarachnoid": "Subarachnoid",
    "subdural": "Subdural",
}
RSNA_UNREADABLE = "ID_6431af929"  # the one file of the real release pydicom cannot read
CQ500_READS = "reads.csv"
CQ500_FINDINGS = (
    "ICH",
    "IPH",
    "IVH",
    "SDH",
    "EDH",
    "SAH",
    "BleedLocation-Left",
    "BleedLocation-Right",
    "ChronicBleed",
    "Fracture",
    "CalvarialFracture",
    "OtherFracture",
    "MassEffect",
    "MidlineShift",
)
CQ500_SUBTYPES = {  # CQ500's finding, ichbench's subtype
    "IVH": "Intraventricular",
    "IPH": "Intraparenchymal",
    "SAH": "Subarachnoid",
    "EDH": "Epidural",
    "SDH": "Subdural",
}


@dataclass
class DicomSynthSummary:
    out: Path
    patients: int
    ich_patients: int
    slices: int
    ich_slices: int
    seed: int
    size: int
    format: str


# --------------------------------------------------------------------------- one file


def uid(*parts: object) -> str:
    """A valid, deterministic DICOM UID under ichbench's private root."""
    digest = int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:24], 16)
    return UID_ROOT + str(digest)


def write_slice(
    path: Path,
    hu: np.ndarray,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    z_mm: float,
    instance: int,
    thickness: float = SLICE_MM,
    description: str = "",
    twelve_bit_bug: bool = False,
) -> None:
    """One axial CT slice (display orientation, HU) as an uncompressed DICOM file: 12-bit
    unsigned values with intercept -1024; or, with `twelve_bit_bug`, as the RSNA files
    whose values wrapped at 4096 and whose RescaleIntercept reads 0."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    rows, cols = hu.shape
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID_ROOT + "1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "CT"
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-FOV_MM / 2, -FOV_MM / 2, round(float(z_mm), 3)]
    ds.PixelSpacing = [FOV_MM / rows, FOV_MM / cols]
    ds.SliceThickness = thickness
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.WindowCenter, ds.WindowWidth = 40, 80
    values = np.rint(hu)
    if twelve_bit_bug:
        ds.RescaleIntercept = 0
        stored = np.mod(np.clip(values, -1000, 3095), 4096)
    else:
        ds.RescaleIntercept = -HU_OFFSET
        stored = np.clip(values + HU_OFFSET, 0, 4095)
    ds.PixelData = stored.astype("<u2").tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds.save_as(str(path), enforce_file_format=True)
        except TypeError:  # pydicom 2
            ds.save_as(str(path), write_like_original=False)


# --------------------------------------------------------------------------- patients


def _heads(patients: int, seed: int, size: int, extra: int = 0, difficulty: str = "easy"):
    """`patients` synthetic heads (and `extra` more, for second studies), each from its
    own child seed; ICH for a fixed share of them."""
    ich_templates, healthy_templates = real_templates()
    root = np.random.default_rng(np.random.SeedSequence([seed, DICOM_GENERATOR_VERSION]))
    n_ich = int(round(ICH_FRACTION * patients))
    is_ich = np.zeros(patients, dtype=bool)
    is_ich[root.permutation(patients)[:n_ich]] = True
    total = patients + extra
    children = np.random.SeedSequence([seed, DICOM_GENERATOR_VERSION, 1]).spawn(total)
    for i in range(total):
        rng = np.random.default_rng(children[i])
        ich = bool(is_ich[i % patients]) if i < patients else False
        pool = ich_templates if ich else healthy_templates
        template = pool[int(rng.integers(len(pool)))]
        yield i, synth_patient(rng, i + 1, template, ich, size, DIFFICULTIES[difficulty])


def _z(n: int, spacing: float = SLICE_MM) -> np.ndarray:
    return (np.arange(n) - (n - 1) / 2) * spacing


def _csv(rows: list[list[object]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode()


def _rsna_id(*parts: object) -> str:
    return "ID_" + hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:9]


def _write_rsna(
    folder: Path, patients: int, seed: int, size: int, difficulty: str, pitfalls: bool, progress
) -> DicomSynthSummary:
    train = folder / RSNA_TRAIN
    train.mkdir(parents=True)
    rows: list[list[object]] = [["ID", "Label"]]
    second = 1 if patients >= 3 else 0  # the first patient comes back for a second study
    stats = {"slices": 0, "ich_slices": 0, "ich_patients": 0}
    buggy = patients - 1 if pitfalls else -1  # the last patient: 12-bit, wrong intercept
    for i, p in _heads(patients, seed, size, second, difficulty):
        owner = i if i < patients else 0
        study = i if i < patients else patients
        patient_id = _rsna_id(seed, "patient", owner)
        study_uid, series_uid = uid(seed, "study", study), uid(seed, "series", study)
        for k, z in enumerate(_z(p.hu.shape[0])):
            sop = uid(seed, "sop", study, k)
            name = _rsna_id(seed, "image", study, k)
            write_slice(
                train / f"{name}.dcm",
                p.hu[k],
                patient_id=patient_id,
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=sop,
                z_mm=z,
                instance=k + 1,
                twelve_bit_bug=i == buggy,
            )
            flags = dict(zip(SUBTYPES, p.flags[k].tolist()))
            for rsna, ours in RSNA_SUBTYPES.items():
                rows.append([f"{name}_{rsna}", int(flags[ours])])
            rows.append([f"{name}_any", int(p.flags[k].any())])
        stats["slices"] += p.hu.shape[0]
        stats["ich_slices"] += int(p.flags.any(axis=1).sum())
        stats["ich_patients"] += int(i < patients and p.flags.any())
        if progress is not None:
            progress(min(i + 1, patients), patients)
    if pitfalls:
        rows.extend(rows[1:7])  # one image's six rows, twice, as in the release
        (train / f"{RSNA_UNREADABLE}.dcm").write_bytes(b"\x00" * 64)
        rows.extend([f"{RSNA_UNREADABLE}_{s}", 0] for s in (*RSNA_SUBTYPES, "any"))
    (folder / RSNA_LABELS).write_bytes(_csv(rows))
    return DicomSynthSummary(folder, patients, seed=seed, size=size, format="rsna", **stats)


def _reads(rng: np.random.Generator, truth: dict[str, int]) -> list[list[int]]:
    """Three readers' findings: each disagrees with the truth now and then, never two on
    one finding, so the majority is the truth."""
    values = [[truth.get(f, 0) for f in CQ500_FINDINGS] for _ in range(3)]
    dissenter = int(rng.integers(0, 4))  # 3: everyone agrees
    if dissenter < 3:
        j = int(rng.integers(0, len(CQ500_FINDINGS)))
        values[dissenter][j] = 1 - values[dissenter][j]
    return values


def _write_cq500(
    folder: Path, patients: int, seed: int, size: int, difficulty: str, progress
) -> DicomSynthSummary:
    header: list[object] = ["name", "Category"]
    header += [f"R{r}:{f}" for r in (1, 2, 3) for f in CQ500_FINDINGS]
    rows: list[list[object]] = [header]
    stats = {"slices": 0, "ich_slices": 0, "ich_patients": 0}
    rng = np.random.default_rng(np.random.SeedSequence([seed, DICOM_GENERATOR_VERSION, 2]))
    for i, p in _heads(patients, seed, size, 0, difficulty):
        name = f"CQ500-CT-{i}"
        study = folder / f"CQ500CT{i} CQ500CT{i}" / "Unknown Study"
        study_uid = uid(seed, "cq500-study", i)
        n = p.hu.shape[0]
        thin = np.empty((2 * n - 1, *p.hu.shape[1:]), dtype=np.float32)
        thin[0::2] = p.hu
        thin[1::2] = (p.hu[:-1] + p.hu[1:]) / 2
        series = (
            ("CT 5mm", p.hu, SLICE_MM),
            ("CT 5mm BONE", p.hu, SLICE_MM),
            ("CT PLAIN THIN", thin, SLICE_MM / 2),
        )
        for description, volume, spacing in series:
            where = study / description
            where.mkdir(parents=True)
            series_uid = uid(seed, "cq500-series", i, description)
            for k, z in enumerate(_z(volume.shape[0], spacing)):
                write_slice(
                    where / f"CT{k:06d}.dcm",
                    volume[k],
                    patient_id=name,
                    study_uid=study_uid,
                    series_uid=series_uid,
                    sop_uid=uid(seed, "cq500-sop", i, description, k),
                    z_mm=z,
                    instance=k + 1,
                    thickness=spacing,
                    description=description,
                )
        present = p.flags.any(axis=0)
        truth = {"ICH": int(present.any())}
        truth.update({f: int(present[SUBTYPES.index(s)]) for f, s in CQ500_SUBTYPES.items()})
        reads = _reads(rng, truth)
        rows.append([name, "B1", *(v for read in reads for v in read)])
        stats["slices"] += n
        stats["ich_slices"] += int(p.flags.any(axis=1).sum())
        stats["ich_patients"] += truth["ICH"]
        if progress is not None:
            progress(i + 1, patients)
    (folder / CQ500_READS).write_bytes(_csv(rows))
    return DicomSynthSummary(folder, patients, seed=seed, size=size, format="cq500", **stats)


# --------------------------------------------------------------------------- entry


def generate_dicom(
    out: Path,
    fmt: str,
    patients: int = 6,
    seed: int = 0,
    size: int = 128,
    difficulty: str = "easy",
    *,
    force: bool = False,
    pitfalls: bool = False,
    progress=None,
) -> DicomSynthSummary:
    """Write a synthetic DICOM dataset to `out` atomically (built beside it, then renamed),
    marked as the generator's so that `--force` may replace it later."""
    from ichbench.data.synth import check_params

    if fmt not in ("rsna", "cq500"):
        raise UsageError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    check_params(patients, seed, size, difficulty)
    if pitfalls and fmt != "rsna":
        raise UsageError("pitfalls are written in the RSNA layout only")
    out = Path(out).expanduser()
    with built_beside(out, force) as tmp:
        if fmt == "rsna":
            summary = _write_rsna(tmp, patients, seed, size, difficulty, pitfalls, progress)
        else:
            summary = _write_cq500(tmp, patients, seed, size, difficulty, progress)
        written = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        params = {
            "generator": GENERATOR_NAME,
            "version": DICOM_GENERATOR_VERSION,
            "format": fmt,
            "patients": patients,
            "seed": seed,
            "size": size,
            "difficulty": difficulty,
            "pitfalls": pitfalls,
            "files": [*written, PARAMS_FILE],
        }
        (tmp / PARAMS_FILE).write_text(json.dumps(params, indent=1) + "\n")
    summary.out = out
    return summary
