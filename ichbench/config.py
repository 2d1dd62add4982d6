"""A run's configuration: what the user asked for, completed by a preset.

Options left unset (None) take the preset's value; the resolved configuration, not
the command line, is what the store records and hashes. Every field is kept in one
canonical spelling (see `RunConfig.__post_init__`), so two runs with the same effective
settings share a config hash whatever their spelling: `--exclude 79,58,58` is `58,79`,
`--weight ICH:4.0` is `ich:4`, `augment:3.30` is `augment:3.3`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ichbench.errors import UsageError
from ichbench.exclusion import DEFAULT_EXCLUDE, check_patient_numbers, parse_exclude
from ichbench.spec import Spec, parse_spec

PRESETS: dict[str, dict] = {
    # Short on a laptop CPU: a tiny network on small images for a few epochs.
    "quick": {
        "backbone": "tinycnn",
        "image_size": 64,
        "epochs": 6,
        "batch_size": 32,
        "lr": 2e-3,
        "patience": 3,
        "pretrained": False,
    },
    # The study as published: ImageNet-pretrained ResNet50 at 224 px, augmentation of
    # ICH slices to 3.3x and an ICH loss weight of 4 (used when no --strategy/--weight).
    "paper": {
        "backbone": "resnet50",
        "image_size": 224,
        "epochs": 30,
        "batch_size": 32,
        "lr": 1e-4,
        "patience": 7,
        "pretrained": True,
        "strategies": ["augment:3.3"],
        "weights": ["ich:4"],
    },
    # What the field's leading ICH systems do beyond the paper, on the network the device
    # can train (the paper's ResNet50 at 224 px on a GPU, the quick network on a CPU):
    # three windows as channels (the two the JPG release has), one neighbouring slice on
    # each side, every training slice augmented, AdamW with a warmed-up cosine schedule,
    # flipped test-time copies and a patient rule fitted on out-of-fold patients.
    "modern": {
        "windows": ["stack"],
        "context": 1,
        "augment_all": True,
        "schedule": "cosine",
        "warmup": 1,
        "weight_decay": 1e-4,
        "tta": "flip",
        "patient_rule": "learned",
        "weights": ["ich:4"],
    },
}

RECIPE_OFF: dict[str, object] = {
    "context": 0,
    "schedule": "constant",
    "warmup": 0,
    "weight_decay": 0.0,
    "augment_all": False,
    "tta": "none",
    "stage2": "none",
}
"""The recipe settings beyond the paper, at the values that switch them off (the paper's
recipe). A configuration at these values hashes as configurations recorded before the
settings existed, so the runs already in a store keep their identity."""

WEIGHT_CLASSES = ("healthy", "ich")  # what `--weight CLASS:W` weighs: the two labels
SCHEDULES = ("constant", "cosine")
TTA_MODES = ("none", "flip")
STAGE2_KINDS = ("none", "gru", "conv")
MAX_CONTEXT = 8  # neighbours on each side: 17 slices of 5 mm span a whole head

WINDOW_STACK = "stack"
STACK_WINDOWS = ("brain", "subdural", "bone")
"""`--window stack`: the three windows RSNA 2019's leading entries gave a network as
channels. The JPG release was exported with the brain and bone windows only."""

# Settings of the machine, not of the experiment: a run resumed or repeated with another
# value is the same configuration (the same config hash, skipped by a grid when finished).
EXECUTION_ONLY = ("device", "compile", "device_memory")

MAX_IMAGE_SIZE = 2048  # beyond it the cached dataset alone outgrows any machine's memory

TUNABLE = ("backbone", "image_size", "epochs", "batch_size", "lr", "patience", "pretrained")
"""The network and its training length: a preset that does not set them (`modern`) takes
them from the preset the device would get (`quick` on a CPU, `paper` on a GPU)."""

# what a preset may set besides TUNABLE, each filled only where the user left it unset
PRESET_RECIPE = ("windows", "patient_rule", "ensemble", *RECIPE_OFF)

AUTO = "auto"

MAX_SEED = 2**32 - 1  # the split's scikit-learn `random_state` takes no other seed
MIN_BATCH_SIZE = 2  # training skips one-sample batches: batch norm cannot train on them
# Adam's first step is lr / (1 - 0.9) = 10 lr, taken in float32 (at most 3.4e38): a larger
# lr fails inside the optimiser instead of showing as a diverging loss
MAX_LR = 1e37


def check_folds(folds: int) -> None:
    """Cross-validation needs two folds at least: one to train on while another validates."""
    if folds < 2:
        raise UsageError(f"--folds {folds}: at least 2 folds are needed")


def check_outer_count(outer: int) -> None:
    """Nested cross-validation needs one outer fold at least (one: the single held-out
    split of the study)."""
    if isinstance(outer, bool) or not isinstance(outer, int) or outer < 1:
        raise UsageError(
            f"--outer {outer}: must be at least 1 (1 is the study's single held-out split)"
        )


def check_repeats(repeats: int, seed: int) -> None:
    """A run is repeated at least once, with seeds that scikit-learn accepts."""
    if repeats < 1:
        raise UsageError(f"--repeats {repeats}: must be at least 1")
    if repeats > 1 and 0 <= seed <= MAX_SEED < seed + repeats - 1:
        raise UsageError(f"--repeats {repeats} from --seed {seed}: the seeds would pass {MAX_SEED}")


def check_test_size(test_size: float) -> None:
    """The test set is a fraction of the patients: neither none nor all of them."""
    if not 0 < test_size < 1:
        raise UsageError(f"--test-size {test_size}: expected a fraction between 0 and 1")


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's content; read once per process while the file is unchanged (a
    grid resolves many configurations that share one weights file)."""
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def preset_for_device(preset: str, device: str) -> str:
    """The preset a run gets on `device`: `auto` is `paper` where training has a GPU
    (`cuda`, `cuda:N`), `quick` otherwise; any other preset is kept as given."""
    if preset != AUTO:
        return preset
    return "paper" if device.startswith("cuda") else "quick"


def network_preset(preset: str, device: str) -> str:
    """The preset whose network and training length a run gets: its own when it sets
    them, else the one `auto` would give on `device`."""
    return preset if "backbone" in PRESETS.get(preset, {}) else preset_for_device(AUTO, device)


def expand_windows(windows: list[str]) -> list[str]:
    """`stack` stands for the three windows of `STACK_WINDOWS`, in place."""
    out: list[str] = []
    for w in windows:
        out += list(STACK_WINDOWS) if w == WINDOW_STACK else [w]
    return out


def canonical_number(text: str) -> str:
    """One spelling per finite number (`3.30`, `3.3` -> `3.3`; `4.0` -> `4`; `1e-1` ->
    `0.1`), so that numeric plugin arguments hash by value; anything else is returned as
    given, since file paths and model names are case- and spelling-sensitive."""
    try:
        return str(int(text))
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    if number.is_integer() and abs(number) < 2**53:
        return str(int(number))
    return repr(number)


def check_device_memory(gib: float | None) -> None:
    """`--device-memory GIB`: a positive, finite budget, or none."""
    if gib is not None and not (math.isfinite(gib) and gib > 0):
        raise UsageError(f"--device-memory {gib}: must be above 0 GiB")


def canonical_spec(text: str) -> str:
    """`Augment:3.30` -> `augment:3.3`: the name lower-cased, numeric arguments in their
    canonical spelling, other arguments untouched. A spec that does not parse is returned
    as given, so that the plugin registry reports it with its own message."""
    try:
        spec = parse_spec(text)
    except UsageError:
        return text
    return str(Spec(spec.name.lower(), tuple(canonical_number(a) for a in spec.args)))


def canonical_exclude(value) -> list[int]:
    """Excluded patients as sorted unique ints, from a list of ints or from `--exclude`
    text; a float or a bool is not a patient number, even where Python would convert it."""
    if isinstance(value, str):
        return list(parse_exclude(value))
    try:
        items = list(value)
    except TypeError:
        items = None
    if items is None or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise UsageError(
            f"exclude {value!r}: expected patient numbers (not negative), e.g. "
            f"{list(DEFAULT_EXCLUDE)}"
        )
    check_patient_numbers(items, f"exclude {value!r}")
    return sorted(set(items))


@dataclass
class RunConfig:
    data: str = "synthetic"
    backbone: str | None = None
    strategies: list[str] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)  # `ich:4`, `healthy:0.5`
    # None: the preset's (the CLI passes None for an option the user did not give, so
    # `--preset modern` can set them; a RunConfig built in code keeps the paper's)
    ensemble: str | None = "mean"
    patient_rule: str | None = "any"
    folds: int = 5
    test_size: float = 0.2  # the held-out fraction with one outer fold; unused with more
    # outer folds of patients (nested cross-validation): each is the test set once
    outer: int = 1
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    patience: int | None = None
    image_size: int | None = None
    windows: list[str] | None = field(default_factory=lambda: ["brain"])
    # the recipe beyond the paper (None: the preset's; RECIPE_OFF is the paper's recipe)
    context: int | None = None  # neighbouring slices on each side stacked as channels
    schedule: str | None = None  # learning rate: constant | cosine (per step)
    warmup: int | None = None  # epochs of linear warmup before the schedule
    weight_decay: float | None = None  # AdamW's decoupled decay; 0 = Adam
    augment_all: bool | None = None  # augment every training slice on the fly
    tta: str | None = None  # test-time augmentation of every prediction: none | flip
    stage2: str | None = None  # sequence model over each scan's slices: none | gru | conv
    preset: str = "auto"
    seed: int = 0
    # the seed of the patient split; None: `seed` (one seed moves split and training
    # alike, as before the two were told apart)
    split_seed: int | None = None
    weights_file: str | None = None
    # sha256 of the weights file's content, set when the configuration is resolved: the
    # file is identified by what it holds, so a file replaced under the same path is
    # another configuration (a grid reruns it, a resume refuses it)
    weights_digest: str | None = None
    pretrained: bool | None = None
    exclude: list[int] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    device: str = "auto"
    # torch.compile the network for training: a setting of the machine, like `device`;
    # compiled results repeat, but differ from eager ones: other rounding, and Inductor
    # draws its own dropout masks, so a network with dropout follows another trajectory
    compile: bool = False
    # GiB the dataset's images may take on the training device; beyond it they are
    # streamed from the cache (`ichbench.streaming`). None: a CUDA device's free memory,
    # no limit on the CPU. A setting of the machine: the batches are the same either way
    device_memory: float | None = None

    def __post_init__(self) -> None:
        """Put every field in its canonical spelling: construction, `replace` and
        `from_dict` all pass here, so no configuration hashes by its spelling."""
        self.exclude = canonical_exclude(self.exclude)
        self.strategies = [canonical_spec(s) for s in self.strategies]
        self.weights = [canonical_spec(w) for w in self.weights]
        if self.windows is not None:
            self.windows = expand_windows([w.strip().lower() for w in self.windows])
        self.preset = self.preset.strip().lower()
        self.device = self.device.strip().lower()
        if self.ensemble is not None:
            self.ensemble = canonical_spec(self.ensemble)
        if self.patient_rule is not None:
            self.patient_rule = canonical_spec(self.patient_rule)
        for name in ("schedule", "tta", "stage2"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, value.strip().lower())
        if self.split_seed is not None and self.split_seed == self.seed:
            self.split_seed = None  # the same split: one spelling, one hash
        if isinstance(self.weight_decay, int) and not isinstance(self.weight_decay, bool):
            self.weight_decay = float(self.weight_decay)
        if self.backbone is not None:
            self.backbone = canonical_spec(self.backbone)
        if isinstance(self.lr, int) and not isinstance(self.lr, bool):
            self.lr = float(self.lr)
        if isinstance(self.test_size, int) and not isinstance(self.test_size, bool):
            self.test_size = float(self.test_size)

    def resolved(self, device: str) -> RunConfig:
        """Fill unset options from the preset chosen for `device`; validate the rest."""
        preset = preset_for_device(self.preset, device)
        if preset not in PRESETS:
            raise UsageError(f"Unknown preset {self.preset!r}; expected auto, {', '.join(PRESETS)}")
        values = PRESETS[preset]
        network = PRESETS[network_preset(preset, device)]
        changes = {k: network[k] for k in TUNABLE if getattr(self, k) is None}
        defaults = {"windows": ["brain"], "patient_rule": "any", "ensemble": "mean", **RECIPE_OFF}
        for k in PRESET_RECIPE:
            if getattr(self, k) is None:
                changes[k] = values.get(k, defaults[k])
        weights = Path(self.weights_file) if self.weights_file else None
        digest = file_digest(weights) if weights is not None and weights.is_file() else None
        cfg = replace(self, preset=preset, device=device, weights_digest=digest, **changes)
        if self.warmup is None and cfg.warmup and cfg.epochs is not None:
            cfg.warmup = min(cfg.warmup, cfg.epochs - 1)  # a preset's warmup fits the epochs
        if not self.strategies and not self.weights:
            cfg.strategies = list(values.get("strategies", []))
            cfg.weights = list(values.get("weights", []))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Refuse a value no run can use, before any data is loaded or store touched."""
        if self.image_size is not None and not 8 <= self.image_size <= MAX_IMAGE_SIZE:
            raise UsageError(
                f"--image-size {self.image_size}: must be 8 to {MAX_IMAGE_SIZE} pixels (CT "
                "slices are 512)"
            )
        if self.epochs is not None and self.epochs < 1:
            raise UsageError(f"--epochs {self.epochs}: must be at least 1")
        if self.batch_size is not None and self.batch_size < MIN_BATCH_SIZE:
            raise UsageError(
                f"--batch-size {self.batch_size}: must be at least {MIN_BATCH_SIZE} "
                "(a one-sample batch cannot train batch norm, so it is skipped)"
            )
        check_device_memory(self.device_memory)
        check_folds(self.folds)
        check_test_size(self.test_size)
        check_outer_count(self.outer)
        if self.outer > 1 and self.test_size != RunConfig.test_size:
            raise UsageError(
                f"--test-size {self.test_size} with --outer {self.outer}: the test-set "
                "fraction applies to the single held-out split (--outer 1); with outer "
                "folds each one is the test set once"
            )
        if not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"--seed {self.seed}: must be between 0 and {MAX_SEED}")
        if self.split_seed is not None and not 0 <= self.split_seed <= MAX_SEED:
            raise UsageError(f"--split-seed {self.split_seed}: must be between 0 and {MAX_SEED}")
        if self.lr is not None and not 0 < self.lr <= MAX_LR:
            raise UsageError(f"--lr {self.lr}: must be above 0 and at most {MAX_LR:g}")
        if self.patience is not None and self.patience < 1:
            raise UsageError(f"--patience {self.patience}: must be at least 1")
        self._validate_recipe()
        if self.weights_file and not Path(self.weights_file).is_file():
            raise UsageError(f"--weights {self.weights_file}: no such file")
        for text in self.weights:
            spec = parse_spec(text)
            if len(spec.args) != 1:
                raise UsageError(f"--weight {text!r}: expected CLASS:W, e.g. ich:4 or healthy:0.5")

    def _validate_recipe(self) -> None:
        """The recipe settings beyond the paper, each against what the trainer can do."""
        if self.context is not None and not 0 <= self.context <= MAX_CONTEXT:
            raise UsageError(
                f"--context {self.context}: must be 0 to {MAX_CONTEXT} neighbouring slices "
                "on each side"
            )
        for option, value, allowed in (
            ("--schedule", self.schedule, SCHEDULES),
            ("--tta", self.tta, TTA_MODES),
            ("--stage2", self.stage2, STAGE2_KINDS),
        ):
            if value is not None and value not in allowed:
                raise UsageError(f"{option} {value}: expected one of {', '.join(allowed)}")
        if self.stage2 not in (None, "none") and self.ensemble not in (None, "mean"):
            raise UsageError(
                f"--stage2 {self.stage2} with --ensemble {self.ensemble}: the second stage "
                "replaces the ensemble rule (it averages its own probabilities over the "
                "fold models); leave --ensemble at mean"
            )
        if self.warmup is not None and self.warmup < 0:
            raise UsageError(f"--warmup {self.warmup}: must be 0 or more epochs")
        if self.warmup and self.epochs is not None and self.warmup >= self.epochs:
            raise UsageError(
                f"--warmup {self.warmup} with --epochs {self.epochs}: the warmup must end "
                "before the last epoch"
            )
        if self.weight_decay is not None and not (
            math.isfinite(self.weight_decay) and 0 <= self.weight_decay < 1
        ):
            raise UsageError(
                f"--weight-decay {self.weight_decay}: must be at least 0 and below 1 "
                "(AdamW's decoupled decay per step, times the learning rate)"
            )

    @property
    def split_seed_used(self) -> int:
        """The seed the patient split is drawn with."""
        return self.seed if self.split_seed is None else self.split_seed

    def strategy_specs(self) -> list[str]:
        """Strategies in command-line order, then the class weights as `weight:CLASS,W`:
        the registry's names, what the plugins are created from."""
        return list(self.strategies) + [
            "weight:" + ",".join((parse_spec(w).name,) + parse_spec(w).args) for w in self.weights
        ]

    def typed_specs(self) -> list[str]:
        """Strategies, then class weights, as the user types them (`--strategy augment:3.3
        --weight ich:4` gives `augment:3.3`, `ich:4`): what the store records and every
        table shows, so that the spelling of the command line finds the run again."""
        return list(self.strategies) + list(self.weights)

    def as_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """The settings that determine the result (not where or how fast it is computed);
        without a weights file, with one outer fold and the paper's recipe, exactly the
        settings of versions before those settings existed (so their runs keep their
        hashes)."""
        identity = {k: v for k, v in self.as_dict().items() if k not in EXECUTION_ONLY}
        if identity["weights_digest"] is None:
            del identity["weights_digest"]
        if identity["outer"] == 1:
            del identity["outer"]
        if identity["split_seed"] is None:
            del identity["split_seed"]
        for name, off in RECIPE_OFF.items():
            if identity[name] is None or identity[name] == off:
                del identity[name]
        return identity

    @property
    def hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        """A stored configuration; one stored in an older, non-canonical spelling loads
        canonical (its hash is then today's)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
