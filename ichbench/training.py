"""Training and inference for one fold: cross-entropy, Adam, best validation F1 kept.

The whole preprocessed dataset is held as one uint8 tensor on the training device, so
a batch is an index operation, not a Python loop over files: on a GPU the data never
leaves it, and no worker processes are needed to keep the model busy.

A fold that learns nothing is never returned as trained: one that takes no optimiser
step (every batch a skipped single sample) or whose loss becomes NaN or infinite stops
with a `UsageError` naming the option to change, before anything of the fold is kept.
Divergence is checked once per epoch, on the summed loss the epoch reads back anyway.
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
from ichbench.data.preprocess import to_network, to_unit
from ichbench.errors import UsageError
from ichbench.events import BatchFinished, Emitter, EpochFinished
from ichbench.interfaces import TrainPlan
from ichbench.records import EpochRecord
from ichbench.vote import f1_curve

COMPILE_BACKEND = "inductor"


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    patience: int
    seed: int
    device: torch.device
    input_size: int | None = None  # resize batches to this (a backbone's fixed input size)
    compile: bool = False  # train through torch.compile (TorchInductor)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


class DeviceImages:
    """The dataset's images and labels as tensors resident on the device."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device) -> None:
        self.images = torch.from_numpy(np.array(images, copy=True)).to(device)
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64)).to(device)
        self.device = device

    def batch(
        self,
        index: torch.Tensor,
        augment: torch.Tensor | None,
        settings: TrainSettings,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """`augment`: the positions in the batch to transform, an integer tensor on the
        device; its length is known on the host, so no step waits for the GPU."""
        x = to_unit(self.images[index])
        if augment is not None and len(augment):
            x[augment] = augment_batch(x[augment], generator)
        return to_network(x, settings.input_size, channels_last=settings.cuda)


def _autocast(settings: TrainSettings):
    if settings.cuda:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _logits(output) -> torch.Tensor:
    # some backbones (inception) return (logits, aux) in training mode
    return output[0] if isinstance(output, tuple | list) else output


@torch.no_grad()
def predict(
    model: nn.Module, data: DeviceImages, rows: np.ndarray, settings: TrainSettings
) -> np.ndarray:
    """Probability of ICH for each row, in the order given."""
    model.eval()
    out = []
    index = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(data.device)
    for start in range(0, len(index), settings.batch_size * 2):
        chunk = index[start : start + settings.batch_size * 2]
        with _autocast(settings):
            logits = _logits(model(data.batch(chunk, None, settings, None)))
        out.append(torch.softmax(logits.float(), dim=1)[:, 1])
    return torch.cat(out).cpu().numpy().astype(np.float64) if out else np.zeros(0)


def make_loss(plan: TrainPlan, device: torch.device) -> nn.Module:
    weights = torch.tensor(plan.class_weights, dtype=torch.float32, device=device)
    if plan.loss_factory is not None:
        return plan.loss_factory(weights)
    return nn.CrossEntropyLoss(weight=weights)


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
    step_model = torch.compile(model, backend=COMPILE_BACKEND) if settings.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    loss_fn = make_loss(plan, data.device)
    rows = torch.from_numpy(plan.indices.astype(np.int64))
    augment = torch.from_numpy(plan.augment.astype(bool))
    val_labels = data.labels[torch.from_numpy(np.asarray(val_rows, dtype=np.int64))]
    val_labels_np = val_labels.cpu().numpy()
    n_batches = max(1, int(np.ceil(len(rows) / settings.batch_size)))

    best_state, best_f1, best_epoch, stale, steps = None, -1.0, 0, 0, 0
    history: list[EpochRecord] = []
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        model.train()
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
            index = index_on_device[span]
            x = data.batch(
                index, flagged_on_device[bounds[b] : bounds[b + 1]], settings, aug_generator
            )
            y = data.labels[index]
            with _autocast(settings):
                loss = loss_fn(_logits(step_model(x)).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
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
        record = EpochRecord(
            epoch, total_loss / max(len(rows), 1), val_loss, val_f1, time.perf_counter() - started
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
