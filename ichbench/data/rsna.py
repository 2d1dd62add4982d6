"""The RSNA 2019 Intracranial Hemorrhage Detection layout: `stage_2_train/ID_<image>.dcm`,
one file per slice, and `stage_2_train.csv` (`ID_<image>_<subtype>,Label`, six rows per
image, `any` among them).

The CSV has no patient or study column: slices are grouped into scans through their DICOM
tags (`ichbench.data.dicom_dataset`), so patients are RSNA's PatientIDs and a patient's
several studies stay one patient of the split. An image's label is its `any` row; the
other five map to ichbench's subtypes (`RSNA_SUBTYPES`).

The release's known pitfalls are handled, and `data check` reports each:
- duplicated label rows (identical rows of one image): kept once; rows that disagree are
  an error naming the ID;
- a file pydicom cannot read (one in the release): skipped with its labels, and named;
- 12-bit files whose values wrapped and whose RescaleIntercept is wrong: corrected as the
  widely used fix does (values + 1000 wrapped at 4096, intercept -1000).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ichbench.data.dicom import SliceHeader
from ichbench.data.dicom_dataset import DicomSource, OpenedTree, Progress, scan_tree
from ichbench.data.synth_dicom import RSNA_LABELS, RSNA_SUBTYPES, RSNA_TRAIN
from ichbench.errors import DataError
from ichbench.interfaces import SUBTYPES

LABEL_NAMES = (*RSNA_SUBTYPES, "any")


@dataclass
class RsnaLabels:
    """Each image's (label, subtype flags in SUBTYPES order), and what was wrong."""

    by_image: dict[str, tuple[int, tuple[int, ...]]]
    duplicate_rows: int = 0
    duplicated_images: list[str] = field(default_factory=list)


def read_rsna_labels(path: Path) -> RsnaLabels:
    """Parse `stage_2_train.csv`; identical duplicate rows are counted and dropped."""
    seen: dict[tuple[str, str], int] = {}
    duplicates = 0
    duplicated: set[str] = set()
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["ID", "Label"]:
                raise DataError(f"{path}: expected the header ID,Label; found {header}")
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != 2:
                    raise DataError(f"{path}, line {line}: expected ID,Label; found {row}")
                ident, value = row[0].strip(), row[1].strip()
                image, _, subtype = ident.rpartition("_")
                if not image.startswith("ID_") or subtype not in LABEL_NAMES:
                    raise DataError(
                        f"{path}, line {line}: {ident!r} is not ID_<image>_<subtype> with a "
                        f"subtype among {', '.join(LABEL_NAMES)}"
                    )
                if value not in ("0", "1"):
                    raise DataError(f"{path}, line {line}: label {value!r}; expected 0 or 1")
                key = (image, subtype)
                if key in seen:
                    if seen[key] != int(value):
                        raise DataError(
                            f"{path}, line {line}: {ident} is labelled both {seen[key]} and {value}"
                        )
                    duplicates += 1
                    duplicated.add(image)
                    continue
                seen[key] = int(value)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the label file ({exc})") from None
    images: dict[str, dict[str, int]] = {}
    for (image, subtype), value in seen.items():
        images.setdefault(image, {})[subtype] = value
    by_image = {}
    for image, values in images.items():
        missing = [s for s in LABEL_NAMES if s not in values]
        if missing:
            raise DataError(f"{path}: image {image} has no {', '.join(missing)} row")
        flags = {RSNA_SUBTYPES[s]: values[s] for s in RSNA_SUBTYPES}
        if any(flags.values()) and not values["any"]:
            raise DataError(f"{path}: image {image} has a subtype but its `any` label is 0")
        by_image[image] = (values["any"], tuple(flags[s] for s in SUBTYPES))
    return RsnaLabels(by_image, duplicates, sorted(duplicated))


def claims_rsna(folder: Path) -> bool:
    """A folder with `stage_2_train/` or `stage_2_train.csv`, even only one of them."""
    return folder.is_dir() and ((folder / RSNA_TRAIN).is_dir() or (folder / RSNA_LABELS).exists())


def rsna_files(root: Path) -> list[Path]:
    train = root / RSNA_TRAIN
    if not train.is_dir():
        raise DataError(f"{root}: no {RSNA_TRAIN}/ folder of DICOM files (the RSNA 2019 layout)")
    files = sorted(p for p in train.iterdir() if p.suffix.lower() == ".dcm" and p.is_file())
    if not files:
        raise DataError(f"{train}: no .dcm file")
    return files


def open_rsna(root: Path, progress: Progress | None = None) -> OpenedTree:
    """The layout read: labels parsed, headers grouped, each image matched to its labels."""
    label_file = root / RSNA_LABELS
    if not label_file.is_file():
        raise DataError(f"{root}: no {RSNA_LABELS} (the RSNA 2019 labels)")
    labels = read_rsna_labels(label_file)
    tree = scan_tree(root, rsna_files(root), skip_unreadable=True, progress=progress)
    for studies in tree.patients.values():
        for study in studies:
            for header in study.headers:
                if header.path.stem not in labels.by_image:
                    raise DataError(f"{header.path}: no label rows in {label_file}")

    def slice_label(name: str, number: int, header: SliceHeader) -> tuple[int, tuple[int, ...]]:
        return labels.by_image[header.path.stem]

    warnings = []
    if labels.duplicate_rows:
        warnings.append(
            f"{label_file}: {labels.duplicate_rows} duplicated label row(s) of "
            f"{len(labels.duplicated_images)} image(s) (e.g. {labels.duplicated_images[0]}) "
            "counted once"
        )
    for _, problem in tree.unreadable:
        warnings.append(f"{problem}; skipped with its labels")
    if tree.twelve_bit:
        warnings.append(
            f"{len(tree.twelve_bit)} 12-bit file(s) with a wrong RescaleIntercept (e.g. "
            f"{tree.twelve_bit[0]}) corrected: values + 1000 wrapped at 4096, intercept -1000"
        )
    read = {h.path.stem for s in tree.patients.values() for st in s for h in st.headers}
    unread = {path.stem for path, _ in tree.unreadable}
    orphans = len(set(labels.by_image) - read - unread)
    if orphans:
        warnings.append(f"{label_file}: {orphans} labelled image(s) with no file; not used")
    return OpenedTree(
        tree, label_file, "rsna", slice_label=slice_label, fix_twelve_bit=True, warnings=warnings
    )


class RsnaSource(DicomSource):
    """The `rsna:PATH` dataset: the RSNA 2019 training set (stage 2)."""

    layout: ClassVar[str] = "rsna"
    labels: ClassVar[str] = RSNA_LABELS

    def files(self) -> list[Path]:
        return rsna_files(self.root)

    def opened(self, progress: Progress | None = None) -> OpenedTree:
        return open_rsna(self.root, progress)
