"""L6 Tensor-Train layers (Novikov et al. 2015, "Tensorizing Neural Networks").

A Linear layer's weight ``W`` (out, in) with ``in = prod n_k`` and ``out = prod m_k`` is
viewed as a tensor with modes ``(n_1 m_1, ..., n_d m_d)`` and stored as a chain of TT
cores ``G_k`` of shape ``(r_{k-1}, n_k, m_k, r_k)`` (``r_0 = r_d = 1``):
``W[(j_1..j_d), (i_1..i_d)] = G_1[:, i_1, j_1, :] ... G_d[:, i_d, j_d, :]``. Parameters:
``sum_k r_{k-1} n_k m_k r_k`` instead of ``prod n_k m_k``. :func:`tt_svd` finds the cores of
a trained matrix (TT-SVD with a rank cap, exact at full rank); the file stores the cores.

Example:
    >>> layer = tt_from_linear(nn.Linear(12, 6), in_modes=[3, 4], out_modes=[2, 3], rank=2)
    >>> layer.num_tt_params() == 1 * 3 * 2 * 2 + 2 * 4 * 3 * 1
    True
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.checks import check_int
from nncompress.decompose.registry import register_method
from nncompress.errors import ConfigError
from nncompress.layer_records import register_layer_record, spec_bool, spec_ints
from nncompress.modules import select_layers, set_submodule

log = logging.getLogger(__name__)


def factor_modes(n: int, d: int) -> list[int]:
    """``n`` as ``d`` factors as equal as the prime factors allow (descending).

    Example:
        >>> factor_modes(784, 3), factor_modes(300, 3)
        ([14, 8, 7], [10, 6, 5])
    """
    primes, m, p = [], n, 2
    while p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    modes = [1] * d
    for q in sorted(primes, reverse=True):
        modes[modes.index(min(modes))] *= q
    return sorted(modes, reverse=True)


def tt_svd(tensor: torch.Tensor, max_rank: int) -> list[torch.Tensor]:
    """TT-SVD (Oseledets 2011): cores (r_{k-1}, s_k, r_k) of ``tensor`` (shape s_1..s_d),
    each rank capped at ``max_rank`` (exact when no cap binds).

    Example:
        >>> t = torch.randn(2, 3, 4)
        >>> cores = tt_svd(t, 100)
        >>> torch.allclose(tt_full(cores), t, atol=1e-5)
        True
    """
    shape, cores, r = tensor.shape, [], 1
    rest = tensor.reshape(1, -1)
    for k in range(len(shape) - 1):
        mat = rest.reshape(r * shape[k], -1)
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
        rk = min(max_rank, s.numel())
        cores.append(u[:, :rk].reshape(r, shape[k], rk))
        rest = s[:rk, None] * vh[:rk]
        r = rk
    cores.append(rest.reshape(r, shape[-1], 1))
    return cores


def tt_full(cores: list[torch.Tensor]) -> torch.Tensor:
    """The full tensor (s_1..s_d) of TT cores (r_{k-1}, s_k, r_k)."""
    out = cores[0]  # (1, s_1, r_1)
    for core in cores[1:]:
        out = torch.tensordot(out, core, dims=([out.dim() - 1], [0]))
    return out.squeeze(0).squeeze(-1)


class TTLinear(nn.Module):
    """A Linear layer stored as TT cores ``core{k}`` (r_{k-1}, n_k, m_k, r_k) and a bias.

    Example:
        >>> TTLinear([4, 4], [2, 3], [1, 2, 1])(torch.zeros(5, 16)).shape
        torch.Size([5, 6])
    """

    def __init__(self, in_modes: list[int], out_modes: list[int], ranks: list[int], bias: bool = True):
        super().__init__()
        if not (len(in_modes) == len(out_modes) == len(ranks) - 1) or ranks[0] != 1 or ranks[-1] != 1:
            raise ConfigError(f"TT layer: {len(in_modes)} in modes, {len(out_modes)} out modes and ranks "
                              f"{ranks} do not fit (d, d, d+1 with r_0 = r_d = 1)")
        self.in_modes, self.out_modes, self.ranks = list(in_modes), list(out_modes), list(ranks)
        self.in_features, self.out_features = math.prod(in_modes), math.prod(out_modes)
        self.cores = nn.ParameterList(nn.Parameter(torch.zeros(ranks[k], n, m, ranks[k + 1]))
                                      for k, (n, m) in enumerate(zip(in_modes, out_modes)))
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None

    def num_tt_params(self) -> int:
        """``sum_k r_{k-1} n_k m_k r_k``."""
        return sum(r0 * n * m * r1 for r0, n, m, r1 in
                   zip(self.ranks[:-1], self.in_modes, self.out_modes, self.ranks[1:]))

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) matrix the cores represent."""
        d = len(self.in_modes)
        full = tt_full([c.reshape(c.shape[0], -1, c.shape[3]) for c in self.cores])  # (n1 m1, ..., nd md)
        full = full.reshape([s for n, m in zip(self.in_modes, self.out_modes) for s in (n, m)])
        full = full.permute([2 * k + 1 for k in range(d)] + [2 * k for k in range(d)])  # (m.., n..)
        return full.reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dense_weight(), self.bias)

    def spec(self) -> dict[str, Any]:
        return {"in_modes": self.in_modes, "out_modes": self.out_modes, "ranks": self.ranks,
                "bias": self.bias is not None}


def _from_spec(spec: Any, where: str) -> TTLinear:
    in_modes = spec_ints(spec, "in_modes", where, 1, 2**16)
    out_modes = spec_ints(spec, "out_modes", where, 1, 2**16, len(in_modes))
    ranks = spec_ints(spec, "ranks", where, 1, 2**16, len(in_modes) + 1)
    if math.prod(in_modes) > 2**24 or math.prod(out_modes) > 2**24:
        raise ConfigError(f"{where}: modes {in_modes} x {out_modes} exceed 2**24 features")
    return TTLinear(in_modes, out_modes, ranks, spec_bool(spec, "bias", where))


def tt_from_linear(layer: nn.Linear, in_modes: list[int], out_modes: list[int], rank: int) -> TTLinear:
    """The TT layer of ``layer``'s weight (TT-SVD, ranks capped at ``rank``) and its bias."""
    if math.prod(in_modes) != layer.in_features or math.prod(out_modes) != layer.out_features:
        raise ConfigError(f"modes {in_modes} x {out_modes} do not multiply to {layer.in_features} x "
                          f"{layer.out_features}")
    d = len(in_modes)
    w = layer.weight.detach().float().reshape(*out_modes, *in_modes)
    w = w.permute([p for k in range(d) for p in (d + k, k)])  # (n1, m1, n2, m2, ...)
    cores = tt_svd(w.reshape([n * m for n, m in zip(in_modes, out_modes)]), rank)
    ranks = [1] + [c.shape[2] for c in cores]
    new = TTLinear(in_modes, out_modes, ranks, layer.bias is not None).to(layer.weight.device, layer.weight.dtype)
    with torch.no_grad():
        for p, c, n, m in zip(new.cores, cores, in_modes, out_modes):
            p.copy_(c.reshape(c.shape[0], n, m, c.shape[2]))
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new


@dataclass
class TTConfig:
    """Options of Tensor-Train decomposition (L6).

    Example:
        >>> TTConfig(cores=3, rank=8).rank
        8
    """

    cores: int = 3
    """Number d of TT cores (features factored into d modes each), 2..8."""
    rank: int = 8
    """Largest TT rank, >= 1."""
    include: list[str] | None = None
    """Glob patterns of the Linear layers to decompose (default: all)."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns of Linear layers left alone."""

    def __post_init__(self) -> None:
        check_int(self.cores, "cores", 2, 8)
        check_int(self.rank, "rank", 1, 2**16)


def tt_decompose(model: nn.Module, config: TTConfig | None = None) -> dict[str, dict[str, Any]]:
    """Replace the chosen ``nn.Linear`` layers by :class:`TTLinear` (in place, modes from
    :func:`factor_modes`); returns per layer the modes, ranks and parameters before/after.

    Example:
        >>> m = nn.Sequential(nn.Linear(16, 8))
        >>> tt_decompose(m, TTConfig(cores=2, rank=2))["0"]["params_after"]
        48
    """
    config = config or TTConfig()
    chosen = {n: m for n, m in select_layers(model, config.include, config.exclude, (nn.Linear,)).items()
              if type(m) is nn.Linear}
    if not chosen:
        raise ConfigError(f"include={config.include} / exclude={config.exclude} leave no Linear layer")
    report = {}
    for name, layer in chosen.items():
        new = tt_from_linear(layer, factor_modes(layer.in_features, config.cores),
                             factor_modes(layer.out_features, config.cores), config.rank)
        new.train(layer.training)
        set_submodule(model, name, new)
        report[name] = {"in_modes": new.in_modes, "out_modes": new.out_modes, "ranks": new.ranks,
                        "params_before": layer.weight.numel(), "params_after": new.num_tt_params()}
        log.info("%s: TT %s", name, report[name])
    return report


register_layer_record("tt", (TTLinear,), _from_spec)
register_method("tt", TTConfig, tt_decompose, "L6 Tensor-Train cores of Linear layers (tt_decompose)")
