"""INQ (Q8, Zhou et al. 2017): incremental network quantization.

Each step quantizes a growing share of every layer's weights (default 50%, 75%, 87.5%,
100%), largest |w| first, to the power-of-two levels ``{0, +-2^n : n2 <= n <= n1}``
(``n1, n2`` from max|W| at the first step and the bit width, see ``pow2.inq_exponents``).
Quantized entries are frozen; the remaining float weights are retrained in between
(``FrozenEntries`` zeroes their gradients and restores their values after every
optimizer step, as ``MaskCallback`` does for pruned zeros).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from nncompress.quantize.layers import is_quant_layer
from nncompress.quantize.pow2 import inq_exponents, inq_quantize
from nncompress.quantize.quantizers import INQQuantizer
from nncompress.train.callbacks import Callback

log = logging.getLogger(__name__)


def partition_mask(w: torch.Tensor, frozen: torch.Tensor, fraction: float) -> torch.Tensor:
    """Frozen mask after quantizing a total of ``round(fraction * numel)`` entries:
    the already frozen ones plus the largest-|w| of the rest.

    Example:
        >>> partition_mask(torch.tensor([0.1, -0.9, 0.5, 0.2]), torch.zeros(4, dtype=torch.bool), 0.5).tolist()
        [False, True, True, False]
    """
    target = round(fraction * w.numel())
    extra = target - int(frozen.sum())
    out = frozen.clone()
    if extra <= 0:
        return out
    score = w.detach().abs().flatten().clone()
    score[frozen.flatten()] = -1.0  # never re-pick frozen entries
    idx = torch.topk(score, extra).indices
    out.view(-1)[idx] = True
    return out


class FrozenEntries(Callback):
    """Keeps masked entries of the named parameters at fixed values during ``fit``."""

    def __init__(self, params: dict[str, nn.Parameter], masks: dict[str, torch.Tensor]):
        self.params, self.masks = params, masks
        self.values = {n: p.detach().clone() for n, p in params.items()}

    def after_backward(self, model):
        for n, p in self.params.items():
            if p.grad is not None:
                p.grad.masked_fill_(self.masks[n], 0.0)

    @torch.no_grad()
    def after_optimizer_step(self, model, optimizer):
        for n, p in self.params.items():
            p.copy_(torch.where(self.masks[n], self.values[n], p))
            for v in optimizer.state.get(p, {}).values():
                if torch.is_tensor(v) and v.shape == p.shape:
                    v.masked_fill_(self.masks[n], 0.0)


class INQ:
    """Partition state of every INQ layer of a model wrapped by ``quantize_``.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.train import TrainConfig, fit
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> from nncompress.quantize.api import quantize_
        >>> from nncompress.quantize.methods import make_config
        >>> model = quantize_(build_model("lenet300"), make_config("inq"))
        >>> inq = INQ(model); inq.step(0.5)  # half of each layer's weights quantized and frozen
        >>> frozen, before = inq.frozen["fc1.weight"], model.fc1.weight.detach().clone()
        >>> _ = fit(model, data, TrainConfig(epochs=1), callbacks=[inq.callback()])
        >>> round(float(frozen.float().mean()), 2), torch.equal(model.fc1.weight[frozen], before[frozen])
        (0.5, True)
    """

    def __init__(self, model: nn.Module):
        self.layers: dict[str, tuple[nn.Parameter, INQQuantizer]] = {}
        for name, mod in model.named_modules():
            if is_quant_layer(mod) and isinstance(mod.wq, INQQuantizer):
                self.layers[f"{name}.weight"] = (mod.weight, mod.wq)
        self.frozen = {
            n: torch.zeros_like(p, dtype=torch.bool) for n, (p, _) in self.layers.items()
        }

    @torch.no_grad()
    def step(self, fraction: float) -> None:
        """Quantize and freeze up to ``fraction`` of every layer's entries."""
        for n, (p, q) in self.layers.items():
            if q.n1 is None:
                q.n1, q.n2 = inq_exponents(float(p.abs().max()), int(q.bits))
            new = partition_mask(p, self.frozen[n], fraction)
            p.copy_(torch.where(new, inq_quantize(p, q.n1, q.n2).to(p.dtype), p))
            self.frozen[n] = new
        log.info("INQ: %.1f%% of weights quantized", 100 * fraction)

    def callback(self) -> FrozenEntries:
        """Callback that keeps the quantized entries fixed while the rest retrain."""
        return FrozenEntries({n: p for n, (p, _) in self.layers.items()}, self.frozen)
