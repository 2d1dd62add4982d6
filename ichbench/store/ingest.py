"""Journaled results into the DuckDB store, whenever its lock can be had.

Every step is idempotent (a run already there is kept, a fold is replaced by itself, a
vote is recorded again), so two processes ingesting the same journal, or an ingestion
cut short by a kill, leave the store right. The order is the store's own: the run, then
its folds, then the vote, then a failed or interrupted mark (never after a vote).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from ichbench.errors import StoreBusyError, StoreError
from ichbench.store.journal import RUN_FILE, STATUS_FILE, VOTE_FILE, Journal, Pending, fold_file

QUICK_LOCK_S = 1.0  # a try that must not hold up training
RETRY_S = 5.0  # how often a run retries while the store is busy

_LOCK = threading.Lock()  # one ingestion at a time in this process


def ingest(store, journal: Journal, run_ids: Iterable[str] | None = None) -> list[Pending]:
    """Take every pending result of `run_ids` (all runs of the journal by default) into
    `store`; returns what is still pending because the store stayed busy. Errors other
    than a busy store are raised."""
    todo = journal.all_pending() if run_ids is None else [journal.pending(r) for r in run_ids]
    left = []
    with _LOCK:
        for pending in todo:
            if pending.empty:
                continue
            try:
                _ingest_run(store, journal, pending)
            except StoreBusyError:
                left.append(journal.pending(pending.run_id))
    return [p for p in left if not p.empty]


def ingest_run_records(store, journal: Journal) -> None:
    """Only the records of runs the store has not seen (their folds and votes wait): so a
    run created while the store was busy can be named, resumed or shown."""
    with _LOCK:
        for pending in journal.all_pending():
            if pending.run:
                if not _has_run(store, pending.run_id):
                    store.create_run(journal.read_run(pending.run_id))
                journal.mark_ingested(pending.run_id, RUN_FILE)


def _ingest_run(store, journal: Journal, pending: Pending) -> None:
    """One run's pending results, in order. A result the store refuses (a full disk) is
    left pending and the rest still tried, so a failed mark lands even when a fold could
    not; the first refusal is raised at the end."""
    run_id = pending.run_id
    if pending.run:
        if not _has_run(store, run_id):
            store.create_run(journal.read_run(run_id))
        journal.mark_ingested(run_id, RUN_FILE)
    if not _has_run(store, run_id):
        return  # a run made elsewhere whose record never reached this journal
    refused: list[StoreError] = []

    def attempt(write, name: str) -> None:
        try:
            write()
        except StoreBusyError:
            raise
        except StoreError as exc:
            refused.append(exc)
        else:
            journal.mark_ingested(run_id, name)

    for fold in pending.folds:
        attempt(
            lambda f=fold: store.write_fold(run_id, journal.read_fold(run_id, f)), fold_file(fold)
        )
    if pending.vote and not refused:
        attempt(lambda: store.finish_run(run_id, *journal.read_vote(run_id)), VOTE_FILE)
    if pending.status and not (journal.folder(run_id) / VOTE_FILE).is_file():
        status, error = journal.read_status(run_id)
        if store.get_run(run_id)["status"] == "finished":  # finished meanwhile: moot
            journal.mark_ingested(run_id, STATUS_FILE)
        else:
            attempt(lambda: store.mark_run(run_id, status, error=error), STATUS_FILE)
    if refused:
        raise refused[0]


def _has_run(store, run_id: str) -> bool:
    try:
        store.get_run(run_id)
    except StoreBusyError:
        raise
    except StoreError:
        return False
    return True


def quick_store(path: Path):
    """The store opened for one short try, or None while another process holds it."""
    from ichbench.store import Store

    try:
        return Store(path, lock_timeout=QUICK_LOCK_S)
    except StoreBusyError:
        return None


class Retrier:
    """Retries the ingestion of some runs in a background thread until nothing of them
    is pending, so a reader holding the store delays results but never loses them."""

    def __init__(self, store_path: Path, journal: Journal, run_ids: Iterable[str]) -> None:
        self.store_path = Path(store_path)
        self.journal = journal
        self.run_ids = list(run_ids)
        self.errors: list[BaseException] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        """Something new is pending: try soon (starts the thread on first need)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="ichbench-ingest", daemon=True)
            self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(RETRY_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                store = quick_store(self.store_path)
                if store is not None and not ingest(store, self.journal, self.run_ids):
                    return
            except Exception as exc:  # reported by the driver; the run goes on
                self.errors.append(exc)
                return


class Ingestion:
    """One process's side of taking its journaled results in: now when the store is free
    within a second, else retried in the background while the work goes on, and a last
    attempt at the end."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._retrier: Retrier | None = None

    def take(self, run_id: str) -> None:
        """A run's results into the store now if it is free, else soon. A store that
        refuses a write for another reason (a full disk) raises."""
        store = quick_store(self.journal.store_path)
        if store is not None and not ingest(store, self.journal, [run_id]):
            return
        if self._retrier is None:
            self._retrier = Retrier(self.journal.store_path, self.journal, [])
        if run_id not in self._retrier.run_ids:
            self._retrier.run_ids.append(run_id)
        self._retrier.poke()

    def others(self, resumed: str | None = None) -> None:
        """Every run's leftovers but `resumed`'s, in one quick try."""
        runs = [p.run_id for p in self.journal.all_pending() if p.run_id != resumed]
        store = quick_store(self.journal.store_path) if runs else None
        if store is not None:
            ingest(store, self.journal, runs)

    def settle(self, run_ids: list[str], store=None) -> list[Pending]:
        """Stop retrying in the background and take what is left of `run_ids`: into
        `store` (waiting for its lock as any write does), or in one quick try without
        it. Returns what is still only on disk."""
        if self._retrier is not None:
            self._retrier.stop()
        try:
            store = store if store is not None else quick_store(self.journal.store_path)
            if store is not None:
                return ingest(store, self.journal, run_ids)
        except StoreBusyError:
            pass
        return [p for p in (self.journal.pending(r) for r in run_ids) if not p.empty]
