"""The files of a synthetic dataset, written as the PhysioNet v1.3.x release writes them:
int16 NIfTI volumes with a Hounsfield slope/intercept, uint8 mask volumes, and CSVs with
the release's BOM, CRLF line ends and two-row demographics header.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ichbench.interfaces import SUBTYPES

if TYPE_CHECKING:
    from ichbench.data.synth_patients import SynthPatient

FOV_MM = 240.0
SLICE_MM = 5.0
HU_OFFSET = 1024  # stored int16 = HU + 1024; scl_slope 1, scl_inter -1024
PARAMS_FILE = "ichbench-synth.json"  # the generator's mark: parameters and the files written
DEMOGRAPHICS = "Patient_demographics.csv"
FIRST_PATIENT = 49
GENERATOR_NAME = "ichbench synthetic"


def to_ras(display: np.ndarray) -> np.ndarray:
    """Display stack (z, row, col) -> voxel array (x, y, z) for a RAS+ affine (the reader's
    inverse: anterior up, patient's left on the image's right)."""
    return np.ascontiguousarray(display[:, ::-1, ::-1].transpose(2, 1, 0))


def volume_affine(size: int, n: int) -> np.ndarray:
    """A RAS+ affine centred on the head: FOV_MM across, SLICE_MM between slices."""
    spacing = FOV_MM / size
    affine = np.diag([spacing, spacing, SLICE_MM, 1.0])
    affine[:3, 3] = [-FOV_MM / 2, -FOV_MM / 2, -SLICE_MM * (n - 1) / 2]
    return affine


def write_nifti(path: Path, voxels: np.ndarray, affine: np.ndarray, *, hu: bool) -> None:
    """A volume in HU (`hu=True`, stored int16 with the offset) or a 0/1 mask (uint8)."""
    import nibabel as nib

    data = (np.rint(voxels) + HU_OFFSET).astype(np.int16) if hu else voxels.astype(np.uint8)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    if hu:
        img.header.set_slope_inter(1.0, float(-HU_OFFSET))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.to_filename(str(path))


def csv_bytes(rows: list[list[object]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return b"\xef\xbb\xbf" + buffer.getvalue().encode("utf-8")


def label_rows(p: SynthPatient) -> list[list[object]]:
    """A patient's rows of the label CSV, from the subtype flags actually drawn."""
    rows = []
    for k, flags in enumerate(p.flags.tolist(), start=1):
        healthy = 0 if any(flags) else 1
        rows.append([p.patient, k, *flags, healthy, 0])
    return rows


def demographics_rows(people: list[SynthPatient]) -> list[list[object]]:
    """The demographics CSV, headers included."""
    head1 = [
        "Patient Number",
        "Age\n(years)",
        "Gender",
        "Hemorrhage type based on the radiologist diagnosis",
        "",
        "",
        "",
        "",
        "Fracture (yes 1/no 0)",
        "Note",
    ]
    head2 = ["", "", "", *SUBTYPES, "", ""]
    rows: list[list[object]] = [head1, head2]
    for p in people:
        present = p.flags.any(axis=0)
        rows.append([p.patient, p.age, p.sex, *[1 if f else "" for f in present], 0, "synthetic"])
    return rows
