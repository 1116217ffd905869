"""fit / evaluate: a small, deterministic, resumable training loop with callbacks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nncompress.errors import ConfigError
from nncompress.train.augment import augment_batch
from nncompress.train.averaging import WeightAveraging
from nncompress.train.batches import (
    batch_len,
    call_model,
    logits_of,
    make_loader,
    split_batch,
    to_device,
)
from nncompress.train.callbacks import Callback, CallbackList
from nncompress.train.checkpoint import load_checkpoint, save_checkpoint
from nncompress.train.ddp import GRAD_COMPRESSION, epoch_sampler, unwrap, world, wrap_ddp
from nncompress.train.schedules import lr_multiplier

log = logging.getLogger(__name__)
OPTIMIZERS = ("sgd", "adam", "adamw")
Data = Dataset | DataLoader | Iterable
LossFn = Callable[[torch.Tensor, Any, Any], torch.Tensor]  # (logits, target or None, inputs) -> scalar
MetricFn = Callable[[torch.Tensor, Any], Any]  # (logits, target) -> batch mean (higher is better)


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
    grad_compression: str | None = None
    """Under torchrun (DistributedDataParallel): compress the gradients all-reduced between
    processes with TernGrad (``terngrad``: int8 codes; ``terngrad-packed``: 2-bit codes) or
    Dettmers' 8-bit approximation (``int8``: dynamic tree codes, 4x less than fp32).
    Ignored in a single process."""

    def __post_init__(self) -> None:
        if self.grad_compression is not None and self.grad_compression not in GRAD_COMPRESSION:
            raise ConfigError(f"grad_compression {self.grad_compression!r} not allowed; use one of "
                              f"{list(GRAD_COMPRESSION)} or leave it out")
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
def evaluate(model: nn.Module, data: Data, batch_size: int = 512, *, loss_fn: LossFn | None = None,
             metric_fn: MetricFn | None = None) -> dict[str, float]:
    """Score and mean loss of ``model`` on ``data`` (eval mode, no grad).

    ``data`` is a ``Dataset`` (its ``collate_fn`` is used if it has one), a ``DataLoader``
    or any iterable of batches (Tensors, ``(inputs, labels)`` tuples or dicts, see
    ``nncompress.train.batches``). ``accuracy`` is the share of labels matched by the
    arg-max of the logits, or, with ``metric_fn(logits, target)`` (a batch mean, higher is
    better), the sample-weighted mean of that metric. ``loss`` is cross-entropy, or
    ``loss_fn(logits, target, inputs)`` (NaN when neither applies: no labels, no loss_fn).

    Example:
        >>> evaluate(model, test_set)["accuracy"]  # doctest: +SKIP
        0.981
    """
    loader = make_loader(data, batch_size)
    was_training = model.training
    model.eval()
    device = _device_of(model)
    score_sum, total, loss_sum, loss_n = 0.0, 0, 0.0, 0
    for batch in loader:
        inputs, y = split_batch(to_device(batch, device))
        n = batch_len(batch)
        logits = logits_of(call_model(model, inputs))
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, y, inputs)) * n
            loss_n += n
        elif y is not None and _is_class_target(logits, y):
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            loss_n += n
        if metric_fn is not None:
            score_sum += float(metric_fn(logits, y)) * n
        elif y is not None and _is_class_target(logits, y):
            score_sum += (logits.argmax(1) == y).sum().item()
        else:
            raise ConfigError("evaluate: the batches carry no class labels for accuracy; give metric_fn "
                              "(a recipe's 'metric: {factory: ...}')")
        total += n
    model.train(was_training)
    return {"accuracy": score_sum / max(total, 1), "loss": loss_sum / loss_n if loss_n else float("nan")}


def _is_class_target(logits: torch.Tensor, y: Any) -> bool:
    """``y`` holds class indices for ``logits`` (N, C)."""
    return (isinstance(y, torch.Tensor) and not y.is_floating_point() and logits.dim() == 2
            and y.dim() == 1 and y.shape[0] == logits.shape[0])


def step_counts(cfg: TrainConfig, n_samples: int, *, batches: int | None = None) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) that ``fit`` runs under ``cfg`` on
    ``n_samples`` samples (``epochs`` may be fractional; ``max_steps`` caps the total).
    ``batches``: the number of batches of one epoch when the data is a ``DataLoader``.

    Example:
        >>> step_counts(TrainConfig(epochs=1.5, batch_size=100), 1000)
        (10, 15)
    """
    per_epoch = batches if batches is not None else (n_samples + cfg.batch_size - 1) // cfg.batch_size
    total = int(round(cfg.epochs * per_epoch))
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    return per_epoch, total


def fit(
    model: nn.Module,
    train_data: Data,
    cfg: TrainConfig | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    val_data: Data | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    checkpoint: str | Path | None = None,
    progress: bool | Any = False,
    loss_fn: LossFn | None = None,
) -> History:
    """Train ``model`` on ``train_data`` with SGD/Adam, an LR schedule and callbacks.

    ``train_data`` is a ``Dataset`` (shuffled each epoch, batches of ``cfg.batch_size``,
    its ``collate_fn`` used if it has one), a ``DataLoader`` (used as given; one epoch = one
    pass over it) or a list of batches. A batch is a Tensor, ``(inputs, labels)`` or a dict
    (``model(**batch)``; a ``labels`` entry is the target), see ``nncompress.train.batches``.
    Batches follow the model's device. ``loss_fn(logits, target, inputs)`` replaces
    cross-entropy (distillation and non-classification tasks; needed when batches carry no
    labels); ``logits`` is the model's output tensor (``.logits`` or the first element of a
    tuple output).

    ``progress``: ``True`` draws a bar (or, off a terminal, a few lines) on stderr; a
    reporter with ``fit_begin`` (``nncompress.progress.RunProgress.fits(label)``) gets the
    fit's steps and epochs instead (its label, running loss and accuracy, the recorded
    curve); ``False`` reports nothing (``log.info`` per epoch only).

    Determinism: the shuffle order of epoch e is drawn from ``seed + e`` and the global RNG
    is seeded from ``seed``, so a run killed and resumed from ``checkpoint`` (saved after
    every epoch, atomically) finishes with the same weights as an uninterrupted one.

    Under ``torchrun`` (a ``torch.distributed`` process group is initialised) the model is
    wrapped in ``DistributedDataParallel`` for the call, a ``Dataset`` is split by a
    ``DistributedSampler`` and ``cfg.batch_size`` is the global batch (each of the N
    processes takes ``batch_size // N``); only rank 0 writes the checkpoint.

    Example:
        >>> fit(model, train_set, TrainConfig(epochs=2, lr=0.05))  # doctest: +SKIP
    """
    cfg = cfg or TrainConfig()
    callbacks = list(callbacks or ())
    opt = optimizer or make_optimizer(model.parameters(), cfg)
    rank, world_size = world()
    per_rank_batch = max(1, cfg.batch_size // world_size)
    if isinstance(train_data, Dataset):
        n_samples = len(train_data)
        if world_size > 1:
            n_samples = (n_samples + world_size - 1) // world_size
        steps_per_epoch, total_steps = step_counts(cfg, n_samples, batches=(n_samples + per_rank_batch - 1)
                                                   // per_rank_batch)
    else:
        try:
            n_batches = len(train_data)  # type: ignore[arg-type]
            if world_size > 1 and isinstance(train_data, DataLoader):
                share = (len(train_data.dataset) + world_size - 1) // world_size
                n_batches = (share + (train_data.batch_size or 1) - 1) // (train_data.batch_size or 1)
        except TypeError as exc:
            raise ConfigError("fit needs data whose length is known (a Dataset, a DataLoader or a list of "
                              f"batches), got {type(train_data).__name__}") from exc
        steps_per_epoch, total_steps = step_counts(cfg, 0, batches=n_batches)
    if steps_per_epoch < 1:
        raise ConfigError("fit: the training data is empty")
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
    net = wrap_ddp(model, cfg.grad_compression, cfg.seed) if world_size > 1 else model
    cbs.on_fit_begin(model, opt)
    t0 = time.perf_counter()
    step = start_epoch * steps_per_epoch
    reporter = None
    if progress is not False and progress is not None and rank == 0:
        if not hasattr(progress, "fit_begin"):  # progress=True: the terminal's stderr
            import sys

            from nncompress.progress import RunProgress

            progress = RunProgress(sys.stderr).fits("train")
        reporter = progress.fit_begin(total_steps, steps_per_epoch, n_epochs, step, list(history.epochs))
    for epoch in range(start_epoch, n_epochs):
        model.train()
        cbs.on_epoch_begin(epoch)
        if isinstance(train_data, Dataset):
            gen = torch.Generator().manual_seed(cfg.seed * 1000003 + epoch)
            sampler = epoch_sampler(train_data, cfg.seed * 1000003, epoch) if world_size > 1 else None
            loader = make_loader(train_data, per_rank_batch, shuffle=True, generator=gen, sampler=sampler)
        else:
            loader = epoch_loader(train_data, epoch, cfg.seed) if world_size > 1 else train_data
        aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch + 1 + rank)
        seen, loss_sum, correct, counted = 0, 0.0, 0, 0
        for batch in loader:
            if step >= total_steps:
                break
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base * sched(step)
            cbs.on_batch_begin(step)
            x, y = split_batch(to_device(batch, device))
            if cfg.shift or cfg.hflip:
                if not isinstance(x, torch.Tensor):
                    raise ConfigError("shift/hflip augment image tensors; these batches are "
                                      f"{type(x).__name__}: set shift: 0 and hflip: false")
                x = augment_batch(x, aug_gen, cfg.shift, cfg.hflip)
            logits = logits_of(call_model(net, x))
            if loss_fn is not None:
                loss = loss_fn(logits, y, x)
            elif y is None:
                raise ConfigError("the training batches carry no labels: give a loss (loss_fn, or a recipe's "
                                  "'loss: {factory: ...}')")
            else:
                loss = nn.functional.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            n = batch_len(batch)
            batch_loss, batch_correct = loss.item(), None
            loss_sum += batch_loss * n
            if y is not None and _is_class_target(logits, y):
                batch_correct = int((logits.argmax(1) == y).sum().item())
                correct += batch_correct
                counted += n
            seen += n
            loss = cbs.before_backward(loss, model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            cbs.after_backward(model)
            opt.step()
            cbs.after_optimizer_step(model, opt)
            step += 1
            if reporter is not None:
                reporter.step(batch_loss, n, batch_correct)
        metrics = {"epoch": float(epoch), "train_loss": loss_sum / max(seen, 1)}
        if counted:
            metrics["train_accuracy"] = correct / counted
        if val_data is not None:
            ev = evaluate(model, val_data)
            metrics.update(val_accuracy=ev["accuracy"], val_loss=ev["loss"])
        cbs.on_epoch_end(epoch, metrics)
        history.epochs.append(metrics)
        if reporter is not None:
            reporter.epoch_end(epoch, metrics)
        log.info("epoch %d: %s", epoch, metrics)
        if checkpoint is not None and rank == 0:
            save_checkpoint(checkpoint, model, opt, cbs, epoch + 1, history.epochs, asdict(cfg))
    if reporter is not None:
        reporter.close()
    for g, base in zip(opt.param_groups, base_lrs):
        g["lr"] = base
    unwrap(net)
    cbs.on_fit_end(model)
    history.seconds = time.perf_counter() - t0
    return history


def epoch_loader(data: Any, epoch: int, seed: int) -> Iterable:
    """Under DDP: a ``DataLoader`` rebuilt over its dataset with a ``DistributedSampler``
    (same batch size and collate function); other iterables as given."""
    if not isinstance(data, DataLoader):
        return data
    sampler = epoch_sampler(data.dataset, seed * 1000003, epoch)
    return DataLoader(data.dataset, batch_size=data.batch_size, sampler=sampler, collate_fn=data.collate_fn)
