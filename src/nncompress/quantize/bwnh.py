"""BWNH (Q13, Hu, Wang & Cheng, AAAI 2018): binary weight networks trained via hashing.

Binarising a layer is treated as inner-product preserving hashing. For a layer with
weights ``W`` (``n x d``; a conv filter flattened to ``d = C/groups * kh * kw``) and a
sample of its inputs ``X`` (``d x m``; im2col patches for a conv), BWNH looks for codes
``B`` in ``{-1, +1}^(n x d)`` and per-filter scales ``alpha`` that keep the layer's inner
products::

    min_{B, alpha}  || W X - diag(alpha) B X ||_F^2 = sum_i (w_i - a_i b_i)^T M (w_i - a_i b_i),

with ``M = X X^T`` (only the ``d x d`` Gram matrix of the sample is needed). It alternates

* ``alpha`` given ``B`` in closed form: ``a_i = b_i^T M w_i / b_i^T M b_i``;
* ``B`` given ``alpha`` by discrete cyclic coordinate descent: one input coordinate ``k``
  (a row of ``B^T``, i.e. bit ``k`` of every filter) at a time, with the closed form
  ``b_ik = sign(a_i [(M w_i)_k - a_i ((M b_i)_k - M_kk b_ik)])`` (a tie keeps the old bit),

starting from ``B = sign(W)``. Each step minimises the objective exactly over its
variables, so the objective never increases; since the first ``alpha`` step already gives
the least-squares scale for ``sign(W)``, the result is never worse than BWN's
``mean|W| * sign(W)`` on the same sample.

The network is binarised layer by layer (``bwnh_binarize``) and then fine-tuned as a BWN
is: each target layer becomes the project's ``QuantLinear`` / ``QuantConv2d`` holding a
:class:`BWNHQuantizer`, whose forward is ``alpha * sign_ste(W)`` (the clipped
straight-through estimator of ``nncompress.quantize.ste``, as BWN) with ``alpha`` a
trainable per-filter parameter initialised by the hashing step and the latent weight set
to ``alpha * B``. ``nncompress.train.fit`` fine-tunes it, and
``nncompress.quantize.finalize`` turns it into plain layers holding exactly
``alpha * B`` with the ``binary`` packing (1 sign bit per weight + one fp32 scale per
filter), which ``nncompress.save`` stores.

Sign convention: ``sign(0) = -1`` (``binary_sign``), as BWN.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.errors import ConfigError
from nncompress.quantize.bwnh_codes import bwnh_objective_gram, bwnh_solve_gram, check_iters, gram
from nncompress.quantize.layers import QUANT_LAYERS, set_submodule
from nncompress.quantize.quantizers import Packing, WeightQuantizer
from nncompress.quantize.ste import binary_sign, sign_ste
from nncompress.state import model_state, read_state

log = logging.getLogger(__name__)



# ---- the weight quantizer used for fine-tuning ----------------------------------------


class BWNHQuantizer(WeightQuantizer):
    """``alpha * sign(W)`` with a trainable per-filter ``alpha`` (initialised by BWNH) and
    BWN's clipped straight-through estimator for the sign; ``quantize`` gives the
    ``binary`` packing (sign bits + one fp32 scale per output channel).

    Example:
        >>> q = BWNHQuantizer(torch.tensor([0.5, 2.0]))
        >>> q(torch.tensor([[1.0, -1.0], [-0.1, 0.3]])).tolist()
        [[0.5, -0.5], [-2.0, 2.0]]
    """

    def __init__(self, alpha: torch.Tensor, trainable: bool = True):
        super().__init__()
        self.bits = 1.0
        alpha = alpha.detach().reshape(-1).clone()
        if trainable:
            self.alpha = nn.Parameter(alpha)
        else:
            self.register_buffer("alpha", alpha)

    def _scale(self, w: torch.Tensor) -> torch.Tensor:
        return self.alpha.to(w.dtype).reshape([-1] + [1] * (w.dim() - 1))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self._scale(w) * sign_ste(w)

    @torch.no_grad()
    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, Packing]:
        w = w.detach().float()
        return self._scale(w) * binary_sign(w), ("binary", {"per_channel": True})


# ---- model level ------------------------------------------------------------------------

_TARGETS = (nn.Linear, nn.Conv2d)


def _batches(inputs: Any) -> list[torch.Tensor]:
    """A calibration tensor, or an iterable of tensors / ``(x, y)`` batches -> tensors."""
    if isinstance(inputs, torch.Tensor):
        out = [inputs]
    elif isinstance(inputs, Iterable):
        out = [b[0] if isinstance(b, (tuple, list)) else b for b in inputs]
    else:
        raise ConfigError(
            f"inputs of type {type(inputs).__name__} is not allowed; use a tensor batch or an "
            f"iterable of tensors / (x, y) batches"
        )
    if not out or any(not isinstance(b, torch.Tensor) for b in out):
        raise ConfigError("inputs is empty or holds non-tensors; give at least one calibration batch")
    if sum(b.shape[0] if b.dim() else 0 for b in out) == 0:
        raise ConfigError("inputs holds 0 samples; give at least one calibration sample")
    return out


def _columns(layer: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The layer's input as ``(d, m)`` columns, one matrix per conv group."""
    x = x.detach()
    if isinstance(layer, nn.Linear):
        return [x.reshape(-1, layer.in_features).T]
    pad = layer.padding
    if layer.padding_mode != "zeros" or isinstance(pad, str):
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=mode)
        pad = 0
    cg = layer.in_channels // layer.groups
    out = []
    for g in range(layer.groups):
        cols = F.unfold(x[:, g * cg:(g + 1) * cg], layer.kernel_size, layer.dilation, pad,
                        layer.stride)  # (N, cg*kh*kw, L)
        out.append(cols.transpose(0, 1).reshape(cols.shape[1], -1))
    return out


def _layer_grams(
    model: nn.Module, layer: nn.Module, batches: Sequence[torch.Tensor], sample: int | None,
    gen: torch.Generator,
) -> tuple[list[torch.Tensor], int]:
    """Run the model on the calibration batches and return the Gram matrix of the layer's
    input columns (per group; at most ``sample`` random columns) and the column count."""
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach()))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            for xb in batches:
                model(xb.to(device))
    finally:
        handle.remove()
    if not captured:
        raise ConfigError("the calibration forward pass never reached the layer; is it used by forward()?")
    groups = [torch.cat(cols, dim=1) for cols in zip(*(_columns(layer, x) for x in captured))]
    total = groups[0].shape[1]
    if total == 0:
        raise ConfigError("the layer received 0 input columns from the calibration inputs")
    if sample is not None and total > sample:
        idx = torch.randperm(total, generator=gen)[:sample].to(groups[0].device)
        groups = [g[:, idx] for g in groups]
    return [gram(g).cpu() for g in groups], min(total, sample or total)


def _target_layers(model: nn.Module, layers: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    allowed = [(n, m) for n, m in model.named_modules() if type(m) in _TARGETS]
    if not allowed:
        raise ConfigError(
            f"model {type(model).__name__} has no nn.Linear / nn.Conv2d layer to binarise"
        )
    if layers is None:
        return allowed
    if isinstance(layers, str):
        layers = [layers]
    names = [n for n, _ in allowed]
    unknown = [n for n in layers if n not in names]
    if unknown or not layers:
        raise ConfigError(
            f"layers={list(layers)!r} is not allowed; name one or more of the Linear/Conv2d "
            f"layers {names}"
        )
    wanted = set(layers)
    return [(n, m) for n, m in allowed if n in wanted]


@dataclass
class LayerStats:
    """Calibration-sample figures of one binarised layer (squared Frobenius errors and the
    same divided by ``||W X||_F^2``)."""

    columns: int
    iters_run: int
    objective_bwn: float
    objective_sign_ls: float
    objective: float
    target_energy: float

    def relative(self) -> dict[str, float]:
        """``{"bwn", "bwnh"}``: ``||W X - W_q X||_F / ||W X||_F`` for both methods."""
        e = max(self.target_energy, 1e-300)
        return {"bwn": (self.objective_bwn / e) ** 0.5, "bwnh": (self.objective / e) ** 0.5}


def bwnh_binarize(
    model: nn.Module,
    inputs: torch.Tensor | Iterable[Any],
    layers: Sequence[str] | None = None,
    iters: int = 10,
    sample: int | None = 16384,
    *,
    sequential: bool = True,
    wrap: bool = True,
    trainable_scale: bool = True,
    seed: int = 0,
) -> nn.Module:
    """Binarise the model's Linear / Conv2d layers with BWNH (in place; returns ``model``).

    ``inputs`` is a calibration batch (tensor) or an iterable of batches / ``(x, y)``
    pairs; a forward pre-hook collects each target layer's input, which becomes the
    layer's ``X`` (im2col patches for a conv, one Gram matrix per group), of which at most
    ``sample`` random columns (seeded by ``seed``; ``None``: all) are used.

    Layers are done one at a time in registration order. With ``sequential`` (default)
    the calibration pass for layer ``l`` runs through the network whose earlier target
    layers are already binarised, so each layer's codes adapt to the feature maps it will
    really see and errors do not accumulate (the paper's layer-wise scheme, followed by
    fine-tuning of the whole binary network); the objective is ``||W X - alpha B X||``
    on that same ``X``. ``sequential=False`` takes every ``X`` from the float network.

    With ``wrap`` (default) each layer becomes a ``QuantLinear`` / ``QuantConv2d`` with a
    :class:`BWNHQuantizer` (``alpha`` trainable unless ``trainable_scale=False``) and its
    latent weight set to ``alpha * B``: fine-tune it with ``nncompress.train.fit`` and
    freeze it with ``nncompress.quantize.finalize`` exactly as a BWN model from
    ``quantize_(model, make_config("bwn"))``. With ``wrap=False`` the plain layer's weight
    is overwritten with ``alpha * B`` (no fine-tuning path, no codec hints).
    Layers not named in ``layers`` (default: all Linear/Conv2d) are not touched.
    Per-layer calibration figures: :func:`bwnh_stats`.

    Example:
        >>> from nncompress.models import build_model
        >>> from nncompress.quantize.api import finalize
        >>> calib_images = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        >>> model = finalize(bwnh_binarize(build_model("lenet300"), calib_images, iters=3))
        >>> model.fc1.weight[0].abs().unique().numel()  # alpha * {-1, +1} per output neuron
        1
    """
    check_iters(iters)
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 1):
        raise ConfigError(f"sample={sample!r} is not allowed; use an int >= 1 or None (all columns)")
    targets = _target_layers(model, layers)
    batches = _batches(inputs)
    gen = torch.Generator().manual_seed(seed)
    stats: dict[str, LayerStats] = dict(read_state(model).bwnh_stats)
    grams: dict[str, tuple[list[torch.Tensor], int]] = {}
    was = model.training
    model.eval()
    try:
        if not sequential:
            for name, layer in targets:
                grams[name] = _layer_grams(model, layer, batches, sample, gen)
        for name, layer in targets:
            ms, cols = grams.pop(name) if not sequential else _layer_grams(
                model, layer, batches, sample, gen)
            w = layer.weight.detach()
            w2 = w.reshape(w.shape[0], -1)
            og = w.shape[0] // len(ms)
            codes, alphas = [], []
            obj = obj0 = obj_bwn = energy = 0.0
            run = 0
            for g, m in enumerate(ms):
                wg = w2[g * og:(g + 1) * og].to(torch.float64).cpu()
                res = bwnh_solve_gram(wg, m, iters)
                codes.append(res.codes)
                alphas.append(res.alpha)
                obj += res.objective
                obj0 += res.history[0]
                run = max(run, res.iters_run)
                obj_bwn += bwnh_objective_gram(wg, m, binary_sign(wg), wg.abs().mean(dim=1))
                energy += float(((wg @ m) * wg).sum())
            b = torch.cat(codes).reshape(w.shape).to(w.device, w.dtype)
            alpha = torch.cat(alphas).to(w.device, w.dtype)
            with torch.no_grad():
                layer.weight.copy_(alpha.reshape([-1] + [1] * (w.dim() - 1)) * b)
            if wrap:
                new = QUANT_LAYERS[type(layer)].from_float(layer, BWNHQuantizer(alpha, trainable_scale))
                set_submodule(model, name, new)
            stats[name] = LayerStats(cols, run, obj_bwn, obj0, obj, energy)
            rel = stats[name].relative()
            log.info("bwnh %s: %d columns, %d iters, rel. error %.4f (BWN %.4f)",
                     name, cols, run, rel["bwnh"], rel["bwn"])
    finally:
        model.train(was)
    model_state(model, create=True).bwnh_stats = stats
    return model


def bwnh_stats(model: nn.Module) -> dict[str, LayerStats]:
    """Per-layer calibration figures recorded by :func:`bwnh_binarize` (empty if none).

    Example:
        >>> from nncompress.models import build_model
        >>> x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        >>> stats = bwnh_stats(bwnh_binarize(build_model("lenet300"), x, iters=3))
        >>> all(s.relative()["bwnh"] < s.relative()["bwn"] for s in stats.values())  # lower output error
        True
    """
    return dict(read_state(model).bwnh_stats)
