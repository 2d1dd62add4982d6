"""Every progress display of the CLI, on stderr: the run's bars (data, folds, epochs), the
distributed grid's trial bar, and a step bar for shorter jobs (data commands, reports).

Observers receive the typed events of `ichbench.events`; nothing here is called by the
core, which never prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ichbench.cli.common import err
from ichbench.events import (
    BatchFinished,
    DataLoaded,
    DataProgress,
    EpochFinished,
    Event,
    FoldFinished,
    FoldSkipped,
    FoldStarted,
    RunStarted,
    RunWarning,
)


@contextmanager
def step_bar(description: str, *, transient: bool = True) -> Iterator[Callable[..., None]]:
    """A bar driven by `update(done, total, description=None)`; silent when stderr is not
    a terminal, so logs and captured output stay clean."""
    if not err.is_terminal:
        yield lambda done, total, description=None: None
        return
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=transient,
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int, description: str | None = None) -> None:
        changes = {"description": description} if description else {}
        bar.update(task, completed=done, total=total, **changes)

    with bar:
        yield update


class Bars:
    """Live bars on stderr for the life of a `with` block; every run observer shows the
    preprocessing bar and warnings alike."""

    def __init__(self, *columns) -> None:
        self.progress = Progress(*columns, console=err, transient=False)
        self.data_tasks: dict[str, object] = {}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def shared(self, event: Event) -> bool:
        """Handle the events every observer shows alike; False for the others."""
        if isinstance(event, DataProgress):
            task = self.data_tasks.get(event.stage)
            if task is None:
                label = event.stage
                if event.stage != "Preprocessing":  # said whole on a line that stays
                    err.print(escape(event.stage))
                    label = event.stage.split(" (", 1)[0]  # the bar: its first words
                task = self.progress.add_task(label, total=event.total, info="")
                self.data_tasks[event.stage] = task
            self.progress.update(task, completed=event.done)
        elif isinstance(event, RunWarning):
            err.print(f"[yellow]Warning:[/] {escape(event.message)}")
        else:
            return False
        return True


class RunProgress(Bars):
    """Bars for data decoding, folds, and the epochs of the current fold."""

    def __init__(self) -> None:
        super().__init__(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.fold_task = None
        self.epoch_task = None
        self.outer = 1

    def __call__(self, event: Event) -> None:
        p = self.progress
        if self.shared(event):
            return
        if isinstance(event, DataLoaded):
            err.print(f"Dataset: {event.patients} patients, {event.slices} slices")
        elif isinstance(event, RunStarted):
            verb = "Resuming" if event.resumed else "Run"
            self.outer = event.outer
            nested = f" ({event.outer} outer folds)" if event.outer > 1 else ""
            err.print(f"{verb} [bold]{event.run_id}[/]{nested}")
            if self.fold_task is not None:
                p.remove_task(self.fold_task)
            self.fold_task = p.add_task(
                "Folds", total=event.folds, info="", completed=len(event.finished)
            )
        elif isinstance(event, FoldStarted):
            if self.epoch_task is not None:
                p.remove_task(self.epoch_task)
            self.epoch_task = p.add_task(
                f"  {fold_name(event, self.outer)} epochs",
                total=event.epochs,
                info=f"{event.train_samples} samples/epoch",
            )
        elif isinstance(event, BatchFinished) and self.epoch_task is not None:
            p.update(self.epoch_task, completed=(event.epoch - 1) + event.batch / event.batches)
        elif isinstance(event, EpochFinished) and self.epoch_task is not None:
            p.update(
                self.epoch_task,
                completed=event.epoch,
                info=f"loss {event.train_loss:.3f}  val F1 {event.val_f1:.3f}",
            )
        elif isinstance(event, FoldFinished):
            if self.epoch_task is not None:
                p.remove_task(self.epoch_task)
                self.epoch_task = None
            if self.fold_task is not None:
                p.advance(self.fold_task)
            err.print(f"  {fold_name(event, self.outer)}: {fold_line(event)}")
        elif isinstance(event, FoldSkipped):
            err.print(f"  {fold_name(event, self.outer)}: already finished, kept")


class GridProgress(Bars):
    """Preprocessing and trial bars for a grid whose trials run elsewhere (a cluster):
    one line per trial as it comes back."""

    def __init__(self) -> None:
        super().__init__(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        )
        self.trial_task = None

    def __call__(self, event: Event) -> None:
        if self.shared(event):
            return
        if isinstance(event, RunStarted) and event.resumed:
            kept = ", ".join(fold_name(key, event.outer, short=True) for key in event.finished)
            err.print(f"Resuming [bold]{event.run_id}[/] (folds {kept or 'none'} kept)")

    def start_trials(self, total: int) -> None:
        self.trial_task = self.progress.add_task("Trials", total=total)

    def trial_done(self, line: str) -> None:
        err.print(f"  {line}")
        self.progress.advance(self.trial_task)


def fold_name(item, outer_folds: int, short: bool = False) -> str:
    """`fold 3`, or `outer 1 fold 3` in a run with several outer folds; `item` is an event
    with `outer` and `fold`, or an (outer, fold) key. `short`: without the word fold."""
    outer, fold = item if isinstance(item, tuple) else (item.outer, item.fold)
    name = str(fold) if short else f"fold {fold}"
    if outer_folds > 1:
        name = f"{outer}.{fold}" if short else f"outer {outer} {name}"
    return name


def fold_line(event: FoldFinished) -> str:
    """A finished fold in one line, alike for runs and grids."""
    test_f1 = "n/a" if event.test_f1 is None else f"{event.test_f1:.3f}"
    return (
        f"threshold {event.threshold:.2f}, val F1 {event.val_f1:.3f}, test F1 {test_f1} "
        f"({event.wall_s:.1f} s)"
    )
