"""DICOM CT series read into Hounsfield units, in the order and orientation of the NIfTI path.

A series is a set of files sharing a SeriesInstanceUID. Its slices are ordered along the
slice normal (the cross product of ImageOrientationPatient's two directions) by the
projection of each ImagePositionPatient on it, most inferior first; a series whose files
carry no position at all falls back to InstanceNumber, and says so in `notes`, because
nothing then proves which end of the stack is the feet. Pixel values become Hounsfield
units through RescaleSlope and RescaleIntercept. Each slice is turned to radiological
display orientation (row 0 anterior, the patient's left on the image's right), as
`ichbench.data.nifti.read_nifti` delivers NIfTI volumes, so one model reads both.

Every file that cannot be used is a DataError naming it: unreadable, not CT, a folder
mixing series, positions missing on some slices, two slices at one position, a pixel
encoding (compressed transfer syntax) no installed decoder reads.

When a study holds several series of one head (thin and thick reconstructions, bone and
brain kernels), `choose_series` takes one by a fixed rule: the slice spacing nearest to
5 mm, the paper's slice thickness; then a series not reconstructed for bone; then the one
with more slices; then the smaller SeriesInstanceUID, so the choice never depends on the
order files are listed in. Sagittal and coronal reformats are chosen only when a study has
nothing else (and are then refused: ichbench reads axial slices).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ichbench.errors import DataError

TARGET_SPACING_MM = 5.0
"""The slice spacing `choose_series` prefers: the paper's slice thickness."""

POSITION_TOLERANCE_MM = 1e-3
"""Two slices whose positions along the normal differ by less than this are one position."""

TWELVE_BIT_WRAP = 4096

MIN_SLICE_PIXELS = 8
"""The smallest slice side read: a head CT slice has hundreds of pixels a side; fewer than
this is a scout, an icon or a broken header, never a slice a model can read."""

REASON_CHARS = 200
"""How much of a library's own message a DataError quotes (its first line, cut)."""


@dataclass
class DicomSeries:
    """One CT series in Hounsfield units, slices ordered inferior to superior.

    `hu` is float32 (slices, rows, cols) in display orientation; `sop_uids[k]` is the
    SOPInstanceUID of `hu[k]` (the key of RSNA's labels); `spacing_mm` is the distance
    between neighbouring slices along the normal (None when it cannot be known);
    `notes` says what the reader assumed or corrected, for the user to see.
    """

    hu: np.ndarray
    spacing_mm: float | None
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


@dataclass
class SliceHeader:
    """What one file says about where its slice belongs, read without its pixels."""

    path: Path
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    instance: int | None
    thickness: float | None
    description: str
    study_date: str
    twelve_bit_bug: bool = False  # see `needs_twelve_bit_fix`
    rescaled: bool = True  # whether the file has RescaleSlope or RescaleIntercept


def short(text: str, limit: int = REASON_CHARS) -> str:
    """A library's message as one line of at most `limit` characters: its first line (and
    the next when the first only announces it, as "raised by all available plugins:")."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    out = lines[0] if lines else ""
    if out.endswith(":") and len(lines) > 1:
        out = f"{out} {lines[1]}"
    return out if len(out) <= limit else out[: limit - 3].rstrip() + "..."


def reason(exc: BaseException) -> str:
    """An exception as one short line for a DataError: its type and `short` of its message
    (pydicom's decoders and torch write paragraphs)."""
    text = short(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _pydicom():
    import pydicom

    return pydicom


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        return None
    return numbers


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_header(path: Path) -> SliceHeader:
    """A file's header (no pixels); unreadable or non-CT files are a DataError naming it."""
    path = Path(path)
    try:
        ds = _pydicom().dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:
        raise DataError(f"{path}: not a readable DICOM file ({reason(exc)})") from None
    modality = str(ds.get("Modality", "") or "")
    if modality != "CT":
        what = f"modality {modality}" if modality else "no Modality"
        raise DataError(f"{path}: {what}, not CT; ichbench reads CT series only")
    series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    if not series_uid:
        raise DataError(f"{path}: no SeriesInstanceUID, so its series is unknown")
    instance = _number(ds.get("InstanceNumber"))
    return SliceHeader(
        path=path,
        patient_id=str(ds.get("PatientID", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        series_uid=series_uid,
        sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
        modality=modality,
        position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        instance=None if instance is None else int(instance),
        thickness=_number(ds.get("SliceThickness")),
        description=" ".join(
            str(ds.get(tag, "") or "") for tag in ("SeriesDescription", "ConvolutionKernel")
        ).strip(),
        study_date=str(ds.get("StudyDate", "") or ""),
        twelve_bit_bug=needs_twelve_bit_fix(ds),
        rescaled="RescaleSlope" in ds or "RescaleIntercept" in ds,
    )


# --------------------------------------------------------------------------- order


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    length = float(np.linalg.norm(normal))
    return normal / length if length > 0 else normal


def order_slices(
    headers: list[SliceHeader],
) -> tuple[list[SliceHeader], float | None, list[str]]:
    """The series' slices most inferior first, their spacing and what was assumed.

    All slices must share one SeriesInstanceUID (`check_one_series` first).
    """
    located = [h for h in headers if h.position is not None and h.orientation is not None]
    if located and len(located) < len(headers):
        lost = next(h for h in headers if h.position is None or h.orientation is None)
        raise DataError(
            f"{lost.path}: no ImagePositionPatient or ImageOrientationPatient, while "
            f"{located[0].path.name} of the same series has them; the slice cannot be placed"
        )
    if not located:
        return _by_instance(headers)
    first = located[0]
    assert first.orientation is not None
    for h in located:
        assert h.orientation is not None
        if np.abs(np.subtract(h.orientation, first.orientation)).max() > 1e-3:
            raise DataError(
                f"{h.path}: ImageOrientationPatient differs from {first.path.name} of the "
                "same series; a series of one orientation is expected"
            )
    normal = _normal(first.orientation)
    if abs(float(normal[2])) < 0.5:
        raise DataError(
            f"{first.path}: the series is not axial (slice normal {np.round(normal, 2).tolist()}); "
            "ichbench reads axial head CT"
        )
    if normal[2] < 0:  # LPS: +z is superior
        normal = -normal
    depth = np.array([float(np.dot(h.position, normal)) for h in located])
    order = np.argsort(depth, kind="stable")
    ordered = [located[i] for i in order]
    steps = np.diff(depth[order])
    if steps.size and steps.min() < POSITION_TOLERANCE_MM:
        k = int(np.argmin(steps))
        raise DataError(
            f"{ordered[k + 1].path}: at the same position as {ordered[k].path} "
            f"({depth[order][k]:.3f} mm along the slice normal); a series holds one slice "
            "per position (a duplicate file, or two series under one SeriesInstanceUID)"
        )
    notes = []
    spacing = float(np.median(steps)) if steps.size else None
    if spacing is not None and steps.max() > 1.5 * spacing:
        notes.append(
            f"series {first.series_uid}: a gap of {steps.max():.1f} mm between slices "
            f"spaced {spacing:.1f} mm (a slice may be missing)"
        )
    return ordered, spacing, notes


def _by_instance(headers: list[SliceHeader]) -> tuple[list[SliceHeader], float | None, list[str]]:
    for h in headers:
        if h.instance is None:
            raise DataError(
                f"{h.path}: neither ImagePositionPatient nor InstanceNumber, so the slice's "
                "place in the stack is unknown"
            )
    ordered = sorted(headers, key=lambda h: h.instance)  # type: ignore[arg-type,return-value]
    for a, b in zip(ordered, ordered[1:]):
        if a.instance == b.instance:
            raise DataError(
                f"{b.path}: InstanceNumber {b.instance} repeats {a.path} and the series has "
                "no ImagePositionPatient to order it by"
            )
    note = (
        f"series {ordered[0].series_uid}: no ImagePositionPatient; slices ordered by "
        "InstanceNumber, assumed to run from inferior to superior"
    )
    spacing = ordered[0].thickness if len(ordered) > 1 else None
    return ordered, spacing, [note]


def check_one_series(headers: list[SliceHeader], where: Path) -> None:
    """A folder read as one series must hold one SeriesInstanceUID."""
    if not headers:
        raise DataError(f"{where}: no DICOM file (*.dcm, or a file without extension)")
    first = headers[0]
    for h in headers[1:]:
        if h.series_uid != first.series_uid:
            raise DataError(
                f"{h.path}: series {h.series_uid} mixed with series {first.series_uid} "
                f"({first.path.name}) in {where}; give one series per folder"
            )


# --------------------------------------------------------------------------- pixels


def _decode_problem(path: Path, ds, exc: Exception) -> DataError:
    syntax = getattr(getattr(ds, "file_meta", None), "get", lambda *_: None)("TransferSyntaxUID")
    compressed = bool(getattr(syntax, "is_compressed", False))
    if compressed:
        missing: list[str] = []
        try:
            from pydicom.pixels import get_decoder

            decoder = get_decoder(syntax)
            if not decoder.is_available:
                missing = list(decoder.missing_dependencies)
        except Exception:  # an older pydicom, or a syntax it has no decoder for at all
            missing = []
        name = f"{getattr(syntax, 'name', syntax)} ({syntax})"
        if missing or "missing" in str(exc) or "no pixel data handlers" in str(exc):
            return DataError(
                f"{path}: pixel data compressed as {name} and no installed decoder reads it; "
                "install one (e.g. `pip install pylibjpeg pylibjpeg-libjpeg "
                "pylibjpeg-openjpeg`) or decompress the files (`gdcmconv --raw`)"
            )
        return DataError(f"{path}: cannot decode pixel data compressed as {name} ({reason(exc)})")
    return DataError(f"{path}: cannot read the pixel data ({reason(exc)})")


def needs_twelve_bit_fix(ds) -> bool:
    """The RSNA 2019 files whose 12-bit unsigned values wrapped and whose RescaleIntercept
    is wrong (about 0 instead of about -1000): air would read as bone."""
    try:
        return (
            int(ds.BitsStored) == 12
            and int(ds.PixelRepresentation) == 0
            and float(ds.RescaleIntercept) > -100
        )
    except (AttributeError, TypeError, ValueError):
        return False


def read_pixels(path: Path, *, fix_twelve_bit: bool = False) -> tuple[np.ndarray, bool]:
    """One slice in Hounsfield units, as stored (rows, cols), and whether the 12-bit
    correction was applied (only when asked: the widely used correction of the RSNA 2019
    release, values wrapped at 4096 after adding 1000, then an intercept of -1000)."""
    try:
        ds = _pydicom().dcmread(str(path))
    except Exception as exc:
        raise DataError(f"{path}: not a readable DICOM file ({reason(exc)})") from None
    if "PixelData" not in ds:
        raise DataError(f"{path}: no pixel data")
    try:
        raw = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise _decode_problem(path, ds, exc) from None
    if raw.ndim != 2:
        raise DataError(f"{path}: expected one 2-D slice, found pixel data of shape {raw.shape}")
    slope = _number(ds.get("RescaleSlope", 1))
    intercept = _number(ds.get("RescaleIntercept", 0))
    if slope is None or slope == 0 or intercept is None:
        raise DataError(
            f"{path}: RescaleSlope {ds.get('RescaleSlope')!r} / RescaleIntercept "
            f"{ds.get('RescaleIntercept')!r} cannot turn pixels into Hounsfield units"
        )
    fixed = fix_twelve_bit and needs_twelve_bit_fix(ds)
    if fixed:
        values = raw.astype(np.int32) + 1000
        values[values >= TWELVE_BIT_WRAP] -= TWELVE_BIT_WRAP
        return values.astype(np.float32) * np.float32(slope) - np.float32(1000), True
    return raw.astype(np.float32) * np.float32(slope) + np.float32(intercept), False


def to_display(image: np.ndarray, orientation: tuple[float, ...] | None) -> np.ndarray:
    """A slice as stored -> row 0 anterior, the patient's left on the image's right.

    DICOM's patient axes are LPS: columns should run towards +x (left), rows towards +y
    (posterior). Without an orientation the stored layout (the usual one) is kept.
    """
    if orientation is None:
        return image
    row, col = orientation[:3], orientation[3:]
    if abs(row[0]) < abs(row[1]):  # columns run antero-posteriorly: swap the axes
        image, row, col = image.T, col, row
    if row[0] < 0:
        image = image[:, ::-1]
    if col[1] < 0:
        image = image[::-1, :]
    return np.ascontiguousarray(image)


# --------------------------------------------------------------------------- series


def check_rescale(headers: list[SliceHeader]) -> list[str]:
    """A series whose slices disagree on having RescaleSlope/RescaleIntercept is refused,
    naming a slice without them: read with the defaults (1, 0) it would sit about 1000 HU
    off its neighbours, silently. A series without them at all is read as stored and
    noted (the Hounsfield check of whoever reads it judges the values)."""
    lacking = [h for h in headers if not h.rescaled]
    if not lacking:
        return []
    if len(lacking) < len(headers):
        having = next(h for h in headers if h.rescaled)
        raise DataError(
            f"{lacking[0].path}: no RescaleSlope or RescaleIntercept, while "
            f"{having.path.name} of the same series has them; its pixels cannot be put in "
            "Hounsfield units like its neighbours'"
        )
    return [
        f"series {headers[0].series_uid}: no RescaleSlope or RescaleIntercept; stored "
        "values read as Hounsfield units"
    ]


def series_files(folder: Path) -> list[Path]:
    """The files of a series folder: `*.dcm` and files without an extension (many
    scanners write those), hidden files and DICOMDIR left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of DICOM files")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.name.upper() != "DICOMDIR"
        and (p.suffix.lower() == ".dcm" or not p.suffix)
    )


def read_headers(paths: Iterable[Path]) -> list[SliceHeader]:
    return [read_header(p) for p in paths]


def read_files(
    headers: list[SliceHeader], *, where: Path, fix_twelve_bit: bool = False
) -> DicomSeries:
    """The series of `headers` (one SeriesInstanceUID), decoded and ordered."""
    check_one_series(headers, where)
    ordered, spacing, notes = order_slices(headers)
    notes += check_rescale(ordered)
    slices = []
    fixed = []
    for h in ordered:
        pixels, was_fixed = read_pixels(h.path, fix_twelve_bit=fix_twelve_bit)
        image = to_display(pixels, h.orientation)
        if min(image.shape) < MIN_SLICE_PIXELS:
            raise DataError(
                f"{h.path}: a slice of {image.shape[0]}x{image.shape[1]} pixels; a CT slice "
                f"has {MIN_SLICE_PIXELS} pixels a side or more (a scout, an icon or a "
                "damaged Rows/Columns)"
            )
        if slices and image.shape != slices[0].shape:
            raise DataError(
                f"{h.path}: {image.shape[0]}x{image.shape[1]} pixels, while "
                f"{ordered[0].path.name} of the same series has "
                f"{slices[0].shape[0]}x{slices[0].shape[1]}"
            )
        slices.append(image)
        if was_fixed:
            fixed.append(h.path.name)
    if fixed:
        notes.append(
            f"series {ordered[0].series_uid}: {len(fixed)} 12-bit slice(s) with a wrong "
            f"RescaleIntercept corrected (e.g. {fixed[0]})"
        )
    first = ordered[0]
    return DicomSeries(
        hu=np.stack(slices).astype(np.float32, copy=False),
        spacing_mm=spacing,
        patient_id=first.patient_id,
        study_uid=first.study_uid,
        series_uid=first.series_uid,
        sop_uids=[h.sop_uid for h in ordered],
        notes=notes,
        files=[h.path for h in ordered],
    )


def read_series(folder: Path, *, fix_twelve_bit: bool = False) -> DicomSeries:
    """A folder holding one CT series, in Hounsfield units, most inferior slice first."""
    folder = Path(folder)
    return read_files(
        read_headers(series_files(folder)), where=folder, fix_twelve_bit=fix_twelve_bit
    )


# --------------------------------------------------------------------------- choice


def series_spacing(headers: list[SliceHeader]) -> float | None:
    """A series' slice spacing from its headers alone (no pixels read): the median step
    along the normal, else its SliceThickness."""
    located = [h for h in headers if h.position is not None and h.orientation is not None]
    if len(located) == len(headers) and len(located) > 1:
        normal = _normal(located[0].orientation)  # type: ignore[arg-type]
        depth = np.sort([float(np.dot(h.position, normal)) for h in located])
        steps = np.diff(depth)
        steps = steps[steps >= POSITION_TOLERANCE_MM]
        if steps.size:
            return float(np.median(steps))
    thickness = [h.thickness for h in headers if h.thickness]
    return float(np.median(thickness)) if thickness else None


def _is_bone(headers: list[SliceHeader]) -> bool:
    return "BONE" in headers[0].description.upper()


def _is_axial(headers: list[SliceHeader]) -> bool:
    """Whether a series' slices are axial (or of unknown orientation, read as axial)."""
    orientation = headers[0].orientation
    return orientation is None or abs(float(_normal(orientation)[2])) >= 0.5


def choose_series(series: dict[str, list[SliceHeader]]) -> str:
    """The SeriesInstanceUID to read of a study's several series (see the module's rule);
    an axial series always wins over a sagittal or coronal reformat."""

    def rank(uid: str) -> tuple[bool, float, bool, int, str]:
        spacing = series_spacing(series[uid])
        distance = abs(spacing - TARGET_SPACING_MM) if spacing is not None else math.inf
        axial = _is_axial(series[uid])
        return (not axial, round(distance, 3), _is_bone(series[uid]), -len(series[uid]), uid)

    return min(series, key=rank)
