"""The protocol, end to end: data → split → per-fold training → curves → vote →
metrics → store.

The runner owns the protocol; plugins only supply strategies, the network, the
aggregation rules and the data. It never prints: progress goes to observers as events,
results go to the store, and errors are raised as domain exceptions.
"""

from __future__ import annotations

import os
import platform
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ichbench import __version__
from ichbench.config import RunConfig
from ichbench.data.resolve import resolve_dataset
from ichbench.errors import LeakageError, RunFinishedError, UsageError
from ichbench.events import Emitter, Observer
from ichbench.interfaces import (
    BuildOptions,
    BuiltModel,
    LoadOptions,
    SliceDataset,
    StrategyContext,
    TrainPlan,
)
from ichbench.metrics import patient_metrics, slice_metrics
from ichbench.paths import cache_dir as default_cache_dir
from ichbench.paths import run_dir
from ichbench.plugins import Registry, get_registry
from ichbench.records import FoldRecord, MetricRow, Predictions, RunRecord, VoteRecord
from ichbench.split import Split, check_no_leakage, make_split
from ichbench.training import DeviceImages, TrainSettings, predict, train_fold
from ichbench.vote import best_threshold, f1_curve, patient_decisions, voting_threshold


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {requested}: CUDA is not available on this machine")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise UsageError(f"--device {requested!r}: expected auto, cpu or cuda[:N]")
    return requested


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def library_versions() -> dict[str, str]:
    import duckdb
    import sklearn
    import timm

    return {
        "ichbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "timm": timm.__version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__,
        "duckdb": duckdb.__version__,
    }


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@dataclass
class Plugins:
    """The plugin objects a run uses, created (and validated) before anything runs."""

    strategies: list
    backbone: object
    ensemble: object
    patient_rule: object
    dataset: object

    @classmethod
    def create(cls, cfg: RunConfig, registry: Registry) -> Plugins:
        return cls(
            strategies=[registry.create("strategy", s) for s in cfg.strategy_specs()],
            backbone=registry.create("backbone", cfg.backbone),
            ensemble=registry.create("ensemble", cfg.ensemble),
            patient_rule=registry.create("patient", cfg.patient_rule),
            dataset=resolve_dataset(cfg.data, registry),
        )


@dataclass
class Prepared:
    """A run ready for its folds: data, split and the folds already in the store."""

    run_id: str
    dataset: SliceDataset
    split: Split
    done: set[int]
    started: float


@dataclass
class RunResult:
    run_id: str
    threshold: float
    vote: VoteRecord
    folds: dict[int, FoldRecord]
    timings: dict[str, float] = field(default_factory=dict)


class Runner:
    def __init__(self, config: RunConfig, store, *, registry: Registry | None = None,
                 observers: list[Observer] | None = None, cache_dir: Path | None = None,
                 grid_id: str | None = None, device_label: str | None = None) -> None:
        """`device_label`: what the run row records as its device, when the folds train
        elsewhere than this process's device (a cluster's workers)."""
        self.store = store
        self.registry = registry or get_registry()
        self.emit = Emitter(observers)
        self.cache_dir = cache_dir or default_cache_dir()
        self.grid_id = grid_id
        device = resolve_device(config.device)
        self.cfg = config.resolved(device)
        self.device = torch.device(device)
        self.plugins = Plugins.create(self.cfg, self.registry)
        self.timings: dict[str, float] = {"data": 0.0, "train": 0.0, "eval": 0.0, "store": 0.0}
        self._data: DeviceImages | None = None
        self._split: tuple[SliceDataset, Split] | None = None
        self._device_label_override = device_label

    # ----------------------------------------------------------------- steps
    def load_data(self) -> SliceDataset:
        started = time.perf_counter()
        options = LoadOptions(image_size=self.cfg.image_size, windows=tuple(self.cfg.windows),
                              exclude=tuple(self.cfg.exclude))
        dataset = self.plugins.dataset.load(
            options, self.cache_dir,
            progress=lambda done, total: self.emit("data_progress", done=done, total=total))
        self.timings["data"] += time.perf_counter() - started
        self.emit("data_loaded", slices=len(dataset), patients=len(dataset.patients))
        return dataset

    def build_model(self, fold: int, in_chans: int) -> BuiltModel:
        torch.manual_seed(self.cfg.seed * 1000 + fold)
        weights = Path(self.cfg.weights_file) if self.cfg.weights_file else None
        return self.plugins.backbone.build(BuildOptions(
            in_chans=in_chans, pretrained=bool(self.cfg.pretrained), weights=weights))

    def plan_for(self, dataset: SliceDataset, train_patients: np.ndarray, fold: int) -> TrainPlan:
        rows = np.flatnonzero(np.isin(dataset.patient_ids, train_patients))
        plan = TrainPlan(indices=rows, augment=np.zeros(len(rows), dtype=bool))
        ctx = StrategyContext(dataset=dataset, train_patients=np.asarray(train_patients),
                              rng=np.random.default_rng(self.cfg.seed * 31 + fold))
        for strategy in self.plugins.strategies:
            plan = strategy.apply(plan, ctx)
        stray = np.setdiff1d(np.unique(dataset.patient_ids[plan.indices]), train_patients)
        if len(stray):
            raise LeakageError(f"A strategy put rows of non-training patients "
                               f"{stray[:10].tolist()} into the training set of fold {fold}")
        return plan

    # ----------------------------------------------------------------- run
    def run(self, resume: str | None = None, dataset: SliceDataset | None = None) -> RunResult:
        """Run (or, given `resume`, finish) the protocol; `dataset` if already loaded."""
        prepared = self.prepare(resume=resume, dataset=dataset)
        try:
            folds: dict[int, FoldRecord] = {}
            for fold in prepared.split.folds:
                if fold.index in prepared.done:
                    folds[fold.index] = self.store.load_fold(prepared.run_id, fold.index)
                    self.emit("fold_skipped", fold=fold.index)
                    continue
                record, state = self.fold_trial(prepared.dataset, prepared.split, fold.index)
                folds[fold.index] = self.record_fold(prepared.run_id, record, state)
            return self.finish(prepared, folds)
        except KeyboardInterrupt:
            self.store.mark_run(prepared.run_id, "interrupted")
            raise
        except BaseException as exc:
            self.store.mark_run(prepared.run_id, "failed", error=f"{type(exc).__name__}: {exc}")
            raise

    def prepare(self, resume: str | None = None, dataset: SliceDataset | None = None,
                exclusive: bool = False) -> Prepared:
        """Load the data, split it, and create (or reopen) the run in the store.

        `exclusive`: create no new run while the same configuration on the same data is
        finished or running in another live process (what a grid wants); the store
        checks it in the transaction that creates the run, so two grids started together
        do not both train it."""
        started = time.perf_counter()
        dataset = dataset if dataset is not None else self.load_data()
        split = self.split_of(dataset)
        if resume:
            run_id = self.store.resolve(resume)
            self._check_resumable(run_id, dataset, split)
            done = self.store.finished_folds(run_id)
            self.store.mark_run(run_id, "running")
        else:
            run_id = new_run_id()
            probe = self.build_model(0, dataset.images.shape[1])  # provenance of the weights
            self.store.create_run(self._run_record(run_id, dataset, split, probe),
                                  exclusive=exclusive)
            done = set()
        self.emit("run_started", run_id=run_id, folds=self.cfg.folds, epochs=self.cfg.epochs,
                  resumed=bool(resume), finished=sorted(done))
        return Prepared(run_id, dataset, split, set(done), started)

    def split_of(self, dataset: SliceDataset) -> Split:
        """The run's split of `dataset` (computed once per dataset)."""
        if self._split is None or self._split[0] is not dataset:
            self._split = (dataset, make_split(
                dataset.patient_ids, dataset.labels, n_folds=self.cfg.folds,
                test_size=self.cfg.test_size, seed=self.cfg.seed))
        return self._split[1]

    def fold_trial(self, dataset: SliceDataset, split: Split,
                   fold_index: int) -> tuple[FoldRecord, dict]:
        """Train and evaluate one fold without touching the store: what an executor runs
        anywhere. Returns the record and the kept state dict (on the CPU)."""
        if self._data is None:
            self._data = DeviceImages(dataset.images, dataset.labels, self.device)
        fold = split.folds[fold_index]
        built = self.build_model(fold_index, dataset.images.shape[1])
        return self._run_fold(fold, split, dataset, self._data, built)

    def record_fold(self, run_id: str, record: FoldRecord, state: dict) -> FoldRecord:
        """Save the fold's checkpoint (write, then rename) and its rows (one transaction)."""
        t = time.perf_counter()
        record.checkpoint = self._save_checkpoint(run_id, record.fold, state)
        self.store.write_fold(run_id, record)
        self.timings["store"] += time.perf_counter() - t
        test_f1 = next(m.f1 for m in record.metrics if m.split == "test" and m.scope == "slice")
        self.emit("fold_finished", fold=record.fold, threshold=record.threshold,
                  val_f1=float(record.curve.max()), test_f1=test_f1, wall_s=record.wall_s)
        return record

    def finish(self, prepared: Prepared, folds: dict[int, FoldRecord]) -> RunResult:
        vote = self._vote(prepared.dataset, prepared.split, folds)
        wall = time.perf_counter() - prepared.started
        t = time.perf_counter()
        self.store.finish_run(prepared.run_id, vote, wall)
        self.timings["store"] += time.perf_counter() - t
        self.emit("run_finished", run_id=prepared.run_id, threshold=vote.threshold, wall_s=wall,
                  timings=dict(self.timings))
        return RunResult(prepared.run_id, vote.threshold, vote, folds, dict(self.timings))

    def _run_record(self, run_id: str, dataset: SliceDataset, split: Split,
                    built: BuiltModel) -> RunRecord:
        return RunRecord(
            run_id=run_id, dataset=self.plugins.dataset.name, dataset_hash=dataset.dataset_hash,
            config=self.cfg.as_dict(), config_hash=self.cfg.hash, backbone=self.cfg.backbone,
            strategies=self.cfg.strategy_specs(), seed=self.cfg.seed, preset=self.cfg.preset,
            device=self._device_label(), pretrained=built.pretrained,
            pretrained_source=built.pretrained_source, versions=library_versions(),
            git_sha=git_sha(), test_patients=list(split.test),
            folds={f.index: {"train": list(f.train), "val": list(f.val)} for f in split.folds},
            split_hash=split.hash, grid_id=self.grid_id,
        )

    def _device_label(self) -> str:
        if self._device_label_override:
            return self._device_label_override
        if self.device.type == "cuda":
            return f"cuda:{torch.cuda.get_device_name(self.device)}"
        return f"cpu:{os.cpu_count()} cores"

    def _check_resumable(self, run_id: str, dataset: SliceDataset, split: Split) -> None:
        run = self.store.get_run(run_id)
        if run["status"] == "finished":
            raise RunFinishedError(run_id)
        if run.get("dataset_hash") != dataset.dataset_hash:
            raise UsageError(f"Run {run_id} was made on another dataset "
                             f"(hash {run.get('dataset_hash')}); cannot resume on this one")
        if run.get("split_hash") != split.hash:
            raise LeakageError(f"Run {run_id}: the recomputed split differs from the stored one; "
                               "refusing to resume")

    def _run_fold(self, fold, split: Split, dataset: SliceDataset, data: DeviceImages,
                  built: BuiltModel) -> tuple[FoldRecord, dict]:
        started = time.perf_counter()
        check_no_leakage(split)
        train_p = np.asarray(fold.train)
        plan = self.plan_for(dataset, train_p, fold.index)
        base_rows = np.isin(dataset.patient_ids, train_p)
        before_ich = int(dataset.labels[base_rows].sum())
        before_healthy = int(base_rows.sum()) - before_ich
        after_labels = dataset.labels[plan.indices]
        base = np.flatnonzero(base_rows)
        removed = int(len(np.setdiff1d(base, plan.indices)))
        added = int(len(plan.indices) - (len(base) - removed))
        self.emit("fold_started", fold=fold.index, epochs=self.cfg.epochs,
                  train_samples=len(plan.indices))
        val_rows = np.flatnonzero(np.isin(dataset.patient_ids, fold.val))
        test_rows = np.flatnonzero(np.isin(dataset.patient_ids, split.test))
        settings = TrainSettings(epochs=self.cfg.epochs, batch_size=self.cfg.batch_size,
                                 lr=self.cfg.lr, patience=self.cfg.patience, seed=self.cfg.seed,
                                 device=self.device, input_size=built.input_size,
                                 compile=self.cfg.compile)
        t = time.perf_counter()
        state, best_epoch, history = train_fold(built.model, plan, data, val_rows, settings,
                                                self.emit, fold.index)
        self.timings["train"] += time.perf_counter() - t
        t = time.perf_counter()
        built.model.load_state_dict(state)
        val_prob = predict(built.model, data, val_rows, settings)
        test_prob = predict(built.model, data, test_rows, settings)
        curve = f1_curve(dataset.labels[val_rows], val_prob)
        threshold = best_threshold(curve)
        metrics = []
        for split_name, rows, prob in (("val", val_rows, val_prob), ("test", test_rows, test_prob)):
            metrics += self._metrics("fold", fold.index, split_name, threshold, dataset, rows,
                                     prob, prob >= threshold)
        predictions = Predictions(
            split=np.array(["val"] * len(val_rows) + ["test"] * len(test_rows)),
            patient_id=dataset.patient_ids[np.concatenate([val_rows, test_rows])],
            slice=dataset.slice_numbers[np.concatenate([val_rows, test_rows])],
            label=dataset.labels[np.concatenate([val_rows, test_rows])],
            prob=np.concatenate([val_prob, test_prob]),
        )
        self.timings["eval"] += time.perf_counter() - t
        record = FoldRecord(
            fold=fold.index, threshold=threshold, best_epoch=best_epoch,
            train_ich_before=before_ich, train_healthy_before=before_healthy,
            train_ich=int(after_labels.sum()), train_healthy=int((after_labels == 0).sum()),
            added=added, removed=removed,
            train_patients=list(fold.train), val_patients=list(fold.val),
            wall_s=time.perf_counter() - started, curve=curve, metrics=metrics,
            predictions=predictions, epochs=history, compiled=self.cfg.compile,
        )
        return record, state

    def _metrics(self, model: str, fold: int | None, split_name: str, threshold: float,
                 dataset: SliceDataset, rows: np.ndarray, scores: np.ndarray,
                 decisions: np.ndarray) -> list[MetricRow]:
        labels = dataset.labels[rows]
        pids = dataset.patient_ids[rows]
        seed = self.cfg.seed
        out = [slice_metrics(model, fold, split_name, threshold, labels, scores, decisions, pids,
                             seed=seed)]
        _, p_labels, p_scores, p_decisions = patient_decisions(
            pids, dataset.slice_numbers[rows], labels, scores, decisions,
            self.plugins.patient_rule, threshold)
        out.append(patient_metrics(model, fold, split_name, threshold, p_labels, p_scores,
                                   p_decisions, seed=seed))
        return out

    def _vote(self, dataset: SliceDataset, split: Split,
              folds: dict[int, FoldRecord]) -> VoteRecord:
        started = time.perf_counter()
        ordered = [folds[k] for k in sorted(folds)]
        threshold, mean_curve = voting_threshold([f.curve for f in ordered])
        test_rows = np.flatnonzero(np.isin(dataset.patient_ids, split.test))
        key = list(zip(dataset.patient_ids[test_rows].tolist(),
                       dataset.slice_numbers[test_rows].tolist()))
        fold_probs = np.stack([_probs_in_order(f.predictions, "test", key) for f in ordered])
        scores, decisions = self.plugins.ensemble.combine(fold_probs, threshold)
        metrics = self._metrics("vote", None, "test", threshold, dataset, test_rows,
                                np.asarray(scores, dtype=float), np.asarray(decisions, dtype=bool))
        # validation: each slice's out-of-fold prediction, cut at the voting threshold
        val_rows, val_prob = [], []
        lookup = {(p, s): i for i, (p, s) in enumerate(zip(dataset.patient_ids.tolist(),
                                                            dataset.slice_numbers.tolist()))}
        for f in ordered:
            mask = f.predictions.split == "val"
            val_rows += [lookup[(int(p), int(s))] for p, s in
                         zip(f.predictions.patient_id[mask], f.predictions.slice[mask])]
            val_prob.append(f.predictions.prob[mask])
        val_rows_arr = np.asarray(val_rows)
        val_prob_arr = np.concatenate(val_prob)
        metrics += self._metrics("vote", None, "val", threshold, dataset, val_rows_arr,
                                 val_prob_arr, val_prob_arr >= threshold)
        predictions = Predictions(
            split=np.array(["test"] * len(test_rows)), patient_id=dataset.patient_ids[test_rows],
            slice=dataset.slice_numbers[test_rows], label=dataset.labels[test_rows],
            prob=np.asarray(scores, dtype=float))
        self.timings["eval"] += time.perf_counter() - started
        return VoteRecord(threshold=threshold, mean_curve=mean_curve, metrics=metrics,
                          predictions=predictions, wall_s=time.perf_counter() - started)

    def _save_checkpoint(self, run_id: str, fold: int, state: dict) -> str:
        folder = run_dir(Path(self.store.path), run_id)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"fold{fold}.pt"
        tmp = folder / f".fold{fold}.pt.tmp-{os.getpid()}"
        in_chans = len(self.cfg.windows)
        try:
            torch.save({"state_dict": state, "backbone": self.cfg.backbone,
                        "in_chans": in_chans, "image_size": self.cfg.image_size,
                        "windows": list(self.cfg.windows), "fold": fold}, tmp)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a partial file on a full disk is only in the way
            raise
        return final.name


def _probs_in_order(pred: Predictions, split_name: str, key: list[tuple[int, int]]) -> np.ndarray:
    mask = pred.split == split_name
    index = {(int(p), int(s)): float(v) for p, s, v in
             zip(pred.patient_id[mask], pred.slice[mask], pred.prob[mask])}
    try:
        return np.array([index[k] for k in key])
    except KeyError as exc:
        raise LeakageError(f"Stored test predictions lack slice {exc}; the run's test set "
                           "changed") from None

