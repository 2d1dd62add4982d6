"""Training and inference for one fold: cross-entropy, Adam, best validation F1 kept.

The whole preprocessed dataset is held as one uint8 tensor on the training device, so
a batch is an index operation, not a Python loop over files: on a GPU the data never
leaves it, and no worker processes are needed to keep the model busy.

A fold that learns nothing is never returned as trained: one that takes no optimiser
step (every batch a skipped single sample) or whose loss becomes NaN or infinite stops
with a `UsageError` naming the option to change, before anything of the fold is kept.
Divergence is checked once per epoch, on the summed loss the epoch reads back anyway.

Every recipe setting of `TrainSettings` defaults to the paper's training (plain Adam at a
constant rate, augmentation only where a strategy flags it, one slice per input,
normalisation at 0.5/0.5, no test-time augmentation); at those defaults a fold trains
exactly as it always has, draw for draw.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ichbench.augment import augment_batch
from ichbench.config import MIN_BATCH_SIZE
from ichbench.data.preprocess import context_table, to_network, to_unit
from ichbench.errors import UsageError
from ichbench.events import BatchFinished, Emitter, EpochFinished
from ichbench.interfaces import TrainPlan
from ichbench.records import EpochRecord
from ichbench.vote import f1_curve

COMPILE_BACKEND = "inductor"
# on CUDA a compiled step is captured as CUDA graphs (one launch per step, not hundreds);
# graphs need fixed shapes, hence `TrainSettings.static_shapes`
CUDA_COMPILE_MODE = "reduce-overhead"


SCHEDULES = ("constant", "cosine")
TTA_MODES = ("none", "flip")


@dataclass(frozen=True)
class TrainSettings:
    """How one fold trains. The fields after `compile` form the training recipe; each
    default is the paper's training, unchanged.

    - `schedule`: the learning rate per optimiser step. "constant": `lr` throughout;
      "cosine": from `lr` down towards 0 along a half cosine over the epochs left after
      the warmup (0 would be reached after the last step of the last epoch; early stopping
      may end the fold sooner).
    - `warmup`: epochs of linear warmup before the schedule, per optimiser step, from
      lr / (warmup steps) at the first step up to `lr` at the last warmup step (never 0,
      so no step is wasted).
    - `weight_decay`: decoupled weight decay, through AdamW when > 0; 0 keeps plain Adam.
    - `augment_all`: transform every training sample on the fly, not only those a
      strategy flags (augment:R flags only the ICH copies it adds).
    - `context`: neighbouring slices on each side stacked as extra input channels (2.5D):
      the network sees (2·context + 1)·C channels, offset-major (`DeviceImages`).
    - `tta`: test-time augmentation of `predict`: "flip" averages the probabilities of each
      image and of its left-right mirror image.
    - `mean`, `std`: normalisation per input channel (after slice context, so one value
      per network input channel; `channel_stats` maps a backbone's onto them); None is
      0.5 and 0.5 on every channel.

    `static_shapes` is a setting of the machine, not of the recipe: every training batch
    has `batch_size` samples (the ragged last batch of an epoch is dropped; the shuffle
    differs each epoch, so every sample is still seen) and every inference batch
    `2·batch_size` rows (the last one padded, the padding's outputs discarded), so a
    compiled step captured as CUDA graphs never meets a new shape. None, the default,
    turns it on exactly where graphs are captured: compiled training on CUDA; the CPU
    trains as it always has. A fold trained so says it in its notes (`shape_notes`).
    """

    epochs: int
    batch_size: int
    lr: float
    patience: int
    seed: int
    device: torch.device
    input_size: int | None = None  # resize batches to this (a backbone's fixed input size)
    compile: bool = False  # train through torch.compile (TorchInductor)
    schedule: str = "constant"
    warmup: int = 0
    weight_decay: float = 0.0
    augment_all: bool = False
    context: int = 0
    tta: str = "none"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    static_shapes: bool | None = None

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {self.tta!r}")
        if self.warmup < 0 or self.context < 0:
            raise ValueError(f"warmup and context must be >= 0 (got {self.warmup}, {self.context})")
        if not self.weight_decay >= 0 or not math.isfinite(self.weight_decay):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None:
                object.__setattr__(self, name, tuple(float(v) for v in values))
        if self.std is not None and not all(v > 0 for v in self.std):
            raise ValueError(f"std must be > 0 on every channel, got {self.std}")

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def fixed_shapes(self) -> bool:
        """Whether batches keep one shape (`static_shapes`, resolved)."""
        if self.static_shapes is None:
            return self.compile and self.cuda
        return self.static_shapes

    @property
    def graphed(self) -> bool:
        """Whether the compiled step is captured as CUDA graphs."""
        return self.compile and self.cuda and self.fixed_shapes


class DeviceImages:
    """The dataset's images and labels as tensors resident on the device.

    With slice context (`TrainSettings.context` = n > 0) a row's input is its slice and the
    n slices on each side of the same scan, channels offset-major: the C windows of slice
    i-n, then those of i-n+1, ..., then those of i+n (the edge slice repeated at the ends of
    a scan, never another patient's). Only the table of neighbouring rows is built, once
    per n and on the device (`context` asks for one up front); a batch gathers its rows'
    neighbours, so the dataset is never copied 2n+1 times.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        device: torch.device,
        *,
        patient_ids: np.ndarray | None = None,
        context: int = 0,
    ) -> None:
        self.images = torch.from_numpy(np.array(images, copy=True)).to(device)
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64)).to(device)
        self.device = device
        self.patient_ids = None if patient_ids is None else np.asarray(patient_ids)
        self.context = context
        self._tables: dict[int, torch.Tensor] = {}
        self._norms: dict[tuple, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        if context:
            self.context_rows(context)

    def context_rows(self, n: int) -> torch.Tensor:
        """The (N, 2n+1) table of each row's context rows (`context_table`), on the device."""
        if n not in self._tables:
            if self.patient_ids is None:
                raise ValueError(
                    "slice context needs the rows' patients: DeviceImages(..., patient_ids=...)"
                )
            if len(self.patient_ids) != len(self.labels):
                raise ValueError(
                    f"{len(self.patient_ids)} patient ids for {len(self.labels)} images"
                )
            table = context_table(self.patient_ids, n)
            self._tables[n] = torch.from_numpy(table).to(self.device)
        return self._tables[n]

    def rows(self, index: torch.Tensor, context: int) -> torch.Tensor:
        """The uint8 images of `index` on the device: (B, C, H, W), or with `context` n
        (B, 2n+1, C, H, W), each row's neighbours in scan order. Where they come from is
        all a subclass changes (`ichbench.streaming` reads them from the cache)."""
        if context:
            return self.images[self.context_rows(context)[index]]
        return self.images[index]

    def unit_batch(
        self,
        index: torch.Tensor,
        augment: torch.Tensor | None,
        settings: TrainSettings,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """The rows of `index` as float images in [0, 1] (with their slice context), the
        positions in `augment` transformed: the batch before resizing and normalisation."""
        batch = self.rows(index, settings.context)
        if settings.context:  # the neighbours' windows as channels, offset-major
            batch = batch.reshape(batch.shape[0], -1, *batch.shape[-2:])
        x = to_unit(batch)
        if augment is not None and len(augment):
            x[augment] = augment_batch(x[augment], generator)
        return x

    def to_network(self, x: torch.Tensor, settings: TrainSettings) -> torch.Tensor:
        """A [0, 1] batch resized and normalised as `settings` say; the per-channel
        statistics go to the device once, not with every batch."""
        if settings.mean is None and settings.std is None:
            return to_network(x, settings.input_size, channels_last=settings.cuda)
        key = (settings.mean, settings.std)
        if key not in self._norms:
            self._norms[key] = tuple(
                None if v is None else torch.tensor(v, dtype=torch.float32, device=self.device)
                for v in key
            )
        mean, std = self._norms[key]
        return to_network(x, settings.input_size, channels_last=settings.cuda, mean=mean, std=std)

    def batch(
        self,
        index: torch.Tensor,
        augment: torch.Tensor | None,
        settings: TrainSettings,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """`augment`: the positions in the batch to transform, an integer tensor on the
        device; its length is known on the host, so no step waits for the GPU."""
        return self.to_network(self.unit_batch(index, augment, settings, generator), settings)


def _autocast(settings: TrainSettings):
    if settings.cuda:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _logits(output) -> torch.Tensor:
    # some backbones (inception) return (logits, aux) in training mode
    return output[0] if isinstance(output, tuple | list) else output


def _probabilities(model: nn.Module, x: torch.Tensor, settings: TrainSettings) -> torch.Tensor:
    with _autocast(settings):
        logits = _logits(model(x))
    return torch.softmax(logits.float(), dim=1)


@torch.no_grad()
def predict(
    model: nn.Module, data: DeviceImages, rows: np.ndarray, settings: TrainSettings
) -> np.ndarray:
    """Probability of ICH for each row, in the order given; with `settings.tta` "flip",
    the mean of the probabilities of each image and of its left-right mirror image."""
    model.eval()
    out = []
    index = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(data.device)
    size = settings.batch_size * 2
    for start in range(0, len(index), size):
        chunk = index[start : start + size]
        real = len(chunk)
        if settings.fixed_shapes and real < size:  # one shape for every call: pad, then drop
            chunk = torch.cat([chunk, chunk[-1:].expand(size - real)])
        if settings.graphed:
            torch.compiler.cudagraph_mark_step_begin()
        x = data.batch(chunk, None, settings, None)
        probs = _probabilities(model, x, settings)
        if settings.tta == "flip":
            probs = (probs + _probabilities(model, x.flip(-1), settings)) / 2
        out.append(probs[:real, 1])
    return torch.cat(out).cpu().numpy().astype(np.float64) if out else np.zeros(0)


class SoftTargetCrossEntropy(nn.CrossEntropyLoss):
    """Class-weighted cross-entropy for probability targets (B, 2), averaged over the
    batch's total weight: sum_i sum_c w_c·t_ic·(−log p_ic) / sum_i sum_c w_c·t_ic.

    nn.CrossEntropyLoss averages probability targets over the batch size even when
    weighted, whereas with labels it divides by the summed weights of the labels; this
    keeps the labels' normalisation, so one-hot targets give exactly the labels' loss and
    mixing changes a batch's loss only through its targets, never its scale. Integer
    labels are accepted too, and give nn.CrossEntropyLoss's value."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__(weight=weight)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not target.is_floating_point():
            return super().forward(input, target)
        total = F.cross_entropy(input, target, weight=self.weight, reduction="sum")
        return total / (target @ self.weight.to(target.dtype)).sum()


def make_loss(plan: TrainPlan, device: torch.device) -> nn.Module:
    """The training loss: the plan's own, or the class-weighted cross-entropy (for soft
    targets when the plan has a batch transform)."""
    weights = torch.tensor(plan.class_weights, dtype=torch.float32, device=device)
    if plan.loss_factory is not None:
        return plan.loss_factory(weights)
    if plan.batch_transform is not None:
        return SoftTargetCrossEntropy(weights)
    return nn.CrossEntropyLoss(weight=weights)


def augment_flags(plan: TrainPlan, settings: TrainSettings) -> np.ndarray:
    """Which of the plan's samples are transformed on the fly: all of them with
    `augment_all`, otherwise those the strategies flagged."""
    if settings.augment_all:
        return np.ones(len(plan.indices), dtype=bool)
    return plan.augment.astype(bool)


def steps_per_epoch(samples: int, batch_size: int, static_shapes: bool = False) -> int:
    """Optimiser steps in one epoch: one per batch, except a one-sample last batch, which
    is skipped (batch norm cannot train on it) unless it is the whole training set. With
    `static_shapes` only full batches train (`drop_ragged`)."""
    if samples == 0:
        return 0
    full, rest = divmod(samples, batch_size)
    if drop_ragged(samples, batch_size, static_shapes):
        return full
    return full + (1 if rest > 1 or (rest == 1 and samples == 1) else 0)


def drop_ragged(samples: int, batch_size: int, static_shapes: bool) -> bool:
    """Whether an epoch's ragged last batch is dropped: with static shapes, when there is
    one and at least one full batch beside it (a training set smaller than a batch trains
    as one batch rather than not at all)."""
    return static_shapes and samples % batch_size != 0 and samples >= batch_size


def shape_notes(samples: int, settings: TrainSettings) -> dict | None:
    """What a fold's notes say of its static shapes (None without them): the training
    batch size, the samples each epoch leaves out, and how inference keeps one shape."""
    if not settings.fixed_shapes:
        return None
    dropped = (
        samples % settings.batch_size if drop_ragged(samples, settings.batch_size, True) else 0
    )
    last = "dropped" if dropped else "none ragged"
    if 0 < samples < settings.batch_size:
        last = "the only batch, smaller"
    return {
        "batch_size": settings.batch_size,
        "last_batch": last,
        "dropped_per_epoch": dropped,
        "inference": f"batches of {2 * settings.batch_size}, the last padded",
        "cuda_graphs": settings.graphed,
    }


def lr_factor(step: int, steps: int, settings: TrainSettings) -> float:
    """The multiple of `settings.lr` used at optimiser step `step` (0-based) of a fold
    with `steps` steps per epoch: the linear warmup, then the schedule (`TrainSettings`)."""
    warm = settings.warmup * steps
    if step < warm:
        return (step + 1) / warm
    if settings.schedule == "cosine":
        span = settings.epochs * steps - warm
        if span <= 0:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, span) / span))
    return 1.0


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """Adam, as the paper trains; AdamW (decoupled decay) when weight decay is asked for.

    On CUDA the fused implementation: one kernel for every parameter's update instead of a
    few per tensor, 1.5× the whole ResNet50 step at batch 32 on an H200, the same update
    up to rounding. The CPU keeps PyTorch's default implementation, so CPU runs repeat
    earlier ones bit for bit."""
    extra = {"fused": True} if settings.cuda else {}
    if settings.weight_decay > 0:
        return torch.optim.AdamW(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, **extra
        )
    return torch.optim.Adam(model.parameters(), lr=settings.lr, **extra)


def make_scheduler(
    optimizer: torch.optim.Optimizer, steps: int, settings: TrainSettings
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-step learning-rate schedule (`lr_factor`), or None for a constant rate
    without warmup, which leaves the optimiser exactly as it is."""
    if settings.schedule == "constant" and settings.warmup == 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps, settings)
    )


def compiled(model: nn.Module, settings: TrainSettings) -> nn.Module:
    """The module through torch.compile: TorchInductor, and on CUDA with static shapes its
    steps captured as CUDA graphs (`CUDA_COMPILE_MODE`)."""
    mode = CUDA_COMPILE_MODE if settings.graphed else None
    return torch.compile(model, backend=COMPILE_BACKEND, mode=mode)


def _transform_generator(settings: TrainSettings, fold: int, device: torch.device):
    """The batch transform's own stream, seeded from the run's seed and the fold, and
    independent of the augmentation's (a different seed, not merely a different object)."""
    seed = int(np.random.SeedSequence([settings.seed, fold, 2]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(seed)


def _diverged(fold: int, epoch: int, what: str) -> UsageError:
    return UsageError(f"training diverged at fold {fold} epoch {epoch}: {what}; lower --lr")


def train_fold(
    model: nn.Module,
    plan: TrainPlan,
    data: DeviceImages,
    val_rows: np.ndarray,
    settings: TrainSettings,
    emit: Emitter,
    fold: int,
) -> tuple[dict, int, list[EpochRecord]]:
    """Train on the plan's rows; return the state dict of the epoch with the best
    validation F1 (maximum over the threshold grid), that epoch, and the history."""
    generator = torch.Generator(device="cpu").manual_seed(settings.seed * 1009 + fold)
    aug_generator = torch.Generator(device=data.device).manual_seed(settings.seed * 7 + fold)
    model.to(data.device)
    if settings.cuda:
        model.to(memory_format=torch.channels_last)
    # the compiled wrapper shares the module's parameters; state dicts are taken from the
    # module itself, so checkpoints never carry the wrapper's `_orig_mod.` prefix
    step_model = compiled(model, settings) if settings.compile else model
    optimizer = make_optimizer(model, settings)
    loss_fn = make_loss(plan, data.device)
    rows = torch.from_numpy(plan.indices.astype(np.int64))
    augment = torch.from_numpy(augment_flags(plan, settings))
    dropping = drop_ragged(len(rows), settings.batch_size, settings.fixed_shapes)
    notes = shape_notes(len(rows), settings)
    if notes is not None:
        plan.notes["static_shapes"] = notes  # stored with the fold, shown by `show`
    scheduler = make_scheduler(
        optimizer, steps_per_epoch(len(rows), settings.batch_size, settings.fixed_shapes), settings
    )
    transform = plan.batch_transform
    transform_generator = (
        _transform_generator(settings, fold, data.device) if transform is not None else None
    )
    set_epoch = getattr(loss_fn, "set_epoch", None)
    val_labels = data.labels[torch.from_numpy(np.asarray(val_rows, dtype=np.int64))]
    val_labels_np = val_labels.cpu().numpy()
    n_batches = max(1, int(np.ceil(len(rows) / settings.batch_size)))
    if dropping:
        n_batches = len(rows) // settings.batch_size

    best_state, best_f1, best_epoch, stale, steps = None, -1.0, 0, 0, 0
    history: list[EpochRecord] = []
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        model.train()
        if callable(set_epoch):
            set_epoch(epoch)
        order = torch.randperm(len(rows), generator=generator)
        # the epoch's batches and their flagged positions go to the device in one copy
        # each, and the loss is summed there and read once: a copy or a read per batch
        # would make the host wait for every step instead of queueing the next
        spans = [
            slice(b * settings.batch_size, (b + 1) * settings.batch_size) for b in range(n_batches)
        ]
        flagged = [torch.nonzero(augment[order[span]]).squeeze(1) for span in spans]
        bounds = np.cumsum([0] + [len(f) for f in flagged]).tolist()
        flagged_on_device = torch.cat(flagged).to(data.device)
        index_on_device = rows[order].to(data.device)
        total_loss = torch.zeros((), dtype=torch.float64, device=data.device)
        for b, span in enumerate(spans):
            pick = order[span]
            if len(pick) == 0 or (len(pick) == 1 and len(rows) > 1):
                continue  # batch norm cannot train on a single sample
            if settings.graphed:
                torch.compiler.cudagraph_mark_step_begin()
            index = index_on_device[span]
            x = data.unit_batch(
                index, flagged_on_device[bounds[b] : bounds[b + 1]], settings, aug_generator
            )
            target = data.labels[index]
            if transform is not None:
                # one-hot by arithmetic: F.one_hot may read the labels back to check them
                one_hot = torch.stack([1 - target, target], dim=1).float()
                x, target = transform(x, one_hot, transform_generator)
            x = data.to_network(x, settings)
            with _autocast(settings):
                loss = loss_fn(_logits(step_model(x)).float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += loss.detach().double() * len(pick)
            steps += 1
            emit(BatchFinished(fold=fold, epoch=epoch, batch=b + 1, batches=n_batches))
        if not steps:
            raise UsageError(
                f"fold {fold} took no optimiser step: {len(rows)} training slice(s) in "
                f"batches of {settings.batch_size}, and a one-sample batch is skipped (batch "
                f"norm cannot train on it); use --batch-size {MIN_BATCH_SIZE} or more"
            )
        total_loss = float(total_loss)
        if not math.isfinite(total_loss):
            raise _diverged(fold, epoch, f"loss is {total_loss}")
        probs = predict(step_model, data, val_rows, settings)
        if not np.isfinite(probs).all():
            raise _diverged(fold, epoch, "validation probabilities are nan")
        val_f1 = float(f1_curve(val_labels_np, probs).max())
        val_loss = float(
            F.nll_loss(
                torch.log(torch.from_numpy(np.stack([1 - probs, probs], 1)).clamp_min(1e-7)),
                torch.from_numpy(val_labels_np),
            )
        )
        improved = val_f1 > best_f1
        if improved:
            best_f1, best_epoch, stale = val_f1, epoch, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            stale += 1
        seen = n_batches * settings.batch_size if dropping else len(rows)
        record = EpochRecord(
            epoch, total_loss / max(seen, 1), val_loss, val_f1, time.perf_counter() - started
        )
        history.append(record)
        emit(
            EpochFinished(
                fold=fold,
                epoch=epoch,
                epochs=settings.epochs,
                train_loss=record.train_loss,
                val_loss=val_loss,
                val_f1=val_f1,
                best=improved,
            )
        )
        if stale >= settings.patience:
            break
    assert best_state is not None
    return best_state, best_epoch, history
