"""The v1.3.x reader: NIfTI volumes in Hounsfield units, in canonical slice order.

The header's scl_slope/scl_inter are applied (nibabel does). Volumes are reoriented to the
closest canonical (RAS+) orientation, so slice k along the third axis, counted from the
feet, is the CSV's SliceNumber k whatever the stored orientation. Every unreadable,
truncated or non-finite file is a DataError naming it, and so is a header whose values
would silently give wrong numbers:

- a scl_slope of 0, NaN or infinity with a non-zero scl_inter: nibabel then ignores the
  scaling, the intercept is dropped and every voxel is off by it (1024 HU in the release);
- no orientation at all (qform_code and sform_code both 0): nibabel falls back to a guess
  that mirrors left and right, and nothing says which end of the stack is inferior, so
  SliceNumber k could be matched to the wrong slice. An error rather than a warning,
  because the labels of a run would hang on that guess;
- a CT volume whose values cannot be Hounsfield units of a head: constant, or with no
  voxel at or below 0 HU where air (-1000 HU) surrounds every head. It is checked when the
  volume is decoded, so it also catches scaling the header cannot reveal.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ichbench.data.layout import PatientFiles
from ichbench.data.resize import resize_masks, resize_stack
from ichbench.data.windows import Window, to_uint8
from ichbench.errors import DataError

if TYPE_CHECKING:
    from ichbench.data.folder import PhysioNetFolder


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
        raise DataError(
            f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})"
        ) from None
    _check_raw_header(path, img)
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


def _check_raw_header(path: Path, img) -> None:
    """Scaling and orientation as stored: nibabel resets the scaling fields of the header it
    hands back, so the file's own header is read again (a few hundred bytes)."""
    nib = _nib()
    try:
        with nib.openers.ImageOpener(str(path)) as handle:
            raw = img.header_class.from_fileobj(handle)
        slope, inter = float(raw["scl_slope"]), float(raw["scl_inter"])
        codes = int(raw["qform_code"]), int(raw["sform_code"])
    except Exception as exc:
        raise DataError(
            f"{path}: not a readable NIfTI header ({type(exc).__name__}: {exc})"
        ) from None
    ignored = slope == 0 or math.isnan(slope)
    if math.isinf(slope) or (ignored and math.isfinite(inter) and inter != 0):
        raise DataError(
            f"{path}: scl_slope is {slope:g}, so the scaling (scl_inter {inter:g}) would be "
            "ignored and the voxels would not be in Hounsfield units; set scl_slope to the "
            "scanner's slope (1 in the release)"
        )
    if codes == (0, 0):
        raise DataError(
            f"{path}: no orientation (qform_code and sform_code are both 0), so neither the "
            "inferior end of the stack nor the patient's left is known; set the qform or "
            "sform of the volume"
        )


HU_RANGE = (-10_000.0, 100_000.0)
"""Values a CT in Hounsfield units never leaves (air is -1000, dense metal tens of
thousands): a scan beyond them has a wrong scale, and every window would saturate."""


def check_hounsfield(path: Path, hu: np.ndarray) -> None:
    """A head CT in Hounsfield units holds air near -1000 HU, stays within `HU_RANGE`, and
    is never uniform."""
    low, high = float(hu.min()), float(hu.max())
    if low < HU_RANGE[0] or high > HU_RANGE[1]:
        raise DataError(
            f"{path}: values from {low:.4g} to {high:.4g}, far outside Hounsfield units "
            f"({HU_RANGE[0]:g} to {HU_RANGE[1]:g}); check the scale (scl_slope, RescaleSlope)"
        )
    if low == high:
        raise DataError(f"{path}: every voxel is {low:g} HU; a head CT holds air, tissue and bone")
    if low > 0:
        raise DataError(
            f"{path}: lowest value is {low:g} HU, but air around a head is near -1000 HU; "
            "the volume is not in Hounsfield units (check scl_slope and scl_inter)"
        )


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
        raise DataError(
            f"{path}: cannot read the voxel data ({type(exc).__name__}: {exc})"
        ) from None
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise DataError(f"{path}: {bad} voxel(s) are NaN or infinite")
    return np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, ::-1])


def decode_nifti(
    folder: PhysioNetFolder,
    files: PatientFiles,
    windows: tuple[Window, ...],
    size: int,
    with_masks: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One patient's volume windowed and resized, and its mask volume when asked and present."""
    hu = read_nifti(files.image)
    check_hounsfield(files.image, hu)
    images = np.empty((hu.shape[0], len(windows), size, size), dtype=np.uint8)
    for c, window in enumerate(windows):
        images[:, c] = to_uint8(resize_stack(window.apply(hu)[:, None], size)[:, 0])
    masks = None
    if with_masks and files.mask is not None:
        mask = read_nifti(files.mask)
        if mask.shape != hu.shape:
            raise DataError(
                f"{files.mask}: shape {mask.shape[::-1]} differs from its volume "
                f"{files.image} {hu.shape[::-1]}"
            )
        masks = resize_masks((mask > 0.5).astype(np.uint8), size)
    return images, masks
