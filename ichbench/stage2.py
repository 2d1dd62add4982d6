"""Stage 2: a small sequence model over each scan's slice embeddings.

A slice CNN (stage 1) judges every slice alone, but bleeding is a 3-D finding: a faint
slice between two clearly bleeding ones is probably bleeding too, and an isolated bright
spot in a clean scan probably is not. The RSNA 2019 winners therefore ran a second model
over the sequence of per-slice embeddings of each scan. This module is that second stage,
kept free of the protocol: it takes numpy arrays and returns numpy arrays, and the core
decides which scans it is fitted on and which it predicts.

Choices, and why:
- The embedding of a slice is the input of the network's last `nn.Linear`, read by a
  forward pre-hook, so every backbone (timm's `fc`, `classifier`, `head.fc`, the tiny
  CNN's `fc`) works without knowing its layer names. Stage 1's own ICH logit difference
  is appended, so stage 2 starts from stage 1's opinion rather than relearning it.
- Features are standardised with the training scans' mean and std, stored in the net, so
  a saved net applies the same scaling to new scans.
- Each per-slice logit is the sequence model's context term plus a linear term of the
  slice's own standardised features: the context refines, never replaces, the slice's own
  evidence (a per-slice linear model is always within reach).
- The patient logit is the maximum of the slice logits plus a learned bias. The patient
  label is "any slice bleeds", which is exactly a max; the bias corrects the max's upward
  drift on long scans. It keeps slice and patient probabilities coherent, which attention
  pooling does not promise.
- Scans are trained in padded mini-batches with a mask: the GRU reads them packed (the
  backward direction starts at each scan's own last slice) and the convolutions see zeros
  past a scan's end at every layer, so a scan's prediction does not depend on the scans it
  is batched with.
- Thresholds must not be chosen on in-sample predictions: `cross_fit_stage2` predicts every
  training scan with a stage-2 net that never saw it, and fits the final net on all scans.
- Everything is seeded: initialisation and dropout draw from a forked global generator
  (the caller's random state is left as it was), shuffling from a local one.
  `torch.use_deterministic_algorithms` is never switched on: on the CPU the result is
  reproducible anyway; cuDNN's GRU backward may vary in the last bits.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold
from torch import nn

from ichbench.errors import UsageError
from ichbench.training import DeviceImages, TrainSettings, _autocast, _logits

STAGE2_KINDS = ("gru", "conv")
HIDDEN = 64
DROPOUT = 0.2
KERNEL = 5
BATCH_SCANS = 16  # scans per optimiser step
POOLING = "max+bias"

CPU = torch.device("cpu")


@contextmanager
def _one_thread():
    """The nets are so small that intra-op threads only add synchronisation (and, on cores
    shared with other work, long stalls); one thread also makes a CPU result independent
    of the caller's thread count. The caller's setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_kind(kind: str) -> None:
    if kind not in STAGE2_KINDS:
        raise ValueError(f"unknown stage-2 kind {kind!r}; choose one of: {', '.join(STAGE2_KINDS)}")


# --------------------------------------------------------------------------- embeddings


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UsageError(
            f"--stage2 needs slice embeddings, read at the input of the network's last "
            f"nn.Linear, and {type(model).__name__} has none; use a backbone whose "
            "classifier is a linear layer"
        )
    return linears[-1]


@torch.no_grad()
def slice_embeddings(
    model: nn.Module, data: DeviceImages, rows: np.ndarray, settings: TrainSettings
) -> np.ndarray:
    """(len(rows), D + 1) float32: for each row, in the order given, the input of the
    model's last linear layer followed by its ICH logit difference (logit1 - logit0)."""
    head = _last_linear(model)
    captured: list[torch.Tensor] = []

    def grab(_module, inputs):
        captured.append(inputs[0])

    was_training = model.training
    model.eval()
    handle = head.register_forward_pre_hook(grab)
    out = []
    try:
        index = torch.from_numpy(np.array(rows, dtype=np.int64)).to(data.device)
        for start in range(0, len(index), settings.batch_size * 2):
            chunk = index[start : start + settings.batch_size * 2]
            captured.clear()
            with _autocast(settings):
                logits = _logits(model(data.batch(chunk, None, settings, None))).float()
            features = captured[-1].float().flatten(1)
            opinion = logits[:, 1] - logits[:, 0] if logits.shape[1] > 1 else logits[:, 0]
            out.append(torch.cat([features, opinion[:, None]], dim=1).cpu())
    finally:
        handle.remove()
        model.train(was_training)
    if not out:
        return np.zeros((0, head.in_features + 1), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32)


# --------------------------------------------------------------------------- the network


class _BiGRU(nn.Module):
    """A bidirectional GRU computed as ONE recurrence of twice the width whose weights are
    kept block-diagonal: the forward half reads the scan in order, the backward half reads
    it reversed within its own length. On the CPU a GRU step costs mostly per-operation
    overhead, so one wide recurrence trains about a third faster than nn.GRU's two
    directions over packed sequences, and padding never reaches a real slice: trailing
    padding is read only after the scan's last slice in either direction.

    Off-block weights start at zero and their gradients are masked to zero, so Adam never
    moves them: the two halves stay the two independent directions of a GRU."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.rnn = nn.GRU(2 * in_features, 2 * hidden, batch_first=True)
        own_ih = torch.zeros(2 * hidden, 2 * in_features)
        own_ih[:hidden, :in_features] = 1
        own_ih[hidden:, in_features:] = 1
        own_hh = torch.zeros(2 * hidden, 2 * hidden)
        own_hh[:hidden, :hidden] = 1
        own_hh[hidden:, hidden:] = 1
        self.register_buffer("mask_ih", own_ih.repeat(3, 1))  # gates r, z, n stacked
        self.register_buffer("mask_hh", own_hh.repeat(3, 1))
        bound = hidden**-0.5  # nn.GRU's own initialisation for `hidden` units
        with torch.no_grad():
            for weight in self.rnn.parameters():
                weight.uniform_(-bound, bound)
            self.rnn.weight_ih_l0.mul_(self.mask_ih)
            self.rnn.weight_hh_l0.mul_(self.mask_hh)
        self.rnn.weight_ih_l0.register_hook(lambda grad: grad * self.mask_ih)
        self.rnn.weight_hh_l0.register_hook(lambda grad: grad * self.mask_hh)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, S, D) -> (B, S, 2 * hidden): forward then backward states per slice."""
        steps = torch.arange(x.shape[1], device=x.device)[None, :]
        last = lengths.to(x.device)[:, None] - 1
        flip = torch.where(steps <= last, last - steps, steps)  # reverse within each scan
        h, _ = self.rnn(torch.cat([x, _take(x, flip)], dim=-1))
        return torch.cat([h[..., : self.hidden], _take(h[..., self.hidden :], flip)], dim=-1)


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


class Stage2Net(nn.Module):
    """Per-slice and per-patient logits for padded batches of scans, (B, S, D) in slice
    order; `lengths` (B,) gives each scan's slice count."""

    def __init__(self, kind: str, in_features: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        _check_kind(kind)
        self.kind = kind
        self.in_features = in_features
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))
        self.skip = nn.Linear(in_features, 1)
        if kind == "gru":
            self.norm = nn.LayerNorm(in_features)
            self.drop = nn.Dropout(DROPOUT)
            self.gru = _BiGRU(in_features, hidden)
            self.out = nn.Linear(2 * hidden, 1)
        else:
            self.conv1 = nn.Conv1d(in_features, hidden, KERNEL, padding="same")
            self.conv2 = nn.Conv1d(hidden, hidden, KERNEL, padding="same")
            self.drop = nn.Dropout(DROPOUT)
            self.out = nn.Linear(hidden, 1)
        self.patient_bias = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(slice logits (B, S), zero past each scan's end; patient logits (B,))."""
        steps = x.shape[1]
        mask = torch.arange(steps, device=x.device)[None, :] < lengths.to(x.device)[:, None]
        z = ((x - self.mean) / self.std) * mask[..., None]
        if self.kind == "gru":
            h = self.gru(self.drop(self.norm(z)), lengths)
        else:
            keep = mask[:, None, :].to(z.dtype)
            h = F.relu(self.conv1(z.transpose(1, 2))) * keep
            h = F.relu(self.conv2(self.drop(h))) * keep
            h = h.transpose(1, 2)
        logits = (self.out(h) + self.skip(z)).squeeze(-1)
        logits = logits.masked_fill(~mask, 0.0)
        patient = logits.masked_fill(~mask, float("-inf")).amax(dim=1) + self.patient_bias
        return logits, patient


def _padded(sequences: list[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    x = torch.zeros(len(sequences), int(lengths.max()), sequences[0].shape[1])
    for i, s in enumerate(sequences):
        x[i, : len(s)] = torch.from_numpy(np.asarray(s, dtype=np.float32))
    return x.to(device), lengths


def _checked(sequences: list[np.ndarray]) -> list[np.ndarray]:
    arrays = [np.asarray(s, dtype=np.float32) for s in sequences]
    if not arrays:
        raise ValueError("stage 2 needs at least one scan")
    dims = {a.shape[1] if a.ndim == 2 else -1 for a in arrays}
    if len(dims) != 1 or -1 in dims:
        raise ValueError(f"every scan must be a (slices, features) array of one width; got {dims}")
    if any(len(a) == 0 for a in arrays):
        raise ValueError("a scan with no slices cannot be sequenced")
    return arrays


def _pos_weight(labels: np.ndarray) -> float:
    positives = float(np.sum(labels))
    negatives = float(len(labels)) - positives
    return negatives / positives if positives > 0 and negatives > 0 else 1.0


# --------------------------------------------------------------------------- fit / apply


def fit_stage2(
    sequences: list[np.ndarray],
    slice_labels: list[np.ndarray],
    patient_labels: np.ndarray,
    kind: str,
    seed: int,
    epochs: int = 30,
    lr: float = 3e-3,
    device: torch.device = CPU,
) -> Stage2Net:
    """A stage-2 net fitted on these scans with slice BCE + patient BCE, each weighted by
    its class balance; the same inputs and seed give the same net."""
    _check_kind(kind)
    arrays = _checked(sequences)
    labels = [np.asarray(y, dtype=np.float32).reshape(-1) for y in slice_labels]
    if len(labels) != len(arrays) or any(len(y) != len(a) for y, a in zip(labels, arrays)):
        raise ValueError("slice_labels must give one label per slice of every scan")
    patients = np.asarray(patient_labels, dtype=np.float32).reshape(-1)
    if len(patients) != len(arrays):
        raise ValueError("patient_labels must give one label per scan")

    stacked = np.concatenate(arrays)
    all_slices = np.concatenate(labels)
    fork = [device.index or 0] if device.type == "cuda" else []
    with _one_thread(), torch.random.fork_rng(devices=fork):
        torch.manual_seed(seed)
        net = Stage2Net(kind, stacked.shape[1])
        net.mean.copy_(torch.from_numpy(stacked.mean(axis=0)))
        net.std.copy_(torch.from_numpy(stacked.std(axis=0)).clamp_min(1e-6))
        net.to(device)
        x, lengths = _padded(arrays, device)
        y, _ = _padded([yy[:, None] for yy in labels], device)
        y = y.squeeze(-1)
        yp = torch.from_numpy(patients).to(device)
        slice_bce = nn.BCEWithLogitsLoss(
            pos_weight=torch.tensor(_pos_weight(all_slices), device=device), reduction="none"
        )
        patient_bce = nn.BCEWithLogitsLoss(
            pos_weight=torch.tensor(_pos_weight(patients), device=device)
        )
        optimizer = torch.optim.Adam(net.parameters(), lr=lr, foreach=True)
        order_rng = torch.Generator().manual_seed(seed)
        net.train()
        for _ in range(epochs):
            order = torch.randperm(len(arrays), generator=order_rng)
            for start in range(0, len(order), BATCH_SCANS):
                pick = order[start : start + BATCH_SCANS]
                span = int(lengths[pick].max())
                slice_logits, patient_logits = net(x[pick, :span], lengths[pick])
                mask = (
                    torch.arange(span, device=device)[None, :] < lengths[pick].to(device)[:, None]
                )
                per_slice = slice_bce(slice_logits, y[pick, :span])
                loss = (per_slice * mask).sum() / mask.sum() + patient_bce(
                    patient_logits, yp[pick.to(device)]
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                optimizer.step()
    net.eval()
    return net


@torch.no_grad()
def apply_stage2(
    net: Stage2Net, sequences: list[np.ndarray]
) -> tuple[list[np.ndarray], np.ndarray]:
    """(slice probabilities, one float64 array per scan in slice order; patient
    probabilities, one per scan)."""
    arrays = _checked(sequences)
    device = net.mean.device
    was_training = net.training
    net.eval()
    slice_probs: list[np.ndarray] = []
    patient_probs: list[np.ndarray] = []
    try:
        with _one_thread():
            for start in range(0, len(arrays), BATCH_SCANS * 4):
                chunk = arrays[start : start + BATCH_SCANS * 4]
                x, lengths = _padded(chunk, device)
                slice_logits, patient_logits = net(x, lengths)
                probs = torch.sigmoid(slice_logits).cpu().double().numpy()
                slice_probs += [probs[i, : len(a)] for i, a in enumerate(chunk)]
                patient_probs.append(torch.sigmoid(patient_logits).cpu().double().numpy())
    finally:
        net.train(was_training)
    return slice_probs, np.concatenate(patient_probs)


# --------------------------------------------------------------------------- cross-fitting


@dataclass
class Stage2Result:
    """The net fitted on all scans, and every scan's out-of-fold predictions (each from a
    net that never saw that scan), on which a stage-2 threshold can honestly be chosen."""

    net: Stage2Net
    oof_slice_probs: list[np.ndarray]
    oof_patient_probs: np.ndarray
    fold_of: np.ndarray  # the cross-fitting fold that predicted each scan
    notes: dict = field(default_factory=dict)  # JSON-serialisable


def _folds(
    patient_labels: np.ndarray, groups: np.ndarray | None, folds: int, seed: int
) -> tuple[np.ndarray, int, str | None]:
    """Fold index per scan, the fold count used, and why it differs from the one asked."""
    n = len(patient_labels)
    units = np.unique(groups) if groups is not None else np.arange(n)
    if len(units) < 2:
        raise ValueError("cross-fitting stage 2 needs at least two patients")
    if groups is not None:
        unit_labels = np.array([patient_labels[groups == g].max() for g in units])
    else:
        unit_labels = patient_labels
    counts = np.bincount(unit_labels.astype(np.int64), minlength=2)
    smallest = int(counts.min())
    used, note = folds, None
    if smallest >= 2:
        used = min(folds, smallest)
        if used < folds:
            note = (
                f"{folds} folds asked, {used} used: the smaller class has only {smallest} patients"
            )
        splitter = (
            StratifiedGroupKFold(used, shuffle=True, random_state=seed)
            if groups is not None
            else StratifiedKFold(used, shuffle=True, random_state=seed)
        )
        splits = splitter.split(np.zeros(n), patient_labels, groups)
    else:
        used = min(folds, len(units))
        note = (
            f"{folds} folds asked, {used} unstratified folds used: the smaller class has "
            f"{smallest} patient(s), too few to stratify"
        )
        unit_splits = KFold(used, shuffle=True, random_state=seed).split(units)
        splits = (
            (np.flatnonzero(np.isin(groups, units[tr])), np.flatnonzero(np.isin(groups, units[te])))
            if groups is not None
            else (tr, te)
            for tr, te in unit_splits
        )
    fold_of = np.full(n, -1, dtype=np.int64)
    for k, (_, test) in enumerate(splits):
        fold_of[test] = k
    return fold_of, used, note


def cross_fit_stage2(
    sequences: list[np.ndarray],
    slice_labels: list[np.ndarray],
    patient_labels: np.ndarray,
    kind: str,
    seed: int,
    folds: int = 5,
    groups: np.ndarray | None = None,
    epochs: int = 30,
    lr: float = 3e-3,
    device: torch.device = CPU,
) -> Stage2Result:
    """Out-of-fold stage-2 predictions for every scan (folds stratified by patient label,
    grouped by `groups`, the patient of each scan, when scans share patients) and the net
    fitted on all scans."""
    _check_kind(kind)
    arrays = _checked(sequences)
    patient_labels = np.asarray(patient_labels).reshape(-1)
    if groups is not None:
        groups = np.asarray(groups).reshape(-1)
    fold_of, used, note = _folds(patient_labels, groups, folds, seed)
    oof_slices: list[np.ndarray] = [np.zeros(0)] * len(arrays)
    oof_patients = np.full(len(arrays), np.nan)
    for k in range(used):
        train = np.flatnonzero(fold_of != k)
        held = np.flatnonzero(fold_of == k)
        net = fit_stage2(
            [arrays[i] for i in train],
            [slice_labels[i] for i in train],
            patient_labels[train],
            kind,
            seed * 1009 + k + 1,
            epochs,
            lr,
            device,
        )
        probs, patient_probs = apply_stage2(net, [arrays[i] for i in held])
        for i, p in zip(held, probs):
            oof_slices[i] = p
        oof_patients[held] = patient_probs
    final = fit_stage2(arrays, slice_labels, patient_labels, kind, seed, epochs, lr, device)
    notes = {
        "kind": kind,
        "epochs": epochs,
        "lr": lr,
        "seed": seed,
        "pooling": POOLING,
        "batch_scans": BATCH_SCANS,
        "folds_requested": folds,
        "folds_used": used,
        "scans": len(arrays),
        "feature_dim": int(arrays[0].shape[1]),
        "fallback": note,
    }
    return Stage2Result(final, oof_slices, oof_patients, fold_of, notes)
