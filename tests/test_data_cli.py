"""`ichbench data synth|check|stats` through the real entry point: output, files, exit codes."""

from __future__ import annotations

import json
import shutil

import pytest

import ichbench_plugins.datasets as datasets_plugin
from ichbench.cli import data_cmd
from ichbench.cli.app import main
from ichbench.errors import ExitCode
from ichbench.plugins import Plugins


@pytest.fixture(autouse=True)
def datasets_only(monkeypatch):
    """Resolve datasets with the built-in dataset plugin alone, whatever else is installed."""
    plugins = Plugins(load_entry_points=False)
    plugins.register(datasets_plugin, name="ichbench_plugins.datasets", distribution="ichbench")
    monkeypatch.setattr(data_cmd, "get_registry", lambda: plugins.registry)


def run(capsys, *args):
    """(exit code, stdout, stderr) of `ichbench ARGS`."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_synth_writes_a_dataset_that_checks_clean(tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = run(
        capsys, "data", "synth", "--out", str(out), "--patients", "4", "--seed", "2", "--size", "32"
    )
    assert code == 0, err
    assert "4 patients" in err and (out / "ct_scans/052.nii").is_file()
    code, stdout, err = run(capsys, "data", "check", str(out), "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["ok"] and report["layout"] == "v1.3.x NIfTI"
    assert report["used"]["patients"] == 4 and report["masks"] == "all patients"
    assert report["used"]["slices"] == report["all"]["slices"] > 4 * 18


def test_synth_refuses_an_existing_folder(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken/file").write_text("x")
    code, _, err = run(capsys, "data", "synth", "--out", str(tmp_path / "taken"))
    assert code == ExitCode.USAGE
    assert err.startswith("Error: ") and "taken already exists" in err


def test_check_real_sample_reports_counts_and_the_missing_bone_slice(jpg_sample_dir, capsys):
    code, stdout, err = run(capsys, "data", "check", str(jpg_sample_dir))
    assert code == 0, err
    assert "v1.0/1.2 JPG" in stdout
    assert "Patient 084: 1 bone slice(s) missing" in stdout and "bone/36.jpg" in stdout
    assert "No fatal problem found" in stdout
    code, stdout, _ = run(capsys, "data", "check", str(jpg_sample_dir), "--json")
    report = json.loads(stdout)
    assert (
        report["used"]["patients"],
        report["used"]["slices"],
        report["used"]["ich_slices"],
        report["used"]["ich_patients"],
    ) == (3, 99, 13, 2)
    assert report["used"]["subtype_slices"]["Epidural"] == 8
    assert report["excluded"] == []


def test_check_excludes_patients_and_counts_both(tiny_synth_dir, capsys):
    code, stdout, _ = run(
        capsys, "data", "check", str(tiny_synth_dir), "--exclude", "50,51", "--json"
    )
    report = json.loads(stdout)
    assert code == 0 and report["excluded"] == [50, 51]
    assert report["all"]["patients"] == 8 and report["used"]["patients"] == 6


@pytest.mark.parametrize("text", ["none", "NONE", ""])
def test_check_exclude_none_keeps_every_patient(tiny_synth_dir, capsys, text):
    code, stdout, _ = run(capsys, "data", "check", str(tiny_synth_dir), "--exclude", text, "--json")
    report = json.loads(stdout)
    assert code == 0 and report["excluded"] == []
    assert report["used"]["patients"] == report["all"]["patients"] == 8


def test_bad_exclude_is_one_usage_error(tiny_synth_dir, capsys):
    for command in ("check", "stats"):
        code, _, err = run(capsys, "data", command, str(tiny_synth_dir), "--exclude", "58,x")
        assert code == ExitCode.USAGE
        assert err.startswith("Error: --exclude '58,x'") and "Traceback" not in err


def test_check_bad_folder_lists_problems_and_fails(tiny_synth_dir, tmp_path, capsys):
    root = tmp_path / "bad"
    shutil.copytree(tiny_synth_dir, root)
    (root / "ct_scans/050.nii").unlink()
    (root / "ct_scans/051.nii").write_bytes(b"")
    code, stdout, err = run(capsys, "data", "check", str(root))
    assert code == ExitCode.DATA
    assert "Patient 050 has" in stdout and "051.nii: empty file" in stdout
    assert "Mask " in stdout and "masks/050.nii has no volume" in stdout
    assert err.startswith("Error: Patient 050 has") and "(and 2 more problem(s))" in err
    assert "Traceback" not in err


def test_check_deep_finds_what_only_decoding_shows(tiny_synth_dir, tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    root = tmp_path / "nan"
    shutil.copytree(tiny_synth_dir, root)
    img = nib.load(str(root / "ct_scans/052.nii"))
    data = img.get_fdata().astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.Nifti1Image(data, img.affine).to_filename(str(root / "ct_scans/052.nii"))
    assert run(capsys, "data", "check", str(root))[0] == 0
    code, _, err = run(capsys, "data", "check", str(root), "--deep")
    assert code == ExitCode.DATA and "052.nii: 1 voxel(s) are NaN" in err


def test_check_unknown_dataset(tmp_path, capsys):
    code, _, err = run(capsys, "data", "check", str(tmp_path / "nothing"))
    assert code == ExitCode.DATA
    names = "(cq500, dicom, physionet, rsna, synthetic)"
    assert f"not a registered dataset {names} nor an existing folder" in err
    code, _, err = run(capsys, "data", "check", str(tmp_path))
    assert code == ExitCode.DATA and f"Dataset folder {tmp_path} is in no layout" in err
    assert names in err


def test_check_bad_exclude_value(jpg_sample_dir, capsys):
    code, _, err = run(capsys, "data", "check", str(jpg_sample_dir), "--exclude", "5x")
    assert code == ExitCode.USAGE and "--exclude '5x'" in err


def test_stats_prints_tables_and_writes_the_png(jpg_sample_dir, tmp_path, capsys):
    png = tmp_path / "plots" / "s.png"
    code, stdout, err = run(capsys, "data", "stats", str(jpg_sample_dir), "--out", str(png))
    assert code == 0, err
    assert "ICH by relative slice position" in stdout and "0.5-0.6" in stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_json_matches_the_label_file(jpg_sample_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run(capsys, "data", "stats", str(jpg_sample_dir), "--json")
    stats = json.loads(stdout)
    assert code == 0 and stats["png"] is None and list(tmp_path.iterdir()) == []
    assert (stats["slices"], stats["ich_slices"], stats["healthy_slices"]) == (99, 13, 86)
    assert (stats["patients"], stats["ich_patients"]) == (3, 2)
    assert sum(stats["ich_by_position"]) == 13 and sum(stats["slices_by_position"]) == 99


def test_stats_default_png_lands_in_the_current_folder(
    jpg_sample_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "data", "stats", str(jpg_sample_dir) + "/")
    assert code == 0 and "Wrote ct-ich-v1.0.0-sample_stats.png" in err
    assert (tmp_path / "ct-ich-v1.0.0-sample_stats.png").is_file()


def test_stats_on_the_synthetic_spec(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(capsys, "data", "stats", "synthetic:5,0,32", "--json", "--exclude", "")
    assert code == 0, err
    stats = json.loads(stdout)
    assert stats["dataset"] == "synthetic:5,0,32" and stats["patients"] == 5
    code, _, _ = run(capsys, "data", "stats", "synthetic:5,0,32")
    assert code == 0 and (tmp_path / "synthetic_5_0_32_stats.png").is_file()
