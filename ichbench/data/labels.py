"""The PhysioNet label CSV: parsed with the csv module, validated, and summarised.

Both releases share the columns (PatientNumber, SliceNumber, the five subtype flags,
No_Hemorrhage, Fracture_Yes_No). The files start with a UTF-8 byte-order mark and use
CRLF line ends, so they are read as `utf-8-sig` with `newline=""`. Every problem is a
`DataError` naming the file, line and value, because a silently misread label file would
poison every number computed from it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ichbench.errors import DataError
from ichbench.interfaces import SUBTYPES

PATIENT = "PatientNumber"
SLICE = "SliceNumber"
HEALTHY = "No_Hemorrhage"
FRACTURE = "Fracture_Yes_No"
COLUMNS = (PATIENT, SLICE, *SUBTYPES, HEALTHY, FRACTURE)
REQUIRED = (PATIENT, SLICE, *SUBTYPES, HEALTHY)
FLAGS = (*SUBTYPES, HEALTHY, FRACTURE)
POSITION_BINS = 10
_INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class LabelTable:
    """One row per slice, sorted by (patient, slice)."""

    path: Path
    patient_ids: np.ndarray  # int64
    slice_numbers: np.ndarray  # int64, 1-based
    subtypes: np.ndarray  # uint8 (N, 5) in SUBTYPES order
    no_hemorrhage: np.ndarray  # uint8
    fracture: np.ndarray  # uint8 (zeros when the column is absent)

    def __len__(self) -> int:
        return int(self.patient_ids.shape[0])

    @property
    def labels(self) -> np.ndarray:
        """1 = ICH (No_Hemorrhage == 0)."""
        return (self.no_hemorrhage == 0).astype(np.int64)

    def patients(self) -> list[int]:
        return sorted(set(self.patient_ids.tolist()))

    def slice_counts(self) -> dict[int, int]:
        ids, counts = np.unique(self.patient_ids, return_counts=True)
        return dict(zip(ids.tolist(), counts.tolist(), strict=True))

    def rows_of(self, patient: int) -> np.ndarray:
        """Row indices of one patient, in slice order."""
        return np.flatnonzero(self.patient_ids == patient)

    def without(self, exclude: tuple[int, ...] | list[int] | set[int]) -> LabelTable:
        keep = ~np.isin(self.patient_ids, np.asarray(sorted(exclude), dtype=np.int64))
        return self.select(keep)

    def select(self, mask: np.ndarray) -> LabelTable:
        return LabelTable(
            self.path,
            self.patient_ids[mask],
            self.slice_numbers[mask],
            self.subtypes[mask],
            self.no_hemorrhage[mask],
            self.fracture[mask],
        )


def _integer(text: str, *, path: Path, line: int, column: str) -> int:
    """An integer cell; one beyond int64 is named here rather than overflowing the arrays."""
    value = text.strip()
    try:
        number: int | None = int(value)
    except ValueError:
        number = None
    if number is None:
        try:
            real = float(value)
        except ValueError:
            real = float("nan")
        if not (real == real and real.is_integer()):
            raise DataError(f"{path} line {line}: {column} {text!r} is not an integer")
        number = int(real)
    if abs(number) > _INT64_MAX:
        raise DataError(f"{path} line {line}: {column} {text!r} is out of range")
    return number


def read_labels(path: Path) -> LabelTable:
    """Parse and validate a label CSV; rows come back sorted by (patient, slice)."""
    path = Path(path)
    rows = _read_rows(path)
    n = len(rows)
    pids = np.empty(n, dtype=np.int64)
    slices = np.empty(n, dtype=np.int64)
    flags = np.zeros((n, len(FLAGS)), dtype=np.uint8)
    seen: dict[tuple[int, int], int] = {}
    for i, (line, row, has_fracture) in enumerate(rows):
        pid = _integer(row[PATIENT], path=path, line=line, column=PATIENT)
        number = _integer(row[SLICE], path=path, line=line, column=SLICE)
        if pid < 0:
            raise DataError(f"{path} line {line}: {PATIENT} {pid} is negative")
        if number < 1:
            raise DataError(f"{path} line {line}: {SLICE} {number} is below 1 (it is 1-based)")
        key = (pid, number)
        if key in seen:
            raise DataError(
                f"{path} line {line}: duplicate row for patient {pid:03d} slice "
                f"{number} (first on line {seen[key]})"
            )
        seen[key] = line
        pids[i], slices[i] = pid, number
        for j, column in enumerate(FLAGS):
            if column == FRACTURE and not has_fracture:
                continue
            value = _integer(row[column], path=path, line=line, column=column)
            if value not in (0, 1):
                raise DataError(f"{path} line {line}: {column} is {value}; expected 0 or 1")
            flags[i, j] = value
    order = np.lexsort((slices, pids))
    flags = flags[order]
    return LabelTable(
        path,
        pids[order],
        slices[order],
        flags[:, :5].copy(),
        flags[:, 5].copy(),
        flags[:, 6].copy(),
    )


def _read_rows(path: Path) -> list[tuple[int, dict[str, str], bool]]:
    if not path.is_file():
        raise DataError(f"Label file {path} not found")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            _check_header(path, header, reader.line_num)
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                found = ", ".join(header) if header else "nothing"
                raise DataError(
                    f"{path}: missing column(s) {', '.join(missing)} (header has {found})"
                )
            reader.fieldnames = header
            rows = []
            for row in reader:
                if not any((v or "").strip() for k, v in row.items() if k is not None):
                    continue
                line = reader.line_num
                absent = [c for c in COLUMNS if c in header and row.get(c) is None]
                if absent:
                    raise DataError(f"{path} line {line}: too few fields (no {absent[0]})")
                extra = row.pop(None, None) or []
                if any(v.strip() for v in extra):
                    raise DataError(
                        f"{path} line {line}: {len(header) + len(extra)} fields but the "
                        f"header has {len(header)}; a shifted row would be misread"
                    )
                rows.append((line, row, FRACTURE in header))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from None
    if not rows:
        raise DataError(f"{path}: no label rows")
    return rows


def _check_header(path: Path, header: list[str], line: int) -> None:
    """A name twice would let the csv module keep the second column and drop the first."""
    seen: set[str] = set()
    for name in header:
        if name and name in seen:
            raise DataError(f"{path} line {line}: column {name} appears twice")
        seen.add(name)


def label_warnings(table: LabelTable) -> list[str]:
    """Inconsistencies that do not stop loading but deserve a look."""
    out: list[str] = []
    ich = table.labels == 1
    has_subtype = table.subtypes.any(axis=1)
    for what, mask in (
        ("ICH slice(s) without a subtype flag", ich & ~has_subtype),
        ("healthy slice(s) with a subtype flag", ~ich & has_subtype),
    ):
        if mask.any():
            first = int(np.flatnonzero(mask)[0])
            out.append(
                f"{int(mask.sum())} {what} (first: patient "
                f"{int(table.patient_ids[first]):03d} slice "
                f"{int(table.slice_numbers[first])})"
            )
    for pid, count in table.slice_counts().items():
        numbers = np.sort(table.slice_numbers[table.patient_ids == pid])
        if numbers[-1] != count:
            out.append(
                f"patient {pid:03d}: slice numbers are not 1..{count} "
                f"(highest is {int(numbers[-1])})"
            )
    return out


def relative_positions(table: LabelTable, n_slices: dict[int, int] | None = None) -> np.ndarray:
    """(slice - 1) / max(n - 1, 1) per row; n defaults to the patient's row count."""
    counts = n_slices or table.slice_counts()
    n = np.array([counts[p] for p in table.patient_ids.tolist()], dtype=np.float64)
    return ((table.slice_numbers - 1) / np.maximum(n - 1, 1)).astype(np.float32)


@dataclass
class LabelStats:
    """Counts a user checks first: what a dataset holds, per class, subtype and position."""

    patients: int
    slices: int
    ich_slices: int
    ich_patients: int
    subtype_slices: dict[str, int]
    ich_by_position: list[int]  # ICH slices per relative-position bin
    slices_by_position: list[int]
    patient_ids: list[int] = field(default_factory=list)

    @property
    def healthy_slices(self) -> int:
        return self.slices - self.ich_slices

    @property
    def healthy_patients(self) -> int:
        return self.patients - self.ich_patients

    def as_dict(self) -> dict:
        return {
            "patients": self.patients,
            "slices": self.slices,
            "ich_slices": self.ich_slices,
            "healthy_slices": self.healthy_slices,
            "ich_patients": self.ich_patients,
            "healthy_patients": self.healthy_patients,
            "subtype_slices": dict(self.subtype_slices),
            "ich_by_position": list(self.ich_by_position),
            "slices_by_position": list(self.slices_by_position),
        }


def stats_of(
    patient_ids: np.ndarray,
    labels: np.ndarray,
    subtypes: np.ndarray,
    positions: np.ndarray,
    bins: int = POSITION_BINS,
) -> LabelStats:
    """Statistics from per-slice arrays (a LabelTable's or a loaded SliceDataset's)."""
    ich = np.asarray(labels) == 1
    pids = np.asarray(patient_ids)
    which = np.minimum((np.asarray(positions) * bins).astype(int), bins - 1)
    return LabelStats(
        patients=int(np.unique(pids).size),
        slices=int(pids.size),
        ich_slices=int(ich.sum()),
        ich_patients=int(np.unique(pids[ich]).size),
        subtype_slices={
            name: int(np.asarray(subtypes)[:, j].sum()) for j, name in enumerate(SUBTYPES)
        },
        ich_by_position=np.bincount(which[ich], minlength=bins).tolist(),
        slices_by_position=np.bincount(which, minlength=bins).tolist(),
        patient_ids=sorted(set(pids.tolist())),
    )


def label_stats(
    table: LabelTable, n_slices: dict[int, int] | None = None, bins: int = POSITION_BINS
) -> LabelStats:
    """Statistics from the label file alone (no image decoding), so check/stats stay fast."""
    return stats_of(
        table.patient_ids, table.labels, table.subtypes, relative_positions(table, n_slices), bins
    )
