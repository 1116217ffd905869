"""fit / evaluate: a small, deterministic, resumable training loop with callbacks."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nncompress.errors import ConfigError
from nncompress.train.augment import augment_batch
from nncompress.train.averaging import WeightAveraging
from nncompress.train.callbacks import Callback, CallbackList
from nncompress.train.checkpoint import load_checkpoint, save_checkpoint
from nncompress.train.schedules import lr_multiplier

log = logging.getLogger(__name__)
OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass
class TrainConfig:
    """Hyper-parameters of one ``fit`` call. ``shift``/``hflip``: random translation by up
    to ``shift`` pixels and left-right flips of training images (seeded per epoch).
    ``average_last``: end with the mean of the weights at the ends of the last k epochs
    (``WeightAveraging``; 0 = off)."""

    epochs: float = 1.0
    """Passes over the training data (> 0; a fraction trains on part of the last pass)."""
    lr: float = 0.01
    """Peak learning rate (> 0)."""
    batch_size: int = 64
    """Samples per step (>= 1)."""
    optimizer: str = "sgd"
    """``sgd`` (with ``momentum``), ``adam`` or ``adamw``."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 0.0
    """L2 penalty / decoupled weight decay (>= 0)."""
    lr_schedule: str = "cosine"
    """``cosine``, ``constant`` or ``step``: how the learning rate moves from ``lr`` over the steps."""
    seed: int = 0
    """Seed of the data order and augmentation (same seed, same run)."""
    max_steps: int | None = None
    """Stop after this many steps (None: run all ``epochs``)."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing in [0, 1)."""
    shift: int = 0
    """Random translation of training images by up to this many pixels (0 = off)."""
    hflip: bool = False
    """Random left-right flips of training images."""
    average_last: int = 0
    """End with the mean of the weights at the ends of the last k epochs (0 = off)."""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} not allowed; use one of {OPTIMIZERS}")
        if self.epochs <= 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.shift < 0:
            raise ConfigError(f"shift must be >= 0 pixels, got {self.shift}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.average_last < 0:
            raise ConfigError(f"average_last must be >= 0 epochs, got {self.average_last}")


@dataclass
class History:
    """Per-epoch metrics of a ``fit`` call."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Build the optimizer named in ``cfg`` over ``params``."""
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 512) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``data`` (eval mode, no grad).

    Example:
        >>> evaluate(model, test_set)["accuracy"]  # doctest: +SKIP
        0.981
    """
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)
    was_training = model.training
    model.eval()
    device = _device_of(model)
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
    model.train(was_training)
    return {"accuracy": correct / max(total, 1), "loss": loss_sum / max(total, 1)}


def step_counts(cfg: TrainConfig, n_samples: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) that ``fit`` runs under ``cfg`` on
    ``n_samples`` samples (``epochs`` may be fractional; ``max_steps`` caps the total).

    Example:
        >>> step_counts(TrainConfig(epochs=1.5, batch_size=100), 1000)
        (10, 15)
    """
    per_epoch = (n_samples + cfg.batch_size - 1) // cfg.batch_size
    total = int(round(cfg.epochs * per_epoch))
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    return per_epoch, total


def fit(
    model: nn.Module,
    train_data: Dataset,
    cfg: TrainConfig | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    val_data: Dataset | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = False,
    loss_fn=None,
) -> History:
    """Train ``model`` on ``train_data`` with SGD/Adam, an LR schedule and callbacks.

    Determinism: the shuffle order of epoch e is drawn from ``seed + e`` and the global RNG
    is seeded from ``seed``, so a run killed and resumed from ``checkpoint`` (saved after
    every epoch, atomically) finishes with the same weights as an uninterrupted one.
    ``loss_fn(logits, y, x)`` replaces cross-entropy (distillation uses it).

    Example:
        >>> fit(model, train_set, TrainConfig(epochs=2, lr=0.05))  # doctest: +SKIP
    """
    cfg = cfg or TrainConfig()
    callbacks = list(callbacks or ())
    opt = optimizer or make_optimizer(model.parameters(), cfg)
    steps_per_epoch, total_steps = step_counts(cfg, len(train_data))
    n_epochs = (total_steps + steps_per_epoch - 1) // steps_per_epoch
    if cfg.average_last:
        callbacks.insert(0, WeightAveraging(max(0, n_epochs - cfg.average_last)))  # stable checkpoint key
    cbs = CallbackList(callbacks)
    base_lrs = [g["lr"] for g in opt.param_groups]
    sched = lr_multiplier(cfg.lr_schedule, total_steps)
    history, start_epoch = History(), 0
    torch.manual_seed(cfg.seed)
    if checkpoint is not None and Path(checkpoint).exists():
        start_epoch, history.epochs = load_checkpoint(checkpoint, model, opt, cbs)
        log.info("resumed from %s at epoch %d", checkpoint, start_epoch)
    device = _device_of(model)
    cbs.on_fit_begin(model, opt)
    t0 = time.perf_counter()
    step = start_epoch * steps_per_epoch
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, desc="train", leave=False)
    for epoch in range(start_epoch, n_epochs):
        model.train()
        cbs.on_epoch_begin(epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 1000003 + epoch)
        loader = DataLoader(train_data, batch_size=cfg.batch_size, shuffle=True, generator=gen)
        aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch + 1)
        seen, loss_sum, correct = 0, 0.0, 0
        for x, y in loader:
            if step >= total_steps:
                break
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base * sched(step)
            cbs.on_batch_begin(step)
            x, y = x.to(device), y.to(device)
            x = augment_batch(x, aug_gen, cfg.shift, cfg.hflip)
            logits = model(x)
            if loss_fn is None:
                loss = nn.functional.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            else:
                loss = loss_fn(logits, y, x)
            loss_sum += loss.item() * y.numel()
            correct += (logits.argmax(1) == y).sum().item()
            seen += y.numel()
            loss = cbs.before_backward(loss, model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            cbs.after_backward(model)
            opt.step()
            cbs.after_optimizer_step(model, opt)
            step += 1
            if bar is not None:
                bar.update(1)
        metrics = {"epoch": float(epoch), "train_loss": loss_sum / max(seen, 1),
                   "train_accuracy": correct / max(seen, 1)}
        if val_data is not None:
            ev = evaluate(model, val_data)
            metrics.update(val_accuracy=ev["accuracy"], val_loss=ev["loss"])
        cbs.on_epoch_end(epoch, metrics)
        history.epochs.append(metrics)
        log.info("epoch %d: %s", epoch, metrics)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, opt, cbs, epoch + 1, history.epochs, asdict(cfg))
    if bar is not None:
        bar.close()
    for g, base in zip(opt.param_groups, base_lrs):
        g["lr"] = base
    cbs.on_fit_end(model)
    history.seconds = time.perf_counter() - t0
    return history
