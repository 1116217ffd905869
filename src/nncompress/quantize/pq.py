"""Q17 product quantization of weights (Q-CNN, Wu et al. CVPR 2016).

Each layer's input dimension is split into ``S = in / d`` subspaces of ``d`` dims; every
subspace gets a codebook of ``K`` codewords learned by k-means over the weight's
subvectors in it (:func:`kmeans_batched`: all subspaces at once, distances by matmul);
the layer stores one codeword index per subvector. ``nn.Linear`` (subvectors of a row),
``nn.Conv2d`` (subvectors along the input channels at each kernel position, one codebook
per channel group shared by all positions) and ``nn.Embedding`` (subvectors of a table
row) are supported.

Inference by lookup table: for an input ``x`` split as ``x_s``, ``T[s, k] = <x_s, c_{s,k}>``
is computed once per input (``S x K`` inner products), and output ``o`` is
``sum_s T[s, codes[o, s]]`` (``lookup_forward``); the ordinary ``forward`` uses the
reconstructed dense weight, which gives the same result (tested).

The file stores ``codes`` with the ``symbols`` codec (``ceil(log2 K)`` bits each) and the
codebooks as fp16 (the simulated model uses the fp16-rounded codewords).

Example:
    >>> m = nn.Sequential(nn.Linear(16, 8))
    >>> product_quantize(m, PQConfig(sub_dim=4, centroids=4)).layers["0"]["bits_per_weight"]  # codes + fp16 codebooks
    8.5
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
from nncompress.errors import ConfigError
from nncompress.format.codecs import set_codec_hints
from nncompress.layer_records import register_layer_record, spec_bool, spec_int, spec_ints
from nncompress.modules import select_layers, set_submodule

log = logging.getLogger(__name__)
MAX_DIST_ELEMENTS = 2**25  # distance matrix elements per k-means chunk of subspaces


def kmeans_batched(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means in ``S`` independent subspaces at once: ``x`` (S, n, d) -> centroids
    (S, k, d) and assignments (S, n). Initial centroids: ``k`` distinct points drawn per
    subspace (seeded); an empty cluster keeps its centroid. ``k <= n``.

    Example:
        >>> c, a = kmeans_batched(torch.tensor([[[0.], [0.1], [5.], [5.1]]]), 2)
        >>> sorted(c[0, :, 0].tolist())
        [0.05000000074505806, 5.050000190734863]
    """
    s, n, d = x.shape
    if not 1 <= k <= n:
        raise ConfigError(f"k-means: k={k} must be in 1..{n} (the number of points)")
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(s)]).to(x.device)  # (S, k)
    c = torch.gather(x, 1, idx[..., None].expand(-1, -1, d)).clone()  # (S, k, d)
    x2 = (x * x).sum(-1, keepdim=True)  # (S, n, 1)

    def assign(c: torch.Tensor) -> torch.Tensor:
        dist = x2 - 2 * x @ c.transpose(1, 2) + (c * c).sum(-1)[:, None, :]  # (S, n, k)
        return dist.argmin(-1)

    for _ in range(iters):
        a = assign(c)
        sums = torch.zeros_like(c).scatter_add_(1, a[..., None].expand(-1, -1, d), x)
        counts = torch.zeros(s, k, dtype=x.dtype, device=x.device).scatter_add_(1, a, torch.ones_like(x[..., 0]))
        new = torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], c)
        done = torch.equal(new, c)
        c = new
        if done:
            break
    return c, assign(c)


def pq_encode(rows: torch.Tensor, sub_dim: int, k: int, iters: int = 20, seed: int = 0,
              fp16: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Product-quantize ``rows`` (R, D) with subvectors of ``sub_dim`` dims: returns codes
    (R, S) int64 and codebooks (S, k, sub_dim) (rounded to fp16 values when ``fp16``;
    codes are then re-assigned to the nearest rounded codeword).

    Example:
        >>> codes, books = pq_encode(torch.randn(32, 8), 4, 4)
        >>> codes.shape, books.shape
        (torch.Size([32, 2]), torch.Size([2, 4, 4]))
    """
    r, dim = rows.shape
    if dim % sub_dim:
        raise ConfigError(f"sub_dim={sub_dim} does not divide the dimension {dim}")
    s = dim // sub_dim
    x = rows.detach().float().reshape(r, s, sub_dim).transpose(0, 1).contiguous()  # (S, R, d)
    chunk = max(1, MAX_DIST_ELEMENTS // max(1, r * k))
    books, codes = [], []
    for lo in range(0, s, chunk):
        c, a = kmeans_batched(x[lo:lo + chunk], k, iters, seed + lo)
        if fp16:
            c = c.half().float()
            xs = x[lo:lo + chunk]
            a = ((xs * xs).sum(-1, keepdim=True) - 2 * xs @ c.transpose(1, 2)
                 + (c * c).sum(-1)[:, None, :]).argmin(-1)
        books.append(c)
        codes.append(a)
    return torch.cat(codes).t().contiguous(), torch.cat(books)


def pq_reconstruct(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Rows (R, S * d) from codes (R, S) and codebooks (S, K, d).

    Example:
        >>> pq_reconstruct(torch.tensor([[1, 0]]), torch.arange(8.).reshape(2, 2, 2)).tolist()
        [[2.0, 3.0, 4.0, 5.0]]
    """
    s = codebooks.shape[0]
    sub = codebooks[torch.arange(s, device=codes.device), codes]  # (R, S, d)
    return sub.reshape(codes.shape[0], -1)


class _PQBase(nn.Module):
    """Codes buffer (R, S) and codebooks parameter (S, K, d) shared by the PQ layers."""

    def _init_pq(self, rows: int, dim: int, sub_dim: int, k: int) -> None:
        self.sub_dim, self.k = sub_dim, k
        s = dim // sub_dim
        self.register_buffer("codes", torch.zeros(rows, s, dtype=torch.long))
        self.codebooks = nn.Parameter(torch.zeros(s, k, sub_dim))

    def _rows(self) -> torch.Tensor:
        return pq_reconstruct(self.codes, self.codebooks)

    def pq_bits(self) -> dict[str, int]:
        """Stored bits: codes (``ceil(log2 K)`` each), fp16 codebooks."""
        return {"codes": self.codes.numel() * max(1, math.ceil(math.log2(max(self.k, 2)))),
                "codebooks": 16 * self.codebooks.numel()}


class PQLinear(_PQBase):
    """A product-quantized ``nn.Linear``: ``codes`` (out, S), ``codebooks`` (S, K, d), bias.

    Example:
        >>> layer = PQLinear(8, 3, sub_dim=4, k=2)
        >>> layer(torch.zeros(5, 8)).shape
        torch.Size([5, 3])
    """

    def __init__(self, in_features: int, out_features: int, sub_dim: int, k: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_pq(out_features, in_features, sub_dim, k)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def dense_weight(self) -> torch.Tensor:
        """The reconstructed (out, in) weight."""
        return self._rows()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dense_weight(), self.bias)

    def lookup_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same output by lookup tables: ``T = x_s . c_{s,k}`` (N, S, K), then for each
        output the sum over subspaces of the entries its codes name."""
        lead = x.shape[:-1]
        s, k, d = self.codebooks.shape
        xs = x.reshape(-1, s, d)  # (N, S, d)
        table = torch.einsum("nsd,skd->nsk", xs, self.codebooks).reshape(xs.shape[0], s * k)  # (N, S*K)
        idx = self.codes + torch.arange(s, device=x.device) * k  # (out, S) flat table positions
        y = table[:, idx].sum(-1)  # (N, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def spec(self) -> dict[str, Any]:
        return {"kind": "linear", "in": self.in_features, "out": self.out_features, "sub_dim": self.sub_dim,
                "k": self.k, "bias": self.bias is not None}


class PQConv2d(_PQBase):
    """A product-quantized ``nn.Conv2d`` (groups 1): subvectors of ``d`` input channels at
    each kernel position; ``codes`` (out * kh * kw, S), one codebook per channel group.

    Example:
        >>> layer = PQConv2d(4, 3, (3, 3), sub_dim=2, k=2, padding=(1, 1))
        >>> layer(torch.zeros(1, 4, 5, 5)).shape
        torch.Size([1, 3, 5, 5])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], sub_dim: int, k: int,
                 stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
                 dilation: tuple[int, int] = (1, 1), bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self._init_pq(out_channels * self.kernel_size[0] * self.kernel_size[1], in_channels, sub_dim, k)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def dense_weight(self) -> torch.Tensor:
        """The reconstructed (out, in, kh, kw) weight."""
        kh, kw = self.kernel_size
        return self._rows().reshape(self.out_channels, kh, kw, self.in_channels).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias, self.stride, self.padding, self.dilation)

    def lookup_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same output by lookup tables: a grouped 1x1 convolution gives ``T`` (N, S*K,
        H, W) (the inner products of every pixel's subvectors with every codeword); each
        output pixel sums, over subspaces and kernel positions, the table entries its codes
        name (zero padding of ``x`` is zero padding of ``T``)."""
        s, k, d = self.codebooks.shape
        kh, kw = self.kernel_size
        n = x.shape[0]
        table = F.conv2d(x, self.codebooks.reshape(s * k, d, 1, 1), groups=s)  # (N, S*K, H, W)
        patches = F.unfold(table, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, S*K*kk, L)
        codes = self.codes.reshape(self.out_channels, kh * kw, s).transpose(1, 2)  # (out, S, kk)
        pos = torch.arange(kh * kw, device=x.device)
        idx = (codes + (torch.arange(s, device=x.device) * k)[:, None]) * (kh * kw) + pos  # (out, S, kk)
        y = patches[:, idx.reshape(-1), :].reshape(n, self.out_channels, s * kh * kw, -1).sum(2)  # (N, out, L)
        if self.bias is not None:
            y = y + self.bias[:, None]
        h = (x.shape[2] + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        w = (x.shape[3] + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return y.reshape(n, self.out_channels, h, w)

    def spec(self) -> dict[str, Any]:
        return {"kind": "conv2d", "in": self.in_channels, "out": self.out_channels, "sub_dim": self.sub_dim,
                "k": self.k, "bias": self.bias is not None, "kernel": list(self.kernel_size),
                "stride": list(self.stride), "padding": list(self.padding), "dilation": list(self.dilation)}


class PQEmbedding(_PQBase):
    """A product-quantized ``nn.Embedding``: a row is the concatenation of the codewords
    its codes name (the lookup *is* the forward).

    Example:
        >>> PQEmbedding(10, 8, sub_dim=4, k=2)(torch.tensor([[1, 2]])).shape
        torch.Size([1, 2, 8])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, sub_dim: int, k: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self._init_pq(num_embeddings, embedding_dim, sub_dim, k)

    def dense_weight(self) -> torch.Tensor:
        """The reconstructed (num, dim) table."""
        return self._rows()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        s = self.codebooks.shape[0]
        sub = self.codebooks[torch.arange(s, device=ids.device), self.codes[ids]]  # (..., S, d)
        return sub.flatten(-2)

    lookup_forward = forward

    def spec(self) -> dict[str, Any]:
        return {"kind": "embedding", "in": self.embedding_dim, "out": self.num_embeddings,
                "sub_dim": self.sub_dim, "k": self.k, "bias": False}


def _from_spec(spec: Any, where: str) -> nn.Module:
    """A placeholder PQ layer from its stored spec (validated first)."""
    if not isinstance(spec, dict) or spec.get("kind") not in ("linear", "conv2d", "embedding"):
        raise ConfigError(f"{where}: kind {str(spec)[:60]} is not linear, conv2d or embedding")
    n_in, n_out = spec_int(spec, "in", where), spec_int(spec, "out", where)
    sub, k = spec_int(spec, "sub_dim", where), spec_int(spec, "k", where, 1, 2**16)
    bias = spec_bool(spec, "bias", where)
    if n_in % sub:
        raise ConfigError(f"{where}: sub_dim {sub} does not divide {n_in}")
    if spec["kind"] == "linear":
        return PQLinear(n_in, n_out, sub, k, bias)
    if spec["kind"] == "embedding":
        return PQEmbedding(n_out, n_in, sub, k)
    kernel = spec_ints(spec, "kernel", where, 1, 64, 2)
    return PQConv2d(n_in, n_out, tuple(kernel), sub, k, tuple(spec_ints(spec, "stride", where, 1, 64, 2)),
                    tuple(spec_ints(spec, "padding", where, 0, 64, 2)),
                    tuple(spec_ints(spec, "dilation", where, 1, 64, 2)), bias)


PQ_TYPES = (PQLinear, PQConv2d, PQEmbedding)


@dataclass
class PQConfig:
    """Options of product quantization (Q17).

    Example:
        >>> PQConfig(sub_dim=4, centroids=16).centroids
        16
    """

    sub_dim: int = 4
    """Dimensions d of a subvector (must divide each chosen layer's input dimension)."""
    centroids: int = 256
    """Codewords K per subspace, 2..65536 (a layer with fewer subvectors uses as many)."""
    iters: int = 20
    """k-means iterations, >= 1."""
    include: list[str] | None = None
    """Glob patterns of the layers to quantize (default: every Linear, Conv2d, Embedding)."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns of layers left alone."""
    fp16_codebooks: bool = True
    """Round codewords to fp16 (stored as fp16); False stores fp32 codebooks."""
    seed: int = 0
    """Seed of the k-means initialisation."""

    def __post_init__(self) -> None:
        check_int(self.sub_dim, "sub_dim", 1, 4096)
        check_int(self.centroids, "centroids", 2, 2**16)
        check_int(self.iters, "iters", 1, 1000)


@dataclass
class PQReport:
    """Per layer: subspaces, codewords, stored bits per weight."""

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)


def _layer_rows(layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return layer.weight.detach().permute(0, 2, 3, 1).reshape(-1, layer.in_channels)  # (out*kh*kw, in)
    return layer.weight.detach()


def product_quantize(model: nn.Module, config: PQConfig | None = None) -> PQReport:
    """Replace the chosen Linear / Conv2d (groups 1) / Embedding layers of ``model`` by
    PQ layers (in place) and set the codec hints (codes: ``symbols``, codebooks: fp16).
    Every layer is checked (``sub_dim`` divides its input dimension) before any is changed.

    Example:
        >>> m = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> sorted(product_quantize(m, PQConfig(sub_dim=2, centroids=2)).layers)
        ['0', '2']
    """
    config = config or PQConfig()
    chosen = select_layers(model, config.include, config.exclude, (nn.Linear, nn.Conv2d, nn.Embedding))
    chosen = {n: m for n, m in chosen.items() if type(m) in (nn.Linear, nn.Conv2d, nn.Embedding)}
    if not chosen:
        raise ConfigError(f"include={config.include} / exclude={config.exclude} leave no Linear, Conv2d or "
                          "Embedding layer to product-quantize")
    for name, layer in chosen.items():
        dim = layer.weight.shape[1]
        if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or not isinstance(layer.padding, tuple)):
            raise ConfigError(f"{name}: product quantization needs a Conv2d with groups 1 and numeric padding")
        if dim % config.sub_dim:
            raise ConfigError(f"sub_dim={config.sub_dim} does not divide {name}'s input dimension {dim}; "
                              "use a divisor of it or exclude the layer")
    report, hints = PQReport(), {}
    for i, (name, layer) in enumerate(chosen.items()):
        rows = _layer_rows(layer)
        k = min(config.centroids, rows.shape[0])
        codes, books = pq_encode(rows, config.sub_dim, k, config.iters, config.seed + 1000 * i,
                                 config.fp16_codebooks)
        if isinstance(layer, nn.Linear):
            new = PQLinear(layer.in_features, layer.out_features, config.sub_dim, k, layer.bias is not None)
        elif isinstance(layer, nn.Conv2d):
            new = PQConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, config.sub_dim, k,
                           layer.stride, layer.padding, layer.dilation, layer.bias is not None)
        else:
            new = PQEmbedding(layer.num_embeddings, layer.embedding_dim, config.sub_dim, k)
        new = new.to(layer.weight.device, layer.weight.dtype)
        with torch.no_grad():
            new.codes.copy_(codes)
            new.codebooks.copy_(books)
            if getattr(layer, "bias", None) is not None:
                new.bias.copy_(layer.bias)
        new.train(layer.training)
        set_submodule(model, name, new)
        hints[f"{name}.codes"] = ("symbols", {})
        hints[f"{name}.codebooks"] = "fp16" if config.fp16_codebooks else "raw"
        bits = new.pq_bits()
        err = ((new._rows() - rows).norm() / rows.norm().clamp(min=1e-12)).item()
        report.layers[name] = {"subspaces": books.shape[0], "centroids": k, "weights": rows.numel(),
                               "bits_per_weight": (bits["codes"] + bits["codebooks"]) / rows.numel(),
                               "relative_error": err}
        log.info("%s: PQ %d subspaces x %d codewords, relative error %.4f", name, books.shape[0], k, err)
    set_codec_hints(model, hints)
    return report


def round_codebooks(model: nn.Module) -> None:
    """Round every PQ layer's codewords to fp16 values again (after fine-tuning them)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, PQ_TYPES):
                m.codebooks.copy_(m.codebooks.half().float())


register_layer_record("pq", PQ_TYPES, _from_spec)
