"""The PhysioNet CT-ICH dataset, for both releases: a folder decoded once into the cache.

- v1.3.x (NIfTI): `ct_scans/NNN.nii[.gz]`, `masks/NNN.nii[.gz]`,
  `hemorrhage_diagnosis_raw_ct.csv`; volumes in Hounsfield units (`ichbench.data.nifti`).
- v1.0/1.2 (JPG): `Patients_CT/NNN/brain/k.jpg`, `bone/k.jpg`, masks `k_HGE_Seg.jpg`,
  `hemorrhage_diagnosis.csv`; already windowed (`ichbench.data.jpg`).

The release is detected from the folder's layout (`ichbench.data.layout`) and its labels
are matched to its images before anything is decoded (`ichbench.data.folder`). The names
of those modules are importable from here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ichbench.data.cache import (
    Unit,
    content_hash,
    fill_rows,
    fingerprint,
    load_cached,
    save_arrays,
    start_rows,
)
from ichbench.data.folder import PhysioNetFolder, check_slices, match_problems, open_folder
from ichbench.data.jpg import decode_jpg, jpg_masks, jpg_slices
from ichbench.data.labels import relative_positions
from ichbench.data.layout import (
    JPG,
    JPG_LABELS,
    LAYOUT_NAMES,
    MASKS,
    NIFTI,
    NIFTI_LABELS,
    PATIENTS_CT,
    SCANS,
    PatientFiles,
    detect_layout,
    scan_patients,
)
from ichbench.data.nifti import decode_nifti, nifti_slice_count, read_nifti
from ichbench.data.resize import resize_masks, resize_stack
from ichbench.data.windows import JPG_WINDOWS, Window, check_windows
from ichbench.errors import DataError, UsageError
from ichbench.interfaces import LoadOptions, SliceDataset

__all__ = [
    "JPG",
    "JPG_LABELS",
    "LAYOUT_NAMES",
    "MASKS",
    "NIFTI",
    "NIFTI_LABELS",
    "PATIENTS_CT",
    "SCANS",
    "PatientFiles",
    "PhysioNetFolder",
    "PhysioNetSource",
    "Progress",
    "build_arrays",
    "check_slices",
    "decode_patient",
    "detect_layout",
    "has_masks",
    "jpg_masks",
    "jpg_slices",
    "load_folder",
    "match_problems",
    "nifti_slice_count",
    "open_folder",
    "read_nifti",
    "resize_masks",
    "resize_stack",
    "scan_patients",
]

Progress = Callable[[int, int], None]


def decode_patient(
    folder: PhysioNetFolder,
    patient: int,
    windows: tuple[Window, ...],
    size: int,
    with_masks: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """All slices of one patient: uint8 (n, C, size, size) and, if asked, uint8 masks."""
    decode = decode_nifti if folder.layout == NIFTI else decode_jpg
    return decode(folder, folder.patients[patient], windows, size, with_masks)


def has_masks(folder: PhysioNetFolder, patients: list[int]) -> bool:
    """NIfTI: every used patient has a mask volume. JPG: the release ships mask files at all
    (then a slice without one has no hemorrhage drawn)."""
    if folder.layout == NIFTI:
        return all(folder.patients[p].mask is not None for p in patients)
    return any(jpg_masks(folder.patients[p].image) for p in patients)


def build_arrays(
    folder: PhysioNetFolder,
    options: LoadOptions,
    out: Path,
    progress: Progress | None = None,
    *,
    workers: int | None = None,
) -> dict[str, Any]:
    """Decode every used patient into `out` (the cache's partial folder); the metadata.

    Patients are decoded in `workers` processes (`ichbench.data.cache.fill_rows`), each
    writing its rows in place; the patients an interrupted build of the same plan already
    wrote into `out` are not decoded again."""
    windows = check_windows(tuple(options.windows), layout=folder.layout)
    size = int(options.image_size)
    if size < 8:
        raise UsageError(f"Image size {size} is too small: use 8 pixels or more")
    table = folder.used
    patients = table.patients()
    if not patients:
        raise DataError(
            f"{folder.label_path}: no patient left after excluding "
            f"{', '.join(map(str, folder.exclude))}"
        )
    counts = {}
    for pid in patients:
        check_slices(folder, pid)
        counts[pid] = folder.slice_count(pid)
    with_masks = has_masks(folder, patients)
    n = len(table)
    arrays = {"images": (np.uint8, (n, len(windows), size, size))}
    if with_masks:
        arrays["masks"] = (np.uint8, (n, size, size))
    units = []
    for i, pid in enumerate(patients):
        rows = table.rows_of(pid)  # contiguous: the table is sorted by (patient, slice)
        start, stop = int(rows[0]), int(rows[-1]) + 1
        if stop - start != len(rows):
            raise DataError(f"{folder.label_path}: the rows of patient {pid} are not together")
        units.append(Unit(i, start, stop, (pid, table.slice_numbers[rows] - 1)))
    plan = [[u.index, u.task[0], u.start, u.stop] for u in units]
    files = start_rows(out, arrays, plan)
    context = (folder, windows, size, with_masks)
    fill_rows(out, files, units, _decode_rows, context, workers=workers, progress=progress)
    save_arrays(
        out,
        {
            "labels": table.labels,
            "patient_ids": table.patient_ids,
            "slice_numbers": table.slice_numbers,
            "positions": relative_positions(table, counts),
            "subtypes": table.subtypes,
        },
    )
    names = ["images", "labels", "patient_ids", "slice_numbers", "positions", "subtypes"]
    return {
        "rows": n,
        "image_shape": [len(windows), size, size],
        "arrays": names + (["masks"] if with_masks else []),
        "dataset_hash": content_hash(folder.root, folder.data_files()),
        "windows": [w.name for w in windows],
        "layout": folder.layout,
        "patients": len(patients),
        "exclude": list(folder.exclude),
    }


def _decode_rows(context: tuple, task: tuple[int, np.ndarray]) -> dict[str, np.ndarray]:
    """One patient's rows in label-table order (a worker's unit of `build_arrays`)."""
    folder, windows, size, with_masks = context
    pid, index = task
    images, masks = decode_patient(folder, pid, windows, size, with_masks)
    out = {"images": images[index]}
    if with_masks:  # a patient without a mask volume has no hemorrhage drawn
        none = np.zeros((len(index), size, size), np.uint8)
        out["masks"] = masks[index] if masks is not None else none
    return out


def folder_key(folder: PhysioNetFolder, options: LoadOptions) -> str:
    """The cache key of a folder loaded with `options`: its labels read in full, its images
    by size and times (see `ichbench.data.cache.fingerprint`)."""
    return fingerprint(
        folder.root,
        folder.data_files(),
        options,
        {"layout": folder.layout},
        content=[folder.label_path],
    )


def load_folder(
    root: Path,
    options: LoadOptions,
    cache_dir: Path,
    *,
    name: str,
    progress: Progress | None = None,
    workers: int | None = None,
) -> SliceDataset:
    """Load a PhysioNet folder through the preprocessing cache; a first load decodes in
    `workers` processes (None: `ichbench.data.cache.pool_size`) and resumes an
    interrupted one."""
    exclude = tuple(options.exclude)
    folder = open_folder(root, exclude)
    check_windows(tuple(options.windows), layout=folder.layout)
    key = folder_key(folder, options)

    def build(tmp: Path) -> dict[str, Any]:
        # Read again after the key, and checked against it after decoding and hashing: an
        # entry (and its dataset_hash) only ever holds what its key describes.
        fresh = open_folder(root, exclude)
        meta = build_arrays(fresh, options, tmp, progress, workers=workers)
        if folder_key(fresh, options) != key:
            raise DataError(
                f"{fresh.root}: its files changed while it was being loaded; load it again"
            )
        return meta

    dataset = load_cached(Path(cache_dir), key, build, name=name, source=str(folder.root))
    return replace(dataset, not_found_excluded=folder.not_found_excluded)


@dataclass
class PhysioNetSource:
    """The `physionet:PATH` dataset: a real (or synthetic) folder in either layout."""

    root: Path
    name: str = ""

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()
        if not self.name:
            self.name = f"physionet:{self.root}"

    def folder(self) -> Path:
        """The dataset folder (what `ichbench data check` inspects)."""
        return self.root

    def windows_offered(self) -> tuple[str, ...] | None:
        """The windows this folder can give: the JPG release's two, or None (any window:
        NIfTI volumes are in Hounsfield units). A preset's window stack is narrowed to
        them; a window the user names that is not offered is an error at load."""
        layout, _ = detect_layout(self.root)
        return JPG_WINDOWS if layout == JPG else None

    def load(
        self, options: LoadOptions, cache_dir: Path, progress: Progress | None = None
    ) -> SliceDataset:
        return load_folder(self.root, options, cache_dir, name=self.name, progress=progress)
