"""Which PhysioNet CT-ICH release a folder holds, and which patients have images in it.

- v1.3.x (NIfTI): `ct_scans/NNN.nii[.gz]`, `masks/NNN.nii[.gz]`,
  `hemorrhage_diagnosis_raw_ct.csv`.
- v1.0/1.2 (JPG): `Patients_CT/NNN/brain/k.jpg`, `bone/k.jpg`, masks `k_HGE_Seg.jpg`,
  `hemorrhage_diagnosis.csv`.

Only names are looked at here (no image is opened), so detection is fast and a half-copied
folder is told exactly what it lacks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ichbench.data.windows import JPG_WINDOWS
from ichbench.errors import DataError

NIFTI = "nifti"
JPG = "jpg"
LAYOUT_NAMES = {NIFTI: "v1.3.x NIfTI", JPG: "v1.0/1.2 JPG"}
NIFTI_LABELS = "hemorrhage_diagnosis_raw_ct.csv"
JPG_LABELS = "hemorrhage_diagnosis.csv"
SCANS, MASKS, PATIENTS_CT = "ct_scans", "masks", "Patients_CT"
_NIFTI_NAME = re.compile(r"^(\d+)\.nii(\.gz)?$")
_JPG_NAME = re.compile(r"^\d+(_HGE_Seg)?\.jpg$", re.IGNORECASE)
_JPG_MASK_NAME = re.compile(r"^\d+_HGE_Seg\.jpg$", re.IGNORECASE)


@dataclass(frozen=True)
class PatientFiles:
    """Where one patient's images are: a volume (+ mask) or a JPG folder."""

    patient: int
    image: Path
    mask: Path | None = None


def detect_layout(root: Path) -> tuple[str, Path]:
    """('nifti' | 'jpg', label file) for a folder, or a DataError that says what is missing."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"Dataset folder {root} not found")
    if not root.is_dir():
        raise DataError(f"Dataset {root} is not a folder")
    for layout, images, labels in ((NIFTI, SCANS, NIFTI_LABELS), (JPG, PATIENTS_CT, JPG_LABELS)):
        has_images, has_labels = (root / images).is_dir(), (root / labels).is_file()
        if has_images and has_labels:
            return layout, root / labels
        if has_images:
            raise DataError(f"{root}: found {images}/ but not its label file {root / labels}")
        if has_labels:
            raise DataError(f"{root}: found {labels} but not the folder {root / images}/")
    raise DataError(
        f"{root} is not a PhysioNet CT-ICH folder: expected {SCANS}/ and {NIFTI_LABELS} "
        f"(v1.3.x) or {PATIENTS_CT}/ and {JPG_LABELS} (v1.0/1.2)"
    )


def is_image_file(root: Path, layout: str, path: Path) -> bool:
    """Whether a file under the image folders is one the readers read (by its place and name):
    a volume or mask `NNN.nii[.gz]`, or a slice or mask JPG of a patient's window folder."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return False
    if layout == NIFTI:
        return len(parts) == 2 and parts[0] in (SCANS, MASKS) and bool(_NIFTI_NAME.match(parts[1]))
    if len(parts) < 3 or parts[0] != PATIENTS_CT or not parts[1].isdigit():
        return False
    if len(parts) == 3:
        return bool(_JPG_MASK_NAME.match(parts[2]))
    return len(parts) == 4 and parts[2] in JPG_WINDOWS and bool(_JPG_NAME.match(parts[3]))


def numbered_files(folder: Path, pattern: re.Pattern[str], what: str) -> dict[int, Path]:
    """The files of `folder` whose names match `pattern`, by the number it captures; two
    files with one number (`1.jpg`, `01.jpg`) are an error rather than a silent pick."""
    found: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        match = pattern.match(path.name)
        if not match:
            continue
        number = int(match.group(1))
        if number in found:
            raise DataError(f"Two {what} files numbered {number}: {found[number]} and {path}")
        found[number] = path
    return found


def nifti_masks(root: Path) -> dict[int, Path]:
    """The v1.3.x mask volumes by patient; none when the release has no `masks/` folder."""
    return numbered_files(root / MASKS, _NIFTI_NAME, "mask") if (root / MASKS).is_dir() else {}


def _scan_nifti(root: Path) -> dict[int, PatientFiles]:
    volumes = numbered_files(root / SCANS, _NIFTI_NAME, "volume")
    masks = nifti_masks(root)
    return {pid: PatientFiles(pid, path, masks.get(pid)) for pid, path in volumes.items()}


def _scan_jpg(root: Path) -> dict[int, PatientFiles]:
    out: dict[int, PatientFiles] = {}
    for path in sorted((root / PATIENTS_CT).iterdir()):
        if path.is_dir() and path.name.isdigit():
            pid = int(path.name)
            if pid in out:
                raise DataError(f"Two folders for patient {pid:03d}: {out[pid].image} and {path}")
            out[pid] = PatientFiles(pid, path)
    return out


def scan_patients(root: Path, layout: str) -> dict[int, PatientFiles]:
    """Every patient that has images, by number (file and folder names only)."""
    return _scan_nifti(root) if layout == NIFTI else _scan_jpg(root)
