"""The study's protocol on one configuration: data → split → per-fold training → curves →
vote → metrics. Pure: it holds no store and writes nothing, so it runs the same in this
process, on a cluster's worker, or in a test without DuckDB.

The core owns the protocol; plugins only supply the strategies, the network, the
aggregation rules and the data, and are reached through the interfaces in
`ichbench.interfaces`. Progress goes to observers as events (`ichbench.events`); errors
are raised as domain exceptions. A run's life in the store is `ichbench.lifecycle`'s.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ichbench import checkpoints
from ichbench.blame import describe
from ichbench.calibration import fit_calibrator
from ichbench.config import RunConfig
from ichbench.data.open import open_dataset
from ichbench.data.preprocess import channel_stats
from ichbench.data.resolve import resolve_dataset
from ichbench.data.windows import check_windows
from ichbench.device import resolve_device
from ichbench.errors import DataError, LeakageError, PluginError, UsageError
from ichbench.events import (
    DataLoaded,
    DataProgress,
    Emitter,
    FoldStarted,
    Observer,
    RunWarning,
)
from ichbench.exclusion import DEFAULT_EXCLUDE
from ichbench.interfaces import BuildOptions, BuiltModel, SliceDataset, StrategyContext, TrainPlan
from ichbench.metrics import patient_metrics, slice_metrics
from ichbench.paths import cache_dir as default_cache_dir
from ichbench.plugins import get_registry
from ichbench.records import FoldRecord, MetricRow, PatientDecisions, Predictions, VoteRecord
from ichbench.registry import Registry, created_by
from ichbench.split import NestedSplit, Split, TrialKey, check_no_leakage, make_nested_split
from ichbench.training import DeviceImages, TrainSettings, predict, train_fold
from ichbench.vote import best_threshold, f1_curve, patient_decisions, voting_threshold
from ichbench.vote_trust import MAJORITY, vote_warnings


@dataclass
class Plugins:
    """The plugin objects a run uses, created (and so validated) before anything runs."""

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


class RunProtocol:
    """One resolved configuration and the plugins it names, ready to load its data,
    split it, train and evaluate any fold, and vote."""

    def __init__(
        self,
        config: RunConfig,
        *,
        registry: Registry | None = None,
        observers: list[Observer] | None = None,
        cache_dir: Path | None = None,
        allow_random_init: bool = False,
    ) -> None:
        self.registry = registry or get_registry()
        # `--pretrained` typed (or a stored run that recorded pretrained weights) is a
        # requirement: without weights the run stops before it starts, unless allowed
        self.requires_pretrained = config.pretrained is True and not allow_random_init
        self._said: set[str] = set()  # the backbone's warnings, said once per run
        self.build_warnings: list[str] = []
        self._quiet = False  # building only to check: the backbone's warnings unsaid
        self.emit = Emitter(observers)
        self.cache_dir = cache_dir or default_cache_dir()
        device = resolve_device(config.device)
        self.cfg = config.resolved(device)
        self.device = torch.device(device)
        self.plugins = Plugins.create(self.cfg, self.registry)
        if config.windows is None:  # the preset's windows, narrowed to what the data has
            self.cfg = replace(self.cfg, windows=_offered(self.cfg.windows, self.plugins.dataset))
        elif _offered(self.cfg.windows, self.plugins.dataset) != self.cfg.windows:
            have = _offered(self.cfg.windows, self.plugins.dataset)
            raise UsageError(
                f"--window {','.join(self.cfg.windows)}: {self.cfg.data} offers only "
                f"{' and '.join(self.plugins.dataset.windows_offered())} (its "
                f"images come windowed); use --window {' --window '.join(have)}"
            )
        check_windows(tuple(self.cfg.windows))  # a mistyped name fails before any work
        self.timings: dict[str, float] = {"data": 0.0, "train": 0.0, "eval": 0.0}
        self._data: DeviceImages | None = None
        self._split: tuple[SliceDataset, NestedSplit] | None = None

    # ----------------------------------------------------------------- inputs
    def load_data(self) -> SliceDataset:
        started = time.perf_counter()
        _, dataset = open_dataset(
            self.cfg,
            source=self.plugins.dataset,
            cache_dir=self.cache_dir,
            progress=self._data_progress,
        )
        self.timings["data"] += time.perf_counter() - started
        if not dataset.has_slice_labels:
            raise UsageError(
                f"{self.cfg.data} has only patient-level labels: use it with "
                f"`ichbench evaluate RUN --data {self.cfg.data}`"
            )
        self.emit(DataLoaded(slices=len(dataset), patients=len(dataset.patients)))
        absent = sorted(set(getattr(dataset, "not_found_excluded", ())) - set(DEFAULT_EXCLUDE))
        if absent:  # the default exclusion is for the real release, silent elsewhere
            self.emit(
                RunWarning(
                    message=(
                        f"--exclude: no patient {', '.join(map(str, absent))} in {self.cfg.data}; "
                        "nothing was left out for it"
                    )
                )
            )
        return dataset

    def _data_progress(self, done: int, total: int, description: str | None = None) -> None:
        """A dataset source's progress, as an event; `description` names a stage before
        preprocessing (a generator's)."""
        self.emit(DataProgress(done=done, total=total, stage=description or "Preprocessing"))

    def split_of(self, dataset: SliceDataset) -> NestedSplit:
        """The run's split of `dataset`, every outer fold of it (computed once per
        dataset)."""
        if self._split is None or self._split[0] is not dataset:
            self._split = (
                dataset,
                make_nested_split(
                    dataset.patient_ids,
                    dataset.labels,
                    outer=self.cfg.outer,
                    n_folds=self.cfg.folds,
                    test_size=self.cfg.test_size,
                    seed=self.cfg.split_seed_used,
                ),
            )
        return self._split[1]

    def plugin_versions(self) -> dict[str, str]:
        """{distribution: version} of every plugin this configuration uses."""
        used = [("strategy", s) for s in self.cfg.strategy_specs()]
        used += [
            ("backbone", self.cfg.backbone),
            ("ensemble", self.cfg.ensemble),
            ("patient", self.cfg.patient_rule),
            ("dataset", self.cfg.data),
        ]
        from ichbench.registry import plugin_versions

        return plugin_versions(self.registry, used)

    def in_chans(self, dataset: SliceDataset) -> int:
        """Input channels of the network: each window of the slice and of its `context`
        neighbours on either side."""
        return int(dataset.images.shape[1]) * (2 * int(self.cfg.context) + 1)

    def configured_in_chans(self) -> int:
        """The input channels the configuration asks for, known before any data is loaded
        (each window of the slice and of its `context` neighbours)."""
        return len(self.cfg.windows) * (2 * int(self.cfg.context) + 1)

    def check_weights_found(self) -> None:
        """`check_pretrained` on the first fold's network, before any data or store is
        touched; nothing to do unless pretrained weights are required. Its warnings are
        not said: either the error says why, or preflight's build says them."""
        if self.requires_pretrained:
            said, self._quiet = self._quiet, True
            try:
                built = self.build_model(0, self.configured_in_chans())
            finally:
                self._quiet = said
            self.check_pretrained(built)

    def build_model(self, fold: int, in_chans: int) -> BuiltModel:
        """The fold's network, seeded. What the backbone warns about (no pretrained weights,
        and why) reaches the observers once per run as a RunWarning, not as a Python
        warning per fold."""
        checkpoints.seed_init(self.cfg.seed, fold)
        weights = Path(self.cfg.weights_file) if self.cfg.weights_file else None
        options = BuildOptions(
            in_chans=in_chans, pretrained=bool(self.cfg.pretrained), weights=weights
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            built = self.plugins.backbone.build(options)
        for warning in caught:
            if warning.category is not UserWarning:  # a library's own: left to Python
                warnings.warn_explicit(
                    warning.message, warning.category, warning.filename, warning.lineno
                )
                continue
            message = str(warning.message)
            self.build_warnings.append(message)
            if message not in self._said and not self._quiet:
                self._said.add(message)
                self.emit(RunWarning(message=message))
        return built

    def plan_for(self, dataset: SliceDataset, train_patients: np.ndarray, fold: int) -> TrainPlan:
        """The fold's training set as the strategies reshape it; never holds a row of a
        patient outside `train_patients`."""
        rows = np.flatnonzero(np.isin(dataset.patient_ids, train_patients))
        plan = TrainPlan(indices=rows, augment=np.zeros(len(rows), dtype=bool))
        ctx = StrategyContext(
            dataset=dataset,
            train_patients=np.asarray(train_patients),
            rng=np.random.default_rng(self.cfg.seed * 31 + fold),
        )
        for strategy in self.plugins.strategies:
            plan = strategy.apply(plan, ctx)
            if not isinstance(plan, TrainPlan):
                raise _wrong(strategy, "apply", f"returned {type(plan).__name__}, not a TrainPlan")
        stray = np.setdiff1d(np.unique(dataset.patient_ids[plan.indices]), train_patients)
        if len(stray):
            raise LeakageError(
                f"A strategy put rows of non-training patients "
                f"{stray[:10].tolist()} into the training set of fold {fold}"
            )
        return plan

    def preflight(self, dataset: SliceDataset, split: NestedSplit) -> BuiltModel:
        """Call every plugin before a run is recorded, so a plugin that fails does so with
        no run row left behind: every fold's plan (cheap: rows, not images), the network
        (whose provenance the run records, returned), the ensemble rule on a well-formed
        input of the test set's shape, and the patient rule on every patient's slice
        count. A plugin that fails only on the trained models' real numbers still fails
        the run, blamed, later."""
        for outer in split.outers:
            for fold in outer.folds:
                self.plan_for(dataset, np.asarray(fold.train), fold.index)
        built = self.build_model(0, self.in_chans(dataset))
        self.check_pretrained(built)
        for outer in split.outers:
            n_test = int(np.isin(dataset.patient_ids, outer.test).sum())
            folds = len(outer.folds)
            self._combine(np.full((folds, n_test), 0.5), 0.5, np.full(folds, 0.5))
        counts = sorted(set(np.unique(dataset.patient_ids, return_counts=True)[1].tolist()))
        rule = self.plugins.patient_rule
        if getattr(rule, "fits", False):  # fitted on two patients of each class and size
            from ichbench.patient_features import PatientSlices

            toy = [
                PatientSlices(scores=s, decisions=s >= 0.5, label=label)
                for count in counts
                for label, s in ((0, np.linspace(0.0, 0.4, count)),) * 2
                + ((1, np.linspace(0.0, 1.0, count)),) * 2
            ]
            rule = rule.fit(toy, 0.5)
        for count in counts:
            scores = np.linspace(0.0, 1.0, count)
            rule.decide(scores, scores >= 0.5, 0.5)
        return built

    def check_pretrained(self, built: BuiltModel) -> None:
        """Pretrained weights asked for and not found stop the run before it is recorded,
        naming what the backbone tried; `--allow-random-init` lets it train from random
        initialisation (recorded as pretrained=false)."""
        if not self.requires_pretrained or built.pretrained:
            return
        said = (
            " ".join(dict.fromkeys(self.build_warnings))
            or "no reason; it may have no pretrained weights to offer."
        )
        raise UsageError(
            f"--pretrained: {self.cfg.backbone} got no pretrained weights. The backbone "
            f"said: {said} With --allow-random-init the run goes on from random "
            "initialisation."
        )

    def _per_fold(self) -> bool:
        """Whether the ensemble rule cuts each fold at its own threshold (its class says
        `per_fold_thresholds = True`) rather than all at the shared voting threshold."""
        return bool(getattr(self.plugins.ensemble, "per_fold_thresholds", False))

    def _combine(
        self, probs: np.ndarray, threshold: float, fold_thresholds: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ensemble rule's scores and decisions, checked: one of each per slice. A
        rule that asks for them gets each fold's own threshold instead of the shared one."""
        rule = self.plugins.ensemble
        cut = np.asarray(fold_thresholds, dtype=float) if self._per_fold() else threshold
        scores, decisions = rule.combine(probs, cut)
        scores, decisions = np.asarray(scores, dtype=float), np.asarray(decisions, dtype=bool)
        expected = (probs.shape[1],)
        for name, value in (("scores", scores), ("decisions", decisions)):
            if value.shape != expected:
                raise _wrong(
                    rule,
                    "combine",
                    f"returned {name} of shape {value.shape}, expected {expected} (one per slice)",
                )
        return scores, decisions

    # ----------------------------------------------------------------- one fold
    def fold_trial(
        self, dataset: SliceDataset, nested: NestedSplit, key: TrialKey | int
    ) -> tuple[FoldRecord, dict]:
        """Train and evaluate one fold, `key` = (outer fold, fold): what an executor runs
        anywhere. Returns the record and the kept state dict (on the CPU)."""
        if self._data is None:
            from ichbench.streaming import StreamedImages, images_for

            self._data = images_for(
                dataset.images,
                dataset.labels,
                self.device,
                patient_ids=dataset.patient_ids,
                context=int(self.cfg.context),
                device_memory=self.cfg.device_memory,
            )
            if isinstance(self._data, StreamedImages):  # said once, where the run is shown
                self.emit(RunWarning(message=self._data.describe()))
        started = time.perf_counter()
        split, fold = nested.fold(key)
        key = key if isinstance(key, tuple) else (0, key)
        check_no_leakage(split)
        in_chans = self.in_chans(dataset)
        built = self.build_model(fold.index, in_chans)
        train_p = np.asarray(fold.train)
        plan = self.plan_for(dataset, train_p, fold.index)
        base = np.flatnonzero(np.isin(dataset.patient_ids, train_p))
        before_ich = int(dataset.labels[base].sum())
        removed = int(len(np.setdiff1d(base, plan.indices)))
        self.emit(
            FoldStarted(
                fold=fold.index,
                epochs=self.cfg.epochs,
                train_samples=len(plan.indices),
                outer=key[0],
            )
        )
        val_rows = np.flatnonzero(np.isin(dataset.patient_ids, fold.val))
        test_rows = np.flatnonzero(np.isin(dataset.patient_ids, split.test))
        settings = TrainSettings(
            epochs=self.cfg.epochs,
            batch_size=self.cfg.batch_size,
            lr=self.cfg.lr,
            patience=self.cfg.patience,
            seed=self.cfg.seed,
            device=self.device,
            input_size=built.input_size,
            compile=self.cfg.compile,
            schedule=str(self.cfg.schedule),
            warmup=int(self.cfg.warmup),
            weight_decay=float(self.cfg.weight_decay),
            augment_all=bool(self.cfg.augment_all),
            context=int(self.cfg.context),
            tta=str(self.cfg.tta),
            **dict(zip(("mean", "std"), channel_stats(built.mean, built.std, in_chans))),
        )
        t = time.perf_counter()
        state, best_epoch, history = train_fold(
            built.model, plan, self._data, val_rows, settings, self.emit, fold.index
        )
        self.timings["train"] += time.perf_counter() - t
        t = time.perf_counter()
        built.model.load_state_dict(state)
        val_prob = predict(built.model, self._data, val_rows, settings)
        test_prob = predict(built.model, self._data, test_rows, settings)
        curve = f1_curve(dataset.labels[val_rows], val_prob)
        threshold = best_threshold(curve)
        notes = dict(plan.notes)
        notes["input"] = {
            "context": int(self.cfg.context),
            "in_chans": in_chans,
            "mean": list(settings.mean) if settings.mean is not None else None,
            "std": list(settings.std) if settings.std is not None else None,
        }
        rule = self._fitted_rule(dataset, val_rows, val_prob, val_prob >= threshold, threshold)
        if getattr(rule, "fitted", None) is not None:
            notes["patient_rule"] = rule.fitted
        metrics, patients = [], []
        for name, rows, prob in (("val", val_rows, val_prob), ("test", test_rows, test_prob)):
            rows_metrics, decided = self._metrics(
                "fold", fold.index, name, threshold, dataset, rows, prob, prob >= threshold, rule
            )
            metrics += rows_metrics
            patients.append(decided)
        both = np.concatenate([val_rows, test_rows])
        embeddings = None
        if self.cfg.stage2 not in (None, "none"):  # what a second stage reads, per slice
            from ichbench.stage2 import slice_embeddings

            embeddings = slice_embeddings(built.model, self._data, both, settings)
        predictions = Predictions(
            split=np.array(["val"] * len(val_rows) + ["test"] * len(test_rows)),
            patient_id=dataset.patient_ids[both],
            slice=dataset.slice_numbers[both],
            label=dataset.labels[both],
            prob=np.concatenate([val_prob, test_prob]),
        )
        self.timings["eval"] += time.perf_counter() - t
        after = dataset.labels[plan.indices]
        record = FoldRecord(
            fold=fold.index,
            threshold=threshold,
            best_epoch=best_epoch,
            train_ich_before=before_ich,
            train_healthy_before=len(base) - before_ich,
            train_ich=int(after.sum()),
            train_healthy=int((after == 0).sum()),
            added=int(len(plan.indices) - (len(base) - removed)),
            removed=removed,
            train_patients=list(fold.train),
            val_patients=list(fold.val),
            wall_s=time.perf_counter() - started,
            curve=curve,
            metrics=metrics,
            predictions=predictions,
            epochs=history,
            compiled=self.cfg.compile,
            patients=PatientDecisions.concat(patients),
            notes=notes,
            outer=key[0],
            embeddings=embeddings,
        )
        return record, state

    def _metrics(
        self,
        model: str,
        fold: int | None,
        split_name: str,
        threshold: float,
        dataset: SliceDataset,
        rows: np.ndarray,
        scores: np.ndarray,
        decisions: np.ndarray,
        rule: object | None = None,
    ) -> tuple[list[MetricRow], PatientDecisions]:
        """Slice and patient metrics of one model on one split, and the patient decisions
        the patient rule (`rule`: a fitted one, else the run's) made there."""
        labels = dataset.labels[rows]
        pids = dataset.patient_ids[rows]
        seed = self.cfg.seed
        out = [
            slice_metrics(
                model, fold, split_name, threshold, labels, scores, decisions, pids, seed=seed
            )
        ]
        patients, p_labels, p_scores, p_decisions = patient_decisions(
            pids,
            dataset.slice_numbers[rows],
            labels,
            scores,
            decisions,
            rule if rule is not None else self.plugins.patient_rule,
            threshold,
        )
        out.append(
            patient_metrics(
                model, fold, split_name, threshold, p_labels, p_scores, p_decisions, seed=seed
            )
        )
        decided = PatientDecisions(
            split=np.array([split_name] * len(patients)),
            patient_id=np.asarray(patients),
            label=np.asarray(p_labels, dtype=np.int64),
            score=np.asarray(p_scores, dtype=float),
            decision=np.asarray(p_decisions, dtype=bool),
        )
        return out, decided

    def _fitted_rule(
        self,
        dataset: SliceDataset,
        rows: np.ndarray,
        scores: np.ndarray,
        decisions: np.ndarray,
        threshold: float,
    ) -> object:
        """The run's patient rule, fitted on these validation slices when it learns
        (its class says `fits = True`): a fold's own validation patients for the fold's
        figures, every out-of-fold validation patient for the vote; never a test patient.
        A rule that does not learn is returned as it is."""
        rule = self.plugins.patient_rule
        if not getattr(rule, "fits", False):
            return rule
        from ichbench.patient_features import PatientSlices

        patients = [
            PatientSlices(
                scores=np.asarray(scores[at], dtype=float),
                decisions=np.asarray(decisions[at], dtype=bool),
                label=int(dataset.labels[rows[at]].max()),
            )
            for at in _scans(dataset, rows)
        ]
        fitted = rule.fit(patients, float(threshold))
        if not hasattr(fitted, "decide"):
            raise _wrong(rule, "fit", f"returned {type(fitted).__name__}, not a patient rule")
        return fitted

    # ----------------------------------------------------------------- the vote
    def vote(
        self, dataset: SliceDataset, nested: NestedSplit, folds: dict[TrialKey, FoldRecord]
    ) -> list[VoteRecord]:
        """Every outer fold's vote, then the run's headline result (`outer` None): with
        one outer fold its vote; with several, their test decisions pooled."""
        if len(nested) == 1:
            vote, _, _ = self._vote_one(dataset, nested[0], [folds[k] for k in sorted(folds)])
            return [vote]
        started = time.perf_counter()
        votes, parts = [], []
        for outer, split in enumerate(nested.outers):
            ordered = [folds[k] for k in sorted(folds) if k[0] == outer]
            vote, rows, decisions = self._vote_one(dataset, split, ordered, outer=outer)
            votes.append(vote)
            parts.append((rows, vote.predictions.prob, decisions, vote.patients))
        return [*votes, self._pooled(dataset, parts, time.perf_counter() - started)]

    def _pooled(self, dataset: SliceDataset, parts: list, wall_s: float) -> VoteRecord:
        """The outer folds' test results as one: every patient tested once, by the fold
        models that never saw it, each slice cut at its own outer fold's threshold; the
        confidence intervals resample patients."""
        rows = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        decisions = np.concatenate([p[2] for p in parts])
        decided = PatientDecisions.concat([p[3] for p in parts])
        test = decided.split == "test"
        patients = PatientDecisions(*(getattr(decided, n)[test] for n in _PATIENT_FIELDS))
        labels, pids = dataset.labels[rows], dataset.patient_ids[rows]
        seed, nan = self.cfg.seed, float("nan")
        metrics = [
            slice_metrics("vote", None, "test", nan, labels, scores, decisions, pids, seed=seed),
            patient_metrics(
                "vote",
                None,
                "test",
                nan,
                patients.label,
                patients.score,
                patients.decision,
                seed=seed,
            ),
        ]
        predictions = Predictions(
            split=np.array(["test"] * len(rows)),
            patient_id=pids,
            slice=dataset.slice_numbers[rows],
            label=labels,
            prob=scores,
        )
        return VoteRecord(
            threshold=nan,
            mean_curve=np.zeros(0),
            metrics=metrics,
            predictions=predictions,
            wall_s=wall_s,
            patients=patients,
            outer=None,
            decisions=decisions,
        )

    def _vote_one(
        self,
        dataset: SliceDataset,
        split: Split,
        ordered: list[FoldRecord],
        outer: int | None = None,
    ) -> tuple[VoteRecord, np.ndarray, np.ndarray]:
        """One outer fold's vote: the voting threshold (argmax of the mean validation
        curve), the fold models combined on the test set by the ensemble rule and cut
        there, and each slice's out-of-fold validation prediction cut at the same
        threshold (with `--stage2`, the second stage's instead: `_stage2_scores`).
        Returns it with its test rows and the rule's slice decisions."""
        started = time.perf_counter()
        ordered, calibration = self._calibrated(dataset, ordered, outer)
        test_rows = np.flatnonzero(np.isin(dataset.patient_ids, split.test))
        scored = (
            self._stage2_scores(dataset, ordered, test_rows)
            if self.cfg.stage2 not in (None, "none")
            else self._stage1_scores(dataset, ordered, test_rows)
        )
        cut, scores, decisions = scored.cut, scored.scores, scored.decisions
        val_rows_arr, val_prob_arr, val_decisions = scored.val_rows, scored.val_prob, scored.val_dec
        if scored.fitted is not None:
            calibration.append({"outer": outer, "fold": None, **scored.fitted})
        rule = self._fitted_rule(dataset, val_rows_arr, val_prob_arr, val_decisions, cut)
        if getattr(rule, "fitted", None) is not None:
            calibration.append(
                {"outer": outer, "fold": None, "kind": "patient-rule", "params": rule.fitted}
            )
        metrics, test_patients = self._metrics(
            "vote", None, "test", cut, dataset, test_rows, scores, decisions, rule
        )
        val_metrics, val_patients = self._metrics(
            "vote", None, "val", cut, dataset, val_rows_arr, val_prob_arr, val_decisions, rule
        )
        if not getattr(self.plugins.ensemble, "scores_are_probabilities", True):
            for row in metrics + val_metrics:  # vote fractions: no calibration to speak of
                row.brier = row.ece = None
        warnings = self._distrust(ordered, scored.threshold, val_metrics, outer)
        predictions = Predictions(
            split=np.array(["test"] * len(test_rows)),
            patient_id=dataset.patient_ids[test_rows],
            slice=dataset.slice_numbers[test_rows],
            label=dataset.labels[test_rows],
            prob=scores,
        )
        self.timings["eval"] += time.perf_counter() - started
        vote = VoteRecord(
            threshold=cut,
            mean_curve=scored.curve,
            metrics=metrics + val_metrics,
            predictions=predictions,
            wall_s=time.perf_counter() - started,
            patients=PatientDecisions.concat([val_patients, test_patients]),
            outer=outer,
            warnings=warnings,
            decisions=decisions,
            calibration=calibration,
        )
        return vote, test_rows, decisions

    def _oof_rows(self, dataset: SliceDataset, ordered: list[FoldRecord]) -> list[np.ndarray]:
        """Each fold's validation slices as dataset rows, in its predictions' order."""
        return [np.array(_rows_of(dataset, f.predictions, "val"), dtype=np.int64) for f in ordered]

    def _stage1_scores(
        self, dataset: SliceDataset, ordered: list[FoldRecord], test_rows: np.ndarray
    ) -> _Scored:
        """The paper's vote: the fold models' test probabilities combined by the ensemble
        rule and cut at the voting threshold; out of fold, each validation slice's own
        fold model's probability cut at the same threshold."""
        threshold, mean_curve = voting_threshold([f.curve for f in ordered])
        key = list(
            zip(dataset.patient_ids[test_rows].tolist(), dataset.slice_numbers[test_rows].tolist())
        )
        fold_probs = np.stack([_probs_in_order(f.predictions, "test", key) for f in ordered])
        fold_thresholds = np.array([f.threshold for f in ordered], dtype=float)
        scores, decisions = self._combine(fold_probs, threshold, fold_thresholds)
        # a rule cutting each fold at its own threshold scores slices by the fraction of
        # folds voting ICH: its cut, for the patient rule too, is a majority
        per_fold = self._per_fold()
        val_prob, val_cut = [], []
        for f in ordered:
            mask = f.predictions.split == "val"
            val_prob.append(f.predictions.prob[mask])
            val_cut.append(np.full(int(mask.sum()), f.threshold if per_fold else threshold))
        val_prob_arr = np.concatenate(val_prob)
        val_decisions = val_prob_arr >= np.concatenate(val_cut)
        if per_fold:  # out of fold, one fold votes: the fraction is 0 or 1
            val_prob_arr = val_decisions.astype(float)
        return _Scored(
            threshold=threshold,
            cut=MAJORITY if per_fold else threshold,
            curve=mean_curve,
            scores=scores,
            decisions=np.asarray(decisions, dtype=bool),
            val_rows=np.concatenate(self._oof_rows(dataset, ordered)),
            val_prob=val_prob_arr,
            val_dec=val_decisions,
        )

    def _stage2_scores(
        self, dataset: SliceDataset, ordered: list[FoldRecord], test_rows: np.ndarray
    ) -> _Scored:
        """The second stage (`ichbench.stage2`): a sequence model over each scan's slice
        embeddings, fitted on the out-of-fold validation slices only (each embedded by the
        fold model that never trained on it). Its threshold is the argmax of the F1 curve
        of its own cross-fitted predictions on those slices (each from a stage-2 model that
        did not see that scan); on the test set, the mean over the fold models of the
        stage-2 probabilities of each one's embeddings, cut there."""
        from ichbench.stage2 import apply_stage2, cross_fit_stage2

        val_rows = self._oof_rows(dataset, ordered)
        sequences, slice_labels, patient_labels, order = [], [], [], []
        for f, rows in zip(ordered, val_rows):
            val = _embeddings(f, "val")
            for at in _scans(dataset, rows):
                sequences.append(val[at])
                slice_labels.append(dataset.labels[rows[at]])
                patient_labels.append(int(dataset.labels[rows[at]].max()))
                order.append(rows[at])
        result = cross_fit_stage2(
            sequences,
            slice_labels,
            np.asarray(patient_labels),
            str(self.cfg.stage2),
            int(self.cfg.seed),
        )
        oof_rows = np.concatenate(order)
        oof_prob = np.concatenate(result.oof_slice_probs)
        curve = f1_curve(dataset.labels[oof_rows], oof_prob)
        threshold = best_threshold(curve)
        scores = np.zeros(len(test_rows))
        scans = _scans(dataset, test_rows)
        for f in ordered:  # each fold model's test embeddings through the fitted stage 2
            test = _embeddings(f, "test")
            where = {r: i for i, r in enumerate(_rows_of(dataset, f.predictions, "test"))}
            probs, _ = apply_stage2(
                result.net, [test[[where[r] for r in test_rows[at]]] for at in scans]
            )
            for at, p in zip(scans, probs):
                scores[at] += p / len(ordered)
        return _Scored(
            threshold=threshold,
            cut=threshold,
            curve=curve,
            scores=scores,
            decisions=scores >= threshold,
            val_rows=oof_rows,
            val_prob=oof_prob,
            val_dec=oof_prob >= threshold,
            fitted={"kind": "stage2", "params": result.notes},
        )

    def _calibrated(
        self, dataset: SliceDataset, ordered: list[FoldRecord], outer: int | None
    ) -> tuple[list[FoldRecord], list[dict]]:
        """For an ensemble rule that asks for it (`calibrates_folds = True`, its `kind` a
        calibrator of `ichbench.calibration`): each fold's probabilities mapped by a
        calibrator fitted on that fold's validation predictions only, and its validation
        curve and threshold recomputed on them; the vote then works on these. The fold
        records themselves (what the store keeps) are left as the models made them."""
        rule = self.plugins.ensemble
        if not getattr(rule, "calibrates_folds", False):
            return ordered, []
        calibrated, fitted = [], []
        for f in ordered:
            val = f.predictions.split == "val"
            cal = fit_calibrator(rule.kind, f.predictions.label[val], f.predictions.prob[val])
            prob = cal.apply(f.predictions.prob)
            curve = f1_curve(f.predictions.label[val], prob[val])
            calibrated.append(
                replace(
                    f,
                    predictions=replace(f.predictions, prob=prob),
                    curve=curve,
                    threshold=best_threshold(curve),
                )
            )
            fitted.append({"outer": outer, "fold": f.fold, "kind": cal.kind, "params": cal.params})
        return calibrated, fitted

    def _distrust(
        self,
        ordered: list[FoldRecord],
        threshold: float,
        val_metrics: list[MetricRow],
        outer: int | None,
    ) -> list[dict]:
        """What the folds' validation results say against trusting this vote
        (`ichbench.vote_trust`), judged on validation data only, each said as a warning
        and kept with the run."""
        oof_f1 = next(m.f1 for m in val_metrics if m.scope == "slice")
        numbers = [f.threshold for f in ordered] + [float(np.max(f.curve)) for f in ordered]
        if oof_f1 is None or not np.all(np.isfinite([*numbers, threshold, oof_f1])):
            return []
        found = vote_warnings(
            [f.threshold for f in ordered],
            [float(np.max(f.curve)) for f in ordered],
            threshold,
            float(oof_f1),
        )
        if self._per_fold():  # the rule does not share the threshold being judged
            found = [w for w in found if w.code == "worse-than-every-fold"]
        where = "" if outer is None else f"outer fold {outer}: "
        for warning in found:
            self.emit(RunWarning(message=f"The vote may not be trusted: {where}{warning.message}"))
        return [{"code": w.code, "message": w.message, "outer": outer} for w in found]


_PATIENT_FIELDS = ("split", "patient_id", "label", "score", "decision")


@dataclass
class _Scored:
    """What a vote's slice scores are, whichever stage made them: the threshold chosen on
    validation data, the cut the decisions were made at (a majority for a rule voting per
    fold), the validation curve behind it, the test scores and decisions, and the
    out-of-fold validation slices (rows, scores, decisions); `fitted`: a model fitted for
    the vote, as stored with the run."""

    threshold: float
    cut: float
    curve: np.ndarray
    scores: np.ndarray
    decisions: np.ndarray
    val_rows: np.ndarray
    val_prob: np.ndarray
    val_dec: np.ndarray
    fitted: dict | None = None


def _scans(dataset: SliceDataset, rows: np.ndarray) -> list[np.ndarray]:
    """Positions in `rows` of each patient's slices, patient by patient, in slice order."""
    pids, numbers = dataset.patient_ids[rows], dataset.slice_numbers[rows]
    out = []
    for pid in np.unique(pids):
        at = np.flatnonzero(pids == pid)
        out.append(at[np.argsort(numbers[at], kind="stable")])
    return out


def _rows_of(dataset: SliceDataset, pred: Predictions, split_name: str) -> list[int]:
    """The dataset rows of a fold's predictions on one split, in their order."""
    lookup = {
        (p, s): i
        for i, (p, s) in enumerate(
            zip(dataset.patient_ids.tolist(), dataset.slice_numbers.tolist())
        )
    }
    mask = pred.split == split_name
    return [lookup[(int(p), int(s))] for p, s in zip(pred.patient_id[mask], pred.slice[mask])]


def _embeddings(fold: FoldRecord, split_name: str) -> np.ndarray:
    """A fold model's slice embeddings on one split, in its predictions' order; a fold
    recorded without them (before `--stage2` asked for them) cannot feed a second stage."""
    if fold.embeddings is None:
        raise DataError(
            f"fold {fold.fold} of outer fold {fold.outer} has no slice embeddings: the "
            "second stage needs the fold files of the run folder, which are gone"
        )
    return fold.embeddings[fold.predictions.split == split_name]


def _offered(windows: Sequence[str], source: object) -> list[str]:
    """A preset's windows narrowed to those the dataset source can give (its optional
    `windows_offered()`; None: every window), so `--preset modern` stacks three windows
    on NIfTI data and the two the JPG release has there; the first is kept at least."""
    offered = getattr(source, "windows_offered", None)
    have = offered() if callable(offered) else None
    if have is None:
        return list(windows)
    return [w for w in windows if w in have] or list(windows[:1])


def _wrong(plugin: object, method: str, problem: str) -> PluginError:
    """A plugin that returned something the protocol cannot use, named as its fault."""
    entry = created_by(plugin)
    who = describe(entry) if entry is not None else type(plugin).__name__
    return PluginError(f"{who}: {method} {problem}")


def _probs_in_order(pred: Predictions, split_name: str, key: list[tuple[int, int]]) -> np.ndarray:
    mask = pred.split == split_name
    index = {
        (int(p), int(s)): float(v)
        for p, s, v in zip(pred.patient_id[mask], pred.slice[mask], pred.prob[mask])
    }
    try:
        return np.array([index[k] for k in key])
    except KeyError as exc:
        raise LeakageError(
            f"Stored test predictions lack slice {exc}; the run's test set changed"
        ) from None
