"""Stage 2: slice embeddings from any backbone, a sequence model that learns what a
per-slice model cannot, and out-of-fold predictions that never come from a net that saw
the scan."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torch import nn

from ichbench import stage2
from ichbench.errors import UsageError
from ichbench.stage2 import (
    STAGE2_KINDS,
    Stage2Net,
    apply_stage2,
    cross_fit_stage2,
    fit_stage2,
    slice_embeddings,
)
from ichbench.training import DeviceImages, TrainSettings, predict
from ichbench_plugins.backbones import _tiny_cnn

CPU = torch.device("cpu")
SETTINGS = TrainSettings(epochs=1, batch_size=4, lr=1e-3, patience=1, seed=0, device=CPU)


def _images(n: int, size: int = 32, seed: int = 0) -> DeviceImages:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 1, size, size), dtype=np.uint8)
    return DeviceImages(images, np.arange(n) % 2, CPU)


def context_task(scans: int, seed: int, features: int = 6):
    """Scans where a slice bleeds exactly when BOTH its neighbours carry the marker: a
    slice's own features say nothing about its label beyond "this scan has markers"."""
    rng = np.random.default_rng(seed)
    sequences, labels = [], []
    for i in range(scans):
        length = int(rng.integers(20, 36))
        marked = (rng.random(length) < 0.35) & (i % 2 == 0)
        x = rng.normal(size=(length, features)).astype(np.float32)
        x[:, 0] = marked + 0.3 * x[:, 0]
        y = np.zeros(length, dtype=np.int64)
        y[1:-1] = marked[:-2] & marked[2:]
        sequences.append(x)
        labels.append(y)
    return sequences, labels, np.array([int(y.max()) for y in labels])


# --------------------------------------------------------------------------- embeddings


def test_tiny_cnn_embeddings_are_the_head_input_and_the_logit_difference():
    torch.manual_seed(0)
    model = _tiny_cnn(1, 2)
    data = _images(10)
    rows = np.array([7, 2, 5, 0, 9, 1])
    emb = slice_embeddings(model, data, rows, SETTINGS)
    assert emb.shape == (6, model.fc.in_features + 1) == (6, 65)
    assert emb.dtype == np.float32
    # the appended column is stage 1's own opinion: softmax(l)[1] == sigmoid(l1 - l0)
    probs = predict(model, data, rows, SETTINGS)
    np.testing.assert_allclose(1 / (1 + np.exp(-emb[:, -1])), probs, atol=1e-5)
    # rows come back in the order asked, whatever the batching
    again = slice_embeddings(model, data, rows[::-1], SETTINGS)
    np.testing.assert_allclose(again[::-1], emb, atol=1e-5)


def test_embeddings_restore_training_mode():
    model = _tiny_cnn(1, 2).train()
    slice_embeddings(model, _images(3), np.arange(3), SETTINGS)
    assert model.training


def test_timm_resnet18_embeddings_have_its_fc_width_plus_one():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=2)
    emb = slice_embeddings(model, _images(5, size=64), np.arange(5), SETTINGS)
    assert emb.shape == (5, model.fc.in_features + 1) == (5, 513)
    assert np.isfinite(emb).all()


def test_a_model_without_a_linear_layer_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(UsageError, match=r"--stage2.*nn\.Linear.*Sequential"):
        slice_embeddings(model, _images(2), np.arange(2), SETTINGS)


# --------------------------------------------------------------------------- the network


def test_bidirectional_gru_matches_torch_gru():
    """The wide block-diagonal recurrence is exactly a bidirectional nn.GRU."""
    torch.manual_seed(0)
    d, h = 5, 7
    wide = stage2._BiGRU(d, h)
    ref = nn.GRU(d, h, batch_first=True, bidirectional=True)
    w_ih, w_hh = wide.rnn.weight_ih_l0.detach(), wide.rnn.weight_hh_l0.detach()
    b_ih, b_hh = wide.rnn.bias_ih_l0.detach(), wide.rnn.bias_hh_l0.detach()
    fwd = torch.cat([torch.arange(g * 2 * h, g * 2 * h + h) for g in range(3)])
    bwd = fwd + h
    with torch.no_grad():
        ref.weight_ih_l0.copy_(w_ih[fwd, :d])
        ref.weight_hh_l0.copy_(w_hh[fwd, :h])
        ref.bias_ih_l0.copy_(b_ih[fwd])
        ref.bias_hh_l0.copy_(b_hh[fwd])
        ref.weight_ih_l0_reverse.copy_(w_ih[bwd, d:])
        ref.weight_hh_l0_reverse.copy_(w_hh[bwd, h:])
        ref.bias_ih_l0_reverse.copy_(b_ih[bwd])
        ref.bias_hh_l0_reverse.copy_(b_hh[bwd])
        x = torch.randn(1, 9, d)
        torch.testing.assert_close(wide(x, torch.tensor([9])), ref(x)[0])


def test_off_block_gru_weights_stay_zero_through_training():
    sequences, labels, patients = context_task(8, seed=3)
    net = fit_stage2(sequences, labels, patients, "gru", seed=0, epochs=2)
    rnn = net.gru.rnn
    assert not (rnn.weight_ih_l0 * (1 - net.gru.mask_ih)).any()
    assert not (rnn.weight_hh_l0 * (1 - net.gru.mask_hh)).any()


@pytest.mark.parametrize("kind", STAGE2_KINDS)
def test_a_scans_prediction_does_not_depend_on_its_batch(kind):
    sequences, labels, patients = context_task(10, seed=4)
    net = fit_stage2(sequences, labels, patients, kind, seed=0, epochs=2)
    together, p_together = apply_stage2(net, sequences)
    for i in (0, 3, 7):
        alone, p_alone = apply_stage2(net, [sequences[i]])
        np.testing.assert_allclose(alone[0], together[i], atol=1e-6)
        np.testing.assert_allclose(p_alone[0], p_together[i], atol=1e-6)
        assert len(together[i]) == len(sequences[i])


def test_bad_kind_names_the_kinds():
    sequences, labels, patients = context_task(4, seed=0)
    for call in (
        lambda: Stage2Net("lstm", 6),
        lambda: fit_stage2(sequences, labels, patients, "lstm", seed=0),
        lambda: cross_fit_stage2(sequences, labels, patients, "lstm", seed=0),
    ):
        with pytest.raises(ValueError, match="'lstm'.*gru, conv"):
            call()


# --------------------------------------------------------------------------- fitting


@pytest.mark.parametrize("kind", STAGE2_KINDS)
def test_same_seed_same_net_and_the_callers_state_untouched(kind):
    sequences, labels, patients = context_task(12, seed=5)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    threads = torch.get_num_threads()
    a = apply_stage2(fit_stage2(sequences, labels, patients, kind, seed=7, epochs=3), sequences)
    b = apply_stage2(fit_stage2(sequences, labels, patients, kind, seed=7, epochs=3), sequences)
    c = apply_stage2(fit_stage2(sequences, labels, patients, kind, seed=8, epochs=3), sequences)
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    assert np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("kind", STAGE2_KINDS)
def test_stage2_learns_context_a_per_slice_model_cannot(kind):
    train = context_task(60, seed=0)
    test = context_task(40, seed=1)
    truth = np.concatenate(test[1])
    per_slice = LogisticRegression(max_iter=1000).fit(
        np.concatenate(train[0]), np.concatenate(train[1])
    )
    baseline = roc_auc_score(truth, per_slice.predict_proba(np.concatenate(test[0]))[:, 1])
    net = fit_stage2(*train, kind, seed=0)
    slice_probs, patient_probs = apply_stage2(net, test[0])
    auc = roc_auc_score(truth, np.concatenate(slice_probs))
    assert baseline < 0.65  # the task really is out of a per-slice model's reach
    assert auc > 0.85 and auc > baseline + 0.25, (auc, baseline)
    assert roc_auc_score(test[2], patient_probs) > 0.9


def test_fit_standardises_with_the_training_scans_statistics():
    sequences, labels, patients = context_task(6, seed=2)
    net = fit_stage2(sequences, labels, patients, "conv", seed=0, epochs=1)
    stacked = np.concatenate(sequences)
    np.testing.assert_allclose(net.mean.numpy(), stacked.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.std.numpy(), stacked.std(0), rtol=1e-5)
    assert {"mean", "std"} <= set(net.state_dict())


# --------------------------------------------------------------------------- cross-fitting


def test_every_scan_is_predicted_by_a_net_that_never_saw_it(monkeypatch):
    """Instrumented: each scan carries its index in a feature column, so the scans each
    net was fitted on and the scans it predicted can be read off the calls."""
    sequences, labels, patients = context_task(20, seed=6)
    for i, s in enumerate(sequences):
        s[:, 1] = i
    fitted_on: dict[int, set[int]] = {}
    predicted_by: dict[int, list[int]] = {}
    real_fit, real_apply = stage2.fit_stage2, stage2.apply_stage2

    def spy_fit(seqs, *args, **kwargs):
        net = real_fit(seqs, *args, **kwargs)
        fitted_on[id(net)] = {int(s[0, 1]) for s in seqs}
        return net

    def spy_apply(net, seqs):
        for s in seqs:
            predicted_by.setdefault(int(s[0, 1]), []).append(id(net))
        return real_apply(net, seqs)

    monkeypatch.setattr(stage2, "fit_stage2", spy_fit)
    monkeypatch.setattr(stage2, "apply_stage2", spy_apply)
    result = cross_fit_stage2(sequences, labels, patients, "conv", seed=0, folds=4, epochs=1)

    assert sorted(predicted_by) == list(range(20))
    for scan, nets in predicted_by.items():
        assert len(nets) == 1 and scan not in fitted_on[nets[0]]
    assert fitted_on[id(result.net)] == set(range(20))  # the final net saw everything
    assert len(fitted_on) == 4 + 1
    # the returned fold assignment says the same thing
    assert sorted(set(result.fold_of.tolist())) == [0, 1, 2, 3]
    for k in range(4):
        held = set(np.flatnonzero(result.fold_of == k).tolist())
        nets = {predicted_by[i][0] for i in held}
        assert len(nets) == 1 and not held & fitted_on[nets.pop()]
    # stratified: every fold holds both kinds of patient
    for k in range(4):
        assert set(patients[result.fold_of == k]) == {0, 1}
    assert len(result.oof_slice_probs) == 20
    assert all(len(p) == len(s) for p, s in zip(result.oof_slice_probs, sequences))
    assert np.isfinite(result.oof_patient_probs).all()
    assert all(np.isfinite(p).all() for p in result.oof_slice_probs)
    notes = json.loads(json.dumps(result.notes))
    assert notes["folds_used"] == 4 and notes["fallback"] is None
    assert notes["kind"] == "conv" and notes["feature_dim"] == 6 and notes["epochs"] == 1


def test_few_positive_patients_mean_fewer_folds_and_a_note():
    sequences, labels, patients = context_task(16, seed=7)
    keep = np.r_[np.flatnonzero(patients == 1)[:3], np.flatnonzero(patients == 0)]
    pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
    result = cross_fit_stage2(
        pick(sequences), pick(labels), patients[keep], "conv", seed=0, epochs=1
    )
    assert result.notes["folds_used"] == 3
    assert "5 folds asked, 3 used" in result.notes["fallback"]


def test_a_single_positive_patient_falls_back_to_unstratified_folds():
    sequences, labels, patients = context_task(12, seed=8)
    keep = np.r_[np.flatnonzero(patients == 1)[:1], np.flatnonzero(patients == 0)]
    pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
    result = cross_fit_stage2(
        pick(sequences), pick(labels), patients[keep], "conv", seed=0, epochs=1
    )
    assert result.notes["folds_used"] == 5
    assert "unstratified" in result.notes["fallback"]
    assert np.isfinite(result.oof_patient_probs).all()


def test_scans_of_one_patient_share_a_fold():
    sequences, labels, patients = context_task(24, seed=9)
    scan = np.arange(24)
    groups = (scan // 4) * 2 + scan % 2  # two scans per patient: (0, 2), (1, 3), (4, 6), ...
    patients = np.array([patients[groups == g].max() for g in groups])
    per_patient = np.array([patients[groups == g][0] for g in np.unique(groups)])
    assert 3 <= per_patient.sum() <= 9  # both kinds of patient, enough of each to stratify
    result = cross_fit_stage2(
        sequences, labels, patients, "conv", seed=0, folds=3, groups=groups, epochs=1
    )
    for g in np.unique(groups):
        assert len(set(result.fold_of[groups == g].tolist())) == 1
    assert result.notes["folds_used"] == 3
