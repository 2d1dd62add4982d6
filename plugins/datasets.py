"""Built-in datasets: the PhysioNet CT-ICH reader, the synthetic generator, and the DICOM
readers (a generic tree with `labels.csv`, the RSNA 2019 layout, the CQ500 layout).

PhysioNet claims a bare `--data FOLDER` that shows either release's layout, even half of
one, so that its reader (not a generic "unknown folder") says what is missing.
"""

from __future__ import annotations

from pathlib import Path

from ichbench.data.cq500 import Cq500Source, claims_cq500
from ichbench.data.dicom_dataset import DICOM_LABELS, DicomSource
from ichbench.data.layout import JPG_LABELS, NIFTI_LABELS, PATIENTS_CT, SCANS, detect_layout
from ichbench.data.physionet import PhysioNetSource
from ichbench.data.rsna import RsnaSource, claims_rsna
from ichbench.data.synth import (
    DEFAULT_DIFFICULTY,
    DIFFICULTIES,
    LIMITS,
    SyntheticSource,
    difficulty_choices,
)
from ichbench.errors import DataError, UsageError
from ichbench.hookspecs import hookimpl
from ichbench.spec import Spec, parse_int

PHYSIONET_FORM = "physionet:PATH (a folder of either release)"
SYNTHETIC_FORM = "synthetic[:PATIENTS[,SEED[,SIZE[,DIFFICULTY]]]]"


LAYOUT_MARKERS = (SCANS, NIFTI_LABELS, PATIENTS_CT, JPG_LABELS)
"""What identifies either release: v1.3.x `ct_scans/` and its label file, v1.0/1.2
`Patients_CT/` and its label file."""


def claims_physionet(folder: Path) -> bool:
    """A folder in either PhysioNet layout, complete or with one of its two parts."""
    try:
        detect_layout(folder)
        return True
    except DataError:
        return folder.is_dir() and any((folder / marker).exists() for marker in LAYOUT_MARKERS)


def physionet(spec: Spec) -> PhysioNetSource:
    if not spec.args:
        raise UsageError(f"physionet: no folder given; expected {PHYSIONET_FORM}")
    return PhysioNetSource(",".join(spec.args))  # a comma may be part of the path


def claims_dicom(folder: Path) -> bool:
    """A folder holding the generic layout's `labels.csv`."""
    return folder.is_dir() and (folder / DICOM_LABELS).is_file()


def _folder_arg(spec: Spec, form: str) -> str:
    if not spec.args:
        raise UsageError(f"{spec.name}: no folder given; expected {form}")
    return ",".join(spec.args)  # a comma may be part of the path


def dicom(spec: Spec) -> DicomSource:
    return DicomSource(_folder_arg(spec, "dicom:PATH (DICOM files and labels.csv)"))


def rsna(spec: Spec) -> RsnaSource:
    return RsnaSource(_folder_arg(spec, "rsna:PATH (stage_2_train/ and stage_2_train.csv)"))


def cq500(spec: Spec) -> Cq500Source:
    return Cq500Source(_folder_arg(spec, "cq500:PATH (patient folders and reads.csv)"))


def synthetic(spec: Spec) -> SyntheticSource:
    if len(spec.args) > 4:
        raise UsageError(f"synthetic: got {str(spec)!r}; expected {SYNTHETIC_FORM}")
    defaults = (40, 0, 128)
    bounds = (LIMITS["patients"], (0, None), LIMITS["size"])
    values = []
    for arg, (lo, hi) in zip(spec.args[:3], bounds, strict=False):
        value = parse_int(spec, arg, form=SYNTHETIC_FORM, minimum=lo)
        if hi is not None and value > hi:
            raise UsageError(f"synthetic: {value} must be <= {hi}; expected {SYNTHETIC_FORM}")
        values.append(value)
    patients, seed, size = (*values, *defaults[len(values) :])
    difficulty = spec.args[3] if len(spec.args) == 4 else DEFAULT_DIFFICULTY
    if difficulty not in DIFFICULTIES:
        raise UsageError(
            f"synthetic: difficulty {difficulty!r} is not one of {difficulty_choices()}; "
            f"expected {SYNTHETIC_FORM}"
        )
    return SyntheticSource(patients, seed, size, difficulty)


@hookimpl
def register_datasets(register):
    register(
        "physionet",
        physionet,
        claims=claims_physionet,
        help="PhysioNet CT-ICH folder, v1.3.x NIfTI or v1.0/1.2 JPG: physionet:PATH "
        "(or the bare PATH)",
    )
    register(
        "synthetic",
        synthetic,
        help="Synthetic head CT in the PhysioNet layout, generated on first use: "
        f"{SYNTHETIC_FORM} (default 40,0,128,easy; DIFFICULTY is {difficulty_choices()})",
    )
    register(
        "dicom",
        dicom,
        claims=claims_dicom,
        help="A tree of DICOM CT series with labels.csv (keyed by SOPInstanceUID, by "
        "PatientID,SliceNumber, or by PatientID for patient-level labels): dicom:PATH",
    )
    register(
        "rsna",
        rsna,
        claims=claims_rsna,
        help="RSNA 2019 Intracranial Hemorrhage Detection, stage 2 training set "
        "(stage_2_train/ and stage_2_train.csv): rsna:PATH",
    )
    register(
        "cq500",
        cq500,
        claims=claims_cq500,
        help="CQ500 (patient folders of DICOM series and reads.csv); patient-level labels "
        "only, for evaluation: cq500:PATH",
    )
