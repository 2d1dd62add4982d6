"""The CQ500 layout (qure.ai): one folder per patient (`CQ500CT<N> CQ500CT<N>/`) holding a
study's series folders, and `reads.csv` with three radiologists' reads (`R1:ICH` ...
`R3:MidlineShift`, 0/1) per patient `name` (`CQ500-CT-<N>`).

A patient's label is the majority of the three readers' `ICH`. CQ500 has no slice labels,
so it is a patient-level-only dataset: slices are labelled -1 and `SliceDataset.
patient_truth` holds the labels. It can be evaluated on, never trained on.

Each study has several series (thin and thick, bone and brain kernels): the one read is
chosen by `ichbench.data.dicom.choose_series` (nearest 5 mm, not bone). A patient is
matched to its reads by PatientID when that is a `name` of reads.csv, else by its folder's
name (`CQ500CT12 CQ500CT12` is `CQ500-CT-12`).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ichbench.data.dicom import SliceHeader
from ichbench.data.dicom_dataset import (
    DicomSource,
    OpenedTree,
    Progress,
    dicom_files,
    scan_tree,
)
from ichbench.data.synth_dicom import CQ500_READS, CQ500_SUBTYPES
from ichbench.errors import DataError

READERS = ("R1", "R2", "R3")
FOLDER_NAME = re.compile(r"CQ500-?CT-?(\d+)", re.IGNORECASE)


@dataclass
class Reads:
    """Each patient's majority label, and its per-finding majorities (for `data check`)."""

    truth: dict[str, int]
    findings: dict[str, dict[str, int]] = field(default_factory=dict)
    disagreements: int = 0  # patients whose three ICH reads are not unanimous


def read_reads(path: Path) -> Reads:
    """`reads.csv` to each patient's majority. Column names are read without surrounding
    spaces (spreadsheets add them); a row with more or fewer fields than the header is an
    error naming its line, since its values would be read under the wrong readers."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            table = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the reads file ({exc})") from None
    columns = [c.strip() for c in (table[0] if table else [])]
    needed = ["name", *(f"{r}:ICH" for r in READERS)]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(
            f"{path}: no column {', '.join(missing)} (expected name, R1:ICH ... R3:ICH)"
        )
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise DataError(f"{path}: column {', '.join(twice)} appears twice in the header")
    rows = []
    for line, values in enumerate(table[1:], start=2):
        if not values or not any(v.strip() for v in values):
            continue
        if len(values) != len(columns):
            raise DataError(
                f"{path}, line {line}: {len(values)} field(s), while the header has "
                f"{len(columns)}; each row holds one patient's reads, one per column"
            )
        rows.append((line, dict(zip(columns, values, strict=True))))
    findings = ["ICH", *(f for f in CQ500_SUBTYPES if all(f"{r}:{f}" in columns for r in READERS))]
    out = Reads({})
    for line, row in rows:
        name = (row["name"] or "").strip()
        if not name:
            raise DataError(f"{path}, line {line}: no name")
        if name in out.truth:
            raise DataError(f"{path}, line {line}: {name} appears twice")
        majority = {}
        for finding in findings:
            votes = []
            for r in READERS:
                value = (row[f"{r}:{finding}"] or "").strip()
                if value not in ("0", "1"):
                    raise DataError(
                        f"{path}, line {line}: {r}:{finding} is {value!r}; expected 0 or 1"
                    )
                votes.append(int(value))
            majority[finding] = int(sum(votes) >= 2)
            if finding == "ICH" and len(set(votes)) > 1:
                out.disagreements += 1
        out.truth[name] = majority["ICH"]
        out.findings[name] = majority
    if not out.truth:
        raise DataError(f"{path}: no patient")
    return out


def claims_cq500(folder: Path) -> bool:
    return folder.is_dir() and (folder / CQ500_READS).exists()


def patient_matcher(root: Path, names: set[str]):
    """A header's patient: its PatientID when reads.csv names it, else its folder's name."""

    def patient_of(header: SliceHeader) -> str:
        if header.patient_id in names:
            return header.patient_id
        top = header.path.relative_to(root).parts[0]
        found = FOLDER_NAME.search(top)
        if found is None:
            raise DataError(
                f"{header.path}: PatientID {header.patient_id!r} is not a name of "
                f"{root / CQ500_READS}, nor is its folder {top!r} (CQ500CT<N>)"
            )
        return f"CQ500-CT-{int(found.group(1))}"

    return patient_of


def open_cq500(root: Path, progress: Progress | None = None) -> OpenedTree:
    label_file = root / CQ500_READS
    if not label_file.is_file():
        raise DataError(f"{root}: no {CQ500_READS} (the CQ500 reads)")
    reads = read_reads(label_file)
    files = dicom_files(root)
    if not files:
        raise DataError(f"{root}: no DICOM file (*.dcm) in its folders")
    tree = scan_tree(
        root, files, patient_of=patient_matcher(root, set(reads.truth)), progress=progress
    )
    warnings = []
    without = sorted(set(reads.truth) - set(tree.patients))
    if without:
        warnings.append(
            f"{label_file}: {len(without)} patient(s) with reads but no images "
            f"(e.g. {without[0]}); not used"
        )
    if reads.disagreements:
        warnings.append(
            f"{label_file}: the readers disagree on ICH for {reads.disagreements} patient(s); "
            "the majority of three is the label"
        )
    return OpenedTree(tree, label_file, "cq500", patient_truth=reads.truth, warnings=warnings)


class Cq500Source(DicomSource):
    """The `cq500:PATH` dataset: patient-level labels only (evaluation, not training)."""

    layout: ClassVar[str] = "cq500"
    labels: ClassVar[str] = CQ500_READS

    def files(self) -> list[Path]:
        return dicom_files(self.root)

    def opened(self, progress: Progress | None = None) -> OpenedTree:
        return open_cq500(self.root, progress)
