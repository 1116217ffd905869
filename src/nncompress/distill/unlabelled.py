"""Distillation without labels (K1 extended): fine-tune a compressed student to match its
teacher's outputs on unlabelled inputs.

The student sees the same batches as the frozen teacher (run under ``no_grad``) and
minimises one of, or a weighted sum of, these terms:

- ``cosine``: ``1 - cos(s, t)`` of the pooled sentence embeddings, averaged over the batch
  (pooling = masked mean of the first output over the tokens, the all-MiniLM-L6-v2 recipe;
  a 2-D output is its own embedding);
- ``mse``: mean squared error of the same pooled embeddings;
- ``hidden``: mean squared error of the last hidden states over the unmasked tokens;
- ``kd``: the K1 soft-target term ``T^2 KL(softmax(t/T) || softmax(s/T))`` on logits
  (``output.logits`` when the model returns them, else the first output), per token with
  the attention mask for (N, T, V) logits;
- ``relational``: the in-batch cosine-similarity matrix of the student's pooled embeddings
  matches the teacher's (``nncompress.distill.relational``: RKD / similarity-preserving KD;
  ``relational_mode`` ``mse`` or ``kl`` at ``relational_temperature``): neighbour structure,
  what a top-k nearest-neighbour search sees;
- ``layers``: mean squared error of the outputs of the modules named in ``layers`` (e.g.
  intermediate transformer blocks ``encoder.layer.2``), over the unmasked tokens, the same
  module names in student and teacher.

The compression already applied to the student is kept exact at every step:

- **masks** (``nncompress.prune.mask.Masks``): enforced by ``MaskCallback`` (pruned
  gradients zeroed, weights and optimizer state re-masked after each step);
- **shared weights** (``nncompress.quantize.sharing.SharedWeights``): the shared weight
  tensors are not optimised themselves; each step the gradient of every centroid is the
  sum of its members' gradients (``centroid_gradient``), the centroids take an AdamW step
  (their own parameter group, no weight decay, learning rate ``centroid_lr``), and the
  weights are rewritten as ``codebook[labels]`` (``SharedWeights.apply``). The codebooks of
  ``shared`` are updated in place, so a later ``save`` writes the tuned codebooks;
- **frozen parameters** (``config.freeze``, glob patterns over parameter names): left
  untouched, e.g. weights another quantizer stored on a uniform integer grid (fine-tuning
  them freely would move them off the grid their codec needs).

Everything else (biases, LayerNorms, unshared layers) trains with AdamW.

Example:
    >>> cfg = UnlabelledDistillConfig(loss="cosine", epochs=2, lr=1e-4)  # doctest: +SKIP
    >>> report = distill_unlabelled(student, teacher, batches, cfg, shared=shared,
    ...                             eval_batches=held_out)  # doctest: +SKIP
    >>> report.cosine_before, report.cosine_after  # doctest: +SKIP
    (0.962, 0.991)
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nncompress.checks import check_choice, check_float, check_int
from nncompress.distill.relational import RELATIONAL_MODES, relational_loss
from nncompress.distill.targets import (  # noqa: F401 - public names re-exported
    _attention_mask,
    _capture_layers,
    _device_of,
    _first_output,
    _logits,
    _to,
    call_model,
    cosine_loss,
    masked_mse,
    pool_embeddings,
    soft_target_loss,
)
from nncompress.errors import ConfigError
from nncompress.modules import name_matches
from nncompress.prune.mask import MaskCallback, Masks
from nncompress.quantize.sharing import SharedWeights, centroid_gradient
from nncompress.train.batches import batch_len

log = logging.getLogger(__name__)

LOSSES = ("cosine", "mse", "hidden", "kd", "relational", "layers")
POOLED_TERMS = ("cosine", "mse", "relational")
SCHEDULES = ("cosine", "linear", "constant")
Batch = Any  # a Tensor, a tuple/list (inputs first) or a dict of tensors (tokenizer output)


@dataclass
class UnlabelledDistillConfig:
    """Settings of ``distill_unlabelled``: the loss, AdamW with warmup + schedule, early
    stopping on the held-out cosine, and the parameters kept fixed.

    Example:
        >>> UnlabelledDistillConfig(loss="hidden", weights={"cosine": 0.5}).terms()
        {'hidden': 1.0, 'cosine': 0.5}
        >>> UnlabelledDistillConfig(weights={"relational": 2.0}, relational_mode="kl").terms()
        {'cosine': 1.0, 'relational': 2.0}
    """

    loss: str = "cosine"
    """Main term: ``cosine`` / ``mse`` (pooled embeddings), ``hidden`` (last hidden states), ``kd``
    (soft targets on logits), ``relational`` (in-batch similarities) or ``layers`` (named modules' outputs)."""
    weights: Mapping[str, float] = field(default_factory=dict)
    """Extra terms and their weights (``{"relational": 1.0}``); ``loss`` has weight 1 unless listed here."""
    temperature: float = 2.0
    """Softmax temperature T of the ``kd`` term (> 0)."""
    relational_mode: str = "mse"
    """Form of the ``relational`` term: ``mse`` of the off-diagonal cosine similarities, or ``kl``
    of their row-wise softmax (a soft nearest-neighbour ranking)."""
    relational_temperature: float = 0.1
    """Softmax temperature of ``relational_mode: kl`` over cosine similarities in [-1, 1] (> 0)."""
    layers: Sequence[str] = ()
    """Module names whose outputs the ``layers`` term matches (MSE over unmasked tokens),
    e.g. ``[encoder.layer.1, encoder.layer.3]``; needed by, and only allowed with, that term."""
    epochs: float = 1.0
    """Passes over the training batches (> 0; a fraction stops part-way through the last pass)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (None: run all ``epochs``; needed when the data have no length)."""
    lr: float = 5e-5
    """Peak AdamW learning rate of the trained parameters (> 0)."""
    centroid_lr: float | None = None
    """Peak AdamW learning rate of the shared codebooks (None: ``lr``)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay of the trained parameters, not the codebooks (>= 0)."""
    warmup: float = 0.05
    """Fraction of the steps with a linear learning-rate warm-up from 0, in [0, 1)."""
    schedule: str = "cosine"
    """After warm-up: ``cosine`` or ``linear`` decay to 0, or ``constant``."""
    batch_size: int = 32
    """Samples per batch when the data are a Dataset (batches given as an iterable are used as they are)."""
    grad_clip: float | None = 1.0
    """Clip the gradient norm to this value (> 0; None: no clipping), separately for the trained
    parameters and for the codebooks (a centroid's gradient sums those of all its members)."""
    seed: int = 0
    """Seed of the batch order (same seed, same run)."""
    eval_every: int = 0
    """Held-out evaluation every k steps (0: only before and after training)."""
    patience: int = 0
    """Stop after this many evaluations without a better held-out cosine (0: never stop early)."""
    restore_best: bool = True
    """End with the weights (and codebooks) of the best held-out cosine seen."""
    freeze: Sequence[str] = ()
    """Glob patterns of parameter names kept fixed (``embeddings.*``, ``*.int_weight``)."""
    dropout: bool = False
    """Run the student in train mode (dropout on); off by default: the student copies the teacher."""
    cache_teacher: bool = True
    """Compute the teacher's targets once per batch when the data are a fixed list/tuple of batches."""

    def __post_init__(self) -> None:
        check_choice(self.loss, LOSSES, "loss")
        if not isinstance(self.weights, Mapping):
            raise ConfigError(f"weights must be a mapping of loss term to weight, got {self.weights!r}")
        self.weights = dict(self.weights)
        for name, w in self.weights.items():
            check_choice(name, LOSSES, "weights key")
            check_float(w, f"weights[{name!r}]", 0)
        if sum(self.terms().values()) <= 0:
            raise ConfigError(f"the loss weights must not all be 0, got {self.terms()}")
        check_float(self.temperature, "temperature", 0, lo_open=True)
        check_choice(self.relational_mode, RELATIONAL_MODES, "relational_mode")
        check_float(self.relational_temperature, "relational_temperature", 0, lo_open=True)
        if isinstance(self.layers, str) or not all(isinstance(n, str) and n for n in self.layers):
            raise ConfigError(f"layers must be a list of module names, got {self.layers!r}")
        self.layers = tuple(self.layers)
        uses_layers = self.terms().get("layers", 0.0) > 0
        if uses_layers and not self.layers:
            raise ConfigError("the 'layers' loss term needs layers: a list of module names "
                              "(e.g. [encoder.layer.2, encoder.layer.4])")
        if self.layers and not uses_layers:
            raise ConfigError(f"layers={list(self.layers)} is given but the 'layers' term has no weight; "
                              "add weights: {layers: 1.0} (or loss: layers), or drop layers")
        check_float(self.epochs, "epochs", 0, lo_open=True)
        if self.max_steps is not None:
            check_int(self.max_steps, "max_steps", 1)
        check_float(self.lr, "lr", 0, lo_open=True)
        if self.centroid_lr is not None:
            check_float(self.centroid_lr, "centroid_lr", 0, lo_open=True)
        check_float(self.weight_decay, "weight_decay", 0)
        check_float(self.warmup, "warmup", 0, 1, hi_open=True)
        check_choice(self.schedule, SCHEDULES, "schedule")
        check_int(self.batch_size, "batch_size", 1)
        if self.grad_clip is not None:
            check_float(self.grad_clip, "grad_clip", 0, lo_open=True)
        check_int(self.seed, "seed")
        check_int(self.eval_every, "eval_every", 0)
        check_int(self.patience, "patience", 0)
        if isinstance(self.freeze, str) or not all(isinstance(p, str) for p in self.freeze):
            raise ConfigError(f"freeze must be a list of glob patterns (strings), got {self.freeze!r}")
        self.freeze = tuple(self.freeze)

    def terms(self) -> dict[str, float]:
        """``{term: weight}`` of the loss: ``loss`` at 1 (or its listed weight), then ``weights``."""
        return {self.loss: float(self.weights.get(self.loss, 1.0)),
                **{k: float(v) for k, v in self.weights.items() if k != self.loss}}


@dataclass
class DistillReport:
    """What ``distill_unlabelled`` did: losses, held-out cosines and time."""

    steps: int = 0
    """Optimizer steps taken."""
    step_losses: list[float] = field(default_factory=list)
    """Total loss of every step."""
    epoch_losses: list[float] = field(default_factory=list)
    """Mean loss of every (possibly partial) epoch."""
    cosine_before: float | None = None
    """Mean held-out cosine of the pooled embeddings before training (None without eval batches)."""
    cosine_after: float | None = None
    """Mean held-out cosine of the returned student (after restoring the best weights)."""
    best_cosine: float | None = None
    """Best held-out cosine seen."""
    best_step: int | None = None
    """Step of the best held-out cosine (0 = the student as given)."""
    evals: list[tuple[int, float]] = field(default_factory=list)
    """(step, held-out cosine) of every evaluation."""
    stopped_early: bool = False
    """True when ``patience`` ended training."""
    teacher_cached: bool = False
    """True when the teacher's targets were computed once per batch and reused."""
    seconds: float = 0.0
    """Wall time of the whole call."""
    teacher_seconds: float = 0.0
    """Part of ``seconds`` spent in teacher forward passes."""


# ---------------------------------------------------------------- pure tensor math

def _outputs(model: nn.Module, batch: Batch, cfg: UnlabelledDistillConfig,
             terms: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``batch`` and collect what ``terms`` need (``layers`` via hooks)."""
    names = cfg.layers if "layers" in terms else ()
    with _capture_layers(model, names) as layers:
        out = call_model(model, batch)
    return {**_targets(out, batch, terms), **layers}


def _targets(out: Any, batch: Batch, terms: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """What the loss terms need of one model output: pooled embedding, hidden states, logits."""
    got: dict[str, torch.Tensor] = {}
    if any(t in terms for t in POOLED_TERMS):
        got["pooled"] = pool_embeddings(_first_output(out), _attention_mask(batch))
    if "hidden" in terms:
        got["hidden"] = _first_output(out)
    if "kd" in terms:
        got["logits"] = _logits(out)
    return got


def _loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], batch: Batch,
          cfg: UnlabelledDistillConfig) -> torch.Tensor:
    mask = _attention_mask(batch)
    total = 0.0
    for name, w in cfg.terms().items():
        if w == 0:
            continue
        if name == "cosine":
            term = cosine_loss(student["pooled"], teacher["pooled"])
        elif name == "mse":
            term = F.mse_loss(student["pooled"], teacher["pooled"])
        elif name == "hidden":
            term = masked_mse(student["hidden"], teacher["hidden"], mask)
        elif name == "relational":
            term = relational_loss(student["pooled"], teacher["pooled"], cfg.relational_mode,
                                   cfg.relational_temperature)
        elif name == "layers":
            term = sum(masked_mse(student[f"layer:{n}"], teacher[f"layer:{n}"], mask)
                       for n in cfg.layers) / len(cfg.layers)
        else:
            term = soft_target_loss(student["logits"], teacher["logits"], cfg.temperature, mask)
        total = total + w * term
    return total  # type: ignore[return-value]


def _batch_source(data: Iterable[Batch] | Dataset, cfg: UnlabelledDistillConfig,
                  shuffle: bool) -> tuple[Iterable[Batch], bool]:
    """(re-iterable batches, fixed): a Dataset becomes a DataLoader with its ``collate_fn``;
    a one-shot iterator is read into a list; ``fixed`` is True for a list/tuple of batches."""
    if isinstance(data, Dataset) and not isinstance(data, (list, tuple)):
        gen = torch.Generator().manual_seed(cfg.seed)
        return DataLoader(data, batch_size=cfg.batch_size, shuffle=shuffle, generator=gen,
                          collate_fn=getattr(data, "collate_fn", None)), False
    if isinstance(data, (list, tuple)):
        return data, True
    if iter(data) is data:  # a generator: one pass only, keep it
        return list(data), True
    return data, False


# ---------------------------------------------------------------- the entry point

def _check_names(model: nn.Module, shared: SharedWeights | None, masks: Masks | None,
                 cfg: UnlabelledDistillConfig) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    for what, names in (("shared", shared or {}), ("masks", masks or {})):
        missing = [n for n in names if n not in params]
        if missing:
            raise ConfigError(f"{what} names {missing} are not parameters of the student; "
                              f"parameters look like {list(params)[:4]}")
    for name, layer in (shared or {}).items():
        if tuple(layer.mask.shape) != tuple(params[name].shape):
            raise ConfigError(f"shared layer {name}: mask shape {tuple(layer.mask.shape)} differs from "
                              f"the weight's {tuple(params[name].shape)}")
    for name, m in (masks or {}).items():
        if tuple(m.shape) != tuple(params[name].shape):
            raise ConfigError(f"mask {name}: shape {tuple(m.shape)} differs from the weight's "
                              f"{tuple(params[name].shape)}")
    modules = dict(model.named_modules())
    missing = [n for n in cfg.layers if n not in modules]
    if missing:
        raise ConfigError(f"layers {missing} are not modules of the student; module names look like "
                          f"{[n for n in modules if n][:6]}")
    for pattern in cfg.freeze:
        if not any(name_matches(n, [pattern]) for n in params):
            raise ConfigError(f"freeze pattern {pattern!r} matches no parameter of the student; "
                              f"parameters look like {list(params)[:4]}")
    return params


def _lr_factor(step: int, total: int, cfg: UnlabelledDistillConfig) -> float:
    """Warm-up then decay: the multiplier of the peak learning rate at ``step`` (0-based)."""
    warm = int(round(cfg.warmup * total))
    if step < warm:
        return (step + 1) / (warm + 1)
    if cfg.schedule == "constant":
        return 1.0
    t = (step - warm) / max(total - warm, 1)  # in [0, 1)
    return 0.5 * (1.0 + math.cos(math.pi * t)) if cfg.schedule == "cosine" else 1.0 - t


@torch.no_grad()
def held_out_cosine(student: nn.Module, teacher_pooled: Sequence[torch.Tensor],
                    batches: Sequence[Batch]) -> float:
    """Mean cosine, over all examples, of the student's pooled embeddings to the teacher's
    (``teacher_pooled[i]`` (N_i, D) for ``batches[i]``); the student runs in eval mode.

    Example:
        >>> held_out_cosine(model, [model(x)], [x])  # doctest: +SKIP
        1.0
    """
    was = student.training
    student.eval()
    device = _device_of(student)
    total, n = 0.0, 0
    for b, t in zip(batches, teacher_pooled):
        b = _to(b, device)
        s = pool_embeddings(_first_output(call_model(student, b)), _attention_mask(b))
        cos = F.cosine_similarity(s.float(), t.to(device).float(), dim=-1)  # (N,)
        total += float(cos.sum())
        n += cos.numel()
    student.train(was)
    return total / max(n, 1)


class _Run:
    """State of one ``distill_unlabelled`` call (no global state)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: UnlabelledDistillConfig,
                 shared: SharedWeights | None, masks: Masks | None):
        self.student, self.teacher, self.cfg = student, teacher, cfg
        self.params = _check_names(student, shared, masks, cfg)
        teacher_modules = dict(teacher.named_modules())
        missing = [n for n in cfg.layers if n not in teacher_modules]
        if missing:
            raise ConfigError(f"layers {missing} are not modules of the teacher; module names look like "
                              f"{[n for n in teacher_modules if n][:6]}")
        self.frozen = {n for n in self.params if name_matches(n, cfg.freeze)}
        self.shared = SharedWeights({n: l for n, l in (shared or {}).items() if n not in self.frozen})
        self.masks = Masks({n: m for n, m in (masks or {}).items() if n not in self.frozen})
        self.device = _device_of(student)
        self.teacher_device = _device_of(teacher)
        self.teacher_seconds = 0.0
        self.codebooks: dict[str, nn.Parameter] = {}
        for name, layer in self.shared.items():  # follow the student's device; train in place
            dev = self.params[name].device
            layer.codebook = layer.codebook.to(dev)
            layer.labels, layer.mask = layer.labels.to(dev), layer.mask.to(dev)
            self.codebooks[name] = nn.Parameter(layer.codebook, requires_grad=False)
            layer.codebook = self.codebooks[name].data  # the same storage as the optimizer's tensor
        trained = [p for n, p in self.params.items()
                   if n not in self.frozen and n not in self.shared and p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": trained, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
        if self.codebooks:
            groups.append({"params": list(self.codebooks.values()), "weight_decay": 0.0,
                           "lr": cfg.centroid_lr if cfg.centroid_lr is not None else cfg.lr})
        self.peak = [g["lr"] for g in groups]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        self.mask_cb = MaskCallback(self.masks) if len(self.masks) else None
        if self.mask_cb is not None:
            self.mask_cb.on_fit_begin(student, self.optimizer)

    @torch.no_grad()
    def teacher_targets(self, batch: Batch, terms: Mapping[str, float]) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        b = _to(batch, self.teacher_device)
        got = {k: v.detach().to(self.device) for k, v in _outputs(self.teacher, b, self.cfg, terms).items()}
        self.teacher_seconds += time.perf_counter() - t0
        return got

    def step(self, batch: Batch, target: dict[str, torch.Tensor], lr_factor: float) -> float:
        cfg = self.cfg
        b = _to(batch, self.device)
        loss = _loss(_outputs(self.student, b, cfg, cfg.terms()), target, b, cfg)
        self.optimizer.zero_grad(set_to_none=True)
        for cb in self.codebooks.values():
            cb.grad = None
        loss.backward()
        if self.mask_cb is not None:
            self.mask_cb.after_backward(self.student)
        for name, layer in self.shared.items():  # dL/dc = sum of the members' dL/dw
            p = self.params[name]
            g = p.grad[layer.mask] if p.grad is not None else torch.zeros_like(layer.labels, dtype=p.dtype)
            self.codebooks[name].grad = centroid_gradient(g.to(layer.codebook.dtype), layer.labels,
                                                          layer.codebook.numel())
            p.grad = None
        if cfg.grad_clip is not None:  # per group: a centroid's gradient sums thousands of members'
            for group in self.optimizer.param_groups:
                grads = [p for p in group["params"] if p.grad is not None]
                if grads:
                    nn.utils.clip_grad_norm_(grads, cfg.grad_clip)
        for group, peak in zip(self.optimizer.param_groups, self.peak):
            group["lr"] = peak * lr_factor
        self.optimizer.step()
        self.shared.apply(self.student)
        if self.mask_cb is not None:
            self.mask_cb.after_optimizer_step(self.student, self.optimizer)
        return float(loss.detach())

    def snapshot(self) -> dict[str, torch.Tensor]:
        state = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        state.update({f"\0codebook:{n}": c.detach().clone() for n, c in self.codebooks.items()})
        return state

    @torch.no_grad()
    def restore(self, state: dict[str, torch.Tensor]) -> None:
        for n, c in self.codebooks.items():
            c.copy_(state[f"\0codebook:{n}"])
        self.student.load_state_dict({k: v for k, v in state.items() if not k.startswith("\0")})
        self.shared.apply(self.student)
        if len(self.masks):
            self.masks.apply(self.student)


def distill_unlabelled(student: nn.Module, teacher: nn.Module, batches: Iterable[Batch] | Dataset,
                       config: UnlabelledDistillConfig | None = None, *,
                       shared: SharedWeights | None = None, masks: Masks | None = None,
                       eval_batches: Iterable[Batch] | Dataset | None = None,
                       progress: Any = None) -> DistillReport:
    """Fine-tune ``student`` in place to match ``teacher`` on unlabelled ``batches``.

    ``batches``: an iterable of batches (Tensor, tuple/list with inputs first, or dict of
    tokenizer output; a list is reshuffled per epoch and the teacher's targets cached), or a
    Dataset (its ``collate_fn`` batches ``config.batch_size`` items). ``shared`` keeps those
    weights on their codebooks (trained as centroids, updated in place), ``masks`` keeps
    pruned weights exactly 0, ``config.freeze`` keeps matching parameters fixed.
    ``eval_batches`` (held out) give the cosine before/after and drive early stopping.
    The teacher runs in eval mode under ``no_grad`` and is not modified. ``progress``: a
    reporter with ``fit_begin`` (``RunProgress.fits(label)``), told every step and epoch as
    ``fit`` tells it (bar or lines, and the epoch losses recorded as a curve).

    Example:
        >>> teacher = frozen_teacher(model); shared = share_weights(model, SharingConfig(bits_fc=3))  # doctest: +SKIP
        >>> rep = distill_unlabelled(model, teacher, batches, UnlabelledDistillConfig(epochs=2),
        ...                          shared=shared, eval_batches=held_out)  # doctest: +SKIP
        >>> rep.cosine_after > rep.cosine_before  # doctest: +SKIP
        True
    """
    cfg = config if config is not None else UnlabelledDistillConfig()
    if not isinstance(cfg, UnlabelledDistillConfig):
        raise ConfigError(f"config must be an UnlabelledDistillConfig, got {type(cfg).__name__}")
    if cfg.eval_every and eval_batches is None:
        raise ConfigError(f"eval_every={cfg.eval_every} needs eval_batches (held-out batches); "
                          "pass them or set eval_every=0")
    t_start = time.perf_counter()
    source, fixed = _batch_source(batches, cfg, shuffle=True)
    try:
        per_epoch = len(source)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    if per_epoch is None and cfg.max_steps is None:
        raise ConfigError("the training batches have no length; set max_steps")
    if per_epoch == 0:
        raise ConfigError("no training batches given (an empty list or dataset)")
    total = math.ceil(cfg.epochs * per_epoch) if per_epoch is not None else cfg.max_steps
    total = min(total, cfg.max_steps) if cfg.max_steps is not None else total
    run = _Run(student, teacher, cfg, shared, masks)
    was_training, teacher_was_training = student.training, teacher.training
    teacher.eval()
    frozen_flags = {n: run.params[n].requires_grad for n in run.frozen}
    for n in run.frozen:
        run.params[n].requires_grad_(False)
    report = DistillReport(teacher_cached=fixed and cfg.cache_teacher)
    reporter = None
    if progress is not None:
        spe = per_epoch if per_epoch is not None else total
        reporter = progress.fit_begin(total, spe, max(1, math.ceil(total / max(1, spe))))
    try:
        run.shared.apply(student)
        if len(run.masks):
            run.masks.apply(student)
        held = list(_batch_source(eval_batches, cfg, shuffle=False)[0]) if eval_batches is not None else None
        held_t = [run.teacher_targets(b, {"cosine": 1.0})["pooled"] for b in held] if held else None
        best_state: dict[str, torch.Tensor] | None = None
        since_best = 0

        def evaluate(step: int) -> bool:
            """Record a held-out cosine; True when patience says stop."""
            nonlocal best_state, since_best
            cos = held_out_cosine(student, held_t, held)
            report.evals.append((step, cos))
            log.info("distill step %d/%d: held-out cosine %.5f", step, total, cos)
            if report.best_cosine is None or cos > report.best_cosine:
                report.best_cosine, report.best_step, since_best = cos, step, 0
                if cfg.restore_best:
                    best_state = run.snapshot()
                return False
            since_best += 1
            return bool(cfg.patience) and since_best >= cfg.patience

        if held:
            evaluate(0)
            report.cosine_before = report.evals[0][1]
        student.train(cfg.dropout)
        cache: dict[int, dict[str, torch.Tensor]] = {}
        rng = random.Random(cfg.seed)
        step, epoch, stop = 0, 0, False
        while step < total and not stop:
            order = list(range(len(source))) if fixed else None  # type: ignore[arg-type]
            if order is not None:
                rng.shuffle(order)
            items = ((i, source[i]) for i in order) if order is not None else enumerate(source)  # type: ignore[index]
            epoch_sum, epoch_n = 0.0, 0
            for i, batch in items:
                if report.teacher_cached:
                    if i not in cache:
                        cache[i] = run.teacher_targets(batch, cfg.terms())
                    target = cache[i]
                else:
                    target = run.teacher_targets(batch, cfg.terms())
                loss = run.step(batch, target, _lr_factor(step, total, cfg))
                step += 1
                report.step_losses.append(loss)
                epoch_sum, epoch_n = epoch_sum + loss, epoch_n + 1
                if reporter is not None:
                    reporter.step(loss, batch_len(batch))
                if held and cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                    stop = evaluate(step)
                    student.train(cfg.dropout)
                if stop or step >= total:
                    break
            if epoch_n == 0:
                break
            report.epoch_losses.append(epoch_sum / epoch_n)
            log.info("distill epoch %d: mean loss %.6f over %d steps", epoch, epoch_sum / epoch_n, epoch_n)
            if reporter is not None:
                reporter.epoch_end(epoch, {"epoch": float(epoch), "train_loss": epoch_sum / epoch_n})
            epoch += 1
        report.steps, report.stopped_early = step, stop
        if held:
            if report.evals[-1][0] != step:
                evaluate(step)
            if cfg.restore_best and best_state is not None and report.best_step != step:
                run.restore(best_state)
                log.info("distill: restored the weights of step %s (held-out cosine %.5f)",
                         report.best_step, report.best_cosine)
            report.cosine_after = held_out_cosine(student, held_t, held)
    finally:
        if reporter is not None:
            reporter.close()
        for n, flag in frozen_flags.items():
            run.params[n].requires_grad_(flag)
        student.train(was_training)
        teacher.train(teacher_was_training)
    report.teacher_seconds = run.teacher_seconds
    report.seconds = time.perf_counter() - t_start
    return report
