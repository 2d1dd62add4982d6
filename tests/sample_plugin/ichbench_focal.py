"""ichbench-focal: a focal-loss strategy and a fraction-of-slices patient rule.

ichbench run --strategy focal:2 --patient-rule fraction:0.1
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from ichbench import (
    Spec,
    StrategyContext,
    TrainPlan,
    UsageError,
    expect_args,
    hookimpl,
    parse_float,
)

FOCAL_FORM = "focal:GAMMA with GAMMA >= 0"
FRACTION_FORM = "fraction:P with 0 < P <= 1"


def focal_loss(weights, gamma: float):
    """Class-weighted focal loss (Lin et al. 2017); gamma 0 is weighted cross-entropy.

    torch is imported here, not at the top of the module, so `ichbench plugins` and
    `--help` stay fast.
    """
    import torch
    import torch.nn.functional as F

    class FocalLoss(torch.nn.Module):
        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
            w = weights[target]
            return (-w * (1 - log_p.exp()) ** gamma * log_p).sum() / w.sum()

    return FocalLoss()


@dataclass(frozen=True)
class Focal:
    gamma: float

    def apply(self, plan: TrainPlan, ctx: StrategyContext) -> TrainPlan:
        notes = {**plan.notes, "loss": f"focal:{self.gamma:g}"}
        return plan.with_(loss_factory=partial(focal_loss, gamma=self.gamma), notes=notes)


def focal_factory(spec: Spec) -> Focal:
    (value,) = expect_args(spec, 1, FOCAL_FORM)
    return Focal(parse_float(spec, value, form=FOCAL_FORM, minimum=0.0))


@dataclass(frozen=True)
class Fraction:
    """ICH when at least a fraction p of the slices are; the score is the slice score that
    the top fraction p of slices reach."""

    p: float

    def decide(
        self, scores: np.ndarray, decisions: np.ndarray, threshold: float
    ) -> tuple[float, bool]:
        if len(scores) == 0:
            return 0.0, False
        score = float(np.quantile(scores, 1 - self.p))
        return score, bool(np.mean(decisions) >= self.p)


def fraction_factory(spec: Spec) -> Fraction:
    (value,) = expect_args(spec, 1, FRACTION_FORM)
    p = parse_float(spec, value, form=FRACTION_FORM, minimum=0.0, exclusive_minimum=True)
    if p > 1:
        raise UsageError(f"fraction: {value} must be <= 1; expected {FRACTION_FORM}")
    return Fraction(p)


@hookimpl
def register_strategies(register):
    register("focal", focal_factory, help="focal:GAMMA — class-weighted focal loss.")


@hookimpl
def register_aggregators(register):
    register(
        "fraction",
        fraction_factory,
        kind="patient",
        help="fraction:P — ICH when at least a fraction P of the slices are.",
    )
