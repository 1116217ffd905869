"""L8 ternary matrix decomposition with fixed-point scales (seed 001, "三值矩阵分解和定点变换").

A weight matrix ``W`` (out, in) (a conv's (out, C kh kw)) is approximated by
``A diag(s) B`` with ``A`` (out, k) and ``B`` (k, in) taking only {-1, 0, +1} and ``s``
(k) fixed-point numbers (``scale_bits``-bit integers times one power of two per layer), so
a conv becomes a ternary kh x kw conv to k channels, a per-channel scaling and a ternary
1x1 conv. :func:`ternary_decompose_matrix` builds the factors greedily: each component is
a ternary rank-1 fit of the residual (alternating exact ternary projections,
:func:`best_ternary`), then all scales are refitted jointly by least squares and rounded
to the fixed-point grid. The file stores the two ternary factors (``symbols`` codec, <= 2
bits each, Huffman when smaller) and the integer scale codes.

Example:
    >>> a, s, b = ternary_decompose_matrix(torch.randn(6, 8), 4)
    >>> sorted(set(a.unique().tolist()) | set(b.unique().tolist())) <= [-1.0, 0.0, 1.0]
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.checks import check_int
from nncompress.decompose.registry import register_method
from nncompress.errors import ConfigError
from nncompress.format.codecs import set_codec_hints
from nncompress.layer_records import register_layer_record, spec_bool, spec_int, spec_ints


def best_ternary(u: torch.Tensor) -> torch.Tensor:
    """The ternary vector ``t`` maximising ``<u, t> / ||t||`` (the direction of ``u``
    best matched by a {-1, 0, +1} vector): the signs of the ``j`` largest ``|u|``, ``j``
    maximising ``sum_{top j} |u| / sqrt(j)``.

    Example:
        >>> best_ternary(torch.tensor([3.0, -2.9, 0.1])).tolist()
        [1.0, -1.0, 0.0]
    """
    mag, order = u.abs().sort(descending=True)
    score = mag.cumsum(0) / torch.arange(1, u.numel() + 1, device=u.device, dtype=u.dtype).sqrt()
    j = int(score.argmax()) + 1
    t = torch.zeros_like(u)
    t[order[:j]] = torch.sign(u[order[:j]])
    return t


def fixed_point(s: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """``s`` as ``bits``-bit signed integer codes and one exponent: ``s ~ codes * 2**exp``.

    Example:
        >>> fixed_point(torch.tensor([0.5, -0.26]), 4)
        (tensor([ 4., -2.]), -3)
    """
    top = float(s.abs().max()) if s.numel() else 0.0
    qmax = 2 ** (bits - 1) - 1
    exp = math.ceil(math.log2(top / qmax)) if top > 0 else 0
    return torch.clamp(torch.round(s / 2.0**exp), -qmax, qmax), exp


def ternary_decompose_matrix(w: torch.Tensor, k: int, iters: int = 10, scale_bits: int = 8,
                             seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``w`` (m, n) ~ ``A diag(s) B``: ternary ``A`` (m, k), ``B`` (k, n), fixed-point ``s``
    (k) (already rounded: ``s = codes * 2**exp``).

    Example:
        >>> w = torch.randn(5, 7)
        >>> a, s, b = ternary_decompose_matrix(w, 20)
        >>> (((a * s) @ b - w).norm() < w.norm()).item()
        True
    """
    w = w.detach().float()
    m, n = w.shape
    g = torch.Generator().manual_seed(seed)
    a_cols, b_rows, residual = [], [], w.clone()
    for _ in range(k):
        b = best_ternary(residual.t() @ torch.randn(m, generator=g))
        a = best_ternary(residual @ b)
        for _ in range(iters):
            b_new = best_ternary(residual.t() @ a)
            a_new = best_ternary(residual @ b_new)
            if torch.equal(a_new, a) and torch.equal(b_new, b):
                break
            a, b = a_new, b_new
        den = float(a.dot(a) * b.dot(b))
        if den == 0:
            break
        residual -= (a @ residual @ b / den) * torch.outer(a, b)
        a_cols.append(a)
        b_rows.append(b)
    a_mat, b_mat = torch.stack(a_cols, 1), torch.stack(b_rows)  # (m, k'), (k', n)
    gram = (a_mat.t() @ a_mat) * (b_mat @ b_mat.t())  # (k', k')
    rhs = ((a_mat.t() @ w) * b_mat).sum(1)  # a_j^T W b_j
    s = torch.linalg.lstsq(gram, rhs[:, None]).solution[:, 0]
    codes, exp = fixed_point(s, scale_bits)
    return a_mat, codes * 2.0**exp, b_mat


class TernaryFactorized(nn.Module):
    """``W = A diag(codes * 2**exp) B`` as a Linear (``kernel`` None) or Conv2d layer:
    buffers ``a`` (out, k), ``b`` (k, in * kh * kw) in {-1, 0, 1}, ``scale_codes`` (k);
    a learnable bias. The conv forward is ternary kxk conv -> scale -> ternary 1x1 conv.

    Example:
        >>> TernaryFactorized(6, 4, 3)(torch.zeros(2, 6)).shape
        torch.Size([2, 4])
    """

    def __init__(self, in_features: int, out_features: int, k: int, exp: int = 0, bias: bool = True,
                 kernel: tuple[int, int] | None = None, stride: tuple[int, int] = (1, 1),
                 padding: tuple[int, int] = (0, 0)):
        super().__init__()
        self.in_features, self.out_features, self.k, self.exp = in_features, out_features, k, exp
        self.kernel = tuple(kernel) if kernel is not None else None
        self.stride, self.padding = tuple(stride), tuple(padding)
        taps = math.prod(self.kernel) if self.kernel else 1
        self.register_buffer("a", torch.zeros(out_features, k))
        self.register_buffer("b", torch.zeros(k, in_features * taps))
        self.register_buffer("scale_codes", torch.zeros(k))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Loaded factors must be ternary and scale codes integers (a file is untrusted)."""
        for name in ("a", "b"):
            t = state_dict.get(prefix + name)
            if isinstance(t, torch.Tensor) and t.numel() and not bool(((t == 0) | (t.abs() == 1)).all()):
                error_msgs.append(f"{prefix}{name}: ternary factors must lie in {{-1, 0, +1}}")
        t = state_dict.get(prefix + "scale_codes")
        if isinstance(t, torch.Tensor) and t.numel() and not bool((t == t.round()).all()):
            error_msgs.append(f"{prefix}scale_codes: fixed-point scale codes must be integers")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def scales(self) -> torch.Tensor:
        return self.scale_codes * 2.0**self.exp

    def dense_weight(self) -> torch.Tensor:
        """The (out, in[, kh, kw]) weight ``A diag(s) B``."""
        w = (self.a * self.scales()) @ self.b
        return w if self.kernel is None else w.reshape(self.out_features, self.in_features, *self.kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            return F.linear(F.linear(x, self.b) * self.scales(), self.a, self.bias)
        y = F.conv2d(x, self.b.reshape(self.k, self.in_features, *self.kernel), None, self.stride, self.padding)
        y = y * self.scales()[:, None, None]
        return F.conv2d(y, self.a[:, :, None, None], self.bias)

    def spec(self) -> dict[str, Any]:
        out = {"in": self.in_features, "out": self.out_features, "k": self.k, "exp": self.exp,
               "bias": self.bias is not None}
        if self.kernel is not None:
            out.update(kernel=list(self.kernel), stride=list(self.stride), padding=list(self.padding))
        return out


def _from_spec(spec: Any, where: str) -> TernaryFactorized:
    args = dict(in_features=spec_int(spec, "in", where), out_features=spec_int(spec, "out", where),
                k=spec_int(spec, "k", where), exp=spec_int(spec, "exp", where, -200, 200),
                bias=spec_bool(spec, "bias", where))
    if "kernel" in spec:
        args.update(kernel=tuple(spec_ints(spec, "kernel", where, 1, 64, 2)),
                    stride=tuple(spec_ints(spec, "stride", where, 1, 64, 2)),
                    padding=tuple(spec_ints(spec, "padding", where, 0, 64, 2)))
    return TernaryFactorized(**args)


@dataclass
class TernaryDecompConfig:
    """Options of ternary matrix decomposition (L8).

    Example:
        >>> TernaryDecompConfig(rank_ratio=0.5).scale_bits
        8
    """

    rank_ratio: float = 0.5
    """Components k per layer as a fraction of min(out, in * kh * kw), in (0, 4]."""
    scale_bits: int = 8
    """Bits of each fixed-point scale (signed), 2..16."""
    iters: int = 10
    """Alternating refinements per component, >= 1."""
    include: list[str] | None = None
    """Glob patterns of the Linear / Conv2d layers to decompose (default: all)."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns of layers left alone."""
    seed: int = 0
    """Seed of each component's random start."""

    def __post_init__(self) -> None:
        if not isinstance(self.rank_ratio, (int, float)) or not 0 < self.rank_ratio <= 4:
            raise ConfigError(f"rank_ratio={self.rank_ratio!r} out of range; allowed: (0, 4]")
        check_int(self.scale_bits, "scale_bits", 2, 16)
        check_int(self.iters, "iters", 1, 1000)


def ternary_decompose(model: nn.Module, config: TernaryDecompConfig | None = None) -> dict[str, dict[str, Any]]:
    """Replace the chosen Linear / Conv2d (groups 1, dilation 1) layers by
    :class:`TernaryFactorized` (in place) and set the codec hints (factors and scale codes:
    ``symbols``). Returns per layer k, the exponent and the relative error.

    Example:
        >>> ternary_decompose(nn.Sequential(nn.Linear(8, 4)))["0"]["k"]
        2
    """
    from nncompress.modules import select_layers, set_submodule

    config = config or TernaryDecompConfig()
    chosen = {n: m for n, m in select_layers(model, config.include, config.exclude, (nn.Linear, nn.Conv2d)).items()
              if type(m) in (nn.Linear, nn.Conv2d)}
    if not chosen:
        raise ConfigError(f"include={config.include} / exclude={config.exclude} leave no Linear or Conv2d layer")
    for name, m in chosen.items():
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.dilation != (1, 1) or isinstance(m.padding, str)):
            raise ConfigError(f"{name}: ternary decomposition needs a Conv2d with groups 1, dilation 1 and "
                              "numeric padding")
    report, hints = {}, {}
    for i, (name, layer) in enumerate(chosen.items()):
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        k = max(1, round(config.rank_ratio * min(w.shape)))
        a, s, b = ternary_decompose_matrix(w, k, config.iters, config.scale_bits, config.seed + i)
        codes, exp = fixed_point(s, config.scale_bits)
        conv = isinstance(layer, nn.Conv2d)
        new = TernaryFactorized(layer.weight.shape[1], layer.weight.shape[0], a.shape[1], exp,
                                layer.bias is not None, layer.kernel_size if conv else None,
                                layer.stride if conv else (1, 1), layer.padding if conv else (0, 0))
        new = new.to(layer.weight.device, layer.weight.dtype)
        with torch.no_grad():
            new.a.copy_(a)
            new.b.copy_(b)
            new.scale_codes.copy_(codes)
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        new.train(layer.training)
        set_submodule(model, name, new)
        hints.update({f"{name}.a": ("symbols", {}), f"{name}.b": ("symbols", {}),
                      f"{name}.scale_codes": ("symbols", {})})
        err = ((new.dense_weight().reshape(w.shape) - w).norm() / w.norm()).item()
        report[name] = {"k": a.shape[1], "exp": exp, "relative_error": err, "weights": w.numel(),
                        "nonzero_a": int(a.count_nonzero()), "nonzero_b": int(b.count_nonzero())}
    set_codec_hints(model, hints)
    return report


register_layer_record("ternary_factors", (TernaryFactorized,), _from_spec)
register_method("ternary", TernaryDecompConfig, ternary_decompose,
                "L8 ternary factors with fixed-point scales of Linear/Conv2d layers (ternary_decompose)")
