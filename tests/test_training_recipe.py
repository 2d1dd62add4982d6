"""The training recipe beyond the paper's: learning-rate schedule and warmup, weight
decay, augmenting every sample, slice context (2.5D), pretrained normalisation, flip
test-time augmentation, batch transforms with soft targets and epoch-aware losses; and
that with every one of them at its default a fold trains exactly as the paper's does."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ichbench import training
from ichbench.data.preprocess import (
    channel_stats,
    context_table,
    gather_context,
    network_input,
    to_network,
)
from ichbench.events import Emitter
from ichbench.interfaces import TrainPlan
from ichbench.training import (
    DeviceImages,
    SoftTargetCrossEntropy,
    TrainSettings,
    augment_flags,
    lr_factor,
    make_loss,
    predict,
    steps_per_epoch,
    train_fold,
)
from ichbench_plugins.backbones import _tiny_cnn

CPU = torch.device("cpu")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def settings(**changes) -> TrainSettings:
    values = dict(epochs=2, batch_size=16, lr=2e-3, patience=5, seed=0, device=CPU)
    return TrainSettings(**{**values, **changes})


def toy_data(n: int = 72, channels: int = 1, size: int = 12, seed: int = 0):
    """Random images and labels of 8 patients (9 slices each), rows grouped by patient."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    patient_ids = np.repeat(np.arange(100, 100 + n // 9), 9)
    return images, labels, patient_ids


def fold(plan_changes=None, in_chans: int = 1, data_changes=None, **changes):
    """Train the tiny CNN on rows 0-53, validate on 54-71; returns (state, history, data)."""
    images, labels, patient_ids = toy_data(channels=1)
    data = DeviceImages(images, labels, CPU, patient_ids=patient_ids, **(data_changes or {}))
    rows = np.arange(54)
    plan = TrainPlan(indices=rows, augment=labels[rows].astype(bool), **(plan_changes or {}))
    torch.manual_seed(0)
    model = _tiny_cnn(in_chans, 2)
    state, _, history = train_fold(
        model, plan, data, np.arange(54, 72), settings(**changes), Emitter([]), fold=1
    )
    return state, history, data


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def optimiser_steps():
    """(optimiser class, learning rate) at every optimiser step taken during the test."""
    seen: list[tuple[type, float]] = []

    def hook(optimizer, args, kwargs):
        seen.append((type(optimizer), optimizer.param_groups[0]["lr"]))

    handle = register_optimizer_step_pre_hook(hook)
    yield seen
    handle.remove()


# --------------------------------------------------------------------------- defaults


def test_every_recipe_default_trains_exactly_as_before():
    plain, plain_history, _ = fold()
    explicit, explicit_history, _ = fold(
        schedule="constant",
        warmup=0,
        weight_decay=0.0,
        augment_all=False,
        context=0,
        tta="none",
        mean=None,
        std=None,
    )
    assert same_state(plain, explicit)

    def numbers(history):
        return [(e.epoch, e.train_loss, e.val_loss, e.val_f1) for e in history]

    assert numbers(plain_history) == numbers(explicit_history)


def test_settings_reject_unknown_choices():
    with pytest.raises(ValueError, match="schedule"):
        settings(schedule="linear")
    with pytest.raises(ValueError, match="tta"):
        settings(tta="rotate")
    with pytest.raises(ValueError, match="warmup and context"):
        settings(context=-1)
    with pytest.raises(ValueError, match="weight_decay"):
        settings(weight_decay=float("nan"))
    with pytest.raises(ValueError, match="std"):
        settings(mean=(0.5,), std=(0.0,))
    assert settings(mean=[0.5], std=[0.25]).mean == (0.5,)


# --------------------------------------------------------------------------- optimiser


def test_plain_adam_unless_weight_decay_then_adamw(optimiser_steps):
    fold()
    assert optimiser_steps and {cls for cls, _ in optimiser_steps} == {torch.optim.Adam}
    assert {lr for _, lr in optimiser_steps} == {2e-3}
    optimiser_steps.clear()
    state, _, _ = fold(weight_decay=0.05)
    assert {cls for cls, _ in optimiser_steps} == {torch.optim.AdamW}
    assert not same_state(state, fold()[0])


def test_steps_per_epoch_counts_the_steps_taken(optimiser_steps):
    fold(epochs=3)
    assert len(optimiser_steps) == 3 * steps_per_epoch(54, 16) == 12
    assert [steps_per_epoch(n, 4) for n in (0, 1, 4, 5, 6, 9)] == [0, 1, 1, 1, 2, 2]


def test_cosine_schedule_from_lr_towards_zero_per_step(optimiser_steps):
    fold(epochs=3, schedule="cosine", patience=10)
    lrs = [lr for _, lr in optimiser_steps]
    total = 3 * steps_per_epoch(54, 16)
    assert len(lrs) == total
    assert lrs[0] == pytest.approx(2e-3)
    assert lrs[-1] == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * (total - 1) / total)))
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] > 0


def test_warmup_rises_linearly_then_the_schedule_follows(optimiser_steps):
    fold(epochs=3, warmup=1, schedule="cosine", patience=10)
    lrs = [lr for _, lr in optimiser_steps]
    steps = steps_per_epoch(54, 16)
    assert lrs[:steps] == pytest.approx([2e-3 * (k + 1) / steps for k in range(steps)])
    assert lrs[steps] == pytest.approx(2e-3)  # the cosine starts at lr after the warmup
    span = 2 * steps
    assert lrs[-1] == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * (span - 1) / span)))
    optimiser_steps.clear()
    fold(epochs=2, warmup=1)  # a constant rate after the warmup
    assert [lr for _, lr in optimiser_steps][steps:] == pytest.approx([2e-3] * steps)


def test_lr_factor_is_one_without_schedule_or_warmup():
    flat = settings(epochs=4)
    assert {lr_factor(k, 5, flat) for k in range(20)} == {1.0}
    assert training.make_scheduler(torch.optim.Adam([nn.Parameter(torch.ones(1))]), 5, flat) is None


# --------------------------------------------------------------------------- loss


def test_one_hot_soft_targets_give_the_loss_of_the_labels():
    logits = torch.randn(9, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 1, 0, 0, 0, 1, 0, 0])
    for weights in ((1.0, 1.0), (0.5, 4.0)):
        w = torch.tensor(weights)
        soft = SoftTargetCrossEntropy(w)
        hard = nn.CrossEntropyLoss(weight=w)(logits, labels)
        targets = torch.nn.functional.one_hot(labels, 2).float()
        assert torch.allclose(soft(logits, targets), hard, rtol=1e-6, atol=0)
        assert torch.equal(soft(logits, labels), hard)  # labels are accepted as they are


def test_a_plan_with_a_batch_transform_gets_the_soft_target_loss():
    plan = TrainPlan(np.arange(4), np.zeros(4, bool), class_weights=(1.0, 4.0))
    assert type(make_loss(plan, CPU)) is nn.CrossEntropyLoss
    with_transform = plan.with_(batch_transform=lambda x, t, g: (x, t))
    loss = make_loss(with_transform, CPU)
    assert isinstance(loss, SoftTargetCrossEntropy)
    assert loss.weight.tolist() == [1.0, 4.0]


class EpochAwareLoss(nn.CrossEntropyLoss):
    def __init__(self, weight):
        super().__init__(weight=weight)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_the_loss_is_told_each_epoch_before_it_starts():
    made: list[EpochAwareLoss] = []

    def factory(weights):
        made.append(EpochAwareLoss(weights))
        return made[-1]

    fold(plan_changes={"loss_factory": factory}, epochs=3, patience=10)
    assert made[0].epochs == [1, 2, 3]
    made.clear()
    _, history, _ = fold(plan_changes={"loss_factory": factory}, epochs=6, patience=1)
    assert made[0].epochs == list(range(1, len(history) + 1))


# --------------------------------------------------------------------------- batch transform


def test_a_batch_transform_sees_augmented_batches_and_one_hot_targets(monkeypatch):
    """Its generator is its own: an identity transform leaves every input batch as it was
    (the augmentation's stream is untouched), and training the same up to the rounding
    of the soft-target loss."""
    inputs: dict[str, list[torch.Tensor]] = {"plain": [], "transform": []}
    calls: list[tuple] = []
    real = DeviceImages.to_network
    key = ["plain"]

    def recording(self, x, s):
        inputs[key[0]].append(x.clone())
        return real(self, x, s)

    monkeypatch.setattr(DeviceImages, "to_network", recording)
    plain, _, data = fold(epochs=2)

    def identity(x, targets, generator):
        calls.append((targets.clone(), generator, x.shape))
        return x, targets

    key[0] = "transform"
    with_transform, _, _ = fold(plan_changes={"batch_transform": identity}, epochs=2)
    training_inputs = [x for x in inputs["transform"] if x.shape[0] <= 16]
    assert len(calls) == len(training_inputs) == 8
    for got, want in zip(inputs["transform"], inputs["plain"]):
        assert torch.equal(got, want)
    for targets, generator, shape in calls:
        assert targets.dtype == torch.float32 and targets.shape == (shape[0], 2)
        assert torch.equal(targets.sum(1), torch.ones(shape[0]))
        assert isinstance(generator, torch.Generator) and generator.device == CPU
    assert all(g is calls[0][1] for _, g, _ in calls)  # one stream for the whole fold
    for k in plain:
        assert torch.allclose(plain[k].float(), with_transform[k].float(), atol=1e-4)


def test_batch_transform_outputs_feed_the_loss():
    """A transform that swaps every target trains a different model than the identity."""
    identity, _, _ = fold(plan_changes={"batch_transform": lambda x, t, g: (x, t)})
    swapped, _, _ = fold(plan_changes={"batch_transform": lambda x, t, g: (x, t.flip(1))})
    assert not same_state(identity, swapped)


# --------------------------------------------------------------------------- augment_all


def test_augment_all_flags_every_sample(monkeypatch):
    plan = TrainPlan(np.arange(6), np.array([1, 0, 0, 1, 0, 0], bool))
    assert augment_flags(plan, settings()).tolist() == [1, 0, 0, 1, 0, 0]
    assert augment_flags(plan, settings(augment_all=True)).all()

    seen: list[int] = []
    real = training.augment_batch

    def counting(x, generator):
        seen.append(x.shape[0])
        return real(x, generator)

    monkeypatch.setattr(training, "augment_batch", counting)
    fold(augment_all=True, epochs=2, batch_size=18)
    assert sum(seen) == 2 * 54


# --------------------------------------------------------------------------- slice context


@st.composite
def grouped_patients(draw):
    lengths = draw(st.lists(st.integers(1, 7), min_size=1, max_size=6))
    ids = draw(
        st.lists(st.integers(0, 10**6), min_size=len(lengths), max_size=len(lengths), unique=True)
    )
    return np.repeat(np.asarray(ids, dtype=np.int64), lengths)


@given(patient_ids=grouped_patients(), n=st.integers(0, 4))
def test_context_table_stays_in_the_scan_and_repeats_its_edges(patient_ids, n):
    table = context_table(patient_ids, n)
    count = len(patient_ids)
    assert table.shape == (count, 2 * n + 1) and table.dtype == np.int64
    assert np.array_equal(table[:, n], np.arange(count))  # the centre is the row itself
    assert (patient_ids[table] == patient_ids[:, None]).all()  # never another patient
    for i in range(count):
        scan = np.flatnonzero(patient_ids == patient_ids[i])
        expected = np.clip(np.arange(i - n, i + n + 1), scan.min(), scan.max())
        assert np.array_equal(table[i], expected)


def test_context_table_refuses_rows_not_grouped_by_patient():
    with pytest.raises(ValueError, match="grouped by patient"):
        context_table(np.array([1, 1, 2, 1]), 1)
    with pytest.raises(ValueError, match=">= 0"):
        context_table(np.array([1]), -1)


def test_device_gather_matches_the_numpy_reference():
    images, labels, patient_ids = toy_data(channels=2, size=6)
    data = DeviceImages(images, labels, CPU, patient_ids=patient_ids, context=2)
    index = np.array([0, 8, 9, 40, 71, 13])
    got = data.unit_batch(torch.from_numpy(index), None, settings(context=2), None)
    table = context_table(patient_ids, 2)
    reference = np.stack(
        [np.concatenate([images[table[i, j]] for j in range(5)], axis=0) for i in index]
    )
    assert np.array_equal(gather_context(images, table, index), reference)
    assert got.shape == (6, 10, 6, 6)
    assert torch.equal(got, torch.from_numpy(reference).float() / 255)
    # channels offset-major: the row's own windows are the middle block
    assert torch.equal(got[:, 4:6], torch.from_numpy(images[index]).float() / 255)


def test_context_needs_patient_ids():
    images, labels, _ = toy_data()
    data = DeviceImages(images, labels, CPU)
    with pytest.raises(ValueError, match="patient_ids"):
        data.batch(torch.tensor([0, 1]), None, settings(context=1), None)


def test_a_fold_trains_and_predicts_with_context_and_pretrained_stats():
    mean, std = channel_stats(IMAGENET_MEAN, IMAGENET_STD, 3)
    state, history, data = fold(
        in_chans=3, context=1, mean=mean, std=std, data_changes={"context": 1}
    )
    assert all(math.isfinite(h.train_loss) for h in history)
    first = next(v for k, v in state.items() if v.ndim == 4)
    assert first.shape[1] == 3


# --------------------------------------------------------------------------- normalisation


def test_default_normalisation_is_unchanged_and_stats_are_per_channel():
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(to_network(x.clone(), None, channels_last=False), (x - 0.5) / 0.5)
    got = to_network(x.clone(), None, channels_last=False, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    want = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    assert torch.allclose(got, want)
    with pytest.raises(ValueError, match="3 value.*for 1 input channel"):
        to_network(x[:, :1].clone(), None, channels_last=False, mean=IMAGENET_MEAN, std=None)
    images = (x * 255).to(torch.uint8).numpy()
    assert torch.equal(
        network_input(images, None, CPU, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        to_network(
            torch.from_numpy(images).float() / 255,
            None,
            channels_last=False,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        ),
    )


def test_device_images_normalise_with_the_settings_stats():
    images, labels, _ = toy_data(channels=3, size=4)
    data = DeviceImages(images, labels, CPU)
    index = torch.tensor([3, 1])
    s = settings(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    got = data.batch(index, None, s, None)
    want = network_input(images[[3, 1]], None, CPU, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert torch.equal(got, want)


def test_channel_stats_follow_timms_adaptation_of_the_first_convolution():
    from timm.models import adapt_input_conv

    assert channel_stats(None, None, 3) == (None, None)
    assert channel_stats(IMAGENET_MEAN, IMAGENET_STD, 3) == (IMAGENET_MEAN, IMAGENET_STD)
    (mean,), (std,) = channel_stats(IMAGENET_MEAN, IMAGENET_STD, 1)
    assert (mean, std) == pytest.approx((sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3))

    weight = torch.randn(
        4, 3, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    rgb = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def pretrained(x):
        m, s = (
            torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD)
        )
        return torch.nn.functional.conv2d((x - m) / s, weight)

    # more channels: timm cycles the RGB filters (scaled); cycled statistics make a
    # cycled input give exactly the pretrained response
    for in_chans in (2, 5, 6, 9):
        mean, std = channel_stats(IMAGENET_MEAN, IMAGENET_STD, in_chans)
        assert mean == tuple(IMAGENET_MEAN[c % 3] for c in range(in_chans))
        adapted = adapt_input_conv(in_chans, weight.clone())
        for c in range(in_chans):
            assert torch.allclose(adapted[:, c], weight[:, c % 3] * 3 / in_chans)
        if in_chans % 3 == 0:
            x = rgb.repeat(1, in_chans // 3, 1, 1)
            m, s = (torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1) for v in (mean, std))
            assert torch.allclose(torch.nn.functional.conv2d((x - m) / s, adapted), pretrained(rgb))

    # one channel: timm sums the filters; for a grey image shown to a network whose RGB
    # filters agree, the averaged statistics give the pretrained response (exactly when
    # the three stds are equal)
    grey_weight = weight[:, :1].repeat(1, 3, 1, 1)
    adapted = adapt_input_conv(1, grey_weight.clone())
    assert torch.allclose(adapted, grey_weight.sum(1, keepdim=True))
    equal_std = (0.25, 0.25, 0.25)
    (m,), (s,) = channel_stats(IMAGENET_MEAN, equal_std, 1)
    grey = rgb[:, :1]
    shown = (
        grey.repeat(1, 3, 1, 1) - torch.tensor(IMAGENET_MEAN, dtype=grey.dtype).view(1, 3, 1, 1)
    ) / 0.25
    assert torch.allclose(
        torch.nn.functional.conv2d((grey - m) / s, adapted),
        torch.nn.functional.conv2d(shown, grey_weight),
    )


# --------------------------------------------------------------------------- tta


def test_flip_tta_averages_an_image_and_its_mirror():
    rng = np.random.default_rng(3)
    half = rng.integers(0, 256, size=(20, 1, 12, 6), dtype=np.uint8)
    symmetric = np.concatenate([half, half[..., ::-1]], axis=-1)
    labels = np.zeros(20, dtype=np.int64)
    torch.manual_seed(0)
    model = _tiny_cnn(1, 2)
    rows = np.arange(20)
    data = DeviceImages(symmetric, labels, CPU)
    assert np.array_equal(
        predict(model, data, rows, settings(tta="flip")), predict(model, data, rows, settings())
    )

    images = rng.integers(0, 256, size=(20, 1, 12, 12), dtype=np.uint8)
    plain = predict(model, DeviceImages(images, labels, CPU), rows, settings())
    mirrored = predict(model, DeviceImages(images[..., ::-1], labels, CPU), rows, settings())
    both = predict(model, DeviceImages(images, labels, CPU), rows, settings(tta="flip"))
    assert np.allclose(both, (plain + mirrored) / 2, atol=1e-6)
    assert not np.allclose(both, plain, atol=1e-6)
