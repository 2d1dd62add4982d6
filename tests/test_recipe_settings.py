"""The recipe beyond the paper as a user sets it: resolved by presets, validated, kept out
of the hashes of runs made without it, recorded, and run through the real protocol."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest
from cli_run import TINY_ARGS, TINY_CONFIG, error_lines, run_main

from ichbench.config import RECIPE_OFF, RunConfig
from ichbench.errors import UsageError
from ichbench.protocol import RunProtocol, _offered

# ----------------------------------------------------------------- configuration


def test_paper_and_quick_presets_keep_the_recipe_off_and_their_hashes():
    """Runs recorded before the recipe settings existed must keep their identity."""
    for preset in ("quick", "paper"):
        cfg = RunConfig(preset=preset).resolved("cpu")
        assert {k: getattr(cfg, k) for k in RECIPE_OFF} == RECIPE_OFF
        assert not set(RECIPE_OFF) & set(cfg.identity())
        assert cfg.windows == ["brain"] and cfg.patient_rule == "any"
    assert RunConfig().hash == "52eb3123ab17acf6"
    assert RunConfig(context=0, tta="none").hash == RunConfig().hash
    assert RunConfig(context=1).hash != RunConfig().hash


def test_modern_preset_sets_the_recipe_on_the_devices_network():
    unset = {"windows": None, "patient_rule": None, "ensemble": None}
    cpu = RunConfig(preset="modern", **unset).resolved("cpu")
    assert (cpu.backbone, cpu.image_size) == ("tinycnn", 64)  # the quick preset's network
    assert cpu.windows == ["brain", "subdural", "bone"]
    assert (cpu.context, cpu.augment_all, cpu.schedule, cpu.tta) == (1, True, "cosine", "flip")
    assert cpu.patient_rule == "learned" and cpu.weights == ["ich:4"]
    gpu = RunConfig(preset="modern", **unset).resolved("cuda")
    assert (gpu.backbone, gpu.image_size, gpu.pretrained) == ("resnet50", 224, True)
    # what the user gives wins over the preset
    mine = RunConfig(preset="modern", windows=["brain"], context=0, patient_rule="any")
    mine = mine.resolved("cpu")
    assert (mine.windows, mine.context, mine.patient_rule) == (["brain"], 0, "any")


def test_window_stack_is_one_word_for_three_windows():
    assert RunConfig(windows=["stack"]).windows == ["brain", "subdural", "bone"]
    assert (
        RunConfig(windows=["stack"]).hash == RunConfig(windows=["brain", "subdural", "bone"]).hash
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"context": 99}, "--context 99: must be 0 to 8"),
        ({"context": -1}, "--context -1"),
        ({"schedule": "linear"}, "--schedule linear: expected one of constant, cosine"),
        ({"tta": "rotate"}, "--tta rotate: expected one of none, flip"),
        ({"stage2": "lstm"}, "--stage2 lstm: expected one of none, gru, conv"),
        ({"warmup": -1}, "--warmup -1"),
        ({"warmup": 6, "epochs": 6}, "--warmup 6 with --epochs 6"),
        ({"weight_decay": -0.1}, "--weight-decay -0.1"),
        ({"weight_decay": float("nan")}, "--weight-decay nan"),
        ({"weight_decay": 1.0}, "--weight-decay 1.0"),
    ],
)
def test_absurd_recipe_values_are_refused(changes, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        RunConfig(preset="quick", **changes).resolved("cpu")


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--context", "50", "Error: --context 50: must be 0 to 8"),
        ("--schedule", "step", "Error: --schedule step: expected one of constant, cosine"),
        ("--tta", "x", "Error: --tta x: expected one of none, flip"),
        ("--window", "stack,brain", "Error: Unknown window 'stack,brain'"),
        ("--strategy", "mixup:1e39", "Error: mixup: 1e+39 is above 1e+06"),
        ("--strategy", "cutmix:1e300", "Error: cutmix: 1e+300 is above 1e+06"),
        ("--patient-rule", "learned:99999999999999999999999", "Error: learned: "),
    ],
)
def test_bad_recipe_options_exit_2_and_write_nothing(capsys, tmp_path, option, value, expected):
    db = tmp_path / "r.duckdb"
    code, _, err = run_main(capsys, "run", *TINY_ARGS, option, value, "--db", str(db))
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert not db.exists()


# ----------------------------------------------------------------- windows the data offers


class _JpgLike:
    def windows_offered(self):
        return ("brain", "bone")


def test_a_presets_window_stack_is_narrowed_to_what_the_data_offers():
    assert _offered(["brain", "subdural", "bone"], _JpgLike()) == ["brain", "bone"]
    assert _offered(["brain", "subdural", "bone"], object()) == ["brain", "subdural", "bone"]
    assert _offered(["subdural"], _JpgLike()) == ["subdural"]  # refused at load, by name


def test_window_stack_on_the_jpg_release_is_the_users_mistake(capsys, tmp_path, jpg_sample_dir):
    db = tmp_path / "r.duckdb"
    args = ["run", "--data", str(jpg_sample_dir), "--window", "stack", "--db", str(db)]
    code, _, err = run_main(capsys, *args, "--folds", "2", "--exclude", "none")
    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith("Error: --window brain,subdural,bone: ") and "--window bone" in line
    assert not db.exists()


def test_a_presets_warmup_fits_a_short_run():
    cfg = RunConfig(preset="modern", windows=None, patient_rule=None, epochs=1).resolved("cpu")
    assert cfg.warmup == 0
    with pytest.raises(UsageError, match="--warmup 1 with --epochs 1"):
        RunConfig(preset="modern", warmup=1, epochs=1).resolved("cpu")


def test_modern_preset_on_the_jpg_release_stacks_its_two_windows(jpg_sample_dir):
    cfg = RunConfig(
        data=str(jpg_sample_dir), preset="modern", windows=None, patient_rule=None, ensemble=None
    )
    assert RunProtocol(cfg).cfg.windows == ["brain", "bone"]
    given = RunConfig(data=str(jpg_sample_dir), preset="modern", windows=["brain"])
    assert RunProtocol(given).cfg.windows == ["brain"]


# ----------------------------------------------------------------- end to end


def test_a_run_with_the_whole_recipe_records_it_and_fits_the_rule_on_validation_only(
    capsys, tmp_path
):
    db = tmp_path / "r.duckdb"
    args = list(TINY_ARGS)
    args[args.index("--epochs") + 1] = "2"
    code, out, err = run_main(
        capsys,
        "run",
        *args,
        "--window",
        "stack",
        "--context",
        "1",
        "--augment-all",
        "--schedule",
        "cosine",
        "--warmup",
        "1",
        "--weight-decay",
        "0.01",
        "--tta",
        "flip",
        "--patient-rule",
        "learned",
        "--strategy",
        "mixup:0.4",
        "--db",
        str(db),
    )
    assert code == 0, err
    with duckdb.connect(str(db), read_only=True) as con:
        (config, calibration) = con.execute(
            "SELECT config, calibration FROM runs WHERE status = 'finished'"
        ).fetchone()
        folds = con.execute("SELECT fold, notes, val_patients FROM folds ORDER BY fold").fetchall()
        test_patients = {
            r[0]
            for r in con.execute(
                "SELECT DISTINCT patient_id FROM predictions WHERE split = 'test' AND fold IS NULL"
            ).fetchall()
        }
    config, calibration = json.loads(config), json.loads(calibration)
    assert config["context"] == 1 and config["tta"] == "flip" and config["weight_decay"] == 0.01
    assert config["windows"] == ["brain", "subdural", "bone"]
    for _, notes, val_patients in folds:
        notes = json.loads(notes)
        assert notes["input"]["in_chans"] == 9  # three windows × three slices
        fit = notes["patient_rule"]
        # fitted on the fold's own validation patients: their number, never a test patient's
        assert fit["n_ich"] + fit["n_healthy"] == len(val_patients)
        assert not set(val_patients) & test_patients
        assert any(s["strategy"].startswith("mixup") for s in notes["steps"])
    (rule,) = [c for c in calibration if c["kind"] == "patient-rule"]
    # the vote's rule: every out-of-fold validation patient, none of the test's
    every_val = {p for _, _, v in folds for p in v}
    assert rule["params"]["n_ich"] + rule["params"]["n_healthy"] == len(every_val)
    assert len(rule["params"]["coefficients"]) == 5 or rule["params"]["fallback"]
    code, out, _ = run_main(capsys, "show", "--db", str(db), _latest(db))
    assert code == 0 and "context ±1 slice(s)" in out and "test-time flip" in out


def _latest(db) -> str:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()[0]


def test_context_and_tta_change_the_result_and_repeat_exactly(tmp_path):
    """The settings reach training (the numbers move) and stay deterministic."""

    def test_probs(**changes) -> np.ndarray:
        cfg = RunConfig(**{**TINY_CONFIG, **changes})
        protocol = RunProtocol(cfg, cache_dir=tmp_path / "cache")
        dataset = protocol.load_data()
        split = protocol.split_of(dataset)
        record, _ = protocol.fold_trial(dataset, split, (0, 0))
        return record.predictions.prob

    plain = test_probs()
    assert np.array_equal(test_probs(context=1), test_probs(context=1))
    assert not np.array_equal(plain, test_probs(context=1))
    assert not np.array_equal(plain, test_probs(tta="flip"))


# ----------------------------------------------------------------- the second stage


def test_stage2_refuses_an_ensemble_rule_it_would_replace():
    with pytest.raises(UsageError, match="--stage2 gru with --ensemble fold-votes"):
        RunConfig(preset="quick", stage2="gru", ensemble="fold-votes").resolved("cpu")


@pytest.mark.parametrize("kind", ["gru", "conv"])
def test_a_second_stage_is_fitted_on_out_of_fold_slices_and_decides_the_vote(
    capsys, tmp_path, kind
):
    db = tmp_path / "r.duckdb"
    code, _, err = run_main(capsys, "run", *TINY_ARGS, "--stage2", kind, "--db", str(db))
    assert code == 0, err
    with duckdb.connect(str(db), read_only=True) as con:
        run_id, calibration, threshold = con.execute(
            "SELECT r.run_id, r.calibration, m.threshold FROM runs r JOIN metrics m USING "
            "(run_id) WHERE m.model = 'vote' AND m.split = 'test' AND m.scope = 'slice'"
        ).fetchone()
        val_patients = {
            p for (v,) in con.execute("SELECT val_patients FROM folds").fetchall() for p in v
        }
        curve = con.execute(
            "SELECT count(*) FROM curves WHERE run_id = ? AND fold IS NULL", [run_id]
        ).fetchone()[0]
    (stage2,) = [c for c in json.loads(calibration) if c["kind"] == "stage2"]
    # one scan per out-of-fold validation patient: no test patient reaches stage 2's fit
    assert stage2["params"]["kind"] == kind
    assert stage2["params"]["scans"] == len(val_patients)
    assert curve == 101 and 0.0 <= threshold <= 1.0  # its own curve, and its threshold
    # the fold files keep the embeddings a resumed run's vote reads again
    from ichbench.store.journal import Journal

    record = Journal(db).read_fold(run_id, (0, 0))
    assert record.embeddings is not None
    assert record.embeddings.shape == (len(record.predictions.prob), 65)  # tinycnn: 64 + 1


# ----------------------------------------------------------------- normalisation


def test_a_pretrained_backbone_sees_its_own_pretraining_statistics(capsys, tmp_path):
    """ImageNet weights get ImageNet's mean and std (one channel: their mean, as timm
    sums the RGB filters), in training and in every later reader of the checkpoints."""
    import timm
    from safetensors.torch import save_file

    from ichbench.checkpoints import load_fold_models

    weights = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(weights))
    db = tmp_path / "r.duckdb"
    args = list(TINY_ARGS)
    args[args.index("tinycnn")] = "timm:resnet18"
    code, _, err = run_main(
        capsys, "run", *args, "--weights", str(weights), "--pretrained", "--db", str(db)
    )
    assert code == 0, err
    run_id = _latest(db)
    with duckdb.connect(str(db), read_only=True) as con:
        notes = [json.loads(n) for (n,) in con.execute("SELECT notes FROM folds").fetchall()]
    for n in notes:
        assert n["input"]["mean"] == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
        assert n["input"]["std"] == pytest.approx([(0.229 + 0.224 + 0.225) / 3])
    loaded = load_fold_models(db, run_id, [(0, 0)])
    assert loaded.any, loaded.problems
    model = next(iter(loaded.models.values()))
    assert model.mean == pytest.approx((0.449,), abs=1e-3)
