"""The label CSV: real counts, the BOM/CRLF format, and every malformed input named."""

from __future__ import annotations

import numpy as np
import pytest

from ichbench.data.labels import (
    COLUMNS,
    label_stats,
    label_warnings,
    read_labels,
    relative_positions,
    stats_of,
)
from ichbench.errors import DataError
from ichbench.exclusion import DEFAULT_EXCLUDE
from ichbench.interfaces import SUBTYPES

HEADER = ",".join(COLUMNS)


def write_csv(path, lines, bom=True):
    text = "\r\n".join(lines) + "\r\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def test_real_label_file_counts(real_labels_csv):
    raw = real_labels_csv.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw
    stats = label_stats(read_labels(real_labels_csv))
    assert (stats.patients, stats.slices, stats.ich_slices, stats.ich_patients) == (
        82,
        2501,
        318,
        36,
    )


def test_real_label_file_counts_without_58_and_79(real_labels_csv):
    assert DEFAULT_EXCLUDE == (58, 79)  # the study's exclusion (Kyung et al.)
    table = read_labels(real_labels_csv).without(DEFAULT_EXCLUDE)
    stats = label_stats(table)
    assert (stats.patients, stats.slices, stats.ich_slices, stats.ich_patients) == (
        80,
        2441,
        315,
        34,
    )
    assert not {58, 79} & set(table.patients())


def test_real_label_file_is_consistent_and_sorted(real_labels_csv):
    table = read_labels(real_labels_csv)
    assert label_warnings(table) == []
    assert table.patients()[0] == 49 and table.patients()[-1] == 130
    counts = table.slice_counts()
    assert min(counts.values()) == 19 and max(counts.values()) == 40
    order = np.lexsort((table.slice_numbers, table.patient_ids))
    assert (order == np.arange(len(table))).all()
    rows = table.rows_of(49)
    assert table.slice_numbers[rows].tolist() == list(range(1, counts[49] + 1))


def test_subtypes_in_interface_order(tmp_path):
    path = write_csv(tmp_path / "l.csv", [HEADER, "7,1,1,0,0,0,1,0,1", "7,2,0,0,0,0,0,1,0"])
    table = read_labels(path)
    assert table.subtypes.tolist() == [[1, 0, 0, 0, 1], [0, 0, 0, 0, 0]]
    assert table.labels.tolist() == [1, 0]
    assert table.fracture.tolist() == [1, 0]


def test_positions_and_position_bins(tmp_path):
    lines = [HEADER] + [
        f"5,{k},0,1,0,0,0,0,0" if k == 11 else f"5,{k},0,0,0,0,0,1,0" for k in range(1, 12)
    ]
    table = read_labels(write_csv(tmp_path / "l.csv", lines))
    positions = relative_positions(table)
    assert positions[0] == 0.0 and positions[-1] == 1.0
    assert np.allclose(positions, np.arange(11) / 10)
    stats = stats_of(table.patient_ids, table.labels, table.subtypes, positions)
    assert stats.ich_by_position == [0] * 9 + [1]
    assert sum(stats.slices_by_position) == 11
    assert stats.subtype_slices == dict.fromkeys(SUBTYPES, 0) | {"Intraparenchymal": 1}


def test_no_bom_and_lf_line_ends_are_read_too(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text(HEADER + "\n3,1,0,0,0,0,0,1,0\n")
    assert len(read_labels(path)) == 1


def test_fracture_column_is_optional(tmp_path):
    header = ",".join(COLUMNS[:-1])
    table = read_labels(write_csv(tmp_path / "l.csv", [header, "3,1,0,0,0,0,0,1"]))
    assert table.fracture.tolist() == [0]


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            ["PatientNumber,SliceNumber,No_Hemorrhage", "1,1,1"],
            r"missing column\(s\) Intraventricular",
        ),
        ([HEADER, "49,x,0,0,0,0,0,1,0"], r"line 2: SliceNumber 'x' is not an integer"),
        ([HEADER, "49,1,0,0,0,0,0,1,0", "abc,2,0,0,0,0,0,1,0"], r"line 3: PatientNumber 'abc'"),
        ([HEADER, "49,1,0,0,0,0,0,,0"], r"line 2: No_Hemorrhage '' is not an integer"),
        (
            [HEADER, "49,1,0,0,0,0,0,1,0", "49,1,0,0,0,0,0,1,0"],
            r"line 3: duplicate row for patient 049 slice 1 \(first on line 2\)",
        ),
        ([HEADER, "49,1,0,2,0,0,0,1,0"], r"line 2: Intraparenchymal is 2; expected 0 or 1"),
        ([HEADER, "49,0,0,0,0,0,0,1,0"], r"line 2: SliceNumber 0 is below 1"),
        ([HEADER, "-3,1,0,0,0,0,0,1,0"], r"line 2: PatientNumber -3 is negative"),
        ([HEADER, "49,1,0"], r"line 2: too few fields"),
        ([HEADER], r"no label rows"),
    ],
)
def test_bad_label_files_are_named(tmp_path, lines, message):
    path = write_csv(tmp_path / "labels.csv", lines)
    with pytest.raises(DataError, match=message) as info:
        read_labels(path)
    assert "labels.csv" in str(info.value)


def test_empty_and_missing_and_binary_label_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.csv: missing column"):
        read_labels(empty)
    with pytest.raises(DataError, match=r"absent.csv not found"):
        read_labels(tmp_path / "absent.csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(DataError, match=r"binary.csv: not UTF-8"):
        read_labels(binary)


def test_warnings_for_inconsistent_flags_and_numbering(tmp_path):
    path = write_csv(
        tmp_path / "l.csv", [HEADER, "9,1,0,0,0,0,0,0,0", "9,2,0,1,0,0,0,1,0", "9,4,0,0,0,0,0,1,0"]
    )
    warnings = label_warnings(read_labels(path))
    assert any(
        "ICH slice(s) without a subtype flag (first: patient 009 slice 1)" in w for w in warnings
    )
    assert any(
        "healthy slice(s) with a subtype flag (first: patient 009 slice 2)" in w for w in warnings
    )
    assert any("patient 009: slice numbers are not 1..3" in w for w in warnings)


def test_a_duplicated_column_is_named_not_silently_won(tmp_path):
    """With two Subdural columns the csv module keeps the second; the file is ambiguous."""
    header = HEADER.replace("Subdural", "Subdural,Subdural")
    path = write_csv(tmp_path / "labels.csv", [header, "49,1,0,0,0,0,1,0,1,0"])
    with pytest.raises(DataError, match=r"labels\.csv line 1: column Subdural appears twice"):
        read_labels(path)


def test_a_row_with_more_fields_than_the_header_is_named(tmp_path):
    """An inserted value shifts the row: healthy would read as ICH with a fracture."""
    lines = [HEADER, "49,1,0,0,0,0,0,1,0", "49,2,0,0,0,0,0,0,1,0"]
    with pytest.raises(DataError, match=r"labels\.csv line 3: 10 fields but the header has 9"):
        read_labels(write_csv(tmp_path / "labels.csv", lines))


def test_trailing_empty_fields_are_tolerated(tmp_path):
    lines = [HEADER, "49,1,0,0,0,0,0,1,0,,"]
    assert read_labels(write_csv(tmp_path / "l.csv", lines)).labels.tolist() == [0]


@pytest.mark.parametrize(
    "row, column",
    [
        (f"{10**30},1,0,0,0,0,0,1,0", "PatientNumber"),
        ("49,1e30,0,0,0,0,0,1,0", "SliceNumber"),
    ],
)
def test_huge_numbers_are_named(tmp_path, row, column):
    path = write_csv(tmp_path / "labels.csv", [HEADER, row])
    with pytest.raises(DataError, match=rf"labels\.csv line 2: {column} .* is out of range"):
        read_labels(path)


def test_a_row_without_its_fracture_field_is_named(tmp_path):
    path = write_csv(tmp_path / "labels.csv", [HEADER, "49,1,0,0,0,0,0,1"])
    with pytest.raises(DataError, match=r"line 2: too few fields \(no Fracture_Yes_No\)"):
        read_labels(path)
