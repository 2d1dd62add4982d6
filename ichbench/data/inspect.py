"""`ichbench data check` and `ichbench data stats`: what a dataset holds and what is wrong.

Both work from the label file and file listings (NIfTI headers at most), so they answer in
a moment even on the full release. A slice counts as used only when its image is there: a
label row whose volume, patient folder or JPG is missing is named, never counted.
`check --deep` also decodes every image, which finds what only decoding can (NaN voxels,
a truncated .nii.gz, a JPG that is not an image).
Sources that are not folders (a third party's dataset plugin) are loaded and summarised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichbench.data.labels import (
    LabelStats,
    LabelTable,
    label_stats,
    label_warnings,
    read_labels,
    stats_of,
)
from ichbench.data.physionet import (
    JPG,
    LAYOUT_NAMES,
    NIFTI,
    PhysioNetFolder,
    Progress,
    check_slices,
    decode_patient,
    detect_layout,
    jpg_masks,
    jpg_slices,
    match_problems,
    scan_patients,
)
from ichbench.data.windows import JPG_WINDOWS, check_windows
from ichbench.errors import DataError
from ichbench.exclusion import DEFAULT_EXCLUDE
from ichbench.interfaces import SliceDataset

DEEP_SIZE = 32
STRAY_LISTED = 5


@dataclass
class CheckReport:
    """A dataset folder's summary: counts in the label file, counts used, problems found."""

    root: str
    layout: str
    label_file: str
    all: LabelStats
    used: LabelStats
    excluded: list[int]
    masks: str
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    deep: bool = False
    missing: dict[int, int] = field(default_factory=dict)  # patient -> label rows without image

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layout": self.layout,
            "label_file": self.label_file,
            "ok": self.ok,
            "deep": self.deep,
            "excluded": self.excluded,
            "masks": self.masks,
            "all": self.all.as_dict(),
            "used": self.used.as_dict(),
            "missing": {
                "patients": sorted(self.missing),
                "slices": sum(self.missing.values()),
                "by_patient": {f"{p:03d}": n for p, n in sorted(self.missing.items())},
            },
            "warnings": self.warnings,
            "errors": self.errors,
        }


def _masks_summary(folder: PhysioNetFolder, patients: list[int]) -> str:
    if folder.layout == NIFTI:
        with_mask = sum(
            folder.patients[p].mask is not None for p in patients if p in folder.patients
        )
        if with_mask == len(patients):
            return "all patients"
        return f"{with_mask} of {len(patients)} patients" if with_mask else "none"
    count = sum(len(jpg_masks(folder.patients[p].image)) for p in patients if p in folder.patients)
    return f"{count} slice mask files" if count else "none"


def _jpg_window_warnings(folder: PhysioNetFolder, patient: int) -> list[str]:
    """A missing bone slice only matters when the bone window is asked for: warn, not fail."""
    out = []
    files = folder.patients[patient]
    count = folder.slice_count(patient)
    for window in JPG_WINDOWS[1:]:
        base = files.image / window
        try:
            present = jpg_slices(base, patient)
        except DataError:
            out.append(
                f"Patient {patient:03d}: no {window} folder ({base}); loading with the "
                f"{window} window fails"
            )
            continue
        missing = [k for k in range(1, count + 1) if k not in present]
        if missing:
            listed = ", ".join(str(base / f"{k}.jpg") for k in missing[:3])
            out.append(
                f"Patient {patient:03d}: {len(missing)} {window} slice(s) missing "
                f"({listed}); loading with the {window} window fails"
            )
    return out


def _stray_warnings(folder: PhysioNetFolder) -> list[str]:
    """Files no reader reads: ignored (they are not in the dataset hash), but named, since one
    may be a slice saved under the wrong name."""
    stray = folder.stray_files()
    out = [f"{path}: not an image file of the release; ignored" for path in stray[:STRAY_LISTED]]
    if len(stray) > STRAY_LISTED:
        out.append(f"{len(stray) - STRAY_LISTED} more file(s) in the image folders ignored")
    return out


def _image_rows(folder: PhysioNetFolder, labels: LabelTable) -> np.ndarray:
    """Which label rows have their image, from file names and NIfTI headers only: the
    patient's volume holds that slice number, or its brain JPG exists. A volume whose
    header cannot be read holds none."""
    found = np.zeros(len(labels), dtype=bool)
    for pid in labels.patients():
        files = folder.patients.get(pid)
        if files is None:
            continue
        rows = labels.patient_ids == pid
        try:
            if folder.layout == JPG:
                present = np.asarray(sorted(jpg_slices(files.image / "brain", pid)), dtype=np.int64)
                found |= rows & np.isin(labels.slice_numbers, present)
            else:
                found |= rows & (labels.slice_numbers <= folder.slice_count(pid))
        except DataError:
            continue
    return found


def _present(folder: PhysioNetFolder) -> tuple[LabelStats, dict[int, int]]:
    """Statistics of the used rows whose images are there, and the rows left out per
    patient. Positions keep the label file's slice counts, so a missing slice moves no
    other slice to another position bin."""
    used = folder.used
    found = _image_rows(folder, used)
    ids, counts = np.unique(used.patient_ids[~found], return_counts=True)
    missing = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    return label_stats(used.select(found), used.slice_counts()), missing


def missing_text(missing: dict[int, int]) -> str:
    """`19 slices of patient 050, 1 slice of patient 100`: what was not counted."""
    return ", ".join(
        f"{n} slice{'s' if n != 1 else ''} of patient {p:03d}" for p, n in sorted(missing.items())
    )


def check_folder(
    root: Path,
    exclude: tuple[int, ...] = DEFAULT_EXCLUDE,
    *,
    deep: bool = False,
    windows: tuple[str, ...] = ("brain",),
    progress: Progress | None = None,
) -> CheckReport:
    """Validate a folder of either layout, collecting every problem rather than the first.

    Raises DataError only when nothing can be summarised (no layout, unreadable labels).
    """
    root = Path(root).expanduser()
    layout, label_path = detect_layout(root)
    labels = read_labels(label_path)
    try:
        patients = scan_patients(root, layout)
    except DataError as exc:  # e.g. two files for one patient: nothing else is reliable
        patients, errors = {}, [str(exc)]
    else:
        errors = match_problems(root, layout, label_path, labels, patients, exclude)
    folder = PhysioNetFolder(root, layout, label_path, labels, patients, tuple(exclude))
    used, missing = _present(folder)
    present = [p for p in folder.used.patients() if p in patients]
    warnings = label_warnings(labels) + _stray_warnings(folder)
    for pid in present:
        try:
            check_slices(folder, pid)
        except DataError as exc:
            errors.append(str(exc))
            continue
        if layout == JPG:
            warnings += _jpg_window_warnings(folder, pid)
    if deep and not errors:
        errors += _decode_all(folder, present, windows, progress)
    return CheckReport(
        root=str(root),
        layout=LAYOUT_NAMES[layout],
        label_file=str(label_path),
        all=label_stats(labels),
        used=used,
        excluded=sorted(set(exclude) & set(labels.patients())),
        masks=_masks_summary(folder, present),
        warnings=warnings,
        errors=errors,
        deep=deep,
        missing=missing,
    )


def _decode_all(
    folder: PhysioNetFolder,
    patients: list[int],
    windows: tuple[str, ...],
    progress: Progress | None,
) -> list[str]:
    chosen = check_windows(windows, layout=folder.layout)
    errors = []
    for i, pid in enumerate(patients):
        try:
            decode_patient(folder, pid, chosen, DEEP_SIZE, with_masks=True)
        except DataError as exc:
            errors.append(str(exc))
        if progress is not None:
            progress(i + 1, len(patients))
    return errors


def folder_stats(
    root: Path, exclude: tuple[int, ...] = DEFAULT_EXCLUDE
) -> tuple[LabelStats, dict[int, int]]:
    """Statistics of a folder's used slices that have their image (label file, file names
    and NIfTI headers), and the label rows left out per patient for want of one. Where the
    images cannot be matched to patients at all, the label file alone is counted."""
    root = Path(root).expanduser()
    layout, label_path = detect_layout(root)
    labels = read_labels(label_path)
    try:
        patients = scan_patients(root, layout)
    except DataError:
        return label_stats(labels.without(exclude)), {}
    return _present(PhysioNetFolder(root, layout, label_path, labels, patients, tuple(exclude)))


# --------------------------------------------------------------------------- DICOM layouts

DICOM_LAYOUTS = {"rsna": "RSNA 2019 (DICOM)", "cq500": "CQ500 (DICOM)", "dicom": "DICOM tree"}


def _plan_stats(plan) -> LabelStats:
    """Statistics of a DICOM dataset's planned rows; a patient-level-only dataset counts
    its ICH patients from their labels (it has no ICH slice)."""
    stats = stats_of(plan.patient_ids, plan.labels, plan.subtypes, plan.positions)
    if plan.truth is not None:
        ich = sorted(p for p, label in plan.truth.items() if label == 1)
        stats.ich_patients = len(ich)
    return stats


def check_dicom(
    source: Any,
    exclude: tuple[int, ...] = DEFAULT_EXCLUDE,
    *,
    deep: bool = False,
    windows: tuple[str, ...] = ("brain",),
    progress: Progress | None = None,
) -> CheckReport:
    """`data check` of a DICOM layout (`rsna`, `cq500`, `dicom`): headers and labels only
    (pixels with `deep`). The release's pitfalls are warnings: handled, but reported.
    Raises DataError only when nothing can be summarised (no labels, no files)."""
    from ichbench.data.dicom_dataset import build_arrays, effective_exclude, plan_rows
    from ichbench.interfaces import LoadOptions

    opened = source.opened()
    warnings = list(opened.warnings)
    errors: list[str] = []
    try:
        full = plan_rows(opened, ())
        used = plan_rows(opened, exclude)
    except DataError as exc:
        errors.append(str(exc))
        full = used = None
    if used is not None:
        warnings += used.notes
        if used.truth is not None:
            warnings.append(
                f"{opened.label_file}: patient-level labels only; evaluate on this dataset "
                "(`ichbench evaluate RUN --data ...`), never train on it"
            )
        if deep:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                try:
                    build_arrays(
                        opened,
                        LoadOptions(image_size=DEEP_SIZE, windows=windows, exclude=exclude),
                        Path(tmp),
                        progress,
                    )
                except DataError as exc:
                    errors.append(str(exc))
    empty = stats_of(np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 5)), np.zeros(0))
    return CheckReport(
        root=str(opened.tree.root),
        layout=DICOM_LAYOUTS.get(opened.layout, opened.layout),
        label_file=str(opened.label_file),
        all=_plan_stats(full) if full is not None else empty,
        used=_plan_stats(used) if used is not None else empty,
        excluded=sorted(set(effective_exclude(exclude)) & set(full.names if full else ())),
        masks="none",
        warnings=warnings,
        errors=errors,
        deep=deep,
    )


def dicom_stats(source: Any, exclude: tuple[int, ...] = DEFAULT_EXCLUDE) -> LabelStats:
    """`data stats` of a DICOM layout, from headers and labels (no pixel read)."""
    from ichbench.data.dicom_dataset import plan_rows

    return _plan_stats(plan_rows(source.opened(), exclude))


def dataset_stats(dataset: SliceDataset) -> LabelStats:
    """Statistics of a loaded dataset (any source, including third-party plugins)."""
    return stats_of(
        np.asarray(dataset.patient_ids),
        np.asarray(dataset.labels),
        np.asarray(dataset.subtypes),
        np.asarray(dataset.positions),
    )


def plot_stats(stats: LabelStats, title: str, path: Path) -> Path:
    """Three panels: slices per class, patients per class, ICH slices by relative position.

    The position panel's legend sits under the panels, outside every axes: its bars fill
    the plot wherever the slices are, so no corner of it is free for certain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = stats_figure(stats, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def stats_figure(stats: LabelStats, title: str):
    """`plot_stats`'s figure, drawn but not saved (a test measures where its parts lie)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained")
    colors = ["#4c72b0", "#c44e52"]
    for ax, (what, values) in zip(
        axes[:2],
        (
            ("slices", (stats.healthy_slices, stats.ich_slices)),
            ("patients", (stats.healthy_patients, stats.ich_patients)),
        ),
        strict=True,
    ):
        bars = ax.bar(["healthy", "ICH"], values, color=colors)
        ax.bar_label(bars)
        ax.margins(y=0.12)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{what.capitalize()} per class")
        ax.set_ylabel(what)
    bins = len(stats.ich_by_position)
    edges = np.arange(bins) / bins
    axes[2].bar(
        edges,
        stats.slices_by_position,
        width=1 / bins,
        align="edge",
        color="#dddddd",
        edgecolor="white",
        label="all slices",
    )
    axes[2].bar(
        edges,
        stats.ich_by_position,
        width=1 / bins,
        align="edge",
        color=colors[1],
        edgecolor="white",
        label="ICH slices",
    )
    axes[2].set_title("Slices by relative position")
    axes[2].set_xlabel("(slice - 1) / (slices - 1)")
    fig.legend(
        *axes[2].get_legend_handles_labels(),
        loc="outside lower right",
        ncols=2,
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(title)
    return fig
