"""Events the runner emits. Observers (the CLI's progress bars, tests) subscribe;
the runner itself never prints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    kind: str  # see KINDS
    data: dict[str, Any]


KINDS = (
    "run_started",  # run_id, folds, epochs, resumed
    "data_progress",  # done, total (patients decoded)
    "data_loaded",  # slices, patients, cached
    "fold_started",  # fold, epochs, train_samples
    "batch_finished",  # fold, epoch, batch, batches
    "epoch_finished",  # fold, epoch, train_loss, val_loss, val_f1, best
    "fold_finished",  # fold, threshold, val_f1, test_f1, wall_s
    "fold_skipped",  # fold (already finished in the store)
    "run_finished",  # run_id, threshold, wall_s
    "warning",  # message
)

Observer = Callable[[Event], None]


class Emitter:
    def __init__(self, observers: list[Observer] | None = None) -> None:
        self.observers = list(observers or [])

    def __call__(self, kind: str, **data: Any) -> None:
        event = Event(kind, data)
        for observer in self.observers:
            observer(event)
