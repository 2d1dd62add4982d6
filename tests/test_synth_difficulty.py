"""The synthetic generator's difficulty: `easy` is the original generator byte for byte,
every level repeats itself, mimics are dense but never labelled, the mark keeps levels
apart, and a bad level is one usage error that writes nothing."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cli_run import error_lines, run_main

from ichbench.data.labels import read_labels
from ichbench.data.phantom import calcifications, head_geometry, skull_base
from ichbench.data.physionet import PhysioNetSource
from ichbench.data.synth import (
    DIFFICULTIES,
    PARAMS_FILE,
    SyntheticSource,
    generate,
    made_with,
    real_templates,
    synth_patient,
)
from ichbench.errors import ExitCode, UsageError
from ichbench.interfaces import LoadOptions
from ichbench.spec import parse_spec
from ichbench_plugins.datasets import synthetic

# Every file of `generate(out, 3, 2, 32)` (paths and bytes) as the generator wrote them
# before difficulty levels existed: `easy` must go on writing exactly this.
EASY_3_2_32 = "35273f4bd88d537284aadf10b1e8f76be53bffcc1034bf5abefaac7184111422"

LABELS = "hemorrhage_diagnosis_raw_ct.csv"
CHOICES = "easy, real or hard"


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """make(difficulty, seed=2, name=None) -> a 3-patient 32 px dataset, generated once."""
    base = tmp_path_factory.mktemp("difficulty")
    cache: dict[tuple[str, int, str], Path] = {}

    def make(difficulty: str, seed: int = 2, name: str = "") -> Path:
        key = (difficulty, seed, name)
        if key not in cache:
            out = base / f"{difficulty}-s{seed}{name}"
            cache[key] = generate(out, 3, seed, 32, difficulty).out
        return cache[key]

    return make


# --------------------------------------------------------------------------- easy


def test_easy_writes_what_the_generator_always_wrote(tmp_path, made):
    assert digest(made("easy")) == EASY_3_2_32
    assert digest(generate(tmp_path / "default", 3, 2, 32).out) == EASY_3_2_32


def test_easy_keeps_its_name_folder_and_mark(made, tmp_path):
    assert "difficulty" not in json.loads((made("easy") / PARAMS_FILE).read_text())
    source = SyntheticSource(2, 0, 32, "easy")
    assert source.name == "synthetic:2,0,32"
    assert synthetic(parse_spec("synthetic:2,0,32,easy")).name == "synthetic:2,0,32"
    assert source.folder(tmp_path) == tmp_path / "synthetic" / "p2-s0-px32"


# --------------------------------------------------------------------------- levels


@pytest.mark.parametrize("difficulty", ["real", "hard"])
def test_each_level_repeats_itself_and_differs_from_easy(difficulty, made):
    first = made(difficulty)
    assert digest(first) == digest(made(difficulty, name="-again"))
    assert digest(first) != digest(made(difficulty, seed=3))
    easy = made("easy")
    assert (first / "ct_scans/049.nii").read_bytes() != (easy / "ct_scans/049.nii").read_bytes()
    mark = json.loads((first / PARAMS_FILE).read_text())
    assert mark["difficulty"] == difficulty and sorted(mark["files"]) == sorted(
        p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file()
    )


def test_hard_is_noisier_than_easy(made):
    """The scanner noise of a level shows in the air around the head."""
    import nibabel as nib

    def air_sd(root: Path) -> float:
        return float(
            np.mean(
                [nib.load(str(p)).get_fdata()[:4, :4].std() for p in root.glob("ct_scans/*.nii")]
            )
        )

    assert air_sd(made("hard")) > air_sd(made("easy"))


@pytest.mark.parametrize("difficulty", ["real", "hard"])
def test_labels_are_the_masks_drawn(difficulty, made, tmp_path):
    root = made(difficulty, seed=4)
    ds = PhysioNetSource(root).load(LoadOptions(image_size=32, exclude=()), tmp_path / "c")
    drawn = ds.masks.reshape(len(ds), -1).any(axis=1)
    assert (drawn == (ds.labels == 1)).all()
    table = read_labels(root / LABELS)
    assert (table.subtypes.any(axis=1) == (table.labels == 1)).all()


# --------------------------------------------------------------------------- mimics


def always(difficulty: str):
    """The level with every mimic certain, so one patient shows them all."""
    return replace(DIFFICULTIES[difficulty], calcification=1.0, skull_base=1.0, motion=1.0)


def test_a_healthy_patient_shows_dense_mimics_and_no_label():
    _, healthy = real_templates()
    rng = np.random.default_rng(11)
    p = synth_patient(rng, 49, healthy[0], False, 64, always("real"))
    assert p.mimics is not None and p.mimics.any()
    assert not p.mask.any() and not p.flags.any()
    dense = p.hu[p.mimics]  # partial volume: a dense core in a rim that fades into brain
    assert np.percentile(dense, 75) > 60 and dense.max() > 100
    slices = p.mimics.any(axis=(1, 2))
    assert slices[: len(slices) // 4].any()  # the skull base, low in the head
    assert slices[len(slices) // 4 :].any()  # calcifications, higher up


@pytest.mark.parametrize("seed", range(4))
def test_mimics_never_cover_a_lesion(seed):
    ich, _ = real_templates()
    rng = np.random.default_rng(seed)
    p = synth_patient(rng, 49, ich[seed], True, 64, always("hard"))
    assert p.mask.any() and p.mimics is not None and p.mimics.any()
    assert not (p.mimics & (p.mask > 0)).any()
    assert (p.flags.any(axis=1) == p.mask.any(axis=(1, 2))).all()


def test_mimics_paint_only_where_allowed():
    rng = np.random.default_rng(5)
    head = head_geometry(rng, 24, 48, 0.85)
    hu = np.full(head.rho.shape, 30.0, dtype=np.float32)
    before = hu.copy()
    free = np.zeros(hu.shape, dtype=bool)
    assert not calcifications(np.random.default_rng(1), head, hu, free, 1.0, 48).any()
    assert not skull_base(np.random.default_rng(1), head, hu.copy(), free, 1.0, 48).any()
    assert np.array_equal(hu, before)
    assert not calcifications(np.random.default_rng(1), head, hu, ~free, 0.0, 48).any()


def test_same_seed_same_patient_per_level():
    ich, _ = real_templates()
    for name in DIFFICULTIES:
        a, b = (
            synth_patient(np.random.default_rng(9), 49, ich[3], True, 32, DIFFICULTIES[name])
            for _ in range(2)
        )
        assert np.array_equal(a.hu, b.hu) and np.array_equal(a.mask, b.mask)


# --------------------------------------------------------------------------- the mark


def test_a_folder_of_another_level_is_regenerated_not_reused(tmp_path):
    source = SyntheticSource(2, 0, 32, "real")
    assert source.name == "synthetic:2,0,32,real"
    target = source.folder(tmp_path)
    assert target == tmp_path / "synthetic" / "p2-s0-px32-real"
    assert made_with(target, 2, 0, 32, "real") and not made_with(target, 2, 0, 32, "easy")
    # a real dataset where the easy one belongs is replaced by the easy one
    easy_target = tmp_path / "synthetic" / "p2-s0-px32"
    generate(easy_target, 2, 0, 32, "real")
    assert SyntheticSource(2, 0, 32).folder(tmp_path) == easy_target
    assert made_with(easy_target, 2, 0, 32, "easy")
    assert "difficulty" not in json.loads((easy_target / PARAMS_FILE).read_text())


def test_loads_of_two_levels_have_different_dataset_hashes(tmp_path):
    options = LoadOptions(image_size=32, exclude=())
    easy = SyntheticSource(2, 0, 32).load(options, tmp_path)
    real = SyntheticSource(2, 0, 32, "real").load(options, tmp_path)
    assert easy.dataset_hash != real.dataset_hash
    assert real.name == "synthetic:2,0,32,real"


# --------------------------------------------------------------------------- bad values


def test_spec_names_the_bad_level_and_the_choices():
    assert synthetic(parse_spec("synthetic:40,0,128,hard")).name == "synthetic:40,0,128,hard"
    with pytest.raises(UsageError) as info:
        synthetic(parse_spec("synthetic:40,0,128,medium"))
    message = str(info.value)
    assert "'medium'" in message and CHOICES in message
    assert "synthetic[:PATIENTS[,SEED[,SIZE[,DIFFICULTY]]]]" in message
    with pytest.raises(UsageError, match=r"^--difficulty 'medium': expected easy, real or hard$"):
        generate(Path("unused"), 2, 0, 32, "medium")


def test_cli_synth_refuses_a_bad_level_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "ds"
    code, stdout, err = run_main(
        capsys, "data", "synth", "--out", str(out), "--difficulty", "medium", "--size", "32"
    )
    assert code == ExitCode.USAGE, err
    assert error_lines(err) == [f"Error: --difficulty 'medium': expected {CHOICES}"]
    assert stdout == "" and list(tmp_path.iterdir()) == []


def test_cli_run_refuses_a_bad_level_in_the_spec(tmp_path, capsys):
    db = tmp_path / "store" / "runs.duckdb"
    code, _, err = run_main(
        capsys, "run", "--data", "synthetic:40,0,128,medium", "--device", "cpu", "--db", str(db)
    )
    assert code == ExitCode.USAGE, err
    (line,) = error_lines(err)
    assert "'medium'" in line and CHOICES in line
    assert not db.parent.exists()
    cache = Path(os.environ["ICHBENCH_CACHE"])
    assert not cache.exists() or not any(cache.rglob("*.nii"))


def test_cli_synth_writes_the_level_asked_for(tmp_path, capsys):
    out = tmp_path / "ds"
    code, _, err = run_main(
        capsys, "data", "synth", "--out", str(out), "--patients", "2", "--size", "16",
        "--difficulty", "hard",
    )  # fmt: skip
    assert code == 0, err
    assert "hard" in err
    assert json.loads((out / PARAMS_FILE).read_text())["difficulty"] == "hard"
