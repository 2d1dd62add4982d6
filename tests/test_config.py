"""A configuration hashes by meaning: one canonical spelling per setting."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ichbench.config import (
    RunConfig,
    canonical_number,
    canonical_spec,
    preset_for_device,
)
from ichbench.errors import UsageError


@pytest.mark.parametrize(
    "a, b",
    [
        (dict(exclude=[58, 79, 79]), dict(exclude=[58, 79])),
        (dict(exclude=[79, 58]), dict(exclude=[58, 79])),
        (dict(weights=["ICH:4"]), dict(weights=["ich:4"])),
        (dict(weights=["ich:4.0"]), dict(weights=["ich:4"])),
        (dict(strategies=["augment:3.30"]), dict(strategies=["augment:3.3"])),
        (dict(strategies=["Undersample:1e-1"]), dict(strategies=["undersample:0.1"])),
        (dict(windows=["Brain", "BONE"]), dict(windows=["brain", "bone"])),
        (dict(backbone="ResNet50"), dict(backbone="resnet50")),
        (dict(patient_rule="k-consecutive:2.0"), dict(patient_rule="k-consecutive:2")),
        (dict(lr=1), dict(lr=1.0)),
    ],
)
def test_equal_settings_hash_equally(a, b):
    assert RunConfig(**a).hash == RunConfig(**b).hash
    assert RunConfig(**a).as_dict() == RunConfig(**b).as_dict()


@pytest.mark.parametrize(
    "a, b",
    [
        (dict(strategies=["augment:3.3"]), dict(strategies=["augment:3.4"])),
        (
            dict(strategies=["augment:2", "undersample:1"]),
            dict(strategies=["undersample:1", "augment:2"]),
        ),  # order of strategies matters
        (dict(windows=["brain", "bone"]), dict(windows=["bone", "brain"])),  # channel order
        (dict(exclude=[58]), dict(exclude=[58, 79])),
        (dict(backbone="timm:convnext_tiny"), dict(backbone="timm:ConvNeXt_Tiny")),
    ],
)
def test_different_settings_hash_differently(a, b):
    assert RunConfig(**a).hash != RunConfig(**b).hash


def test_canonical_number_and_spec():
    assert canonical_number("3.30") == "3.3"
    assert canonical_number("4.0") == "4"
    assert canonical_number("1e-1") == "0.1"
    assert canonical_number("007") == "7"
    assert canonical_number("12345678901234567890") == "12345678901234567890"
    for text in ("convnext_tiny", "nan", "inf", "/data/w.pth", "1.2.3"):
        assert canonical_number(text) == text
    assert canonical_spec("Timm:ConvNeXt_Tiny") == "timm:ConvNeXt_Tiny"
    assert canonical_spec("weight:ICH,4.00") == "weight:ICH,4"
    assert canonical_spec("mean") == "mean"
    assert canonical_spec("augment:") == "augment:"  # left for the registry to reject


def test_execution_only_settings_stay_out_of_the_hash():
    base = RunConfig(strategies=["augment:3.3"])
    assert replace(base, device="cuda", compile=True).hash == base.hash
    assert replace(base, seed=1).hash != base.hash


def test_replace_and_resolved_stay_canonical():
    cfg = replace(RunConfig(), weights=["ICH:4.0"], exclude=[79, 58, 79])
    assert cfg.weights == ["ich:4"] and cfg.exclude == [58, 79]
    resolved = RunConfig(preset="quick", strategies=["augment:3.30"]).resolved("cpu")
    assert resolved.strategies == ["augment:3.3"]
    assert resolved.strategy_specs() == ["augment:3.3"]


def test_round_trip_is_exact():
    cfg = RunConfig(
        strategies=["augment:3.3"],
        weights=["ich:4"],
        exclude=[],
        windows=["brain", "subdural"],
        lr=1e-4,
    ).resolved("cpu")
    again = RunConfig.from_dict(cfg.as_dict())
    assert again == cfg and again.as_dict() == cfg.as_dict() and again.hash == cfg.hash


def test_a_config_stored_in_an_older_spelling_loads_canonical():
    stored = RunConfig(preset="quick").resolved("cpu").as_dict()
    stored.update(exclude=[79, 58, 58], weights=["ICH:4.0"], strategies=["augment:3.30"])
    cfg = RunConfig.from_dict(stored)
    assert cfg.exclude == [58, 79]
    assert cfg.weights == ["ich:4"] and cfg.strategies == ["augment:3.3"]
    assert cfg.hash == RunConfig.from_dict(cfg.as_dict()).hash
    assert cfg.resolved("cpu") == cfg  # resumable: resolving it again changes nothing


def test_exclude_accepts_text_and_rejects_garbage():
    assert RunConfig(exclude="79,58").exclude == [58, 79]
    assert RunConfig(exclude="none").exclude == []
    for bad in (["x"], [-3], 58):
        with pytest.raises(UsageError, match="exclude"):
            RunConfig(exclude=bad)


def test_auto_preset_follows_the_device():
    assert preset_for_device("auto", "cuda") == "paper"
    assert preset_for_device("auto", "cuda:1") == "paper"
    assert preset_for_device("auto", "cpu") == "quick"
    assert preset_for_device("paper", "cpu") == "paper"
    assert preset_for_device("quick", "cuda") == "quick"
    assert RunConfig().resolved("cpu").preset == "quick"
    assert RunConfig(weights_file=None).resolved("cuda:0").preset == "paper"
    with pytest.raises(UsageError, match="Unknown preset"):
        RunConfig(preset="fast").resolved("cpu")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(lr=float("inf")), "--lr inf: must be above 0 and at most 1e+37"),
        (dict(lr=float("nan")), "--lr nan: must be above 0 and at most 1e+37"),
        (dict(lr=1e308), "--lr 1e+308: must be above 0 and at most 1e+37"),
        (dict(seed=-1), "--seed -1: must be between 0 and 4294967295"),
        (dict(seed=2**32), "--seed 4294967296: must be between 0 and 4294967295"),
        (dict(test_size=1.5), "--test-size 1.5: expected a fraction between 0 and 1"),
        (dict(test_size=0), "--test-size 0.0: expected a fraction between 0 and 1"),
        (dict(folds=1), "--folds 1: at least 2 folds are needed"),
        (dict(batch_size=1), "--batch-size 1: must be at least 2"),
    ],
)
def test_values_no_run_can_use_are_refused_on_resolving(changes, message):
    with pytest.raises(UsageError) as raised:
        RunConfig(preset="quick", **changes).resolved("cpu")
    assert str(raised.value).startswith(message)


def test_the_extremes_of_each_range_are_accepted():
    RunConfig(preset="quick", seed=2**32 - 1, lr=1e37, batch_size=2, folds=2).resolved("cpu")
    assert RunConfig(exclude=[2**63 - 1]).exclude == [2**63 - 1]


@pytest.mark.parametrize(
    "value, message",
    [
        ([2**63], "patient numbers are at most 9223372036854775807"),
        ("99999999999999999999999", "patient numbers are at most 9223372036854775807"),
        ([True], "expected patient numbers"),
        ([58.5], "expected patient numbers"),
    ],
)
def test_exclude_holds_only_int64_patient_numbers(value, message):
    with pytest.raises(UsageError, match=message):
        RunConfig(exclude=value)


def test_one_outer_fold_keeps_the_hashes_runs_were_recorded_under():
    """Outer folds came later: a configuration without them (`--outer 1`) must hash as it
    always did, or every stored run would look like another configuration to a grid."""
    assert RunConfig().hash == "52eb3123ab17acf6"
    assert RunConfig(strategies=["augment:3.3"], weights=["ich:4"]).hash == "a5ee5e2f23f04a84"
    assert RunConfig(outer=1).hash == RunConfig().hash != RunConfig(outer=5).hash
