"""mixup and cutmix: their specs, what they record, and the batches and soft targets
they make (targets always describe the pixels: mixed in the same proportions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ichbench_plugins.strategies as builtin_strategies
from ichbench.augment import (
    ComposedBatchTransform,
    CutMix,
    MixUp,
    compose_batch_transforms,
    cutmix_boxes,
    sample_beta,
)
from ichbench.errors import UsageError
from ichbench.events import Emitter
from ichbench.interfaces import SliceDataset, StrategyContext, TrainPlan
from ichbench.plugins import Plugins
from ichbench.registry import Registry
from ichbench.training import DeviceImages, TrainSettings, train_fold
from ichbench_plugins.backbones import _tiny_cnn

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def registry() -> Registry:
    plugins = Plugins(load_entry_points=False)
    plugins.register(
        builtin_strategies, name="ichbench_plugins.strategies", distribution="ichbench"
    )
    return plugins.registry


def start(n: int = 12) -> tuple[TrainPlan, StrategyContext]:
    labels = np.tile([0, 0, 1], n // 3).astype(np.int64)
    dataset = SliceDataset(
        name="hand-made",
        dataset_hash="0" * 16,
        images=np.zeros((n, 1, 4, 4), dtype=np.uint8),
        labels=labels,
        patient_ids=np.repeat([1, 2], n // 2),
        slice_numbers=np.tile(np.arange(1, n // 2 + 1), 2),
        positions=np.tile(np.arange(n // 2) / (n // 2), 2).astype(np.float32),
        subtypes=np.zeros((n, 5), dtype=np.uint8),
    )
    plan = TrainPlan(indices=np.arange(n), augment=np.zeros(n, dtype=bool))
    return plan, StrategyContext(dataset, np.array([1, 2]), np.random.default_rng(0))


def batch(n: int = 32, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose pixels all equal the sample's ICH target: a sample's pixel mean is then
    its ICH target, before and after any mixing that keeps targets true to the pixels."""
    gen = torch.Generator().manual_seed(seed)
    ich = torch.rand(n, generator=gen)
    x = ich.view(n, 1, 1, 1).expand(n, 2, size, size).clone()
    return x, torch.stack([1 - ich, ich], dim=1)


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize("name, default", [("mixup", 0.2), ("cutmix", 1.0)])
def test_specs_validate_alpha_and_default_it(registry, name, default):
    assert registry.create("strategy", name).alpha == default
    assert registry.create("strategy", f"{name}:0.4").alpha == 0.4
    for bad, why in (
        ("0", "must be > 0"),
        ("-1", "must be > 0"),
        ("nan", "not a finite"),
        ("inf", "not a finite"),
        ("x", "not a number"),
    ):
        with pytest.raises(UsageError, match=rf"^{name}: .*{why}.*expected {name} or {name}:ALPHA"):
            registry.create("strategy", f"{name}:{bad}")
    with pytest.raises(UsageError, match=rf"^{name}: got '{name}:1,2'; expected {name}"):
        registry.create("strategy", f"{name}:1,2")


def test_help_says_what_they_do(registry):
    helps = {n: registry.get("strategy", n).help for n in ("mixup", "cutmix")}
    assert "Beta(ALPHA, ALPHA)" in helps["mixup"] and "blend" in helps["mixup"]
    assert "box" in helps["cutmix"] and "area" in helps["cutmix"]


def test_they_keep_the_rows_and_note_what_they_do(registry):
    plan, ctx = start()
    out = registry.create("strategy", "mixup:0.3").apply(plan, ctx)
    assert np.array_equal(out.indices, plan.indices) and out.class_weights == plan.class_weights
    assert out.batch_transform == MixUp(0.3) and plan.batch_transform is None
    assert out.notes["steps"] == [
        {
            "strategy": "mixup:0.3",
            "batch_transform": "mixup",
            "alpha": 0.3,
            "lambda": "per sample",
            "added": 0,
            "removed": 0,
        }
    ]
    assert plan.notes == {}


def test_two_batch_strategies_chain_in_command_line_order(registry):
    plan, ctx = start()
    for spec in ("weight:ich,4", "mixup:0.3", "augment:2", "cutmix"):
        plan = registry.create("strategy", spec).apply(plan, ctx)
    assert plan.batch_transform == ComposedBatchTransform((MixUp(0.3), CutMix(1.0)))
    assert [s["strategy"] for s in plan.notes["steps"]] == [
        "weight:ich,4",
        "mixup:0.3",
        "augment:2",
        "cutmix:1",
    ]
    x, targets = batch()
    gen = torch.Generator().manual_seed(5)
    got_x, got_t = plan.batch_transform(x, targets, gen)
    gen = torch.Generator().manual_seed(5)
    want_x, want_t = CutMix(1.0)(*MixUp(0.3)(x, targets, gen), gen)
    assert torch.equal(got_x, want_x) and torch.equal(got_t, want_t)
    assert torch.allclose(got_t.sum(1), torch.ones(len(x)))
    assert torch.allclose(got_x.mean(dim=(1, 2, 3)), got_t[:, 1], atol=1e-6)


def test_compose_keeps_chains_flat():
    a, b, c = MixUp(0.1), CutMix(0.2), MixUp(0.3)
    assert compose_batch_transforms(None, a) is a
    assert compose_batch_transforms(compose_batch_transforms(a, b), c).transforms == (a, b, c)


# --------------------------------------------------------------------------- mixing


def test_mixup_targets_sum_to_one_and_match_the_pixels():
    x, targets = batch()
    mixed, soft = MixUp(0.4)(x, targets, torch.Generator().manual_seed(1))
    assert mixed.shape == x.shape and soft.shape == targets.shape
    assert torch.allclose(soft.sum(1), torch.ones(len(x)))
    # every pixel of a mixed sample is λ·own + (1 − λ)·partner: its ICH target
    assert torch.allclose(mixed, soft[:, 1].view(-1, 1, 1, 1).expand_as(mixed), atol=1e-6)
    assert not torch.allclose(soft, targets)


def test_mixup_of_hard_labels_is_a_convex_blend_of_two_samples():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 6, 6, generator=gen)
    labels = torch.randint(0, 2, (16,), generator=gen)
    one_hot = torch.nn.functional.one_hot(labels, 2).float()
    mixed, soft = MixUp(1.0)(x, one_hot, torch.Generator().manual_seed(2))
    for i in range(16):  # some partner j and weight λ explain both pixels and targets
        fits = []
        for j in range(16):
            diff = x[i] - x[j]
            if diff.abs().max() < 1e-6:
                continue
            lam = float(((mixed[i] - x[j]) * diff).sum() / (diff * diff).sum())
            if torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5):
                fits.append((j, lam))
        if not fits:  # it drew itself
            assert torch.allclose(mixed[i], x[i]) and torch.equal(soft[i], one_hot[i])
            continue
        j, lam = fits[0]
        assert 0 <= lam <= 1
        assert torch.allclose(soft[i], lam * one_hot[i] + (1 - lam) * one_hot[j], atol=1e-5)


def test_cutmix_pastes_one_box_and_weights_targets_by_its_area():
    n, size = 64, 16
    x = torch.arange(n, dtype=torch.float32).div(n).view(n, 1, 1, 1).expand(n, 1, size, size)
    targets = torch.stack([1 - x[:, 0, 0, 0], x[:, 0, 0, 0]], dim=1)
    mixed, soft = CutMix(1.0)(x.clone(), targets, torch.Generator().manual_seed(4))
    assert torch.allclose(soft.sum(1), torch.ones(n))
    pasted_any = False
    for i in range(n):
        own = mixed[i, 0] == x[i, 0, 0, 0]
        foreign = ~own
        if foreign.any():
            pasted_any = True
            values = mixed[i, 0][foreign].unique()
            assert len(values) == 1  # one partner
            partner = int(round(float(values[0]) * n))
            rows, cols = torch.nonzero(foreign, as_tuple=True)
            box = foreign[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert box.all() and int(box.sum()) == int(foreign.sum())  # one rectangle
            area = float(foreign.float().mean())
            assert torch.allclose(
                soft[i], (1 - area) * targets[i] + area * targets[partner], atol=1e-6
            )
        else:
            assert torch.allclose(soft[i], targets[i])
    assert pasted_any


def test_cutmix_boxes_cover_about_one_minus_lambda():
    gen = torch.Generator().manual_seed(0)
    lam = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    centred = cutmix_boxes(lam, 64, 64, gen)
    areas = centred.float().mean(dim=(1, 2))
    assert areas[-1] == 0
    # clipped at the border the box can only lose area
    assert torch.all(areas <= (1 - lam) + 1e-6)


def test_the_same_generator_state_gives_the_same_batch():
    x, targets = batch()
    for transform in (MixUp(0.2), CutMix(1.0)):
        a = transform(x, targets, torch.Generator().manual_seed(9))
        b = transform(x, targets, torch.Generator().manual_seed(9))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_beta_draws_follow_beta_and_leave_the_global_stream_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    draws = sample_beta(0.5, 20000, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), before)
    beta = torch.distributions.Beta(torch.tensor(0.5), torch.tensor(0.5))
    assert float(draws.mean()) == pytest.approx(float(beta.mean), abs=0.01)
    assert float(draws.var()) == pytest.approx(float(beta.variance), abs=0.01)
    assert float(draws.min()) >= 0 and float(draws.max()) <= 1


def test_bad_batches_are_named():
    with pytest.raises(ValueError, match="mixup expects soft targets of shape"):
        MixUp(1.0)(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), torch.Generator())
    empty = torch.zeros(0, 1, 4, 4), torch.zeros(0, 2)
    assert CutMix(1.0)(*empty, torch.Generator())[0].shape == (0, 1, 4, 4)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("spec", ["mixup:0.4", "cutmix:1", "cutmix:0.5"])
def test_a_fold_trains_with_a_batch_strategy(registry, spec):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(60, 1, 12, 12), dtype=np.uint8)
    labels = (rng.random(60) < 0.4).astype(np.int64)
    plan, ctx = start()
    plan = registry.create("strategy", spec).apply(
        TrainPlan(np.arange(44), labels[:44].astype(bool), class_weights=(1.0, 3.0)), ctx
    )
    data = DeviceImages(images, labels, CPU)
    torch.manual_seed(0)
    settings = TrainSettings(epochs=2, batch_size=16, lr=2e-3, patience=5, seed=0, device=CPU)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        state, _, history = train_fold(
            _tiny_cnn(1, 2), plan, data, np.arange(44, 60), settings, Emitter([]), fold=0
        )
        assert len(history) == 2 and all(np.isfinite(h.train_loss) for h in history)
        states.append(state)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # reproducible
