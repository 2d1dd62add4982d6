"""Built-in imbalance strategies: class weights and the paper's distribution-based resampling.

"Distribution-based" means the bleeding histogram of the fold's training patients
(`StrategyContext.bleeding_histogram`: the fraction of ICH slices per relative slice
position bin) decides which rows are added or removed. Every strategy only draws from
rows already in the plan, so a plan never gains a row of a non-training patient.

Strategies compose in command-line order; ratios are computed on the plan as it stands
when the strategy runs (samples per epoch, repeats included). Each one appends a record
of what it did to `plan.notes["steps"]`.

`mixup` and `cutmix` leave the rows alone and mix whole training batches instead (a
`TrainPlan.batch_transform`, applied on the device after the on-the-fly augmentation);
both chain, in command-line order, with each other and with any other batch transform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ichbench.errors import UsageError
from ichbench.hookspecs import hookimpl
from ichbench.interfaces import StrategyContext, TrainPlan
from ichbench.spec import Spec, expect_args, parse_float

CLASSES = ("healthy", "ich")  # index order of TrainPlan.class_weights

WEIGHT_FORM = "weight:CLASS,W (from --weight CLASS:W) with CLASS ich or healthy and W > 0"
AUGMENT_FORM = "augment:R with R >= 1 (1 adds nothing)"
BOOTSTRAP_FORM = "bootstrap:R with R >= 1 (1 adds nothing)"
UNDERSAMPLE_FORM = "undersample:R with R > 0 (healthy samples kept per ICH sample)"
MIXUP_ALPHA = 0.2  # Zhang et al.'s choice for ImageNet
CUTMIX_ALPHA = 1.0  # Yun et al.'s: λ uniform on [0, 1]
# Beta(α, α) is drawn in float32; far below its limit it is already a point mass at 0.5
MAX_ALPHA = 1e6
MIXUP_FORM = f"mixup or mixup:ALPHA with 0 < ALPHA <= {MAX_ALPHA:g} (default {MIXUP_ALPHA:g})"
CUTMIX_FORM = f"cutmix or cutmix:ALPHA with 0 < ALPHA <= {MAX_ALPHA:g} (default {CUTMIX_ALPHA:g})"


def _note(plan: TrainPlan, step: dict[str, Any]) -> dict[str, Any]:
    """A new notes dict with `step` appended, so earlier plans are never mutated."""
    notes = dict(plan.notes)
    notes["steps"] = [*plan.notes.get("steps", []), step]
    return notes


def _ich_mask(plan: TrainPlan, ctx: StrategyContext) -> np.ndarray:
    return ctx.dataset.labels[plan.indices] == 1


# --------------------------------------------------------------------------- weight


@dataclass(frozen=True)
class ClassWeight:
    """Multiplies one class's weight in the loss (cross-entropy unless a strategy swaps it)."""

    cls: str
    weight: float

    def apply(self, plan: TrainPlan, ctx: StrategyContext) -> TrainPlan:
        weights = list(plan.class_weights)
        weights[CLASSES.index(self.cls)] *= self.weight
        step = {"strategy": f"weight:{self.cls},{self.weight:g}", "class_weights": weights}
        return plan.with_(class_weights=(weights[0], weights[1]), notes=_note(plan, step))


def weight_factory(spec: Spec) -> ClassWeight:
    cls, value = expect_args(spec, 2, WEIGHT_FORM)
    if cls.lower() not in CLASSES:
        raise UsageError(f"{spec.name}: unknown class {cls!r}; expected {WEIGHT_FORM}")
    weight = parse_float(spec, value, form=WEIGHT_FORM, minimum=0.0, exclusive_minimum=True)
    return ClassWeight(cls.lower(), weight)


# --------------------------------------------------------------------------- oversampling


def draw_by_histogram(
    candidates: np.ndarray,
    bins: np.ndarray,
    histogram: np.ndarray,
    count: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw `count` of `candidates` with replacement: a bin by the histogram, then a
    candidate of that bin uniformly. Bins without candidates are dropped and the rest
    renormalised, so a bin the histogram favours can never yield nothing."""
    if count <= 0 or len(candidates) == 0:
        return np.zeros(0, dtype=np.int64)
    present = np.unique(bins)
    weights = histogram[present].astype(float)
    if weights.sum() <= 0:
        weights = np.ones(len(present))
    chosen_bins = rng.choice(present, size=count, p=weights / weights.sum())
    out = np.empty(count, dtype=np.int64)
    for b in present:  # a loop over at most `histogram_bins` bins, not over samples
        slots = np.flatnonzero(chosen_bins == b)
        pool = candidates[bins == b]
        out[slots] = pool[rng.integers(0, len(pool), size=len(slots))]
    return out


@dataclass(frozen=True)
class Oversample:
    """Adds ICH rows drawn by the bleeding histogram until ICH samples per epoch number
    round(ratio × ICH samples before); `transform` flags the added copies for on-the-fly
    augmentation (augment) or leaves them untransformed (bootstrap)."""

    name: str
    ratio: float
    transform: bool

    def apply(self, plan: TrainPlan, ctx: StrategyContext) -> TrainPlan:
        ich = _ich_mask(plan, ctx)
        before = int(ich.sum())
        target = int(round(self.ratio * before))
        candidates = np.unique(plan.indices[ich])
        added = draw_by_histogram(
            candidates,
            ctx.position_bins(candidates),
            ctx.bleeding_histogram(),
            target - before,
            ctx.rng,
        )
        step = {
            "strategy": f"{self.name}:{self.ratio:g}",
            "ich_before": before,
            "ich_after": before + len(added),
            "added": int(len(added)),
            "removed": 0,
        }
        return plan.with_(
            indices=np.concatenate([plan.indices, added]).astype(np.int64),
            augment=np.concatenate([plan.augment, np.full(len(added), self.transform)]),
            notes=_note(plan, step),
        )


def augment_factory(spec: Spec) -> Oversample:
    (value,) = expect_args(spec, 1, AUGMENT_FORM)
    ratio = parse_float(spec, value, form=AUGMENT_FORM, minimum=1.0)
    return Oversample(spec.name, ratio, transform=True)


def bootstrap_factory(spec: Spec) -> Oversample:
    (value,) = expect_args(spec, 1, BOOTSTRAP_FORM)
    ratio = parse_float(spec, value, form=BOOTSTRAP_FORM, minimum=1.0)
    return Oversample(spec.name, ratio, transform=False)


# --------------------------------------------------------------------------- undersample


@dataclass(frozen=True)
class Undersample:
    """Keeps round(ratio × ICH samples) healthy samples when that is fewer than there are,
    dropping first those at positions where bleeding is rarest (lowest histogram value),
    in random order among equally rare positions. Otherwise it changes nothing."""

    ratio: float

    def apply(self, plan: TrainPlan, ctx: StrategyContext) -> TrainPlan:
        ich = _ich_mask(plan, ctx)
        healthy_slots = np.flatnonzero(~ich)
        keep_count = int(round(self.ratio * int(ich.sum())))
        drop_count = max(0, len(healthy_slots) - keep_count)
        rarity = ctx.bleeding_histogram()[ctx.position_bins(plan.indices[healthy_slots])]
        tiebreak = ctx.rng.permutation(len(healthy_slots))
        dropped = healthy_slots[np.lexsort((tiebreak, rarity))[:drop_count]]
        keep = np.ones(len(plan.indices), dtype=bool)
        keep[dropped] = False
        step = {
            "strategy": f"undersample:{self.ratio:g}",
            "healthy_before": len(healthy_slots),
            "healthy_after": len(healthy_slots) - drop_count,
            "added": 0,
            "removed": int(drop_count),
        }
        return plan.with_(
            indices=plan.indices[keep], augment=plan.augment[keep], notes=_note(plan, step)
        )


def undersample_factory(spec: Spec) -> Undersample:
    (value,) = expect_args(spec, 1, UNDERSAMPLE_FORM)
    return Undersample(
        parse_float(spec, value, form=UNDERSAMPLE_FORM, minimum=0.0, exclusive_minimum=True)
    )


# --------------------------------------------------------------------------- batch mixing


@dataclass(frozen=True)
class BatchMix:
    """Mixes pairs of training samples and their targets in every batch (`kind` "mixup"
    or "cutmix", λ ~ Beta(alpha, alpha) drawn per sample); the rows, their flags and the
    class weights are unchanged."""

    kind: str
    alpha: float

    def apply(self, plan: TrainPlan, ctx: StrategyContext) -> TrainPlan:
        from ichbench.augment import CutMix, MixUp

        transform = MixUp(self.alpha) if self.kind == "mixup" else CutMix(self.alpha)
        step = {
            "strategy": f"{self.kind}:{self.alpha:g}",
            "batch_transform": self.kind,
            "alpha": self.alpha,
            "lambda": "per sample",
            "added": 0,
            "removed": 0,
        }
        return plan.with_batch_transform(transform, notes=_note(plan, step))


def _alpha(spec: Spec, form: str, default: float) -> float:
    args = expect_args(spec, (0, 1), form)
    if not args:
        return default
    alpha = parse_float(spec, args[0], form=form, minimum=0.0, exclusive_minimum=True)
    if alpha > MAX_ALPHA:
        raise UsageError(f"{spec.name}: {args[0]} is above {MAX_ALPHA:g}; expected {form}")
    return alpha


def mixup_factory(spec: Spec) -> BatchMix:
    return BatchMix("mixup", _alpha(spec, MIXUP_FORM, MIXUP_ALPHA))


def cutmix_factory(spec: Spec) -> BatchMix:
    return BatchMix("cutmix", _alpha(spec, CUTMIX_FORM, CUTMIX_ALPHA))


@hookimpl
def register_strategies(register):
    register(
        "weight",
        weight_factory,
        help="Class weight in the loss: --weight ich:W or --weight healthy:W (W > 0).",
    )
    register(
        "augment",
        augment_factory,
        help="augment:R — add transformed ICH copies, drawn by the bleeding-position "
        "histogram, until ICH samples are R times as many (R >= 1; paper: 3.3).",
    )
    register(
        "bootstrap",
        bootstrap_factory,
        help="bootstrap:R — like augment but untransformed resampling with replacement (R >= 1).",
    )
    register(
        "undersample",
        undersample_factory,
        help="undersample:R — drop healthy slices, rarest bleeding positions first, "
        "until healthy = R × ICH (R > 0).",
    )
    register(
        "mixup",
        mixup_factory,
        help=f"mixup:ALPHA — blend each training sample with a random partner of its "
        f"batch, x = λ·x + (1 − λ)·x', targets mixed alike, λ ~ Beta(ALPHA, ALPHA) per "
        f"sample (ALPHA > 0; default {MIXUP_ALPHA:g}).",
    )
    register(
        "cutmix",
        cutmix_factory,
        help=f"cutmix:ALPHA — paste a box of about (1 − λ) of the image from a random "
        f"partner of the batch, targets mixed by the pasted area, λ ~ Beta(ALPHA, ALPHA) "
        f"per sample (ALPHA > 0; default {CUTMIX_ALPHA:g}).",
    )
