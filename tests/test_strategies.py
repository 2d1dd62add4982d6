"""The built-in imbalance strategies, and the on-the-fly augmentation they ask for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ichbench_plugins.strategies as builtin_strategies
from ichbench.augment import AugmentConfig, augment_batch
from ichbench.errors import UsageError
from ichbench.interfaces import SliceDataset, StrategyContext, TrainPlan
from ichbench.plugins import Plugins
from ichbench.registry import Registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    plugins = Plugins(load_entry_points=False)
    plugins.register(
        builtin_strategies, name="ichbench_plugins.strategies", distribution="ichbench"
    )
    return plugins.registry


def make_dataset(labels_per_patient: list[np.ndarray]) -> SliceDataset:
    """A SliceDataset built by hand: 1×4×4 images, positions (k - 1) / n."""
    labels = np.concatenate(labels_per_patient).astype(np.int64)
    patient_ids = np.concatenate(
        [np.full(len(lab), 100 + p, dtype=np.int64) for p, lab in enumerate(labels_per_patient)]
    )
    slice_numbers = np.concatenate([np.arange(1, len(lab) + 1) for lab in labels_per_patient])
    positions = np.concatenate([np.arange(len(lab)) / len(lab) for lab in labels_per_patient])
    n = len(labels)
    return SliceDataset(
        name="hand-made",
        dataset_hash="0" * 16,
        images=np.zeros((n, 1, 4, 4), dtype=np.uint8),
        labels=labels,
        patient_ids=patient_ids,
        slice_numbers=slice_numbers.astype(np.int64),
        positions=positions.astype(np.float32),
        subtypes=np.zeros((n, 5), dtype=np.uint8),
    )


def skewed_dataset(n_patients: int = 30, slices: int = 20, seed: int = 0) -> SliceDataset:
    """Bleeding concentrated at positions 0.3-0.6, most often at 0.4-0.5, never elsewhere."""
    rng = np.random.default_rng(seed)
    position = np.arange(slices) / slices
    p_ich = np.where(
        (position >= 0.4) & (position < 0.5),
        0.6,
        np.where((position >= 0.3) & (position < 0.6), 0.2, 0.0),
    )
    return make_dataset([(rng.random(slices) < p_ich).astype(int) for _ in range(n_patients)])


def start(
    dataset: SliceDataset, train: np.ndarray, seed: int = 0
) -> tuple[TrainPlan, StrategyContext]:
    """The plan the runner starts from: every row of the training patients."""
    rows = np.flatnonzero(np.isin(dataset.patient_ids, train))
    plan = TrainPlan(indices=rows, augment=np.zeros(len(rows), dtype=bool))
    return plan, StrategyContext(dataset, train, np.random.default_rng(seed))


def counts(plan: TrainPlan, dataset: SliceDataset) -> tuple[int, int]:
    ich = int((dataset.labels[plan.indices] == 1).sum())
    return ich, len(plan.indices) - ich


def apply_all(
    registry: Registry, specs: list[str], plan: TrainPlan, ctx: StrategyContext
) -> TrainPlan:
    for spec in specs:
        plan = registry.create("strategy", spec).apply(plan, ctx)
    return plan


# --------------------------------------------------------------------------- oversampling


@pytest.mark.parametrize("ratio", [1.5, 2, 3.3, 7.25])
def test_augment_reaches_the_ratio_exactly(registry, ratio):
    dataset = skewed_dataset()
    plan, ctx = start(dataset, dataset.patients[:24])
    ich_before, healthy_before = counts(plan, dataset)
    out = registry.create("strategy", f"augment:{ratio}").apply(plan, ctx)
    ich_after, healthy_after = counts(out, dataset)
    assert ich_after == round(ratio * ich_before)
    assert healthy_after == healthy_before
    assert not out.augment[: len(plan.indices)].any()  # originals stay untransformed
    assert out.augment[len(plan.indices) :].all()
    assert (dataset.labels[out.indices[len(plan.indices) :]] == 1).all()
    step = out.notes["steps"][-1]
    assert step["added"] == ich_after - ich_before and step["removed"] == 0


def test_augment_draws_positions_by_the_bleeding_histogram(registry):
    dataset = skewed_dataset(n_patients=40)
    train = dataset.patients[:32]
    plan, ctx = start(dataset, train)
    out = registry.create("strategy", "augment:60").apply(plan, ctx)
    added = out.indices[len(plan.indices) :]
    assert len(added) > 2000
    observed = np.bincount(ctx.position_bins(added), minlength=ctx.histogram_bins) / len(added)
    expected = ctx.bleeding_histogram()
    assert expected[4] > 2 * expected[3]  # the fixture really is skewed
    assert 0.5 * np.abs(observed - expected).sum() < 0.04  # total-variation distance
    assert observed[expected == 0].sum() == 0


def test_the_histogram_sees_training_patients_only():
    train_part = skewed_dataset(n_patients=10, seed=1)
    rng = np.random.default_rng(2)
    late = [np.r_[np.zeros(15, int), (rng.random(5) < 0.9).astype(int)] for _ in range(10)]
    dataset = make_dataset(
        [train_part.labels[train_part.patient_ids == p] for p in train_part.patients] + late
    )
    _, ctx = start(dataset, dataset.patients[:10])
    assert ctx.bleeding_histogram()[7:].sum() == 0


def test_bootstrap_adds_untransformed_copies(registry):
    dataset = skewed_dataset()
    plan, ctx = start(dataset, dataset.patients[:24])
    ich_before, _ = counts(plan, dataset)
    out = registry.create("strategy", "bootstrap:2.5").apply(plan, ctx)
    assert counts(out, dataset)[0] == round(2.5 * ich_before)
    assert not out.augment.any()
    assert np.isin(out.indices, plan.indices).all()


def test_oversampling_without_ich_rows_changes_nothing(registry):
    dataset = make_dataset([np.zeros(10, int), np.zeros(8, int)])
    plan, ctx = start(dataset, dataset.patients)
    out = registry.create("strategy", "augment:3").apply(plan, ctx)
    np.testing.assert_array_equal(out.indices, plan.indices)


def test_strategies_are_deterministic_given_the_rng(registry):
    dataset = skewed_dataset()
    specs = ["undersample:0.8", "augment:2", "bootstrap:1.5"]
    a = apply_all(registry, specs, *start(dataset, dataset.patients[:20], seed=5))
    b = apply_all(registry, specs, *start(dataset, dataset.patients[:20], seed=5))
    c = apply_all(registry, specs, *start(dataset, dataset.patients[:20], seed=6))
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)


# --------------------------------------------------------------------------- undersample


def test_undersample_drops_the_rarest_positions_first(registry):
    dataset = skewed_dataset()
    plan, ctx = start(dataset, dataset.patients[:24])
    ich, healthy = counts(plan, dataset)
    out = registry.create("strategy", "undersample:1").apply(plan, ctx)
    assert counts(out, dataset) == (ich, round(1 * ich))
    assert np.isin(plan.indices[dataset.labels[plan.indices] == 1], out.indices).all()
    rarity = ctx.bleeding_histogram()[ctx.position_bins(plan.indices)]
    kept = np.isin(plan.indices, out.indices)
    healthy_rows = dataset.labels[plan.indices] == 0
    assert rarity[healthy_rows & ~kept].max() <= rarity[healthy_rows & kept].min()
    assert out.notes["steps"][-1]["removed"] == healthy - ich


def test_undersample_breaks_ties_at_random_not_by_row_order(registry):
    dataset = skewed_dataset()
    plan, ctx = start(dataset, dataset.patients[:24])
    out = registry.create("strategy", "undersample:2").apply(plan, ctx)
    dropped_patients = dataset.patient_ids[np.setdiff1d(plan.indices, out.indices)]
    assert len(np.unique(dropped_patients)) > 12  # not just the first patients' rows


def test_undersample_to_a_larger_ratio_is_a_no_op(registry):
    dataset = skewed_dataset()
    plan, ctx = start(dataset, dataset.patients[:24])
    out = registry.create("strategy", "undersample:1000").apply(plan, ctx)
    np.testing.assert_array_equal(out.indices, plan.indices)
    assert out.notes["steps"][-1]["removed"] == 0


# --------------------------------------------------------------------------- weights


def test_weights_multiply_the_class_weights(registry):
    dataset = skewed_dataset(n_patients=4)
    plan, ctx = start(dataset, dataset.patients)
    out = apply_all(registry, ["weight:ich,4", "weight:healthy,0.5", "weight:ICH,2"], plan, ctx)
    assert out.class_weights == (0.5, 8.0)
    np.testing.assert_array_equal(out.indices, plan.indices)
    assert plan.class_weights == (1.0, 1.0)


def test_composition_runs_in_order_and_records_each_step(registry):
    dataset = skewed_dataset()
    plan, ctx = start(dataset, dataset.patients[:24])
    ich, _ = counts(plan, dataset)
    out = apply_all(registry, ["undersample:0.5", "augment:2", "weight:ich,4"], plan, ctx)
    assert [s["strategy"] for s in out.notes["steps"]] == [
        "undersample:0.5",
        "augment:2",
        "weight:ich,4",
    ]
    assert counts(out, dataset) == (2 * ich, round(0.5 * ich))
    assert out.class_weights == (1.0, 4.0)
    assert plan.notes == {}  # the input plan is never modified


@pytest.mark.parametrize(
    "spec, message",
    [
        ("augment:abc", "augment: 'abc' is not a number; expected augment:R with R >= 1"),
        ("augment:0.9", "augment: 0.9 must be >= 1; expected augment:R"),
        ("augment:-2", "augment: -2 must be >= 1"),
        ("augment", "augment: got 'augment'; expected augment:R"),
        ("augment:2,3", "expected augment:R"),
        ("bootstrap:nan", "bootstrap: 'nan' is not a finite number"),
        ("bootstrap:0.5", "bootstrap: 0.5 must be >= 1"),
        ("undersample:0", "undersample: 0 must be > 0"),
        ("undersample:-0.5", "undersample: -0.5 must be > 0"),
        ("undersample:x", "undersample: 'x' is not a number"),
        ("weight:ich,0", "weight: 0 must be > 0"),
        ("weight:healthy,-1", "weight: -1 must be > 0"),
        ("weight:ich,inf", "weight: 'inf' is not a finite number"),
        ("weight:tumour,2", "weight: unknown class 'tumour'; expected weight:CLASS,W"),
        ("weight:ich", "weight: got 'weight:ich'; expected weight:CLASS,W"),
    ],
)
def test_bad_arguments_name_the_strategy_and_its_form(registry, spec, message):
    with pytest.raises(UsageError) as info:
        registry.create("strategy", spec)
    assert message in str(info.value)


# --------------------------------------------------------------------------- property


@st.composite
def random_setup(draw):
    n_patients = draw(st.integers(2, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    labels = [
        (rng.random(draw(st.integers(1, 12))) < rng.random()).astype(int) for _ in range(n_patients)
    ]
    n_train = draw(st.integers(1, n_patients))
    pool = st.sampled_from(
        [
            "augment:1.5",
            "augment:3.3",
            "bootstrap:2",
            "undersample:0.3",
            "undersample:2",
            "weight:ich,4",
            "weight:healthy,0.5",
        ]
    )
    return labels, n_train, draw(st.lists(pool, max_size=5)), seed


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_setup())
def test_no_plan_ever_holds_a_non_training_row(registry, setup):
    labels, n_train, specs, seed = setup
    dataset = make_dataset(labels)
    rng = np.random.default_rng(seed)
    train = np.sort(rng.choice(dataset.patients, size=n_train, replace=False))
    plan, ctx = start(dataset, train, seed)
    out = apply_all(registry, specs, plan, ctx)
    assert np.isin(dataset.patient_ids[out.indices], train).all()
    assert len(out.indices) == len(out.augment)
    assert out.indices.dtype == np.int64
    assert (dataset.labels[out.indices[out.augment]] == 1).all()


# --------------------------------------------------------------------------- augmentation


def test_augment_batch_keeps_shape_dtype_and_range():
    x = torch.rand(6, 2, 24, 20, generator=torch.Generator().manual_seed(0))
    y = augment_batch(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.allclose(y, x)


def test_augment_batch_is_deterministic_given_the_generator():
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    a = augment_batch(x, torch.Generator().manual_seed(7))
    b = augment_batch(x, torch.Generator().manual_seed(7))
    c = augment_batch(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_augment_batch_gives_each_image_its_own_transform():
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)).expand(8, -1, -1, -1)
    y = augment_batch(x.contiguous(), torch.Generator().manual_seed(3))
    assert len({tuple(img.flatten().tolist()[:32]) for img in y}) == 8


def test_augment_batch_with_zero_magnitudes_is_the_identity():
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    still = AugmentConfig(flip_p=0, rotate_deg=0, translate=0, scale=0, brightness=0, contrast=0)
    torch.testing.assert_close(augment_batch(x, torch.Generator().manual_seed(1), still), x)


def test_augment_batch_flip_only_mirrors_exactly():
    x = torch.rand(3, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    flip = AugmentConfig(flip_p=1, rotate_deg=0, translate=0, scale=0, brightness=0, contrast=0)
    torch.testing.assert_close(augment_batch(x, None, flip), x.flip(-1))


def test_augment_batch_rejects_integer_images():
    with pytest.raises(ValueError, match="float"):
        augment_batch(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
