"""The PhysioNet CT-ICH reader, for both releases, detected from the folder's layout.

- v1.3.x (NIfTI): `ct_scans/NNN.nii[.gz]`, `masks/NNN.nii[.gz]`,
  `hemorrhage_diagnosis_raw_ct.csv`. Volumes are in Hounsfield units once the header's
  scl_slope/scl_inter are applied (nibabel does). They are reoriented to the closest
  canonical (RAS+) orientation, so slice k along the third axis, counted from the feet,
  is the CSV's SliceNumber k whatever the stored orientation.
- v1.0/1.2 (JPG): `Patients_CT/NNN/brain/k.jpg`, `bone/k.jpg`, masks `k_HGE_Seg.jpg`,
  `hemorrhage_diagnosis.csv`. Already windowed, so only the brain and bone windows exist.

Every inconsistency between the label file and the images is a `DataError` naming the
file and patient: a reader that guesses would make every later number meaningless.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichbench.data.cache import content_hash, fingerprint, load_cached, save_arrays
from ichbench.data.labels import LabelTable, read_labels, relative_positions
from ichbench.data.windows import Window, check_windows, to_uint8
from ichbench.errors import DataError, UsageError
from ichbench.interfaces import LoadOptions, SliceDataset

NIFTI = "nifti"
JPG = "jpg"
LAYOUT_NAMES = {NIFTI: "v1.3.x NIfTI", JPG: "v1.0/1.2 JPG"}
NIFTI_LABELS = "hemorrhage_diagnosis_raw_ct.csv"
JPG_LABELS = "hemorrhage_diagnosis.csv"
SCANS, MASKS, PATIENTS_CT = "ct_scans", "masks", "Patients_CT"
_NIFTI_NAME = re.compile(r"^(\d+)\.nii(\.gz)?$")
_JPG_SLICE = re.compile(r"^(\d+)\.jpg$", re.IGNORECASE)
_JPG_MASK = re.compile(r"^(\d+)_HGE_Seg\.jpg$", re.IGNORECASE)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PatientFiles:
    """Where one patient's images are: a volume (+ mask) or a JPG folder."""

    patient: int
    image: Path
    mask: Path | None = None


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

    def data_files(self) -> list[Path]:
        """The label file and every file of the image folders (what identifies the data)."""
        folders = (SCANS, MASKS) if self.layout == NIFTI else (PATIENTS_CT,)
        files = [self.label_path]
        for name in folders:
            base = self.root / name
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames.sort()
                files.extend(Path(dirpath) / f for f in sorted(filenames)
                             if not f.startswith("."))
        return files

    def slice_count(self, patient: int) -> int:
        """Slices of a patient's images, from headers or file names only (no decoding)."""
        if patient not in self._counts:
            files = self.patients[patient]
            if self.layout == NIFTI:
                self._counts[patient] = nifti_slice_count(files.image)
            else:
                self._counts[patient] = max(jpg_slices(files.image / "brain", patient),
                                            default=0)
        return self._counts[patient]


# --------------------------------------------------------------------------- layout


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


def _numbered(folder: Path, pattern: re.Pattern[str], what: str) -> dict[int, Path]:
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


def _nifti_masks(root: Path) -> dict[int, Path]:
    return _numbered(root / MASKS, _NIFTI_NAME, "mask") if (root / MASKS).is_dir() else {}


def _scan_nifti(root: Path) -> dict[int, PatientFiles]:
    volumes = _numbered(root / SCANS, _NIFTI_NAME, "volume")
    masks = _nifti_masks(root)
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


def match_problems(root: Path, layout: str, label_path: Path, labels: LabelTable,
                   patients: dict[int, PatientFiles], exclude: tuple[int, ...] = ()) -> list[str]:
    """Patients with rows but no images, and images with no rows (excluded ones aside)."""
    problems = []
    excluded = set(exclude)
    counts = labels.slice_counts()
    for pid in sorted(set(counts) - set(patients) - excluded):
        where = root / SCANS / f"{pid:03d}.nii[.gz]" if layout == NIFTI \
            else root / PATIENTS_CT / f"{pid:03d}"
        problems.append(f"Patient {pid:03d} has {counts[pid]} rows in {label_path} but no "
                        f"images ({where})")
    for pid in sorted(set(patients) - set(counts) - excluded):
        problems.append(f"{patients[pid].image}: patient {pid:03d} has images but no rows in "
                        f"{label_path}")
    if layout == NIFTI:
        for pid, path in _nifti_masks(root).items():
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
    """The CSV rows of a patient must number exactly the slices of its images."""
    rows = folder.labels.slice_numbers[folder.labels.patient_ids == patient]
    count = folder.slice_count(patient)
    image = folder.patients[patient].image
    if rows.max() > count:
        raise DataError(f"Patient {patient:03d}: SliceNumber {int(rows.max())} in "
                        f"{folder.label_path.name} is out of range: {image} has {count} slices")
    if rows.size != count:
        raise DataError(f"Patient {patient:03d}: {folder.label_path.name} has {rows.size} rows "
                        f"but {image} has {count} slices")


# --------------------------------------------------------------------------- NIfTI


def _nib():
    import nibabel

    return nibabel


def _nifti_header(path: Path):
    """Load lazily (header only) with every failure turned into a DataError naming the file."""
    nib = _nib()
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes)")
        img = nib.load(str(path))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") \
            from None
    shape = tuple(int(v) for v in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 or min(shape) < 1:
        raise DataError(f"{path}: expected a 3-D volume, found shape {img.shape}")
    if not path.name.endswith(".gz"):
        expected = int(img.dataobj.offset) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
        size = path.stat().st_size
        if size < expected:
            raise DataError(f"{path}: truncated ({size} bytes, the header needs {expected})")
    return img, shape


def nifti_slice_count(path: Path) -> int:
    """Slices along the axis that becomes the canonical third (inferior-superior) axis."""
    img, shape = _nifti_header(path)
    ornt = _nib().io_orientation(img.affine)
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    return shape[axis]


def read_nifti(path: Path) -> np.ndarray:
    """A volume as float32 (slices, rows, cols) in canonical order, slice 0 = most inferior.

    Each slice is in radiological display orientation: anterior up, the patient's left on
    the image's right (as the JPG release was exported).
    """
    img, shape = _nifti_header(path)
    nib = _nib()
    try:
        if len(img.shape) == 4:
            img = img.slicer[..., 0]
        canonical = nib.as_closest_canonical(img)
        data = canonical.get_fdata(dtype=np.float32)
    except Exception as exc:
        raise DataError(f"{path}: cannot read the voxel data ({type(exc).__name__}: {exc})") \
            from None
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise DataError(f"{path}: {bad} voxel(s) are NaN or infinite")
    return np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, ::-1])


def _decode_nifti(folder: PhysioNetFolder, files: PatientFiles, windows: tuple[Window, ...],
                  size: int, with_masks: bool) -> tuple[np.ndarray, np.ndarray | None]:
    hu = read_nifti(files.image)
    images = np.empty((hu.shape[0], len(windows), size, size), dtype=np.uint8)
    for c, window in enumerate(windows):
        images[:, c] = to_uint8(resize_stack(window.apply(hu)[:, None], size)[:, 0])
    masks = None
    if with_masks and files.mask is not None:
        mask = read_nifti(files.mask)
        if mask.shape != hu.shape:
            raise DataError(f"{files.mask}: shape {mask.shape[::-1]} differs from its volume "
                            f"{files.image} {hu.shape[::-1]}")
        masks = resize_masks((mask > 0.5).astype(np.uint8), size)
    return images, masks


# --------------------------------------------------------------------------- JPG


def jpg_slices(folder: Path, patient: int) -> dict[int, Path]:
    if not folder.is_dir():
        raise DataError(f"Patient {patient:03d}: missing folder {folder}")
    return _numbered(folder, _JPG_SLICE, f"{folder.name} slice")


def _read_jpg(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def jpg_masks(patient_dir: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for base in (patient_dir / "brain", patient_dir):
        if base.is_dir():
            for number, path in _numbered(base, _JPG_MASK, "mask").items():
                found.setdefault(number, path)
    return found


def _decode_jpg(folder: PhysioNetFolder, files: PatientFiles, windows: tuple[Window, ...],
                size: int, with_masks: bool) -> tuple[np.ndarray, np.ndarray | None]:
    pid, count = files.patient, folder.slice_count(files.patient)
    listing = {w.name: jpg_slices(files.image / w.name, pid) for w in windows}
    images = np.empty((count, len(windows), size, size), dtype=np.uint8)
    first_shape: tuple[int, ...] | None = None
    for k in range(1, count + 1):
        planes = []
        for window in windows:
            path = listing[window.name].get(k)
            if path is None:
                raise DataError(f"Patient {pid:03d}: missing {window.name} slice {k}: "
                                f"{files.image / window.name / f'{k}.jpg'}")
            plane = _read_jpg(path)
            first_shape = first_shape or plane.shape
            if plane.shape != first_shape:
                raise DataError(f"{path}: {plane.shape[1]}x{plane.shape[0]} pixels, unlike the "
                                f"patient's other slices ({first_shape[1]}x{first_shape[0]})")
            planes.append(plane)
        stack = np.stack(planes)[None].astype(np.float32) / 255.0
        images[k - 1] = to_uint8(resize_stack(stack, size))[0]
    masks = None
    if with_masks:
        masks = np.zeros((count, size, size), dtype=np.uint8)
        for k, path in jpg_masks(files.image).items():
            if not 1 <= k <= count:
                raise DataError(f"{path}: mask for slice {k}, but patient {pid:03d} has "
                                f"{count} slices")
            masks[k - 1] = resize_masks((_read_jpg(path) > 127).astype(np.uint8)[None], size)[0]
    return images, masks


# --------------------------------------------------------------------------- resizing


def resize_stack(stack: np.ndarray, size: int, chunk: int = 16) -> np.ndarray:
    """float (N, C, H, W) -> (N, C, size, size), bilinear with antialiasing when shrinking."""
    if stack.shape[-2:] == (size, size):
        return stack
    import torch
    import torch.nn.functional as F

    out = np.empty((*stack.shape[:2], size, size), dtype=np.float32)
    for start in range(0, stack.shape[0], chunk):
        part = torch.from_numpy(np.ascontiguousarray(stack[start:start + chunk],
                                                     dtype=np.float32))
        shrink = size < max(stack.shape[-2:])
        out[start:start + chunk] = F.interpolate(part, size=(size, size), mode="bilinear",
                                                 align_corners=False, antialias=shrink).numpy()
    return out


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W) -> (N, size, size) with nearest neighbours, so labels stay 0/1."""
    if masks.shape[-2:] == (size, size):
        return masks.astype(np.uint8)
    import torch
    import torch.nn.functional as F

    part = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8))[:, None].float()
    return F.interpolate(part, size=(size, size), mode="nearest-exact")[:, 0].numpy() \
        .astype(np.uint8)


# --------------------------------------------------------------------------- loading


def decode_patient(folder: PhysioNetFolder, patient: int, windows: tuple[Window, ...],
                   size: int, with_masks: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """All slices of one patient: uint8 (n, C, size, size) and, if asked, uint8 masks."""
    decode = _decode_nifti if folder.layout == NIFTI else _decode_jpg
    return decode(folder, folder.patients[patient], windows, size, with_masks)


def has_masks(folder: PhysioNetFolder, patients: list[int]) -> bool:
    """NIfTI: every used patient has a mask volume. JPG: the release ships mask files at all
    (then a slice without one has no hemorrhage drawn)."""
    if folder.layout == NIFTI:
        return all(folder.patients[p].mask is not None for p in patients)
    return any(jpg_masks(folder.patients[p].image) for p in patients)


def build_arrays(folder: PhysioNetFolder, options: LoadOptions, out: Path,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Decode every used patient into `out` (the cache's temp folder); returns the metadata."""
    from numpy.lib.format import open_memmap

    windows = check_windows(tuple(options.windows), layout=folder.layout)
    size = int(options.image_size)
    if size < 8:
        raise UsageError(f"Image size {size} is too small: use 8 pixels or more")
    table = folder.used
    patients = table.patients()
    if not patients:
        raise DataError(f"{folder.label_path}: no patient left after excluding "
                        f"{', '.join(map(str, folder.exclude))}")
    counts = {}
    for pid in patients:
        check_slices(folder, pid)
        counts[pid] = folder.slice_count(pid)
    with_masks = has_masks(folder, patients)
    n = len(table)
    images = open_memmap(out / "images.npy", mode="w+", dtype=np.uint8,
                         shape=(n, len(windows), size, size))
    masks = open_memmap(out / "masks.npy", mode="w+", dtype=np.uint8,
                        shape=(n, size, size)) if with_masks else None
    for i, pid in enumerate(patients):
        rows = table.rows_of(pid)
        index = table.slice_numbers[rows] - 1
        patient_images, patient_masks = decode_patient(folder, pid, windows, size, with_masks)
        images[rows] = patient_images[index]
        if masks is not None and patient_masks is not None:
            masks[rows] = patient_masks[index]
        if progress is not None:
            progress(i + 1, len(patients))
    images.flush()
    del images
    if masks is not None:
        masks.flush()
        del masks
    save_arrays(out, {
        "labels": table.labels,
        "patient_ids": table.patient_ids,
        "slice_numbers": table.slice_numbers,
        "positions": relative_positions(table, counts),
        "subtypes": table.subtypes,
    })
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


def load_folder(root: Path, options: LoadOptions, cache_dir: Path, *, name: str,
                progress: Progress | None = None) -> SliceDataset:
    """Load a PhysioNet folder through the preprocessing cache."""
    folder = open_folder(root, tuple(options.exclude))
    check_windows(tuple(options.windows), layout=folder.layout)
    key = fingerprint(folder.root, folder.data_files(), options, {"layout": folder.layout})
    return load_cached(Path(cache_dir), key,
                       lambda tmp: build_arrays(folder, options, tmp, progress),
                       name=name, source=str(folder.root))


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

    def load(self, options: LoadOptions, cache_dir: Path,
             progress: Progress | None = None) -> SliceDataset:
        return load_folder(self.root, options, cache_dir, name=self.name, progress=progress)
