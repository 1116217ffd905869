"""P4 gradual pruning (Zhu & Gupta 2017): the sparsity rises during training on a schedule.

Schedules are pure ``step -> sparsity`` functions. ``GradualPruning`` is the training
callback that, every ``dt`` steps between ``t0`` and ``t0 + n*dt``, re-prunes by magnitude
to ``s(step)`` (layer-wise or global, via :func:`magnitude_prune`), pruned weights staying
pruned, and keeps the masks enforced between updates with the same semantics as
:class:`MaskCallback` (grads zeroed, weights and optimizer state re-masked every step).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from nncompress.checks import check_choice
from nncompress.errors import ConfigError
from nncompress.prune.magnitude import check_sparsity, magnitude_prune
from nncompress.prune.mask import MaskCallback, Masks
from nncompress.train.callbacks import Callback

log = logging.getLogger(__name__)
SPARSITY_SCHEDULES = ("cubic", "linear", "exponential", "constant")


def _progress(step: int, t0: int, n: int, dt: int) -> float:
    """Fraction in [0, 1] of the pruning window ``[t0, t0 + n*dt]`` that ``step`` has passed."""
    if n <= 0 or dt <= 0:
        raise ConfigError(f"n and dt must be > 0, got n={n}, dt={dt}")
    return min(max((step - t0) / (n * dt), 0.0), 1.0)


def cubic_sparsity(step: int, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float:
    """AGP of Zhu & Gupta (2017): ``s_t = s_f + (s_i - s_f) (1 - (t - t0)/(n dt))^3``.

    Clamped to ``s_i`` before ``t0`` and ``s_f`` after ``t0 + n dt``.

    Example:
        >>> round(cubic_sparsity(50, 0.0, 0.8, 0, 10, 10), 6)  # half-way: 0.8 (1 - 0.5^3)
        0.7
    """
    return s_f + (s_i - s_f) * (1.0 - _progress(step, t0, n, dt)) ** 3


def linear_sparsity(step: int, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float:
    """``s_t = s_i + (s_f - s_i) (t - t0)/(n dt)``, clamped.

    Example:
        >>> linear_sparsity(50, 0.0, 0.8, 0, 10, 10)
        0.4
    """
    return s_i + (s_f - s_i) * _progress(step, t0, n, dt)


def exponential_sparsity(step: int, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float:
    """Density decays geometrically: ``1 - s_t = (1 - s_i) ((1 - s_f)/(1 - s_i))^p``, p = progress.

    Example:
        >>> round(exponential_sparsity(50, 0.0, 0.99, 0, 10, 10), 6)  # density sqrt(0.01)
        0.9
    """
    p = _progress(step, t0, n, dt)
    return 1.0 - (1.0 - s_i) * ((1.0 - s_f) / (1.0 - s_i)) ** p


def constant_sparsity(step: int, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float:
    """``s_f`` from ``t0`` on (one-shot inside training), ``s_i`` before.

    Example:
        >>> constant_sparsity(0, 0.0, 0.9, 0, 10, 10)
        0.9
    """
    return s_f if step >= t0 else s_i


_SCHEDULES: dict[str, Callable[[int, float, float, int, int, int], float]] = {
    "cubic": cubic_sparsity,
    "linear": linear_sparsity,
    "exponential": exponential_sparsity,
    "constant": constant_sparsity,
}


def sparsity_schedule(name: str, s_i: float, s_f: float, t0: int, n: int, dt: int) -> Callable[[int], float]:
    """Return ``f(step) -> sparsity`` for a named schedule.

    Example:
        >>> sparsity_schedule("cubic", 0.0, 0.9, 0, 10, 100)(1000)
        0.9
    """
    check_choice(name, SPARSITY_SCHEDULES, "sparsity schedule")
    check_sparsity(s_i, "initial sparsity")
    check_sparsity(s_f, "final sparsity")
    if n <= 0 or dt <= 0 or t0 < 0:
        raise ConfigError(f"need t0 >= 0, n > 0, dt > 0; got t0={t0}, n={n}, dt={dt}")
    fn = _SCHEDULES[name]
    return lambda step: fn(step, s_i, s_f, t0, n, dt)


@dataclass
class GradualConfig:
    """When and how far to prune: ``n`` pruning events every ``dt`` steps from ``t0``."""

    final_sparsity: float | Mapping[str, float] = 0.9
    initial_sparsity: float = 0.0
    schedule: str = "cubic"
    t0: int = 0
    n: int = 10
    dt: int = 100
    scope: str = "layer"


class GradualPruning(Callback):
    """Raise the sparsity on a schedule during ``fit`` (Zhu & Gupta 2017).

    With a per-layer ``final_sparsity`` dict (``{param_name: s_f, 'default': s_f}``), each
    layer follows the same schedule shape towards its own target. ``masks`` holds the
    current masks; ``events`` the (step, total sparsity) of every pruning event.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.train import TrainConfig, fit
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> model = build_model("lenet300")
        >>> cb = GradualPruning(model, GradualConfig(final_sparsity=0.9, n=4, dt=1))  # 5 events, 1 step apart
        >>> _ = fit(model, data, TrainConfig(epochs=1, batch_size=8), callbacks=[cb])
        >>> len(cb.events), round(cb.masks.total_sparsity(), 3)
        (5, 0.9)
    """

    def __init__(self, model: nn.Module, cfg: GradualConfig, include=None, exclude=()):
        self.model, self.cfg, self.include, self.exclude = model, cfg, include, exclude
        if isinstance(cfg.final_sparsity, Mapping):
            if cfg.scope == "global":
                raise ConfigError("global scope needs one number for final_sparsity")
            self._fns = {k: sparsity_schedule(cfg.schedule, cfg.initial_sparsity, v, cfg.t0, cfg.n, cfg.dt)
                         for k, v in cfg.final_sparsity.items()}
        else:
            self._fns = {"default": sparsity_schedule(cfg.schedule, cfg.initial_sparsity,
                                                      float(cfg.final_sparsity), cfg.t0, cfg.n, cfg.dt)}
        self.masks = Masks({})
        self._enforcer: MaskCallback | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self.events: list[tuple[int, float]] = []

    def target(self, step: int) -> float | dict[str, float]:
        """The sparsity (or per-layer dict) the schedule asks for at ``step``."""
        if set(self._fns) == {"default"}:
            return self._fns["default"](step)
        return {k: f(step) for k, f in self._fns.items()}

    def is_event(self, step: int) -> bool:
        """True at the steps where the masks are recomputed: t0, t0+dt, ..., t0+n*dt."""
        c = self.cfg
        return c.t0 <= step <= c.t0 + c.n * c.dt and (step - c.t0) % c.dt == 0

    def on_fit_begin(self, model, optimizer):
        self._optimizer = optimizer
        if self.masks:
            self._enforcer = MaskCallback(self.masks)
            self._enforcer.on_fit_begin(model, optimizer)

    def on_batch_begin(self, step: int) -> None:
        if not self.is_event(step):
            return
        target = self.target(step)
        self.masks = magnitude_prune(self.model, sparsity=target, scope=self.cfg.scope,
                                     include=self.include, exclude=self.exclude,
                                     previous=self.masks or None)
        self._enforcer = MaskCallback(self.masks)
        self._enforcer.on_fit_begin(self.model, self._optimizer)
        total = self.masks.total_sparsity()
        self.events.append((step, total))
        log.debug("step %d: target %s, total sparsity %.4f", step, target, total)

    def after_backward(self, model):
        if self._enforcer is not None:
            self._enforcer.after_backward(model)

    def after_optimizer_step(self, model, optimizer):
        if self._enforcer is not None:
            self._enforcer.after_optimizer_step(model, optimizer)

    def state_dict(self):
        return {"masks": self.masks.state_dict()}

    def load_state_dict(self, state):
        if state.get("masks"):
            self.masks = Masks(state["masks"])


def steps_for(cfg_epochs: float, n_samples: int, batch_size: int) -> int:
    """Number of optimizer steps ``fit`` runs for ``cfg_epochs`` epochs (to place t0, n, dt).

    Example:
        >>> steps_for(2, 1000, 64)
        32
    """
    return int(round(cfg_epochs * math.ceil(n_samples / batch_size)))
