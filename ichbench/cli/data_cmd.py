"""`ichbench data synth|check|stats`: make a dataset, validate one, describe one."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ichbench.cli.common import emit_json, err, out
from ichbench.cli.options import ExcludeOpt, JsonOpt
from ichbench.cli.progress import step_bar
from ichbench.errors import DataError, UsageError
from ichbench.exclusion import DEFAULT_EXCLUDE_TEXT, parse_exclude
from ichbench.interfaces import SUBTYPES, LoadOptions
from ichbench.plugins import get_registry

DATASET_HELP = (
    "A dataset folder (PhysioNet, RSNA 2019, CQ500 or a DICOM tree with labels.csv) or a "
    "dataset spec such as 'synthetic:40'."
)


def parse_windows(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _resolve(text: str) -> tuple[Any, Path | None]:
    """The dataset source and, when it has one, its folder (generated first if synthetic)."""
    from ichbench.data.resolve import resolve_dataset

    source = resolve_dataset(text, get_registry())
    folder = getattr(source, "folder", None)
    if not callable(folder):
        return source, None
    with step_bar("Preparing dataset"):
        return source, Path(folder())


def _load(source: Any, exclude: tuple[int, ...]):
    from ichbench.paths import cache_dir

    with step_bar("Decoding") as progress:
        return source.load(LoadOptions(exclude=exclude), cache_dir(), progress)


# --------------------------------------------------------------------------- synth


def synth(
    out_dir: Path = typer.Option(
        ..., "--out", help="Folder to write (must not exist or be empty, unless --force)."
    ),
    patients: int = typer.Option(40, "--patients", help="Number of patients."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same bytes."),
    size: int = typer.Option(128, "--size", help="Slice width and height in pixels."),
    difficulty: str = typer.Option(
        "easy",
        "--difficulty",
        help="easy (the plain phantom), real (adds calcifications, skull-base bone and "
        "streaks, motion, fainter lesions and scanners that differ) or hard (more of all "
        "of it).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace a previously generated dataset."),
    fmt: str = typer.Option(
        "nifti",
        "--format",
        help="nifti (the PhysioNet v1.3.x layout), rsna (DICOM in the RSNA 2019 layout) or "
        "cq500 (DICOM series and reads.csv, patient-level labels only).",
    ),
) -> None:
    """Write a synthetic dataset: PhysioNet's NIfTI layout, or DICOM as RSNA 2019 or CQ500."""
    from ichbench.data.synth import generate
    from ichbench.data.synth_dicom import FORMATS, generate_dicom

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: expected {', '.join(FORMATS[:-1])} or {FORMATS[-1]}")
    start = time.perf_counter()
    with step_bar("Generating patients") as progress:
        if fmt == "nifti":
            summary = generate(
                out_dir, patients, seed, size, difficulty, force=force, progress=progress
            )
        else:
            summary = generate_dicom(
                out_dir, fmt, patients, seed, size, difficulty, force=force, progress=progress
            )
    err.print(
        f"Wrote {summary.out}: {summary.patients} patients ({summary.ich_patients} ICH), "
        f"{summary.slices} slices ({summary.ich_slices} ICH), {size} px, seed {seed}, "
        f"{difficulty} in {time.perf_counter() - start:.1f} s",
        highlight=False,
        soft_wrap=True,
    )


# --------------------------------------------------------------------------- check


def _counts_table(title: str, rows: list[tuple[str, str, str]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("used", justify="right")
    table.add_column("in label file", justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def _print_check(report) -> None:
    from ichbench.data.inspect import missing_text

    used, full = report.used, report.all
    rows = [
        ("Patients", f"{used.patients}", f"{full.patients}"),
        ("Slices", f"{used.slices:,}", f"{full.slices:,}"),
        ("ICH slices", f"{used.ich_slices:,}", f"{full.ich_slices:,}"),
        ("ICH patients", f"{used.ich_patients}", f"{full.ich_patients}"),
    ] + [
        (f"  {name} slices", f"{used.subtype_slices[name]:,}", f"{full.subtype_slices[name]:,}")
        for name in SUBTYPES
    ]
    out.print(
        f"[bold]{report.root}[/]: {report.layout} layout, labels {Path(report.label_file).name}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(_counts_table("Contents", rows))
    if report.missing:
        out.print(
            f"Not counted as used (in the label file, but no image): "
            f"{missing_text(report.missing)}",
            highlight=False,
            soft_wrap=True,
        )
    excluded = ", ".join(f"{p:03d}" for p in report.excluded) or "none"
    out.print(
        f"Excluded: {excluded}   Masks: {report.masks}"
        + ("   Images decoded: all" if report.deep else ""),
        highlight=False,
        soft_wrap=True,
    )
    for message in report.warnings:
        out.print(f"[yellow]Warning:[/] {message}", highlight=False, soft_wrap=True)
    for message in report.errors:
        out.print(f"[red]Problem:[/] {message}", highlight=False, soft_wrap=True)
    if report.ok:
        out.print("[green]No fatal problem found.[/]")


def check(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    exclude: ExcludeOpt = DEFAULT_EXCLUDE_TEXT,
    deep: bool = typer.Option(False, "--deep", help="Also decode every image (slower)."),
    windows: str = typer.Option(
        "brain", "--windows", help="Windows to decode with --deep, comma-separated."
    ),
    as_json: JsonOpt = False,
) -> None:
    """Validate a dataset folder and summarise what it holds; exits non-zero on a problem."""
    from ichbench.data.inspect import check_dicom, check_folder, dataset_stats

    excluded = parse_exclude(exclude, option="--exclude")
    source, folder = _resolve(dataset)
    if hasattr(source, "opened"):  # a DICOM layout: headers and labels, pitfalls reported
        with step_bar("Reading DICOM headers") as progress:
            report = check_dicom(
                source, excluded, deep=deep, windows=parse_windows(windows), progress=progress
            )
    elif folder is None:
        stats = dataset_stats(_load(source, excluded))
        data = {"dataset": source.name, "ok": True, "used": stats.as_dict()}
        if as_json:
            emit_json(data)
        else:
            out.print(
                _counts_table(
                    source.name,
                    [
                        ("Patients", str(stats.patients), ""),
                        ("Slices", str(stats.slices), ""),
                        ("ICH slices", str(stats.ich_slices), ""),
                        ("ICH patients", str(stats.ich_patients), ""),
                    ],
                )
            )
        return
    elif deep:
        with step_bar("Decoding") as progress:
            report = check_folder(
                folder, excluded, deep=True, windows=parse_windows(windows), progress=progress
            )
    else:
        report = check_folder(folder, excluded)
    if as_json:
        emit_json(report.as_dict())
    else:
        _print_check(report)
    if not report.ok:
        more = f" (and {len(report.errors) - 1} more problem(s))" if len(report.errors) > 1 else ""
        raise DataError(report.errors[0] + more)


# --------------------------------------------------------------------------- stats


def default_png(dataset: str) -> Path:
    """`DIR_stats.png` in the current folder, from the dataset's last path component."""
    name = Path(dataset.rstrip("/\\")).name or "dataset"
    return Path(re.sub(r"[^A-Za-z0-9._-]+", "_", name) + "_stats.png")


def _print_stats(title: str, stats) -> None:
    classes = Table(title=f"{title}: classes", title_justify="left")
    for column in ("", "healthy", "ICH", "total", "ICH share"):
        classes.add_column(column, justify="right" if column else "left")
    for what, healthy, ich in (
        ("slices", stats.healthy_slices, stats.ich_slices),
        ("patients", stats.healthy_patients, stats.ich_patients),
    ):
        total = healthy + ich
        classes.add_row(
            what, f"{healthy:,}", f"{ich:,}", f"{total:,}", f"{ich / total:.1%}" if total else "-"
        )
    out.print(classes)
    bins = len(stats.ich_by_position)
    positions = Table(title="ICH by relative slice position", title_justify="left")
    for column in ("position", "slices", "ICH slices", "ICH share"):
        positions.add_column(column, justify="right")
    for i in range(bins):
        n, ich = stats.slices_by_position[i], stats.ich_by_position[i]
        positions.add_row(
            f"{i / bins:.1f}-{(i + 1) / bins:.1f}",
            f"{n:,}",
            f"{ich:,}",
            f"{ich / n:.1%}" if n else "-",
        )
    out.print(positions)


def stats(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    png: Path | None = typer.Option(
        None,
        "--out",
        help="PNG to write (default: DIR_stats.png here; with --json only when given).",
    ),
    exclude: ExcludeOpt = DEFAULT_EXCLUDE_TEXT,
    as_json: JsonOpt = False,
) -> None:
    """Class and slice-position distributions, as tables and a three-panel PNG."""
    from ichbench.data.inspect import (
        dataset_stats,
        dicom_stats,
        folder_stats,
        missing_text,
        plot_stats,
    )

    excluded = parse_exclude(exclude, option="--exclude")
    source, folder = _resolve(dataset)
    missing: dict[int, int] = {}
    if hasattr(source, "opened"):
        from ichbench.data.dicom_dataset import effective_exclude

        result = dicom_stats(source, excluded)
        excluded = effective_exclude(excluded)  # PhysioNet's default means nothing here
    elif folder is not None:
        result, missing = folder_stats(folder, excluded)
    else:
        result = dataset_stats(_load(source, excluded))
    if missing:
        err.print(
            f"Warning: not counted (in the label file, but no image): {missing_text(missing)}; "
            "`ichbench data check` names the missing files",
            highlight=False,
            soft_wrap=True,
        )
    target = png if png is not None or as_json else default_png(dataset)
    if target is not None:
        plot_stats(result, str(getattr(source, "name", dataset)), target)
    if as_json:
        emit_json(
            {
                "dataset": getattr(source, "name", dataset),
                "exclude": list(excluded),
                **result.as_dict(),
                "missing": {"patients": sorted(missing), "slices": sum(missing.values())},
                "png": str(target) if target else None,
            }
        )
        return
    _print_stats(str(getattr(source, "name", dataset)), result)
    if target is not None:
        err.print(f"Wrote {target}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    data = typer.Typer(help="Generate, check and describe datasets.", no_args_is_help=True)
    data.command("synth")(synth)
    data.command("check")(check)
    data.command("stats")(stats)
    app.add_typer(data, name="data")
