"""A PhysioNet folder opened: its layout detected, its label rows matched to its images.

Every inconsistency between the label file and the images is a `DataError` naming the
file and patient: a reader that guesses would make every later number meaningless.
A file in an image folder that no reader reads (a README, a spreadsheet's lock file) is
not part of the data: it changes neither the dataset hash nor the cache key, so it never
blocks a load or a resume, and `data check` names it in a warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ichbench.data.jpg import jpg_slices
from ichbench.data.labels import LabelTable, read_labels
from ichbench.data.layout import (
    JPG,
    MASKS,
    NIFTI,
    PATIENTS_CT,
    SCANS,
    PatientFiles,
    detect_layout,
    is_image_file,
    nifti_masks,
    scan_patients,
)
from ichbench.data.nifti import nifti_slice_count
from ichbench.errors import DataError


@dataclass
class PhysioNetFolder:
    """A dataset folder whose layout is known and whose label rows match its patients."""

    root: Path
    layout: str
    label_path: Path
    labels: LabelTable  # every row of the label file
    patients: dict[int, PatientFiles]  # every patient that has images
    exclude: tuple[int, ...] = ()
    _counts: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def used(self) -> LabelTable:
        """The label rows of the patients that are not excluded."""
        return self.labels.without(self.exclude)

    @property
    def not_found_excluded(self) -> tuple[int, ...]:
        """Excluded patients with neither label rows nor images here: likely a typo."""
        present = set(self.labels.patients()) | set(self.patients)
        return tuple(sorted(p for p in set(self.exclude) if p not in present))

    def _image_folder_files(self) -> list[Path]:
        folders = (SCANS, MASKS) if self.layout == NIFTI else (PATIENTS_CT,)
        files = []
        for name in folders:
            base = self.root / name
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames.sort()
                files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
        return files

    def data_files(self) -> list[Path]:
        """The label file and every image file a reader reads (what identifies the data)."""
        return [self.label_path] + [
            p for p in self._image_folder_files() if is_image_file(self.root, self.layout, p)
        ]

    def stray_files(self) -> list[Path]:
        """Files in the image folders that no reader reads; ignored, but worth naming."""
        return [
            p for p in self._image_folder_files() if not is_image_file(self.root, self.layout, p)
        ]

    def slice_count(self, patient: int) -> int:
        """Slices of a patient's images, from headers or file names only (no decoding)."""
        if patient not in self._counts:
            files = self.patients[patient]
            if self.layout == NIFTI:
                self._counts[patient] = nifti_slice_count(files.image)
            else:
                self._counts[patient] = max(jpg_slices(files.image / "brain", patient), default=0)
        return self._counts[patient]


def match_problems(
    root: Path,
    layout: str,
    label_path: Path,
    labels: LabelTable,
    patients: dict[int, PatientFiles],
    exclude: tuple[int, ...] = (),
) -> list[str]:
    """Patients with rows but no images, and images with no rows (excluded ones aside)."""
    problems = []
    excluded = set(exclude)
    counts = labels.slice_counts()
    for pid in sorted(set(counts) - set(patients) - excluded):
        where = (
            root / SCANS / f"{pid:03d}.nii[.gz]"
            if layout == NIFTI
            else root / PATIENTS_CT / f"{pid:03d}"
        )
        problems.append(
            f"Patient {pid:03d} has {counts[pid]} rows in {label_path} but no images ({where})"
        )
    for pid in sorted(set(patients) - set(counts) - excluded):
        problems.append(
            f"{patients[pid].image}: patient {pid:03d} has images but no rows in {label_path}"
        )
    if layout == NIFTI:
        for pid, path in nifti_masks(root).items():
            if pid not in patients and pid not in excluded:
                problems.append(f"Mask {path} has no volume {root / SCANS}/{pid:03d}.nii")
    return problems


def open_folder(root: Path, exclude: tuple[int, ...] = ()) -> PhysioNetFolder:
    """Detect the layout, parse the labels and match label rows to images, patient by patient.

    Excluded patients need neither rows nor images, so a user can exclude a broken one.
    """
    root = Path(root).expanduser()
    layout, label_path = detect_layout(root)
    labels = read_labels(label_path)
    patients = scan_patients(root, layout)
    problems = match_problems(root, layout, label_path, labels, patients, tuple(exclude))
    if problems:
        raise DataError(problems[0])
    return PhysioNetFolder(root, layout, label_path, labels, patients, tuple(exclude))


def check_slices(folder: PhysioNetFolder, patient: int) -> None:
    """The CSV rows of a patient must number exactly the slices of its images; for the JPG
    release every row must have its brain JPG (from file names: nothing is decoded)."""
    rows = folder.labels.slice_numbers[folder.labels.patient_ids == patient]
    image = folder.patients[patient].image
    if folder.layout == JPG:
        present = jpg_slices(image / "brain", patient)
        missing = sorted(k for k in set(rows.tolist()) if k not in present)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(
                f"Patient {patient:03d}: missing brain slice {missing[0]}: "
                f"{image / 'brain' / f'{missing[0]}.jpg'}{more}"
            )
    count = folder.slice_count(patient)
    if rows.max() > count:
        raise DataError(
            f"Patient {patient:03d}: SliceNumber {int(rows.max())} in "
            f"{folder.label_path.name} is out of range: {image} has {count} slices"
        )
    if rows.size != count:
        raise DataError(
            f"Patient {patient:03d}: {folder.label_path.name} has {rows.size} rows "
            f"but {image} has {count} slices"
        )
