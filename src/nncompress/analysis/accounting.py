"""H1 model accounting: parameters, nonzeros and MACs per layer, measured by running the
model once on an example input (so any ``nn.Module`` works)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class LayerStats:
    """One Linear/Conv layer: weight count, nonzeros, dense and sparse MACs per sample."""

    name: str
    kind: str
    weights: int
    nonzeros: int
    biases: int
    macs: int
    sparse_macs: int
    in_shape: list[int]
    out_shape: list[int]

    @property
    def density(self) -> float:
        return self.nonzeros / max(self.weights, 1)

    def to_dict(self) -> dict:
        return asdict(self)


def _is_virtual(module: nn.Module) -> bool:
    """A layer that computes with a weight it does not store (HashedNets' ``virtual_weight``)."""
    return callable(getattr(module, "virtual_weight", None)) and hasattr(module, "virtual_shape")


def layer_macs(module: nn.Module, out: torch.Tensor) -> int:
    """Multiply-accumulates per sample of a Linear or Conv layer producing ``out``.

    Conv: ``out_elements * (in_channels / groups) * prod(kernel)``; Linear:
    ``out_elements * in_features`` (out_elements counts one sample).

    Example:
        >>> layer_macs(nn.Linear(784, 300), torch.zeros(1, 300))
        235200
    """
    per_sample = out[0].numel() if out.dim() > 0 else 1
    if _is_virtual(module):  # HashedNets (Q13): the virtual out x in (x kh x kw) weight is applied
        return per_sample * math.prod(module.virtual_shape[1:])
    if isinstance(module, _CONV):
        return per_sample * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features
    raise TypeError(f"no MAC rule for {type(module).__name__}")


@torch.no_grad()
def layer_stats(model: nn.Module, example_input: torch.Tensor | dict[str, torch.Tensor]) -> list[LayerStats]:
    """Per-layer stats of every Linear/Conv module reached by a forward pass, in order.
    ``example_input``: a batch tensor, or a dict of them passed as keyword arguments (a
    tokenizer batch for a transformer); only its first sample runs.

    Example:
        >>> from nncompress.models import build_model
        >>> [s.macs for s in layer_stats(build_model("lenet300"), torch.zeros(1, 1, 28, 28))]
        [235200, 30000, 1000]
    """
    rows: list[LayerStats] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(mod, inp, out):
        w = mod.virtual_weight() if _is_virtual(mod) else mod.weight  # hashed: the weights it computes with
        macs = layer_macs(mod, out)
        nnz = int((w != 0).sum())
        rows.append(LayerStats(
            name=names[mod], kind=type(mod).__name__, weights=w.numel(), nonzeros=nnz,
            biases=0 if mod.bias is None else mod.bias.numel(), macs=macs,
            sparse_macs=int(round(macs * nnz / max(w.numel(), 1))),
            in_shape=list(inp[0].shape[1:]), out_shape=list(out.shape[1:])))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, *_CONV)) or _is_virtual(m)]
    was_training = model.training
    model.eval()
    try:
        if isinstance(example_input, dict):
            model(**{k: v[:1] for k, v in example_input.items()})
        else:
            model(example_input[:1])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rows


def totals(rows: list[LayerStats]) -> dict[str, int]:
    """Sums of weights, nonzeros, biases, MACs and sparse MACs over the rows."""
    keys = ("weights", "nonzeros", "biases", "macs", "sparse_macs")
    return {k: sum(getattr(r, k) for r in rows) for k in keys}


def count_parameters(model: nn.Module) -> dict[str, int]:
    """All parameters, their nonzeros, and fp32 bytes of the dense float state dict."""
    params = list(model.parameters())
    state = model.state_dict().values()
    return {
        "parameters": sum(p.numel() for p in params),
        "nonzeros": sum(int((p != 0).sum()) for p in params),
        "dense_fp32_bytes": sum(4 * t.numel() for t in state if t.is_floating_point()),
    }
