"""A finished run applied to data it never saw: external validation (`ichbench evaluate`)
and the model behind `ichbench predict`.

A run's decision is more than its fold models: the ensemble rule combines them, cut at
the voting threshold (or, for a rule that asks for it, at each fold's own threshold);
a calibrated ensemble maps each fold through the calibrator fitted on that fold's
validation predictions; a learned patient rule decides with the coefficients it fitted
on out-of-fold validation patients. All of it was fixed on the run's own validation
data and is stored with the run, so here it is only read back and applied, through the
same plugins and helpers the protocol used (`ensemble.combine`,
`calibration.Calibrator`, `vote.patient_decisions`, `metrics`), never refitted: an
evaluation that tuned anything on the other dataset would flatter the run.

The models see exactly the inputs they trained on: the run's windows, image size and
slice context, normalised as each checkpoint says, with the run's test-time flips. The
other dataset is loaded with the run's preprocessing settings; whatever still differs is
refused, naming both sides. A run evaluated on its own dataset is refused too: its
training patients would be scored as if unseen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ichbench import __version__
from ichbench.data.dicom import REASON_CHARS, reason, short
from ichbench.errors import DataError, UsageError
from ichbench.exclusion import DEFAULT_EXCLUDE
from ichbench.interfaces import SliceDataset

if TYPE_CHECKING:
    import torch

    from ichbench.checkpoints import FoldModel
    from ichbench.records import MetricRow
    from ichbench.store import Store

Progress = Callable[[str, int, int], None]
"""progress(description, done, total)"""

PREDICT_CHUNK = 256  # slices per progress step of inference


# --------------------------------------------------------------------------- the run


@dataclass
class RunModel:
    """A finished run ready to score slices it never saw: its fold models (in fold order)
    and the rules and numbers its vote was made with."""

    run_id: str
    run: dict[str, Any]
    models: list[FoldModel]
    fold_thresholds: np.ndarray
    threshold: float  # the cut the vote's decisions were made at (the patient rule's too)
    ensemble: Any
    patient_rule: Any
    calibrators: list[Any] | None  # one per fold model, for a calibrating ensemble
    tta: str = "none"
    batch_size: int = 64
    device_memory: float | None = None  # GiB the images may take on the device (streamed beyond)
    streamed: str | None = None  # how the last images scored were streamed, if they were

    @property
    def windows(self) -> tuple[str, ...]:
        return self.models[0].windows

    @property
    def image_size(self) -> int:
        return self.models[0].image_size

    @property
    def context(self) -> int:
        return self.models[0].context

    @property
    def in_chans(self) -> int:
        return self.models[0].in_chans

    @property
    def scores_are_probabilities(self) -> bool:
        return bool(getattr(self.ensemble, "scores_are_probabilities", True))

    def preprocessing(self) -> dict[str, Any]:
        """What the models' inputs are, as an evaluation records it."""
        return {
            "windows": list(self.windows),
            "image_size": self.image_size,
            "context": self.context,
            "in_chans": self.in_chans,
            "tta": self.tta,
        }

    def describe_input(self) -> str:
        return _describe(self.windows, self.image_size, self.in_chans, self.context)

    def check_input(self, what: str, windows, image_size: int, channels: int) -> None:
        """Refuse images prepared otherwise than the models' training images, naming both
        sides: other windows, another image size, or another channel count."""
        windows = tuple(windows)
        theirs = channels * (2 * self.context + 1)
        if windows != self.windows or image_size != self.image_size or theirs != self.in_chans:
            raise DataError(
                f"Preprocessing differs: run {self.run_id}'s models take "
                f"{self.describe_input()}; {what} gives "
                f"{_describe(windows, image_size, theirs, self.context)}"
            )

    def fold_probabilities(
        self,
        images: np.ndarray,
        patient_ids: np.ndarray,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Each fold model's probability of ICH for every slice, (folds, slices), computed
        as the run computed its test predictions (`training.predict`: same batches of
        network input, slice context within each scan, test-time flips)."""
        from ichbench.streaming import StreamedImages, images_for
        from ichbench.training import TrainSettings, predict

        n = len(patient_ids)
        device = self.models[0].device
        # on the device when they fit, else streamed from the cache, as training does
        data = images_for(
            images,
            np.zeros(n, dtype=np.int64),
            device,
            patient_ids=np.asarray(patient_ids),
            context=self.context,
            device_memory=self.device_memory,
        )
        self.streamed = data.describe() if isinstance(data, StreamedImages) else None
        chunks = [np.arange(s, min(s + PREDICT_CHUNK, n)) for s in range(0, n, PREDICT_CHUNK)]
        total, done = len(chunks) * len(self.models), 0
        out = np.zeros((len(self.models), n), dtype=np.float64)
        for k, fm in enumerate(self.models):
            settings = TrainSettings(
                epochs=1,
                batch_size=self.batch_size,
                lr=1e-3,
                patience=1,
                seed=0,
                device=device,
                input_size=fm.input_size,
                context=fm.context,
                tta=self.tta,
                mean=fm.mean,
                std=fm.std,
            )
            for rows in chunks:
                out[k, rows] = predict(fm.model, data, rows, settings)
                done += 1
                if progress is not None:
                    progress(f"fold {fm.fold}", done, total)
        return out

    def vote(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The run's ensemble rule on the fold models' probabilities: each fold calibrated
        first where the rule calibrates, then combined and cut as the run's vote was.
        Returns one score and one decision per slice."""
        probs = np.asarray(probs, dtype=float)
        if self.calibrators is not None:
            probs = np.stack([c.apply(p) for c, p in zip(self.calibrators, probs, strict=True)])
        per_fold = bool(getattr(self.ensemble, "per_fold_thresholds", False))
        cut = self.fold_thresholds if per_fold else self.threshold
        scores, decisions = self.ensemble.combine(probs, cut)
        scores = np.asarray(scores, dtype=float)
        decisions = np.asarray(decisions, dtype=bool)
        if scores.shape != (probs.shape[1],) or decisions.shape != (probs.shape[1],):
            raise UsageError(
                f"The ensemble rule {self.run.get('ensemble')!r} returned scores of shape "
                f"{scores.shape} and decisions of shape {decisions.shape} for "
                f"{probs.shape[1]} slices"
            )
        return scores, decisions

    def decide_patients(
        self,
        patient_ids: np.ndarray,
        slice_numbers: np.ndarray,
        labels: np.ndarray,
        scores: np.ndarray,
        decisions: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(patients, labels, scores, decisions) under the run's patient rule at its cut."""
        from ichbench.vote import patient_decisions

        return patient_decisions(
            np.asarray(patient_ids),
            np.asarray(slice_numbers),
            np.asarray(labels),
            scores,
            decisions,
            self.patient_rule,
            self.threshold,
        )


def _describe(windows, image_size: int, in_chans: int, context: int) -> str:
    ctx = f", slice context {context}" if context else ""
    return (
        f"window{'s' if len(windows) > 1 else ''} {','.join(windows)} at {image_size} px "
        f"({in_chans} input channel{'s' if in_chans != 1 else ''}{ctx})"
    )


def load_run_model(store: Store, run_id: str, device: torch.device | None = None) -> RunModel:
    """A stored run as a `RunModel`. Refused: a run that is not finished (no vote to
    apply), a run of several outer folds (several votes, none of them the run's), a run
    whose vote is a second stage (its sequence model is not kept), and a run whose fold
    checkpoints are missing or unreadable (each named)."""
    from ichbench.calibration import Calibrator
    from ichbench.checkpoints import load_fold_models
    from ichbench.config import RunConfig
    from ichbench.paths import run_dir
    from ichbench.plugins import get_registry

    run = store.get_run(run_id)
    rid = run["run_id"]
    if run["status"] != "finished":
        raise UsageError(
            f"Run {rid} is {run['status']}: only a finished run has a vote to apply "
            f"(finish it with `ichbench run --resume {rid}`)"
        )
    cfg = RunConfig.from_dict(run["config"] or {})
    if int(cfg.outer or 1) > 1:
        raise UsageError(
            f"Run {rid} has {cfg.outer} outer folds, each with its own fold models and vote; "
            "evaluate or predict with a run of one outer fold (--outer 1)"
        )
    if cfg.stage2 not in (None, "none"):
        raise UsageError(
            f"Run {rid} decides through a second stage (--stage2 {cfg.stage2}), whose "
            "sequence model is not kept with the run; it cannot be applied to other scans"
        )
    rows = [f for f in store.folds(rid, outer=0) if f["status"] == "finished"]
    if not rows:
        raise DataError(f"Run {rid} has no finished fold to load")
    folds = [int(f["fold"]) for f in rows]
    fold_thresholds = [_number(f.get("threshold")) for f in rows]
    if None in fold_thresholds:
        lacking = [f for f, t in zip(folds, fold_thresholds, strict=True) if t is None]
        raise DataError(
            f"Run {rid} is finished but fold(s) {', '.join(map(str, lacking))} record no "
            "threshold; the store is damaged"
        )
    try:
        loaded = load_fold_models(store.path, rid, folds, device)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # a field of a wrong type
        raise DataError(
            f"Run {rid}'s fold checkpoints in {run_dir(store.path, rid)} are damaged: "
            f"a field cannot be read ({reason(exc)})"
        ) from None
    if loaded.problems:
        raise DataError(
            f"Run {rid}'s fold checkpoints are missing or unreadable: "
            + "; ".join(_one_line(p) for p in loaded.problems)
        )
    models = [loaded.models[f] for f in folds]
    shapes = {(m.windows, m.image_size, m.in_chans, m.context) for m in models}
    if len(shapes) > 1:
        raise DataError(f"Run {rid}'s fold checkpoints disagree on their inputs: {sorted(shapes)}")
    registry = get_registry()
    ensemble = registry.create("ensemble", str(run.get("ensemble") or cfg.ensemble or "mean"))
    rule = registry.create("patient", str(run.get("patient_rule") or cfg.patient_rule or "any"))
    fitted = [c for c in (run.get("calibration") or []) if c.get("outer") in (None, 0)]
    calibrators = None
    if getattr(ensemble, "calibrates_folds", False):
        by_fold = {int(c["fold"]): c for c in fitted if c.get("fold") is not None}
        lacking = [f for f in folds if f not in by_fold]
        if lacking:
            raise DataError(
                f"Run {rid}'s ensemble {run.get('ensemble')} calibrates each fold, but the "
                f"calibrators of fold(s) {', '.join(map(str, lacking))} are not recorded"
            )
        calibrators = [
            Calibrator.from_params(by_fold[f]["kind"], by_fold[f]["params"]) for f in folds
        ]
    if getattr(rule, "fits", False):
        rule = _stored_rule(rid, rule, fitted)
    threshold = _number(run.get("threshold"))
    if threshold is None:
        raise DataError(f"Run {rid} is finished but records no voting threshold")
    return RunModel(
        run_id=rid,
        run=run,
        models=models,
        fold_thresholds=np.array(fold_thresholds, dtype=float),
        threshold=threshold,
        ensemble=ensemble,
        patient_rule=rule,
        calibrators=calibrators,
        tta=str(cfg.tta or "none"),
        batch_size=int(cfg.batch_size or 64),
    )


def _number(value: Any) -> float | None:
    """A stored threshold as a float; None when absent or not finite (a damaged row: a
    NaN cut would decide every slice negative without a word)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _one_line(problem: str) -> str:
    """A checkpoint problem (`fold k: cannot load PATH (Type: message)`) on one line:
    torch's own messages run to paragraphs, and its advice for a file that is not weights
    alone (load it unsafely) is the one thing not to do with a file of unknown origin."""
    head, unsafe, _ = problem.partition("(UnpicklingError: ")
    if unsafe:
        return (
            f"{head}(it holds more than weights, or is damaged: refused, since loading it "
            "could run code)"
        )
    text = short(problem, limit=REASON_CHARS + 200)
    return text + ")" if text.count("(") > text.count(")") else text


def _stored_rule(run_id: str, rule: Any, fitted: list[dict[str, Any]]) -> Any:
    """A learned patient rule as the vote fitted it. The rule's own `fit` on no patients
    gives its fitted class (as its fallback); the stored numbers are put back into it, so
    the patient is decided by the plugin's own `decide`, not by a copy of it here."""
    entry = next(
        (c for c in fitted if c.get("kind") == "patient-rule" and c.get("fold") is None), None
    )
    if entry is None:
        raise DataError(
            f"Run {run_id}'s patient rule {rule.name} learns, but the rule its vote fitted is "
            "not recorded with the run"
        )
    params = dict(entry["params"])
    model = None if params.get("coefficients") is None else _StoredLogistic(params)
    try:
        return replace(
            rule.fit([], 0.5), fitted=params, model=model, cut=params.get("probability_threshold")
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise UsageError(
            f"Run {run_id}'s patient rule {rule.name} cannot be rebuilt from its stored fit "
            f"({type(exc).__name__}: {exc})"
        ) from None


@dataclass(frozen=True)
class _StoredLogistic:
    """A fitted standardise-then-logistic-regression model rebuilt from its stored
    numbers (what `learned` records): `predict_proba` as scikit-learn's pipeline gives it."""

    params: dict[str, Any]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=float)
        mean = np.asarray(self.params["scaler_mean"], dtype=float)
        scale = np.asarray(self.params["scaler_scale"], dtype=float)
        coef = np.asarray(self.params["coefficients"], dtype=float)
        z = ((x - mean) / scale) @ coef + float(self.params["intercept"])
        p = 1.0 / (1.0 + np.exp(-z))
        return np.stack([1.0 - p, p], axis=1)


# --------------------------------------------------------------------------- evaluate


@dataclass
class EvaluationRecord:
    """One evaluation of a run on another dataset, as the store records it."""

    evaluation_id: str
    run_id: str
    dataset: str
    dataset_hash: str
    source: str
    created_at: datetime
    patients: int
    slices: int
    slice_labels: bool
    threshold: float
    preprocessing: dict[str, Any]
    device: str
    wall_s: float
    metrics: list[MetricRow]
    patient_id: np.ndarray  # per slice
    slice_number: np.ndarray
    label: np.ndarray  # per slice; -1 where the dataset has patient labels only
    score: np.ndarray
    decision: np.ndarray
    patient_ids: np.ndarray  # per patient
    patient_label: np.ndarray
    patient_score: np.ndarray
    patient_decision: np.ndarray
    version: str = __version__
    notes: list[str] = field(default_factory=list)

    def slice_frame(self) -> dict[str, np.ndarray]:
        return {
            "patient_id": np.asarray(self.patient_id, dtype=np.int64),
            "slice": np.asarray(self.slice_number, dtype=np.int64),
            "label": np.asarray(self.label, dtype=np.int64),
            "prob": np.asarray(self.score, dtype=np.float64),
            "decision": np.asarray(self.decision, dtype=bool),
        }

    def patient_frame(self) -> dict[str, np.ndarray]:
        return {
            "patient_id": np.asarray(self.patient_ids, dtype=np.int64),
            "label": np.asarray(self.patient_label, dtype=np.int64),
            "score": np.asarray(self.patient_score, dtype=np.float64),
            "decision": np.asarray(self.patient_decision, dtype=bool),
        }

    def metric(self, scope: str) -> MetricRow | None:
        return next((m for m in self.metrics if m.scope == scope), None)


def has_slice_labels(dataset: SliceDataset) -> bool:
    """Whether the dataset labels slices (PhysioNet, RSNA) or only patients (CQ500)."""
    flag = getattr(dataset, "has_slice_labels", None)
    if flag is not None:
        return bool(flag)
    return getattr(dataset, "patient_truth", None) is None and bool(np.all(dataset.labels >= 0))


def patient_truth(dataset: SliceDataset) -> dict[int, int]:
    """Each patient's label: the dataset's own patient labels where it has them (a
    patient-level-only dataset), else ICH when any of its slices is."""
    truth = getattr(dataset, "patient_truth", None)
    if truth is None:
        return dataset.patient_labels()
    return {int(k): int(v) for k, v in truth.items()}


def open_other(
    model: RunModel,
    data: str,
    *,
    exclude: tuple[int, ...] = DEFAULT_EXCLUDE,
    cache_dir: Path | None = None,
    progress: Callable[..., None] | None = None,
) -> SliceDataset:
    """The other dataset, loaded through the cache with the run's preprocessing settings
    (windows, image size) and checked against the models' inputs. The patients left out
    are `exclude` (by default the default ones, which only the PhysioNet release has), not
    the run's own list: those numbers name patients of the run's dataset."""
    from ichbench.config import RunConfig
    from ichbench.data.open import load_options
    from ichbench.data.resolve import resolve_dataset
    from ichbench.paths import cache_dir as default_cache_dir
    from ichbench.plugins import get_registry

    cfg = replace(
        RunConfig.from_dict(model.run["config"] or {}),
        data=data,
        image_size=model.image_size,  # the models' own, even where the config lost it
    )
    source = resolve_dataset(data, get_registry())
    offered = getattr(source, "windows_offered", None)
    have = offered() if callable(offered) else None
    if have is not None and not set(model.windows) <= set(have):
        raise DataError(
            f"Preprocessing differs: run {model.run_id}'s models take {model.describe_input()}; "
            f"{data} offers only window{'s' if len(have) > 1 else ''} {','.join(have)} "
            "(its images come windowed)"
        )
    dataset = source.load(
        replace(
            load_options(cfg),
            windows=model.windows,
            image_size=model.image_size,
            exclude=tuple(exclude),
        ),
        cache_dir or default_cache_dir(),
        progress=progress,
    )
    model.check_input(data, dataset.windows, int(dataset.images.shape[-1]), dataset.images.shape[1])
    return dataset


def evaluate(
    store: Store,
    run_id: str,
    data: str,
    *,
    exclude: tuple[int, ...] = DEFAULT_EXCLUDE,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    device: torch.device | None = None,
    device_memory: float | None = None,
) -> EvaluationRecord:
    """Apply a finished run to every patient of `data` and measure it there: slice
    metrics with patient-bootstrap CIs where the dataset labels slices, patient metrics
    always. Computes; records nothing (the caller writes it with
    `Store.write_evaluation`). Raises UsageError, DataError or StoreError."""
    from ichbench.provenance import utc_now

    started = time.perf_counter()
    created = utc_now()
    model = load_run_model(store, run_id, device)
    model.device_memory = device_memory

    def data_progress(done: int, total: int, description: str | None = None) -> None:
        """A dataset source's progress; `description` names a stage before decoding (a
        synthetic dataset being generated, say)."""
        if progress is not None:
            progress(description or "preprocessing", done, total)

    dataset = open_other(model, data, exclude=exclude, cache_dir=cache_dir, progress=data_progress)
    if dataset.dataset_hash and dataset.dataset_hash == model.run.get("dataset_hash"):
        raise UsageError(
            f"{data} is run {model.run_id}'s own dataset (hash {dataset.dataset_hash}): its "
            "training and validation patients would be scored as unseen; the run's held-out "
            f"test figures are in `ichbench show {model.run_id}`"
        )
    seen = sorted(
        {
            p
            for parts in store.split(model.run_id).folds.values()
            for p in parts["train"] + parts["val"]
        }
    )
    note = check_unseen(model, dataset, data, seen, cache_dir=cache_dir)
    record = score_dataset(
        model, dataset, data, progress=progress, started=started, created=created
    )
    record.preprocessing["exclude"] = list(exclude)
    if note:
        record.notes.append(note)
    if model.streamed:
        record.notes.append(model.streamed)
    absent = sorted(set(getattr(dataset, "not_found_excluded", ())) - set(DEFAULT_EXCLUDE))
    if absent:  # a mistyped --exclude left out nobody: said, as `run` says it
        record.notes.append(
            f"--exclude {','.join(map(str, absent))}: no such patient in {data}; nobody "
            "left out for it"
        )
    return record


def same_evaluation(record: EvaluationRecord, stored: list[dict[str, Any]]) -> dict | None:
    """An evaluation already stored that this one repeats: the same run on data of the
    same fingerprint, prepared and left out alike, by the same ichbench on the same kind
    of device, so with the same numbers. Recording it again would only show the run twice
    on one dataset (and count it twice in any query over evaluations)."""
    import json

    if not record.dataset_hash:
        return None
    mine = json.loads(json.dumps(record.preprocessing))
    for row in stored:
        if (
            row.get("dataset_hash") == record.dataset_hash
            and row.get("preprocessing") == mine
            and row.get("ichbench_version") == record.version
            and row.get("device") == record.device
        ):
            return row
    return None


def check_unseen(
    model: RunModel,
    dataset: SliceDataset,
    data: str,
    seen: list[int],
    *,
    cache_dir: Path | None = None,
) -> str | None:
    """Refuse (UsageError) when a patient of the other dataset is one the run trained or
    validated on: the same scan under any name (a copied or relabelled folder, a dataset
    holding the run's, a patient renumbered) has the same images once preprocessed the
    same way, so each patient's images are compared by digest with those of the run's
    training and validation patients. Returns why the check could not be made (the
    run's dataset cannot be loaded any more), else None. A scan exported otherwise (the
    JPG release of a NIfTI patient) has other bytes and is not recognised."""
    from ichbench.checkpoints import load_run_dataset
    from ichbench.errors import IchbenchError

    try:
        own = load_run_dataset(model.run["config"] or {}, cache_dir)
    except (IchbenchError, OSError, ValueError, TypeError, KeyError) as exc:
        return (
            f"the run's own dataset could not be loaded ({exc}), so {data}'s patients were "
            "not checked against the run's training and validation patients"
        )
    if own.images.shape[1:] != dataset.images.shape[1:]:
        return None  # prepared otherwise: no image can be identical
    theirs = _digests(own, seen)
    mine = _digests(dataset, dataset.patients)
    clashes = sorted((pid, theirs[d]) for d, pid in mine.items() if d in theirs)
    if clashes:
        shown = ", ".join(f"{p} (the run's patient {q})" for p, q in sorted(clashes)[:5])
        more = f" and {len(clashes) - 5} more" if len(clashes) > 5 else ""
        raise UsageError(
            f"{data}: patient(s) {shown}{more} have the images of patients run "
            f"{model.run_id} trained or validated on; they would be scored as unseen. "
            "Leave them out with --exclude, or evaluate on data the run never saw"
        )
    return None


def _digests(dataset: SliceDataset, patients) -> dict[str, int]:
    """{digest of a patient's preprocessed images: patient} for `patients`."""
    import hashlib

    out: dict[str, int] = {}
    ids = np.asarray(dataset.patient_ids)
    for pid in patients:
        rows = np.flatnonzero(ids == int(pid))
        if len(rows):
            images = np.ascontiguousarray(dataset.images[rows])
            out[hashlib.sha256(images.tobytes()).hexdigest()] = int(pid)
    return out


def score_dataset(
    model: RunModel,
    dataset: SliceDataset,
    data: str,
    *,
    progress: Progress | None = None,
    started: float | None = None,
    created: datetime | None = None,
) -> EvaluationRecord:
    """The run applied to every patient of a loaded dataset, and its metrics there (the
    part of `evaluate` after the dataset is opened and checked)."""
    from ichbench.device import device_label
    from ichbench.metrics import patient_metrics, slice_metrics
    from ichbench.provenance import new_run_id, utc_now

    started = time.perf_counter() if started is None else started
    created = utc_now() if created is None else created
    if len(dataset) == 0:
        raise DataError(f"{data}: no slice to evaluate on")
    labelled = has_slice_labels(dataset)
    truth = patient_truth(dataset)
    probs = model.fold_probabilities(dataset.images, dataset.patient_ids, progress)
    scores, decisions = model.vote(probs)
    slice_labels = np.asarray(dataset.labels, dtype=np.int64)
    patients, _, p_scores, p_decisions = model.decide_patients(
        dataset.patient_ids, dataset.slice_numbers, slice_labels, scores, decisions
    )
    unknown = [int(p) for p in patients if int(p) not in truth]
    if unknown:
        raise DataError(f"{data}: no label for patient(s) {', '.join(map(str, unknown[:10]))}")
    p_labels = np.array([truth[int(p)] for p in patients], dtype=np.int64)
    seed = int(model.run.get("seed") or 0)
    cut = model.threshold
    metrics = []
    if labelled:
        metrics.append(
            slice_metrics(
                "vote",
                None,
                "test",
                cut,
                slice_labels,
                scores,
                decisions,
                dataset.patient_ids,
                seed=seed,
            )
        )
    metrics.append(
        patient_metrics("vote", None, "test", cut, p_labels, p_scores, p_decisions, seed=seed)
    )
    if not model.scores_are_probabilities:
        for row in metrics:  # fractions of folds: no calibration to speak of
            row.brier = row.ece = None
    return EvaluationRecord(
        evaluation_id="eval-" + new_run_id(created),
        run_id=model.run_id,
        dataset=dataset.name or data,
        dataset_hash=dataset.dataset_hash,
        source=dataset.source or data,
        created_at=created.replace(tzinfo=None),
        patients=len(patients),
        slices=len(dataset),
        slice_labels=labelled,
        threshold=cut,
        preprocessing=model.preprocessing(),
        device=device_label(model.models[0].device),
        wall_s=time.perf_counter() - started,
        metrics=metrics,
        patient_id=np.asarray(dataset.patient_ids),
        slice_number=np.asarray(dataset.slice_numbers),
        label=slice_labels if labelled else np.full(len(dataset), -1, dtype=np.int64),
        score=scores,
        decision=decisions,
        patient_ids=np.asarray(patients),
        patient_label=p_labels,
        patient_score=np.asarray(p_scores, dtype=float),
        patient_decision=np.asarray(p_decisions, dtype=bool),
    )
