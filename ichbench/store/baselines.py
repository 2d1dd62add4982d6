"""The literature's reported numbers, seeded into the `baselines` table.

These rows are what "did I beat the paper?" is measured against. They are inserted by a
named migration, so this data is append-only like the migrations themselves: a
correction or a new source goes in a new tuple and a new migration, never an edit here.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

HOSEYNI = "hoseyni"
HOSEYNI_CITATION = (
    'Hoseyni et al., "Comprehensive Hyperparameter Tuning to Enhance Deep Learning '
    'Performance for Intracranial Hemorrhage Classification in Head CT Scans", '
    "K. N. Toosi University of Technology"
)
NEETHI_CITATION = "Neethi et al. (2024), as cited by Hoseyni et al."
KYUNG_CITATION = "Kyung et al. (2022), SMART-Net, as cited by Hoseyni et al."

TUNED = "tuned"
UNTUNED = "untuned"
TUNED_NOTE = (
    "ICH slices augmented to 3.3x, ICH loss weight 4, ImageNet-pretrained, Adam, "
    "cross-entropy, 5-fold CV with voting threshold, 80/20 patient split, "
    "patients 58 and 79 excluded"
)
UNTUNED_NOTE = "same protocol without the tuned imbalance configuration"

COLUMNS = (
    "source",
    "citation",
    "model",
    "backbone",
    "setting",
    "scope",
    "split",
    "fold",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "accuracy",
    "note",
)


@dataclass(frozen=True)
class Baseline:
    """One reported result. `model` is 'vote' (the 5-fold ensemble at the voting
    threshold), 'fold' (one fold's model) or 'single' (one model as its authors report)."""

    source: str
    citation: str
    model: str
    backbone: str
    setting: str
    scope: str
    split: str
    fold: int | None
    sensitivity: float | None
    specificity: float | None
    precision: float | None
    f1: float | None
    accuracy: float | None
    note: str

    def as_tuple(self) -> tuple:
        return astuple(self)


Metrics5 = tuple[float | None, float | None, float | None, float | None, float | None]


def _hoseyni(
    model: str,
    backbone: str,
    setting: str,
    scope: str,
    fold: int | None,
    values: Metrics5,
    note: str,
) -> Baseline:
    return Baseline(
        HOSEYNI, HOSEYNI_CITATION, model, backbone, setting, scope, "test", fold, *values, note
    )


def _paper_tables() -> list[Baseline]:
    """Per-fold and voting results of ResNet50 (slice and patient level), and the four
    backbones with and without the tuned configuration (slice level, voting)."""
    slice_folds: list[Metrics5] = [
        (0.78, 0.93, 0.51, 0.62, 0.91),
        (0.68, 0.90, 0.38, 0.49, 0.88),
        (0.60, 0.89, 0.33, 0.42, 0.86),
        (0.86, 0.89, 0.41, 0.55, 0.89),
        (0.32, 0.96, 0.42, 0.36, 0.90),
    ]
    patient_folds: list[Metrics5] = [(1.00, 0.60, 0.60, 0.75, 0.75)] * 4 + [
        (0.83, 0.80, 0.71, 0.77, 0.81)
    ]
    rows = [
        _hoseyni("fold", "resnet50", TUNED, "slice", k, v, "per-fold test results; " + TUNED_NOTE)
        for k, v in enumerate(slice_folds)
    ]
    rows.append(
        _hoseyni(
            "vote", "resnet50", TUNED, "slice", None, (0.94, 0.91, 0.49, 0.64, 0.91), TUNED_NOTE
        )
    )
    rows += [
        _hoseyni(
            "fold",
            "resnet50",
            TUNED,
            "patient",
            k,
            v,
            "per-fold test results; patient positive if any slice is positive; " + TUNED_NOTE,
        )
        for k, v in enumerate(patient_folds)
    ]
    rows.append(
        _hoseyni(
            "vote",
            "resnet50",
            TUNED,
            "patient",
            None,
            (1.00, 0.80, 0.75, 0.86, 0.88),
            "patient positive if any slice is positive; " + TUNED_NOTE,
        )
    )
    backbones: dict[str, tuple[Metrics5, Metrics5]] = {
        "vgg16": ((0.92, 0.88, 0.41, 0.56, 0.88), (0.88, 0.76, 0.25, 0.39, 0.77)),
        "mobilenetv2": ((0.98, 0.82, 0.33, 0.50, 0.84), (1.00, 0.68, 0.22, 0.36, 0.71)),
        "inception_v3": ((0.64, 0.90, 0.36, 0.46, 0.88), (0.88, 0.78, 0.27, 0.41, 0.79)),
    }
    rows.append(
        _hoseyni(
            "vote", "resnet50", UNTUNED, "slice", None, (0.76, 0.78, 0.23, 0.36, 0.77), UNTUNED_NOTE
        )
    )
    for name, (tuned, untuned) in backbones.items():
        rows.append(_hoseyni("vote", name, TUNED, "slice", None, tuned, TUNED_NOTE))
        rows.append(_hoseyni("vote", name, UNTUNED, "slice", None, untuned, UNTUNED_NOTE))
    return rows


def _cited_works() -> list[Baseline]:
    """Results of other groups on PhysioNet CT-ICH, as Hoseyni et al. report them."""
    return [
        Baseline(
            "neethi2024",
            NEETHI_CITATION,
            "single",
            "resnet50v2",
            "rsna-to-physionet",
            "slice",
            "test",
            None,
            0.76,
            None,
            0.69,
            0.67,
            0.54,
            "trained on RSNA, tested on PhysioNet CT-ICH",
        ),
        Baseline(
            "kyung2022",
            KYUNG_CITATION,
            "single",
            "smart-net",
            "physionet",
            "patient",
            "test",
            None,
            0.97,
            0.74,
            None,
            0.84,
            None,
            "multi-task representation learning (SMART-Net)",
        ),
    ]


SEED_V1: tuple[Baseline, ...] = tuple(_paper_tables() + _cited_works())


def paper_and_cited(baselines, scope: str) -> tuple[list[dict], list[dict]]:
    """The rows a run is shown beside at one scope, on the test split: the study's tuned
    ResNet50 folds then its vote, and the other groups' results."""
    rows = [b for b in baselines if b["scope"] == scope and b["split"] == "test"]
    paper = [
        b
        for b in rows
        if b["source"] == HOSEYNI and b["backbone"] == "resnet50" and b["setting"] == TUNED
    ]
    paper.sort(key=lambda b: (b["model"] == "vote", b["fold"] if b["fold"] is not None else 0))
    return paper, [b for b in rows if b["source"] != HOSEYNI]


def baseline_label(row: dict, *, vote: str, fold: str) -> str:
    """A literature row's name in a table: the study's own rows as `vote` or `fold`
    (formatted with the fold number), other groups' as author, year and backbone."""
    if row["source"] == HOSEYNI:
        return vote if row["model"] == "vote" else fold.format(fold=row["fold"])
    year = "".join(ch for ch in row["source"] if ch.isdigit())
    name = row["source"].rstrip("0123456789").title()
    return f"{name} {year} ({row['backbone']})"
