"""A tree of DICOM CT files as a SliceDataset, through the preprocessing cache: what the
`dicom`, `rsna` and `cq500` datasets share.

Files are grouped by PatientID, then StudyInstanceUID, then SeriesInstanceUID; each study
gives the one series `ichbench.data.dicom.choose_series` picks. A patient is one patient
of the dataset whatever the number of its studies: their slices follow each other (the
studies by StudyDate, then UID), numbered 1.. across them, each study's relative positions
running from 0 to 1 on its own. So a split by patient (`ichbench.split`) never puts two
studies of one person on two sides.

Patients are named by strings; the dataset's int ids are their 1-based ranks in sorted
order, and `SliceDataset.patient_names` keeps the names. The default exclusion (PhysioNet's
patients 58 and 79) means nothing here and is not applied; an explicit `--exclude` refers
to the int ids.

Labels come either per slice (`slice_label`) or per patient only (`patient_truth`, as in
CQ500): the slices of a patient-level-only dataset are labelled -1.

The generic `dicom` layout: a folder tree of DICOM files and `labels.csv` beside them,
keyed by `SOPInstanceUID` or by `PatientID,SliceNumber` (slice labels), or by `PatientID`
alone (patient labels); the label column is `ICH` (0/1), optional columns named like the
five subtypes (`Intraventricular` ...) give the subtype flags.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ichbench.data.cache import (
    META,
    Unit,
    content_hash,
    entry_dir,
    fill_rows,
    fingerprint,
    load_cached,
    save_arrays,
    start_rows,
)
from ichbench.data.dicom import (
    DicomSeries,
    SliceHeader,
    choose_series,
    order_slices,
    read_files,
    read_header,
)
from ichbench.data.resize import resize_stack
from ichbench.data.windows import check_windows, to_uint8
from ichbench.errors import DataError, UsageError
from ichbench.exclusion import DEFAULT_EXCLUDE
from ichbench.interfaces import SUBTYPES, LoadOptions, SliceDataset

Progress = Callable[[int, int], None]
SliceLabel = Callable[[str, int, SliceHeader], tuple[int, tuple[int, ...]]]
"""`(patient name, 1-based slice number, header) -> (label, five subtype flags)`."""

DICOM_LABELS = "labels.csv"
NO_SUBTYPES = (0,) * len(SUBTYPES)


def dicom_files(root: Path) -> list[Path]:
    """Every `*.dcm` file (and file without an extension) under `root`, hidden ones and
    the generator's mark left out, in a stable order."""
    out = []
    for path in Path(root).rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix.lower() == ".dcm" or (not path.suffix and path.name.upper() != "DICOMDIR"):
            out.append(path)
    return sorted(out)


@dataclass
class Study:
    uid: str
    date: str
    headers: list[SliceHeader]  # the chosen series, in file order
    others: list[str] = field(default_factory=list)  # the series not chosen


@dataclass
class DicomTree:
    """A folder's DICOM files grouped into patients and studies (headers only)."""

    root: Path
    files: list[Path]
    patients: dict[str, list[Study]]  # by patient name, studies in reading order
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # skipped, and why
    twelve_bit: list[Path] = field(default_factory=list)  # chosen files needing the fix


def scan_tree(
    root: Path,
    files: list[Path],
    *,
    patient_of: Callable[[SliceHeader], str] | None = None,
    skip_unreadable: bool = False,
    progress: Progress | None = None,
) -> DicomTree:
    """Read every header and group them; a file that is not a readable CT DICOM is an
    error naming it, unless `skip_unreadable` (the RSNA release's one broken file), when it
    is listed in `unreadable` instead."""
    grouped: dict[str, dict[str, dict[str, list[SliceHeader]]]] = {}
    unreadable: list[tuple[Path, str]] = []
    for i, path in enumerate(files):
        try:
            header = read_header(path)
        except DataError as exc:
            if not skip_unreadable or "not a readable DICOM file" not in str(exc):
                raise
            unreadable.append((path, str(exc)))
            continue
        name = patient_of(header) if patient_of else header.patient_id
        if not name:
            raise DataError(f"{path}: no PatientID, so the patient it belongs to is unknown")
        study = header.study_uid or "(no StudyInstanceUID)"
        grouped.setdefault(name, {}).setdefault(study, {}).setdefault(header.series_uid, [])
        grouped[name][study][header.series_uid].append(header)
        if progress is not None and ((i + 1) % 256 == 0 or i + 1 == len(files)):
            progress(i + 1, len(files))
    patients: dict[str, list[Study]] = {}
    twelve_bit: list[Path] = []
    for name in sorted(grouped):
        studies = []
        for study_uid, series in grouped[name].items():
            chosen = choose_series(series)
            headers = series[chosen]
            date = min(h.study_date for h in headers)
            others = sorted(uid for uid in series if uid != chosen)
            studies.append(Study(study_uid, date, headers, others))
            twelve_bit += [h.path for h in headers if h.twelve_bit_bug]
        patients[name] = sorted(studies, key=lambda s: (s.date, s.uid))
    return DicomTree(Path(root), list(files), patients, unreadable, twelve_bit)


@dataclass
class OpenedTree:
    """A DICOM tree with its labels: what a build or a check needs."""

    tree: DicomTree
    label_file: Path
    layout: str
    slice_label: SliceLabel | None = None
    patient_truth: dict[str, int] | None = None
    fix_twelve_bit: bool = False
    warnings: list[str] = field(default_factory=list)


@dataclass
class RowPlan:
    """Every row of the dataset to build, without a pixel read."""

    names: dict[int, str]  # id -> patient name (the patients used)
    scans: list[tuple[int, list[SliceHeader]]]  # (id, one study's slices in order)
    patient_ids: np.ndarray
    slice_numbers: np.ndarray
    positions: np.ndarray
    labels: np.ndarray
    subtypes: np.ndarray
    truth: dict[int, int] | None
    notes: list[str]
    not_found_excluded: tuple[int, ...]


def effective_exclude(exclude: tuple[int, ...]) -> tuple[int, ...]:
    """The default exclusion is PhysioNet's; an explicit one refers to the int ids."""
    return () if tuple(exclude) == tuple(DEFAULT_EXCLUDE) else tuple(exclude)


def plan_rows(opened: OpenedTree, exclude: tuple[int, ...]) -> RowPlan:
    tree = opened.tree
    ids = {name: i + 1 for i, name in enumerate(sorted(tree.patients))}
    dropped = set(effective_exclude(exclude))
    truth = opened.patient_truth
    columns: dict[str, list[Any]] = {k: [] for k in ("pid", "slice", "pos", "label", "sub")}
    scans: list[tuple[int, list[SliceHeader]]] = []
    notes: list[str] = []
    names = {}
    for name, studies in tree.patients.items():
        pid = ids[name]
        if pid in dropped:
            continue
        if truth is not None and name not in truth:
            first = studies[0].headers[0].path
            raise DataError(
                f"{first}: patient {name} has no row in {opened.label_file}; every patient "
                "with images needs its label"
            )
        names[pid] = name
        number = 0
        for study in studies:
            ordered, _, said = order_slices(study.headers)
            notes += said
            n = len(ordered)
            for k, header in enumerate(ordered):
                number += 1
                if opened.slice_label is not None:
                    label, flags = opened.slice_label(name, number, header)
                else:
                    label, flags = -1, NO_SUBTYPES
                columns["pid"].append(pid)
                columns["slice"].append(number)
                columns["pos"].append(k / max(n - 1, 1))
                columns["label"].append(label)
                columns["sub"].append(flags)
            scans.append((pid, ordered))
    if not names:
        raise DataError(f"{tree.root}: no patient left to load")
    return RowPlan(
        names=names,
        scans=scans,
        patient_ids=np.asarray(columns["pid"], dtype=np.int64),
        slice_numbers=np.asarray(columns["slice"], dtype=np.int64),
        positions=np.asarray(columns["pos"], dtype=np.float32),
        labels=np.asarray(columns["label"], dtype=np.int64),
        subtypes=np.asarray(columns["sub"], dtype=np.uint8).reshape(-1, len(SUBTYPES)),
        truth=None if truth is None else {pid: int(truth[n]) for pid, n in names.items()},
        notes=notes,
        not_found_excluded=tuple(sorted(dropped - set(ids.values()))),
    )


def build_arrays(
    opened: OpenedTree,
    options: LoadOptions,
    out: Path,
    progress: Progress | None = None,
    *,
    workers: int | None = None,
) -> dict[str, Any]:
    """Decode every chosen series into `out` (the cache's partial folder); the metadata.

    Scans are decoded in `workers` processes (`ichbench.data.cache.fill_rows`), each
    writing its rows in place; the scans an interrupted build of the same plan already
    wrote into `out` are not decoded again."""
    windows = check_windows(tuple(options.windows))
    size = int(options.image_size)
    if size < 8:
        raise UsageError(f"Image size {size} is too small: use 8 pixels or more")
    plan = plan_rows(opened, tuple(options.exclude))
    n = len(plan.patient_ids)
    units, start = [], 0
    for i, (_, ordered) in enumerate(plan.scans):
        units.append(Unit(i, start, start + len(ordered), ordered))
        start += len(ordered)
    files = start_rows(
        out,
        {"images": (np.uint8, (n, len(windows), size, size))},
        [[u.index, u.start, u.stop, str(u.task[0].path)] for u in units],
    )
    context = (opened.fix_twelve_bit, windows, size)
    fill_rows(out, files, units, _decode_scan, context, workers=workers, progress=progress)
    save_arrays(
        out,
        {
            "labels": plan.labels,
            "patient_ids": plan.patient_ids,
            "slice_numbers": plan.slice_numbers,
            "positions": plan.positions,
            "subtypes": plan.subtypes,
        },
    )
    tree = opened.tree
    used = [h.path for _, scan in plan.scans for h in scan]
    meta: dict[str, Any] = {
        "rows": n,
        "image_shape": [len(windows), size, size],
        "arrays": ["images", "labels", "patient_ids", "slice_numbers", "positions", "subtypes"],
        "dataset_hash": content_hash(tree.root, [*tree.files, opened.label_file]),
        "windows": [w.name for w in windows],
        "layout": opened.layout,
        "patients": len(plan.names),
        "exclude": list(effective_exclude(tuple(options.exclude))),
        "patient_names": {str(k): v for k, v in plan.names.items()},
        "files_read": len(used),
        "unreadable": [why for _, why in tree.unreadable],
        "not_found_excluded": list(plan.not_found_excluded),
        "notes": plan.notes,
    }
    if plan.truth is not None:
        meta["patient_truth"] = {str(k): v for k, v in plan.truth.items()}
    return meta


def _decode_scan(context: tuple, ordered: list[SliceHeader]) -> dict[str, np.ndarray]:
    """One scan's slices, windowed and resized (a worker's unit of `build_arrays`)."""
    fix_twelve_bit, windows, size = context
    series: DicomSeries = read_files(
        ordered, where=ordered[0].path.parent, fix_twelve_bit=fix_twelve_bit
    )
    if series.files != [h.path for h in ordered]:
        raise DataError(f"{ordered[0].path.parent}: its files changed while being read")
    images = np.empty((len(ordered), len(windows), size, size), dtype=np.uint8)
    for c, window in enumerate(windows):
        unit = resize_stack(window.apply(series.hu)[:, None], size)[:, 0]
        images[:, c] = to_uint8(unit)
    return {"images": images}


def load_tree(
    root: Path,
    files: list[Path],
    label_file: Path,
    open_tree: Callable[[Progress | None], OpenedTree],
    options: LoadOptions,
    cache_dir: Path,
    *,
    name: str,
    layout: str,
    progress: Progress | None = None,
    workers: int | None = None,
) -> SliceDataset:
    """A DICOM tree loaded through the preprocessing cache: a warm load stats the files
    and reads the label file, never a DICOM header. A first load decodes in `workers`
    processes (None: `ichbench.data.cache.pool_size`) and resumes an interrupted one
    (its headers are read again; the scans already written are not)."""
    check_windows(tuple(options.windows))
    if not label_file.is_file():
        raise DataError(f"{root}: no {label_file.name}, the label file of the {layout} layout")
    key = fingerprint(root, files, options, {"layout": layout}, content=[label_file])

    def build(tmp: Path) -> dict[str, Any]:
        meta = build_arrays(open_tree(progress), options, tmp, progress, workers=workers)
        if fingerprint(root, files, options, {"layout": layout}, content=[label_file]) != key:
            raise DataError(f"{root}: its files changed while it was being loaded; load it again")
        return meta

    dataset = load_cached(Path(cache_dir), key, build, name=name, source=str(root))
    try:
        meta = json.loads((entry_dir(Path(cache_dir), key) / META).read_text())
        absent = tuple(int(p) for p in meta.get("not_found_excluded", ()))
    except (OSError, ValueError, TypeError):
        absent = ()
    return replace(dataset, not_found_excluded=absent)


# --------------------------------------------------------------------------- generic layout


def _flag(path: Path, line: int, column: str, value: str) -> int:
    if value.strip() not in ("0", "1"):
        raise DataError(f"{path}, line {line}: {column} is {value!r}; expected 0 or 1")
    return int(value)


def read_dicom_labels(path: Path) -> tuple[str, dict[Any, tuple[int, tuple[int, ...]]]]:
    """`labels.csv` of the generic layout: its key (`sop`, `slice` or `patient`) and each
    key's (label, subtype flags)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the label file ({exc})") from None
    columns = set(header)
    if "ICH" not in columns:
        raise DataError(f"{path}: no ICH column (0/1); found {', '.join(header) or 'nothing'}")
    if "SOPInstanceUID" in columns:
        kind = "sop"
    elif {"PatientID", "SliceNumber"} <= columns:
        kind = "slice"
    elif "PatientID" in columns:
        kind = "patient"
    else:
        raise DataError(
            f"{path}: expected a SOPInstanceUID column, or PatientID and SliceNumber, or "
            "PatientID alone (patient-level labels)"
        )
    out: dict[Any, tuple[int, tuple[int, ...]]] = {}
    for line, row in enumerate(rows, start=2):
        if kind == "sop":
            key: Any = row["SOPInstanceUID"].strip()
        elif kind == "slice":
            try:
                key = (row["PatientID"].strip(), int(row["SliceNumber"]))
            except ValueError:
                raise DataError(
                    f"{path}, line {line}: SliceNumber {row['SliceNumber']!r} is not a number"
                ) from None
        else:
            key = row["PatientID"].strip()
        if key in out:
            raise DataError(f"{path}, line {line}: {key} is labelled twice")
        flags = tuple(_flag(path, line, s, row[s]) if s in columns else 0 for s in SUBTYPES)
        out[key] = (_flag(path, line, "ICH", row["ICH"]), flags)
    return kind, out


def open_generic(root: Path, progress: Progress | None = None) -> OpenedTree:
    root = Path(root)
    label_file = root / DICOM_LABELS
    if not label_file.is_file():
        raise DataError(f"{root}: no {DICOM_LABELS} (the labels of the DICOM files beside it)")
    kind, table = read_dicom_labels(label_file)
    tree = scan_tree(root, dicom_files(root), progress=progress)
    if kind == "patient":
        return OpenedTree(
            tree, label_file, "dicom", patient_truth={k: v[0] for k, v in table.items()}
        )

    def slice_label(name: str, number: int, header: SliceHeader) -> tuple[int, tuple[int, ...]]:
        key = header.sop_uid if kind == "sop" else (name, number)
        if key not in table:
            raise DataError(f"{header.path}: no row for {key} in {label_file}")
        return table[key]

    return OpenedTree(tree, label_file, "dicom", slice_label=slice_label)


@dataclass
class DicomSource:
    """The `dicom:PATH` dataset: a tree of CT files and its `labels.csv`.

    The other DICOM layouts (`rsna`, `cq500`) are this with their own `layout`, label
    file, `files` and `opened`: loading through the cache is the same for all."""

    root: Path
    name: str = ""
    layout: ClassVar[str] = "dicom"
    labels: ClassVar[str] = DICOM_LABELS

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()
        if not self.name:
            self.name = f"{self.layout}:{self.root}"

    def folder(self) -> Path:
        return self.root

    def files(self) -> list[Path]:
        """The layout's image files."""
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such folder")
        return dicom_files(self.root)

    def opened(self, progress: Progress | None = None) -> OpenedTree:
        return open_generic(self.root, progress)

    def load(
        self, options: LoadOptions, cache_dir: Path, progress: Progress | None = None
    ) -> SliceDataset:
        # the label file enters the cache key by its content: edited labels are new data
        return load_tree(
            self.root,
            self.files(),
            self.root / self.labels,
            self.opened,
            options,
            cache_dir,
            name=self.name,
            layout=self.layout,
            progress=progress,
        )
