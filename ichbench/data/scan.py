"""One scan read for prediction, outside any dataset: a NIfTI volume, a DICOM series
folder, or a folder of slice images, brought to a run's inputs (its windows and image
size) exactly as the dataset readers bring a patient to the cache.

Each kind goes through the reader its dataset uses: NIfTI through `data.nifti` (Hounsfield
units, canonical slice order, header checks), DICOM through `data.dicom` (ordered along
the slice normal, Hounsfield units from the rescale tags, CT only), slice images through
the JPG release's reader (8-bit, already windowed). What is not a scan is refused with one
line naming the file: a 2-D image (one slice says nothing about a head), a volume that is
not CT in Hounsfield units, a series of another modality.

Slice images come windowed, so they give one window per image: a folder of images is
read as the run's single window, and a folder with one sub-folder per window
(`brain/1.jpg`, `bone/1.jpg`, as the JPG release) gives several.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ichbench.data.dicom import MIN_SLICE_PIXELS
from ichbench.data.resize import resize_stack
from ichbench.data.windows import check_windows, to_uint8
from ichbench.errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
KINDS = ("nifti", "dicom", "images")
WHAT_A_SCAN_IS = "a NIfTI volume, a DICOM series folder or a folder of slice images"


@dataclass
class Scan:
    """A scan as a run's network reads it: uint8 (slices, windows, size, size), slice 0
    the most inferior, in radiological display orientation (as `SliceDataset.images`)."""

    path: Path
    kind: str  # one of KINDS
    images: np.ndarray
    windows: tuple[str, ...]
    notes: list[str] = field(default_factory=list)

    @property
    def slices(self) -> int:
        return int(self.images.shape[0])


def read_scan(path: Path | str, windows: tuple[str, ...], image_size: int) -> Scan:
    """`path` read as a scan in `windows` at `image_size` px; a DataError naming the file
    for anything that is not a CT scan."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; expected {WHAT_A_SCAN_IS}")
    if path.is_file():
        name = path.name.lower()
        if name.endswith(NIFTI_SUFFIXES):
            return _nifti(path, windows, image_size)
        if name.endswith(IMAGE_SUFFIXES):
            raise DataError(
                f"{path}: a 2-D image, not a scan; predict needs {WHAT_A_SCAN_IS} (the "
                "stack of a head's axial slices)"
            )
        if name.endswith(".dcm"):
            raise DataError(
                f"{path}: one DICOM file is one slice, not a scan; give the folder of its series"
            )
        raise DataError(f"{path}: not a scan ichbench reads; expected {WHAT_A_SCAN_IS}")
    if _image_files(path) or any(_image_files(path / w) for w in windows):
        return _images(path, windows, image_size)
    if _dicom_files(path):
        return _dicom(path, windows, image_size)
    series = [p.name for p in sorted(path.iterdir()) if p.is_dir() and _dicom_files(p)]
    if series:
        shown = ", ".join(series[:5]) + (" ..." if len(series) > 5 else "")
        raise DataError(
            f"{path}: holds series folders ({shown}), not one series; give the folder of "
            "the one series to read"
        )
    raise DataError(f"{path}: holds no NIfTI, DICOM or slice image; expected {WHAT_A_SCAN_IS}")


def _windowed(hu: np.ndarray, windows: tuple[str, ...], size: int) -> np.ndarray:
    """Hounsfield units (slices, rows, cols) in each window, resized: as the NIfTI
    reader fills the cache (`nifti.decode_nifti`)."""
    images = np.empty((hu.shape[0], len(windows), size, size), dtype=np.uint8)
    for c, window in enumerate(check_windows(tuple(windows))):
        images[:, c] = to_uint8(resize_stack(window.apply(hu)[:, None], size)[:, 0])
    return images


def _check_stack(path: Path, shape: tuple[int, ...]) -> None:
    if len(shape) < 3 or shape[0] < 2:
        raise DataError(
            f"{path}: a 2-D image ({'x'.join(map(str, shape[-2:]))} pixels, one slice), not "
            f"a scan; predict needs {WHAT_A_SCAN_IS} with two slices or more"
        )
    _check_slice_size(path, shape[-2:])


def _check_slice_size(path: Path, plane: tuple[int, ...]) -> None:
    """Slices of a few pixels are no head CT (an icon, a thumbnail, a damaged header):
    resized to the run's image size they would be scored as if they were."""
    if min(plane) < MIN_SLICE_PIXELS:
        raise DataError(
            f"{path}: slices of {plane[0]}x{plane[1]} pixels; a CT slice has "
            f"{MIN_SLICE_PIXELS} pixels a side or more"
        )


def _nifti(path: Path, windows: tuple[str, ...], size: int) -> Scan:
    from ichbench.data.nifti import check_hounsfield, read_nifti

    shape = _nifti_shape(path)
    if len(shape) == 2 or (len(shape) >= 3 and 1 in shape[:3]):
        raise DataError(
            f"{path}: a 2-D image (shape {'x'.join(map(str, shape))}), not a scan; predict "
            f"needs {WHAT_A_SCAN_IS} with two slices or more"
        )
    hu = read_nifti(path)
    _check_stack(path, hu.shape)
    check_hounsfield(path, hu)
    return Scan(path, "nifti", _windowed(hu, windows, size), tuple(windows))


def _nifti_shape(path: Path) -> tuple[int, ...]:
    """The stored shape, read from the header alone (a 2-D file is refused before the
    reader's own 3-D check, with what it is)."""
    import nibabel

    try:
        shape = tuple(int(v) for v in nibabel.load(str(path)).shape)
    except Exception as exc:
        raise DataError(
            f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})"
        ) from None
    return shape[:3] if len(shape) == 4 and shape[3] == 1 else shape


def _dicom_files(folder: Path) -> list[Path]:
    """Files that look like DICOM: `*.dcm`, or files without an extension that carry the
    DICM marker."""
    found = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix.lower() == ".dcm":
            found.append(p)
        elif not p.suffix:
            try:
                with p.open("rb") as handle:
                    handle.seek(128)
                    if handle.read(4) == b"DICM":
                        found.append(p)
            except OSError:
                continue
    return found


def _dicom(folder: Path, windows: tuple[str, ...], size: int) -> Scan:
    try:
        from ichbench.data.dicom import read_series
    except ImportError as exc:
        raise DataError(
            f"{folder}: a DICOM series, but this installation cannot read DICOM "
            f"({exc}); install pydicom"
        ) from None
    from ichbench.data.nifti import check_hounsfield

    series = read_series(folder)
    _check_stack(folder, tuple(series.hu.shape))
    check_hounsfield(folder, series.hu)
    return Scan(folder, "dicom", _windowed(series.hu, windows, size), tuple(windows), series.notes)


_NUMBER = re.compile(r"(\d+)")


def _image_files(folder: Path) -> list[Path]:
    """Slice images of a folder in slice order: by the number in the name (`2.jpg` before
    `10.jpg`), masks (`*_HGE_Seg.jpg`) left out."""
    if not folder.is_dir():
        return []
    files = [
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.name.lower().endswith(IMAGE_SUFFIXES)
        and not p.name.startswith(".")
        and "_seg" not in p.stem.lower()
    ]

    def key(p: Path) -> tuple:
        return tuple(int(t) if t.isdigit() else t for t in _NUMBER.split(p.stem))

    return sorted(files, key=key)


def _images(folder: Path, windows: tuple[str, ...], size: int) -> Scan:
    """Slices that come windowed: one folder per window, or the folder itself for a run
    of one window. Slice k of every window is the k-th image in name order."""
    from ichbench.data.jpg import _read_jpg

    per_window = {w: _image_files(folder / w) for w in windows}
    if not all(per_window.values()):
        if len(windows) > 1:
            raise DataError(
                f"{folder}: slice images come windowed, one image per slice and window, but "
                f"the run's models take {len(windows)} windows ({', '.join(windows)}): give "
                f"one sub-folder per window ({', '.join(f'{w}/' for w in windows)}), or the "
                "scan as a NIfTI volume or DICOM series"
            )
        per_window = {windows[0]: _image_files(folder)}
    counts = {w: len(files) for w, files in per_window.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"{folder}: the windows hold different numbers of slices: {counts}")
    first = next(iter(per_window.values()))
    if len(first) < 2:
        raise DataError(
            f"{first[0] if first else folder}: a 2-D image (one slice), not a scan; predict "
            f"needs {WHAT_A_SCAN_IS} with two slices or more"
        )
    planes, shape = [], None
    for k in range(len(first)):
        stack = []
        for w in windows:
            path = per_window[w][k]
            plane = _read_jpg(path)
            if shape is None:
                _check_slice_size(path, plane.shape)
            shape = shape or plane.shape
            if plane.shape != shape:
                raise DataError(
                    f"{path}: {plane.shape[1]}x{plane.shape[0]} pixels, unlike the scan's "
                    f"other slices ({shape[1]}x{shape[0]})"
                )
            stack.append(plane)
        planes.append(np.stack(stack))
    unit = np.stack(planes).astype(np.float32) / 255.0
    return Scan(folder, "images", to_uint8(resize_stack(unit, size)), tuple(windows))
