"""P5 Dynamic Network Surgery (Guo, Yao & Chen 2016, arXiv 1608.04493).

Each pruned layer k has a dense weight W_k and a binary mask T_k. The forward pass uses
``W_k * T_k``; the update is ``W_k <- W_k - lr * dL/d(W_k * T_k)`` on *all* entries, so a
pruned weight keeps learning and can be spliced back. The mask is updated with the
hysteresis rule of the paper::

    T = 0            where |W| < a_k        (prune)
    T = 1            where |W| > b_k        (splice)
    T unchanged      where a_k <= |W| <= b_k

Thresholds (the authors' Caffe code): ``t_k = max(mean|W_k| + c_k * std|W_k|, 0)``,
``a_k = 0.9 t_k``, ``b_k = 1.1 t_k``, with mean/std over all entries of the dense layer at
the start of training and then kept fixed. ``c_k`` ("c_rate") sets the sparsity; instead
of ``c_k`` one may give a target sparsity ``s_k``; ``c_k`` is then solved so that the first
mask update prunes exactly the ``s_k`` smallest |W_k| (:func:`c_rate_for_sparsity`). The
final sparsity drifts from ``s_k`` as pruned weights are spliced back and others pruned.

Masks are updated at a step with probability ``p = (1 + gamma * step)^(-power)``, drawn
from the callback's own seeded generator (the global RNG is not touched).

Exactness of the straight-through gradient: between steps the parameter holds
``W * T`` (so evaluation and the state dict see the pruned net) and the callback holds
the dense W. Backward then yields ``dL/d(W*T)``; ``after_backward`` copies the dense W
back into the parameter, the optimizer updates it with that gradient (momentum and weight
decay act on the dense W), and ``after_optimizer_step`` stores the new dense W, updates T
and writes ``W * T`` back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from nncompress.checks import check_float, check_fraction
from nncompress.errors import ConfigError
from nncompress.prune.magnitude import check_sparsities
from nncompress.prune.mask import Masks
from nncompress.prune.targets import LayerSelection, prunable_weights
from nncompress.train.callbacks import Callback

log = logging.getLogger(__name__)


def dns_thresholds(weight: torch.Tensor, c_rate: float, low: float = 0.9, high: float = 1.1) -> tuple[float, float]:
    """``(a, b) = (low * t, high * t)`` with ``t = max(mean|W| + c_rate * std|W|, 0)``.

    Example:
        >>> dns_thresholds(torch.tensor([1.0, 3.0]), 0.0)  # mean|W| = 2
        (1.8, 2.2)
    """
    if not 0 < low <= high:
        raise ConfigError(f"need 0 < low <= high, got low={low}, high={high}")
    a = weight.detach().abs().float()
    t = max(float(a.mean() + c_rate * a.std(unbiased=False)), 0.0)
    return low * t, high * t


def c_rate_for_sparsity(weight: torch.Tensor, sparsity: float, low: float = 0.9) -> float:
    """The ``c`` for which the prune threshold ``a = low * (mean|W| + c std|W|)`` lies half-way
    between the k-th and (k+1)-th smallest |w|, k = round(sparsity * n): the first mask
    update then prunes exactly k weights.

    Example:
        >>> round(c_rate_for_sparsity(torch.tensor([1.0, 3.0]), 0.5, low=1.0), 6)  # a = 2 = mean
        0.0
    """
    check_fraction(sparsity, "sparsity", zero=True, one=False)
    a = weight.detach().abs().float().reshape(-1)
    srt = torch.sort(a).values
    k = int(round(sparsity * a.numel()))
    if k == 0:
        return -float("inf") if a.std() > 0 else 0.0
    cut = float(srt[k - 1] + srt[min(k, a.numel() - 1)]) / 2
    std = float(a.std(unbiased=False))
    return (cut / low - float(a.mean())) / std if std > 0 else 0.0


def dns_update_mask(weight: torch.Tensor, mask: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """The hysteresis rule: prune ``|w| < a``, splice ``|w| > b``, keep the mask in between.

    Example:
        >>> dns_update_mask(torch.tensor([0.5, 1.5, 1.5, 3.0]), torch.tensor([True, True, False, False]), 1.0, 2.0).tolist()
        [False, True, False, True]
    """
    if a > b:
        raise ConfigError(f"need a <= b, got a={a}, b={b}")
    mag = weight.detach().abs()
    return (mask.bool() & (mag >= a)) | (mag > b)


def update_probability(step: int, gamma: float, power: float) -> float:
    """``p = (1 + gamma * step)^(-power)``: how likely the masks are updated at ``step``.

    Example:
        >>> update_probability(100, 0.01, 1.0)
        0.5
    """
    return (1.0 + gamma * step) ** (-power)


@dataclass
class DNSConfig(LayerSelection):
    """DNS hyper-parameters: ``c_rate`` or ``sparsity`` sets each layer's thresholds.

    Example:
        >>> DNSConfig(sparsity={"default": 0.9, "fc3.weight": 0.5}).low
        0.9
    """

    c_rate: float | dict[str, float] | None = None
    """Threshold ``mean|W| + c_rate * std|W|`` (one number or ``{param name: c, default:
    c}``)."""
    sparsity: float | dict[str, float] | None = None
    """Instead of ``c_rate``: the share of weights the first mask update prunes, in [0, 1)
    (one number or per layer); wins over ``c_rate``."""
    low: float = 0.9
    """Prune threshold a = low * t."""
    high: float = 1.1
    """Splice threshold b = high * t (>= low)."""
    gamma: float = 1e-4
    """Mask-update probability ``(1 + gamma * step) ** -power``: its decay rate (>= 0)."""
    power: float = 1.0
    """Exponent of the mask-update probability (>= 0)."""
    stop_step: int | None = None
    """No mask updates from this optimizer step on (the rest trains fixed masks)."""
    seed: int = 0
    """Seed of the mask-update draws."""

    def __post_init__(self) -> None:
        if self.c_rate is None and self.sparsity is None:
            raise ConfigError("DNS needs c_rate or sparsity")
        check_sparsities(self.sparsity)
        if not 0 < self.low <= self.high:
            raise ConfigError(f"need 0 < low <= high, got low={self.low}, high={self.high}")
        check_float(self.gamma, "gamma", 0)
        check_float(self.power, "power", 0)


def _per_layer(value, name: str, what: str):
    if isinstance(value, Mapping):
        if name in value:
            return value[name]
        if "default" in value:
            return value["default"]
        raise ConfigError(f"{what} has no entry for {name!r} and no 'default'; keys: {sorted(value)}")
    return value


class DNSCallback(Callback):
    """Dynamic Network Surgery as a training callback (see the module docstring).

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.train import TrainConfig, fit
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> model = build_model("lenet5")
        >>> dns = DNSCallback(DNSConfig(sparsity={"default": 0.9, "conv1.weight": 0.5}))
        >>> _ = fit(model, data, TrainConfig(epochs=1, batch_size=8), callbacks=[dns])
        >>> masks = dns.finalize(model)
        >>> {name: round(float((~m).float().mean()), 2) for name, m in masks.items()}
        {'conv1.weight': 0.5, 'conv2.weight': 0.9, 'fc1.weight': 0.9, 'fc2.weight': 0.9}
    """

    def __init__(self, cfg: DNSConfig):
        self.cfg = cfg
        self.params: dict[str, nn.Parameter] = {}
        self.dense: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.thresholds: dict[str, tuple[float, float]] = {}
        self.step = 0
        self.n_updates = 0
        self._gen = torch.Generator().manual_seed(cfg.seed)

    @torch.no_grad()
    def on_fit_begin(self, model, optimizer):
        c = self.cfg
        self.params = prunable_weights(model, c.include, c.exclude)
        for name, p in self.params.items():
            if name not in self.dense:  # not resumed
                self.dense[name] = p.detach().clone()
                self.masks[name] = torch.ones_like(p, dtype=torch.bool)
            if name not in self.thresholds:
                if c.sparsity is not None:
                    rate = c_rate_for_sparsity(self.dense[name], float(_per_layer(c.sparsity, name, "sparsity")), c.low)
                else:
                    rate = float(_per_layer(c.c_rate, name, "c_rate"))
                self.thresholds[name] = dns_thresholds(self.dense[name], rate, c.low, c.high)
        if self.step == 0:
            self._update_masks()
        for name, p in self.params.items():
            p.copy_(self.dense[name] * self.masks[name])

    @torch.no_grad()
    def _update_masks(self) -> None:
        for name in self.params:
            a, b = self.thresholds[name]
            self.masks[name] = dns_update_mask(self.dense[name], self.masks[name], a, b)
        self.n_updates += 1

    @torch.no_grad()
    def after_backward(self, model):
        for name, p in self.params.items():
            p.copy_(self.dense[name])  # the optimizer updates dense W with dL/d(W*T)

    @torch.no_grad()
    def after_optimizer_step(self, model, optimizer):
        self.step += 1
        for name, p in self.params.items():
            self.dense[name].copy_(p)
        c = self.cfg
        active = c.stop_step is None or self.step < c.stop_step
        if active and float(torch.rand((), generator=self._gen)) < update_probability(self.step, c.gamma, c.power):
            self._update_masks()
        for name, p in self.params.items():
            p.copy_(self.dense[name] * self.masks[name])

    def current_masks(self) -> Masks:
        """The masks T as a :class:`Masks` (True = kept)."""
        return Masks(self.masks)

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> Masks:
        """Write ``W * T`` into the model for good and return the masks."""
        params = dict(model.named_parameters())
        for name, t in self.masks.items():
            params[name].copy_(self.dense[name] * t)
        masks = Masks(self.masks)
        log.info("DNS: total sparsity %.4f after %d mask updates", masks.total_sparsity(), self.n_updates)
        return masks

    def state_dict(self):
        return {"dense": dict(self.dense), "masks": dict(self.masks), "step": self.step,
                "thresholds": {k: torch.tensor(v) for k, v in self.thresholds.items()},
                "gen": self._gen.get_state(), "n_updates": self.n_updates}

    def load_state_dict(self, state):
        if not state:
            return
        self.dense = {k: v.clone() for k, v in state["dense"].items()}
        self.masks = {k: v.bool().clone() for k, v in state["masks"].items()}
        self.thresholds = {k: (float(v[0]), float(v[1])) for k, v in state["thresholds"].items()}
        self.step, self.n_updates = int(state["step"]), int(state["n_updates"])
        self._gen.set_state(state["gen"])
