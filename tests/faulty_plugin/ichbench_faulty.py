"""A plugin whose bugs ichbench must report as this plugin's, never as its own."""

from __future__ import annotations

from ichbench import Spec, StrategyContext, TrainPlan, hookimpl


class DividesByZero:
    def apply(self, plan: TrainPlan, ctx: StrategyContext) -> TrainPlan:
        return plan.with_(class_weights=(1 / 0, 1.0))


def divide_by_zero(spec: Spec) -> DividesByZero:
    return DividesByZero()


def crashing_factory(spec: Spec) -> DividesByZero:
    settings: dict[str, float] = {}
    return DividesByZero() if settings["gamma"] else DividesByZero()


def not_a_strategy(spec: Spec) -> int:
    return 42


@hookimpl
def register_strategies(register):
    register("divide-by-zero", divide_by_zero, help="apply() divides by zero.")
    register("crashing-factory", crashing_factory, help="The factory raises KeyError.")
    register("not-a-strategy", not_a_strategy, help="The factory returns an int.")


def register_backbones(register):  # no @hookimpl: pluggy never calls it
    register("forgotten", divide_by_zero)
