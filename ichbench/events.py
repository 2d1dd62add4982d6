"""What a run tells its observers (the CLI's progress bars, benchmarks, tests) as it goes.

The protocol and the lifecycle never print: they emit these events, and each observer
shows or records what it wants. Every event is a frozen dataclass with documented
fields; `kind` names it in one word for logs and for observers that dispatch on text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    """Base of every event."""

    kind: ClassVar[str] = "event"

    @property
    def data(self) -> dict[str, Any]:
        """The fields as a dict (for JSON logs and text-dispatching observers)."""
        return asdict(self)


@dataclass(frozen=True)
class DataProgress(Event):
    """Patients done so far while a dataset is prepared (first use only): preprocessed, or
    before that generated (`stage` says which)."""

    kind: ClassVar[str] = "data_progress"
    done: int
    total: int
    stage: str = "Preprocessing"


@dataclass(frozen=True)
class DataLoaded(Event):
    """The dataset is ready: its slice and patient counts."""

    kind: ClassVar[str] = "data_loaded"
    slices: int
    patients: int


@dataclass(frozen=True)
class RunStarted(Event):
    """A run was created, or reopened to resume; `finished` lists the folds kept."""

    kind: ClassVar[str] = "run_started"
    run_id: str
    folds: int  # every fold model to train, over all outer folds
    epochs: int
    resumed: bool
    finished: list[int] = field(default_factory=list)
    outer: int = 1  # outer folds (1: the study's single held-out split)


@dataclass(frozen=True)
class FoldStarted(Event):
    """A fold starts training on `train_samples` samples per epoch."""

    kind: ClassVar[str] = "fold_started"
    fold: int
    epochs: int
    train_samples: int
    outer: int = 0


@dataclass(frozen=True)
class BatchFinished(Event):
    """One optimiser step of a fold's epoch (1-based `batch` of `batches`)."""

    kind: ClassVar[str] = "batch_finished"
    fold: int
    epoch: int
    batch: int
    batches: int


@dataclass(frozen=True)
class EpochFinished(Event):
    """An epoch's mean training loss, validation loss and best validation F1 over the
    threshold grid; `best` when this epoch's weights are now the kept ones."""

    kind: ClassVar[str] = "epoch_finished"
    fold: int
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_f1: float
    best: bool


@dataclass(frozen=True)
class FoldFinished(Event):
    """A fold is recorded: its own threshold, validation F1 at the curve's peak, slice
    test F1 at its threshold (None when undefined) and its wall time in seconds."""

    kind: ClassVar[str] = "fold_finished"
    fold: int
    threshold: float
    val_f1: float
    test_f1: float | None
    wall_s: float
    outer: int = 0


@dataclass(frozen=True)
class FoldSkipped(Event):
    """A fold already recorded by an earlier attempt at the run; kept, not retrained."""

    kind: ClassVar[str] = "fold_skipped"
    fold: int
    outer: int = 0


@dataclass(frozen=True)
class RunFinished(Event):
    """The vote is stored: the voting threshold (NaN with several outer folds, each cut
    at its own), the run's wall time and the seconds spent per phase (`data`, `train`,
    `eval`, `store`)."""

    kind: ClassVar[str] = "run_finished"
    run_id: str
    threshold: float
    wall_s: float
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RunWarning(Event):
    """Something the user should know that does not stop the run."""

    kind: ClassVar[str] = "warning"
    message: str


EVENT_TYPES: tuple[type[Event], ...] = (
    DataProgress,
    DataLoaded,
    RunStarted,
    FoldStarted,
    BatchFinished,
    EpochFinished,
    FoldFinished,
    FoldSkipped,
    RunFinished,
    RunWarning,
)
KINDS = tuple(t.kind for t in EVENT_TYPES)

Observer = Callable[[Event], None]


class Emitter:
    """Hands each event to every observer, in order."""

    def __init__(self, observers: list[Observer] | None = None) -> None:
        self.observers = list(observers or [])

    def __call__(self, event: Event) -> None:
        for observer in self.observers:
            observer(event)
