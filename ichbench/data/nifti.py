"""The v1.3.x reader: NIfTI volumes in Hounsfield units, in canonical slice order.

The header's scl_slope/scl_inter are applied (nibabel does). Volumes are reoriented to the
closest canonical (RAS+) orientation, so slice k along the third axis, counted from the
feet, is the CSV's SliceNumber k whatever the stored orientation. Every unreadable,
truncated or non-finite file is a DataError naming it.
"""

from __future__ import annotations

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
