"""One new scan through a finished run (`ichbench predict`): every slice's probability,
the slices the run's vote flags, and the scan's decision under the run's patient rule;
optionally a triage page with the most suspicious slices and their Grad-CAM.

The scan is one patient: its slices are scored by the run's fold models and combined
exactly as the run's vote combined its test slices (`evaluation.RunModel`), so a scan
predicted here and the same scan in an evaluation get the same numbers. Nothing is
written to the store; the page, when asked for, is written whole or not at all.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ichbench import __version__
from ichbench.data.scan import Scan, read_scan
from ichbench.evaluation import Progress, RunModel, load_run_model
from ichbench.interfaces import SliceDataset

if TYPE_CHECKING:
    import torch

    from ichbench.store import Store

TOP_SLICES = 6  # the most suspicious slices a page shows with their Grad-CAM


@dataclass
class ScanPrediction:
    """What a run says about one scan."""

    run_id: str
    scan: Scan
    fold_probs: np.ndarray  # (folds, slices)
    scores: np.ndarray  # the vote's score per slice (a probability, or a fraction of folds)
    flagged: np.ndarray  # the vote's decision per slice
    threshold: float
    score: float  # the scan's score under the patient rule
    decision: bool
    ensemble: str
    patient_rule: str
    scores_are_probabilities: bool

    def suspicious(self, n: int = TOP_SLICES) -> np.ndarray:
        """The `n` highest-scoring slices (0-based), highest first; ties by slice."""
        order = np.lexsort((np.arange(len(self.scores)), -self.scores))
        return order[:n]

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "scan": str(self.scan.path),
            "kind": self.scan.kind,
            "slices": self.scan.slices,
            "windows": list(self.scan.windows),
            "ensemble": self.ensemble,
            "patient_rule": self.patient_rule,
            "threshold": self.threshold,
            "decision": "ICH" if self.decision else "no ICH",
            "ich": self.decision,
            "score": self.score,
            "flagged_slices": [int(i) + 1 for i in np.flatnonzero(self.flagged)],
            "slice_scores": [float(s) for s in self.scores],
            "fold_probabilities": [[float(p) for p in fold] for fold in self.fold_probs],
            "scores_are_probabilities": self.scores_are_probabilities,
            "notes": list(self.scan.notes),
            "ichbench_version": __version__,
        }


def predict_scan(
    store: Store,
    run_id: str,
    scan_path: Path | str,
    *,
    progress: Progress | None = None,
    device: torch.device | None = None,
    model: RunModel | None = None,
) -> tuple[ScanPrediction, RunModel]:
    """Score one scan with a finished run. Reads the store and the run's checkpoints,
    writes nothing. Raises UsageError (a run that is not finished), DataError (missing
    checkpoints, a scan that is not one, other preprocessing) or StoreError."""
    model = model or load_run_model(store, run_id, device)
    scan = read_scan(scan_path, model.windows, model.image_size)
    model.check_input(str(scan.path), scan.windows, scan.images.shape[-1], scan.images.shape[1])
    pids = np.zeros(scan.slices, dtype=np.int64)
    numbers = np.arange(1, scan.slices + 1)
    probs = model.fold_probabilities(scan.images, pids, progress)
    scores, flagged = model.vote(probs)
    _, _, p_scores, p_decisions = model.decide_patients(
        pids, numbers, np.zeros(scan.slices, dtype=np.int64), scores, flagged
    )
    return (
        ScanPrediction(
            run_id=model.run_id,
            scan=scan,
            fold_probs=probs,
            scores=scores,
            flagged=flagged,
            threshold=model.threshold,
            score=float(p_scores[0]),
            decision=bool(p_decisions[0]),
            ensemble=str(model.run.get("ensemble")),
            patient_rule=str(model.run.get("patient_rule")),
            scores_are_probabilities=model.scores_are_probabilities,
        ),
        model,
    )


def scan_dataset(scan: Scan) -> SliceDataset:
    """The scan as a one-patient dataset (no labels), for what reads datasets (Grad-CAM)."""
    n = scan.slices
    return SliceDataset(
        name=str(scan.path),
        dataset_hash="",
        images=scan.images,
        labels=np.zeros(n, dtype=np.int64),
        patient_ids=np.zeros(n, dtype=np.int64),
        slice_numbers=np.arange(1, n + 1, dtype=np.int64),
        positions=(np.arange(n, dtype=np.float32) / max(n - 1, 1)),
        subtypes=np.zeros((n, 5), dtype=np.uint8),
        windows=scan.windows,
        source=str(scan.path),
    )


def write_page(prediction: ScanPrediction, model: RunModel, out: Path, n: int = TOP_SLICES) -> Path:
    """A self-contained HTML page: the decision, the slice strip, and the `n` most
    suspicious slices with their Grad-CAM (the fold models' mean, `report.cam`). Written
    to a temporary file and renamed, so `out` is the whole page or untouched."""
    from ichbench.report import figures as F
    from ichbench.report.cam import grad_cam
    from ichbench.report.model_figures import CamPanel, gradcam_figure

    rows = prediction.suspicious(n)
    dataset = scan_dataset(prediction.scan)
    maps = grad_cam(model.models, rows, dataset)
    unit = "probability" if prediction.scores_are_probabilities else "fraction of folds"
    panels = [
        CamPanel(
            image=dataset.images[r, 0],
            cam=maps[i],
            mask=None,
            title=f"Slice {int(r) + 1} of {prediction.scan.slices}",
            subtitle=f"{unit} {prediction.scores[r]:.2f}"
            + (" · flagged" if prediction.flagged[r] else ""),
            hit=True if prediction.flagged[r] else None,
        )
        for i, r in enumerate(rows)
    ]
    with F.style():
        fig = gradcam_figure(panels, f"The {len(rows)} most suspicious slices")
        png = F.png_bytes(fig)
    strip = strip_figure(prediction)
    page = _page(prediction, png, strip)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:  # named as the page the user asked for, not the temporary file
        _remove(tmp)
        raise OSError(exc.errno, f"Cannot write the page: {exc.strerror or exc}", str(out)) from exc
    except BaseException:
        _remove(tmp)
        raise
    return out


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # the folder that refused the page may refuse this too


def strip_figure(prediction: ScanPrediction) -> bytes:
    """Each slice's score as a bar, flagged slices in the vote's colour, the cut drawn."""
    from ichbench.report import figures as F

    with F.style():
        fig = F.new_figure(10, 2.4)
        ax = fig.subplots()
        x = np.arange(1, prediction.scan.slices + 1)
        colours = [F.ICH if f else F.HEALTHY for f in prediction.flagged]
        ax.bar(x, prediction.scores, color=colours, width=0.85)
        if not np.isnan(prediction.threshold):
            ax.axhline(prediction.threshold, color=F.VOTE, linestyle="--", linewidth=1)
        ax.set_xlim(0.4, len(x) + 0.6)
        ax.set_ylim(0, 1)
        ax.set_xlabel("slice (1 = most inferior)")
        ax.set_ylabel("score")
        return F.png_bytes(fig)


def _page(prediction: ScanPrediction, cam_png: bytes, strip_png: bytes) -> str:
    e = html.escape
    decision = "ICH" if prediction.decision else "no ICH"
    flagged = [int(i) + 1 for i in np.flatnonzero(prediction.flagged)]
    notes = "".join(f"<li>{e(n)}</li>" for n in prediction.scan.notes)

    def img(png: bytes, alt: str) -> str:
        data = base64.b64encode(png).decode("ascii")
        return f'<img alt="{e(alt)}" style="max-width:100%" src="data:image/png;base64,{data}">'

    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>ichbench predict — {e(prediction.scan.path.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
.decision{{font-size:1.6em;font-weight:bold}}td,th{{padding:2px 10px;text-align:left}}</style>
</head><body>
<h1>{e(str(prediction.scan.path))}</h1>
<p class="decision">Decision: {e(decision)} (scan score {prediction.score:.2f})</p>
<table>
<tr><th>Run</th><td>{e(prediction.run_id)}</td></tr>
<tr><th>Scan</th><td>{e(prediction.scan.kind)}, {prediction.scan.slices} slices,
window(s) {e(", ".join(prediction.scan.windows))}</td></tr>
<tr><th>Vote</th><td>ensemble {e(prediction.ensemble)}, threshold
{prediction.threshold:.2f}, patient rule {e(prediction.patient_rule)}</td></tr>
<tr><th>Flagged slices</th><td>{e(", ".join(map(str, flagged)) or "none")}</td></tr>
</table>
{f"<ul>{notes}</ul>" if notes else ""}
<h2>Every slice</h2>
{img(strip_png, "score of every slice")}
<p>Bars in red are flagged by the run's vote; the dashed line is its threshold.</p>
<h2>The most suspicious slices</h2>
{img(cam_png, "Grad-CAM of the most suspicious slices")}
<p>Each slice in the run's first window, and the Grad-CAM of the ICH class averaged over
the run's fold models. A green title marks a slice the vote flags. A triage aid computed
by a research model, not a diagnosis.</p>
<footer><small>ichbench {e(__version__)}</small></footer>
</body></html>
"""
