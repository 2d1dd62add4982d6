"""The CLI's observer of runner events: rich progress bars on stderr."""

from __future__ import annotations

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
from ichbench.events import Event


class Bars:
    """Live bars on stderr for the life of a `with` block; every observer shows the
    preprocessing bar and warnings the same way."""

    def __init__(self, *columns) -> None:
        self.progress = Progress(*columns, console=err, transient=False)
        self.data_task = None

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def shared(self, event: Event) -> bool:
        """Handle the events every observer shows alike; False for the others."""
        d = event.data
        if event.kind == "data_progress":
            if self.data_task is None:
                self.data_task = self.progress.add_task("Preprocessing", total=d["total"],
                                                        info="")
            self.progress.update(self.data_task, completed=d["done"])
        elif event.kind == "warning":
            err.print(f"[yellow]Warning:[/] {d['message']}")
        else:
            return False
        return True


class RunProgress(Bars):
    """Bars for data decoding, folds, and the epochs of the current fold."""

    def __init__(self) -> None:
        super().__init__(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.fold_task = None
        self.epoch_task = None

    def __call__(self, event: Event) -> None:
        d = event.data
        p = self.progress
        if self.shared(event):
            return
        if event.kind == "data_loaded":
            err.print(f"Dataset: {d['patients']} patients, {d['slices']} slices")
        elif event.kind == "run_started":
            verb = "Resuming" if d["resumed"] else "Run"
            err.print(f"{verb} [bold]{d['run_id']}[/]")
            self.fold_task = p.add_task("Folds", total=d["folds"], info="",
                                        completed=len(d.get("finished", [])))
        elif event.kind == "fold_started":
            if self.epoch_task is not None:
                p.remove_task(self.epoch_task)
            self.epoch_task = p.add_task(f"  fold {d['fold']} epochs", total=d["epochs"],
                                         info=f"{d['train_samples']} samples/epoch")
        elif event.kind == "batch_finished" and self.epoch_task is not None:
            frac = (d["epoch"] - 1) + d["batch"] / d["batches"]
            p.update(self.epoch_task, completed=frac)
        elif event.kind == "epoch_finished" and self.epoch_task is not None:
            p.update(self.epoch_task, completed=d["epoch"],
                     info=f"loss {d['train_loss']:.3f}  val F1 {d['val_f1']:.3f}")
        elif event.kind == "fold_finished":
            if self.epoch_task is not None:
                p.remove_task(self.epoch_task)
                self.epoch_task = None
            p.advance(self.fold_task)
            test_f1 = "n/a" if d["test_f1"] is None else f"{d['test_f1']:.3f}"
            err.print(f"  fold {d['fold']}: threshold {d['threshold']:.2f}, val F1 "
                      f"{d['val_f1']:.3f}, test F1 {test_f1} ({d['wall_s']:.1f} s)")
        elif event.kind == "fold_skipped":
            err.print(f"  fold {d['fold']}: already finished, kept")
