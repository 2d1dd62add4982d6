"""What plugin factories return: the contracts between the core and every plugin.

A factory receives the parsed `Spec` (name and string arguments), validates the
arguments (raising `UsageError` that names the plugin and its expected form) and
returns an object satisfying one of the protocols below. The core only ever talks to
plugins through these protocols, and checks each created object against the protocol of
its kind (`KIND_PROTOCOLS`), so a factory that returns the wrong thing is named at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ichbench.exclusion import DEFAULT_EXCLUDE

if TYPE_CHECKING:
    import torch
    from torch import nn


# --------------------------------------------------------------------------- data

SUBTYPES = ("Intraventricular", "Intraparenchymal", "Subarachnoid", "Epidural", "Subdural")


@dataclass
class SliceDataset:
    """A preprocessed dataset: one row per slice, arrays memory-mapped from the cache.

    Images are uint8 in [0, 255] (the window mapped to [0, 1], times 255), shape
    (N, C, H, W), one channel per window in `windows` order, H == W == the requested
    image size. Each image is in radiological display orientation: row 0 is anterior
    (rows run anterior to posterior) and the patient's left is on the image's right.
    Rows are ordered by patient, then slice; slice 1 is the most inferior.

    `not_found_excluded` lists the patients asked to be excluded that the source does not
    hold at all (a mistyped `--exclude 999`, or the default 58 and 79 on a dataset without
    them), so the caller can say so instead of ignoring the request; `()` when every
    excluded patient was there, or when the source cannot tell.
    """

    name: str
    dataset_hash: str
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,) 1 = ICH
    patient_ids: np.ndarray  # int64 (N,)
    slice_numbers: np.ndarray  # int64 (N,) 1-based, as in the label CSV
    positions: np.ndarray  # float32 (N,) relative slice position in [0, 1]
    subtypes: np.ndarray  # uint8 (N, 5) in SUBTYPES order
    masks: np.ndarray | None = None  # uint8 (N, H, W), 1 = hemorrhage, where the dataset has masks
    windows: tuple[str, ...] = ("brain",)
    source: str = ""  # a path or description of where it came from
    not_found_excluded: tuple[int, ...] = ()  # excluded patients the source does not hold
    # patient-level-only data (CQ500): each patient's label; slice labels are then -1
    patient_truth: dict[int, int] | None = None
    # the source's own patient names (RSNA, CQ500 and DICOM name patients by strings; the
    # int ids are their 1-based rank in sorted order)
    patient_names: dict[int, str] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def patients(self) -> np.ndarray:
        return np.unique(self.patient_ids)

    @property
    def has_slice_labels(self) -> bool:
        """False for a patient-level-only dataset: fit to evaluate on, never to train on."""
        return self.patient_truth is None

    def patient_labels(self) -> dict[int, int]:
        """A patient is ICH if any of its slices is (or as `patient_truth` says, when set)."""
        if self.patient_truth is not None:
            return dict(self.patient_truth)
        out: dict[int, int] = {}
        for pid, label in zip(self.patient_ids.tolist(), self.labels.tolist()):
            out[pid] = max(out.get(pid, 0), label)
        return out


@dataclass(frozen=True)
class LoadOptions:
    """Preprocessing settings; part of the cache key."""

    image_size: int = 64
    windows: tuple[str, ...] = ("brain",)
    exclude: tuple[int, ...] = DEFAULT_EXCLUDE


@runtime_checkable
class DatasetSource(Protocol):
    """Returned by a dataset factory. `load` goes through the preprocessing cache and
    reports `progress(done, total)` while it preprocesses; a source with a long stage
    before that (generating, fetching) may report it as `progress(done, total,
    description="Generating ...")`, which the core shows on its own line and bar."""

    name: str

    def load(
        self,
        options: LoadOptions,
        cache_dir: Path,
        progress: Callable[[int, int], None] | None = None,
    ) -> SliceDataset: ...


# --------------------------------------------------------------------------- strategies


BatchTransform = Callable[
    ["torch.Tensor", "torch.Tensor", "torch.Generator"], tuple["torch.Tensor", "torch.Tensor"]
]
"""`(x, targets, generator) -> (x, targets)`: a transform of whole training batches (see
`TrainPlan.batch_transform`)."""


@dataclass
class TrainPlan:
    """The training set of one fold as strategies reshape it.

    `indices` point into the SliceDataset rows (repeats allowed); `augment[i]` asks the
    trainer to apply a random transform to sample i on the fly (never stored). The plan
    only ever holds rows of the fold's training patients: the core checks that.

    `loss_factory(weights)` (weights: float32 tensor `(healthy, ich)` on the training
    device) replaces the weighted cross-entropy of the training batches only: validation
    picks the checkpoint by F1, never by this loss. `notes` must be JSON-serialisable; it is
    stored with the fold and shown by `ichbench show`.

    `batch_transform(x, targets, generator) -> (x, targets)` changes whole training
    batches, for what mixes samples (mixup, CutMix) and so cannot be a per-sample flag:

    - `x`: float32 (B, C, H, W) in [0, 1] on the training device, after the on-the-fly
      augmentation and before resizing and normalisation; the returned batch has the same
      shape and should stay in [0, 1].
    - `targets`: float32 (B, 2) soft targets, rows summing to 1, column 0 healthy, column 1
      ICH. The first transform receives the one-hot labels, so a transform never needs
      the hard labels and any number of them chain; it returns the targets of its output.
    - `generator`: the transform's own `torch.Generator` on the training device, seeded
      from the run's seed and the fold, apart from the augmentation's stream.

    It runs once per batch inside the epoch: it must stay on the device (no `.item()`,
    `.cpu()` or other read of a tensor's value on the host). Add one with
    `with_batch_transform`, which chains it after any earlier strategy's.

    With a batch transform the loss is called with the soft targets instead of the int64
    labels: the default loss is then the class-weighted cross-entropy with probability
    targets, normalised by the batch's total weight (one-hot targets give exactly the
    loss of the hard labels), and a `loss_factory` loss must accept (B, 2) probability
    targets too. Whatever the loss, if it has a method `set_epoch(epoch)`, the trainer
    calls it with the 1-based epoch at the start of each epoch (the convention of
    `DistributedSampler.set_epoch`), for losses that change over training.
    """

    indices: np.ndarray  # int64
    augment: np.ndarray  # bool, same length
    class_weights: tuple[float, float] = (1.0, 1.0)  # (healthy, ich)
    loss_factory: Callable[[torch.Tensor], nn.Module] | None = None  # weights -> loss
    notes: dict[str, Any] = field(default_factory=dict)
    batch_transform: BatchTransform | None = None  # (x, targets, generator) -> (x, targets)

    def with_(self, **changes: Any) -> TrainPlan:
        return replace(self, **changes)

    def with_batch_transform(self, transform: BatchTransform, **changes: Any) -> TrainPlan:
        """A new plan whose batch transform applies this plan's (if any), then `transform`
        to its output; `changes` as in `with_`."""
        from ichbench.augment import compose_batch_transforms

        return replace(
            self,
            batch_transform=compose_batch_transforms(self.batch_transform, transform),
            **changes,
        )


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy may look at: the dataset and the fold's training patients only."""

    dataset: SliceDataset
    train_patients: np.ndarray
    rng: np.random.Generator
    histogram_bins: int = 10

    def bleeding_histogram(self) -> np.ndarray:
        """Fraction of ICH slices per relative-position bin, over the training patients only."""
        rows = np.isin(self.dataset.patient_ids, self.train_patients)
        pos = self.dataset.positions[rows]
        ich = self.dataset.labels[rows] == 1
        bins = np.minimum((pos * self.histogram_bins).astype(int), self.histogram_bins - 1)
        counts = np.bincount(bins[ich], minlength=self.histogram_bins).astype(float)
        total = counts.sum()
        return counts / total if total else np.full(self.histogram_bins, 1 / self.histogram_bins)

    def position_bins(self, indices: np.ndarray) -> np.ndarray:
        pos = self.dataset.positions[indices]
        return np.minimum((pos * self.histogram_bins).astype(int), self.histogram_bins - 1)


@runtime_checkable
class Strategy(Protocol):
    """An imbalance strategy: reshapes the plan (rows, augmentation flags, loss weights)."""

    def apply(self, plan: TrainPlan, ctx: StrategyContext) -> TrainPlan: ...


# --------------------------------------------------------------------------- backbones


@dataclass
class BuiltModel:
    """A network with two logits, and the truth about its initial weights."""

    model: nn.Module
    pretrained: bool
    pretrained_source: str | None  # e.g. "file:/path", "timm-hub:resnet50.a1_in1k", "pypi:..."
    input_size: int | None = None  # forced input size (inception_v3: 299), None = any
    # the per-channel mean and std of the inputs the weights were pretrained on (timm's
    # pretrained config; ImageNet's for most), applied to inputs in [0, 1]; None: the
    # network starts untrained and inputs are centred at 0.5 with std 0.5
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class BuildOptions:
    in_chans: int = 1
    num_classes: int = 2
    pretrained: bool = True  # try to get pretrained weights; never pretend
    weights: Path | None = None  # a local file; the network is never touched when given


@runtime_checkable
class Backbone(Protocol):
    name: str

    def build(self, options: BuildOptions) -> BuiltModel: ...


# --------------------------------------------------------------------------- aggregators


@runtime_checkable
class EnsembleRule(Protocol):
    """Combines fold models' slice probabilities (folds, slices) into scores and decisions.

    Optional class attributes change what the core hands `combine`:
    `per_fold_thresholds = True`: `threshold` is an array, each fold's own threshold
    (its scores and the patient rule are then cut at a majority, 0.5);
    `calibrates_folds = True` with `kind` a calibrator (`isotonic`, `temperature`): the
    core first maps each fold's probabilities by a calibrator fitted on that fold's
    validation predictions and chooses the voting threshold on the calibrated curves;
    `scores_are_probabilities = False`: no Brier score, ECE or reliability curve is
    computed for the vote's scores."""

    def combine(self, probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class PatientRule(Protocol):
    """Turns one patient's slices (ordered by slice number) into one score and decision.

    A rule that learns says `fits = True` and has `fit(patients, threshold) -> PatientRule`
    (`patients`: `ichbench.patient_features.PatientSlices`, out-of-fold validation patients
    only): it returns a new fitted rule, whose optional `fitted` dict is stored with the
    run; the core never calls `decide` on the unfitted one."""

    def decide(
        self, scores: np.ndarray, decisions: np.ndarray, threshold: float
    ) -> tuple[float, bool]: ...


# --------------------------------------------------------------------------- kinds

KIND_PROTOCOLS: dict[str, type] = {
    "strategy": Strategy,
    "backbone": Backbone,
    "ensemble": EnsembleRule,
    "patient": PatientRule,
    "dataset": DatasetSource,
}
"""The protocol every object of a plugin kind satisfies, by kind (the registry's keys)."""
