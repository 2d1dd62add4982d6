"""The v1.0/1.2 reader: one JPG per slice and window, with optional hemorrhage masks.

The release is already windowed, so only its brain and bone windows exist. A missing slice,
an unreadable file or a slice of another size is a DataError naming the file. So is an image
of more than 8 bits per channel (a 16-bit PNG or a 32-bit TIFF saved under a .jpg name):
the release's slices are 8-bit greyscale or RGB JPEGs, and converting such an image to 8
bits would clip every value above 255 to white without a sign. An image too large to be a
slice (Pillow's decompression-bomb limit) is refused before it is decoded.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ichbench.data.layout import PatientFiles, numbered_files
from ichbench.data.resize import resize_masks, resize_stack
from ichbench.data.windows import Window, to_uint8
from ichbench.errors import DataError

if TYPE_CHECKING:
    from ichbench.data.folder import PhysioNetFolder

_JPG_SLICE = re.compile(r"^(\d+)\.jpg$", re.IGNORECASE)
_JPG_MASK = re.compile(r"^(\d+)_HGE_Seg\.jpg$", re.IGNORECASE)


def jpg_slices(folder: Path, patient: int) -> dict[int, Path]:
    """A window folder's slices by number (from file names only)."""
    if not folder.is_dir():
        raise DataError(f"Patient {patient:03d}: missing folder {folder}")
    return numbered_files(folder, _JPG_SLICE, f"{folder.name} slice")


def _bits(mode: str) -> int:
    """Bits per channel of a Pillow mode: 8 for every mode the release could hold."""
    if mode == "F" or mode == "I" or mode.startswith("I;"):
        return 16 if "16" in mode else 32
    return 8


def _too_large(path: Path, exc: Exception) -> DataError:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return DataError(
        f"{path}: {size}, far more than a CT slice (the release's are 650x650); "
        "refused before decoding"
    )


def _read_jpg(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                bits = _bits(im.mode)
                if bits != 8:
                    raise DataError(
                        f"{path}: a {bits}-bit {im.format or 'unknown'} image (mode {im.mode}), "
                        "not an 8-bit JPEG slice; converting it would clip every value "
                        "above 255"
                    )
                im.load()
                return np.asarray(im.convert("L"))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(path, exc) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def jpg_masks(patient_dir: Path) -> dict[int, Path]:
    """A patient's mask files by slice; those in `brain/` win over those beside it."""
    found: dict[int, Path] = {}
    for base in (patient_dir / "brain", patient_dir):
        if base.is_dir():
            for number, path in numbered_files(base, _JPG_MASK, "mask").items():
                found.setdefault(number, path)
    return found


def decode_jpg(
    folder: PhysioNetFolder,
    files: PatientFiles,
    windows: tuple[Window, ...],
    size: int,
    with_masks: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One patient's slices, one channel per window, and its masks when asked (zero where a
    slice has no mask file)."""
    pid, count = files.patient, folder.slice_count(files.patient)
    listing = {w.name: jpg_slices(files.image / w.name, pid) for w in windows}
    images = np.empty((count, len(windows), size, size), dtype=np.uint8)
    first_shape: tuple[int, ...] | None = None
    for k in range(1, count + 1):
        planes = []
        for window in windows:
            path = listing[window.name].get(k)
            if path is None:
                raise DataError(
                    f"Patient {pid:03d}: missing {window.name} slice {k}: "
                    f"{files.image / window.name / f'{k}.jpg'}"
                )
            plane = _read_jpg(path)
            first_shape = first_shape or plane.shape
            if plane.shape != first_shape:
                raise DataError(
                    f"{path}: {plane.shape[1]}x{plane.shape[0]} pixels, unlike the "
                    f"patient's other slices ({first_shape[1]}x{first_shape[0]})"
                )
            planes.append(plane)
        stack = np.stack(planes)[None].astype(np.float32) / 255.0
        images[k - 1] = to_uint8(resize_stack(stack, size))[0]
    masks = None
    if with_masks:
        masks = np.zeros((count, size, size), dtype=np.uint8)
        for k, path in jpg_masks(files.image).items():
            if not 1 <= k <= count:
                raise DataError(
                    f"{path}: mask for slice {k}, but patient {pid:03d} has {count} slices"
                )
            masks[k - 1] = resize_masks((_read_jpg(path) > 127).astype(np.uint8)[None], size)[0]
    return images, masks
