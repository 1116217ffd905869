"""HashedNets (Q13, Chen et al. 2015): weight sharing by a hash of the weight position.

A layer's virtual weight ``V`` (``out x in`` for a Linear, ``out x in x kh x kw`` for a
conv) takes ``V[p] = w[h(p)] * xi(p)`` for its flat position ``p = i * n + j`` from a small
real vector ``w`` of ``K`` buckets; ``xi(p)`` in ``{-1, +1}`` is an optional sign hash. The
virtual weight is built by indexing, so autograd gives ``dL/dw_k = sum_{p: h(p)=k}
xi(p) dL/dV_p``. Compression factor of the weights: ``numel(V) / K``.

``h`` and ``xi`` are a seeded multiply-xorshift mix of ``p`` in 32-bit integer arithmetic
(on int64 tensors, no overflow), so the index is fully determined by ``(shape, K, seed)``:
a saved hashed layer needs only its ``K`` bucket values, its bias and the seed (the index
and sign buffers are not persistent; ``state_dict`` holds ``weight`` (K,), ``bias`` and
``hash_seed``). ``nncompress.save`` stores that state dict as it is; ``hash_model`` on a built-in model
records its hashed layers in the architecture (``nncompress.quantize.hashed_arch``), so its
file loads back without a skeleton.

BWNH (hashing for binary weights, the other half of Q13) is ``nncompress.quantize.bwnh``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.errors import ConfigError

_MASK = 0xFFFFFFFF
_MUL = 0x45D9F3B
_GOLDEN = 0x9E3779B9
_SIGN_SALT = 0x5BD1E995


def mix32(p: torch.Tensor, seed: int) -> torch.Tensor:
    """Seeded 32-bit multiply-xorshift hash of int64 positions (values in ``[0, 2^32)``).

    Example:
        >>> torch.equal(mix32(torch.arange(5), 1), mix32(torch.arange(5), 1))
        True
    """
    x = (p.to(torch.int64) + (seed * _GOLDEN + 0x7F4A7C15)) & _MASK
    x = x ^ (x >> 16)
    x = (x * _MUL) & _MASK  # < 2^32 * 2^27: fits in int64
    x = x ^ (x >> 16)
    x = (x * _MUL) & _MASK
    return x ^ (x >> 16)


def hash_index(numel: int, buckets: int, seed: int) -> torch.Tensor:
    """Bucket ``h(p) = mix32(p, seed) mod K`` of every flat position ``p < numel`` (int64).

    Example:
        >>> idx = hash_index(12, 3, seed=0)
        >>> idx.shape, int(idx.min()) >= 0, int(idx.max()) < 3
        (torch.Size([12]), True, True)
    """
    check_buckets(buckets, numel)
    return mix32(torch.arange(numel), seed) % buckets


def hash_sign(numel: int, seed: int) -> torch.Tensor:
    """Sign hash ``xi(p)`` in ``{-1., +1.}`` (float32), independent of :func:`hash_index`.

    Example:
        >>> set(hash_sign(100, 0).tolist()) == {-1.0, 1.0}
        True
    """
    return (mix32(torch.arange(numel), seed ^ _SIGN_SALT) & 1).to(torch.float32) * 2 - 1


def check_buckets(buckets: int, numel: int) -> int:
    """Raise ``ConfigError`` unless ``1 <= buckets <= numel``."""
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= numel:
        raise ConfigError(f"buckets={buckets!r} is not allowed; use an int in [1, {numel}] "
                          f"(the layer's number of virtual weights)")
    return buckets


def bucket_average(weight: torch.Tensor, index: torch.Tensor, sign: torch.Tensor,
                   buckets: int) -> torch.Tensor:
    """Least-squares buckets for a given dense weight: ``w_k = mean_{h(p)=k} W_p xi(p)``
    (empty buckets get 0).

    Example:
        >>> bucket_average(torch.tensor([1., 3., -2.]), torch.tensor([0, 0, 1]),
        ...                torch.tensor([1., 1., -1.]), 2).tolist()
        [2.0, 2.0]
    """
    w = weight.detach().reshape(-1).to(torch.float64) * sign.to(torch.float64)
    sums = torch.zeros(buckets, dtype=torch.float64).index_add_(0, index, w)
    counts = torch.bincount(index, minlength=buckets).to(torch.float64)
    return (sums / counts.clamp_min(1)).to(weight.dtype)


def _rehash_after_load(module: nn.Module, incompatible_keys) -> None:
    """After ``load_state_dict``: the loaded ``hash_seed`` decides the index and sign."""
    seed = int(module.hash_seed)
    if seed != module.seed:
        numel = module.index.numel()
        module.seed = seed
        module.index = hash_index(numel, module.buckets, seed).to(module.index.device)
        if module.sign_hash:
            module.sign = hash_sign(numel, seed).to(module.sign)


class _HashedWeight(nn.Module):
    """Holds ``weight`` (K buckets), the seed and the non-persistent index/sign buffers."""

    def _init_hash(self, shape: tuple[int, ...], buckets: int, seed: int, sign_hash: bool) -> None:
        numel = math.prod(shape)
        check_buckets(buckets, numel)
        self.virtual_shape = tuple(shape)
        self.buckets, self.seed, self.sign_hash = buckets, int(seed), bool(sign_hash)
        self.register_buffer("hash_seed", torch.tensor(int(seed), dtype=torch.int64))
        self.register_buffer("index", hash_index(numel, buckets, seed), persistent=False)
        sign = hash_sign(numel, seed) if sign_hash else torch.ones(numel)
        self.register_buffer("sign", sign, persistent=False)
        self.register_load_state_dict_post_hook(_rehash_after_load)
        fan_in = math.prod(shape[1:])
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.empty(buckets).uniform_(-bound, bound))

    def virtual_weight(self) -> torch.Tensor:
        """``V = w[h] * xi`` in the layer's dense shape (differentiable in ``w``)."""
        return (self.weight[self.index] * self.sign.to(self.weight.dtype)).view(self.virtual_shape)

    def load_dense(self, weight: torch.Tensor) -> None:
        """Set the buckets to the sign-corrected average of a dense weight of this shape."""
        if tuple(weight.shape) != self.virtual_shape:
            raise ConfigError(f"dense weight of shape {tuple(weight.shape)} does not match the "
                              f"virtual shape {self.virtual_shape}")
        with torch.no_grad():
            self.weight.copy_(bucket_average(weight, self.index, self.sign, self.buckets))

    def compression(self) -> float:
        """``numel(V) / K``."""
        return math.prod(self.virtual_shape) / self.buckets


class HashedLinear(_HashedWeight):
    """A Linear layer whose ``out x in`` weight is hashed into ``buckets`` shared values.

    Example:
        >>> layer = HashedLinear(20, 10, buckets=25, seed=0)
        >>> layer(torch.randn(4, 20)).shape, layer.weight.numel()
        (torch.Size([4, 10]), 25)
    """

    def __init__(self, in_features: int, out_features: int, buckets: int, seed: int = 0,
                 sign_hash: bool = True, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_hash((out_features, in_features), buckets, seed, sign_hash)
        bound = 1.0 / math.sqrt(in_features)
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.virtual_weight(), self.bias)  # (B, out)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"buckets={self.buckets}, seed={self.seed}, sign_hash={self.sign_hash}")


class HashedConv2d(_HashedWeight):
    """A Conv2d (groups=1) whose ``out x in x kh x kw`` weight is hashed into ``buckets``.

    Example:
        >>> conv = HashedConv2d(3, 8, 3, buckets=20, padding=1)
        >>> conv(torch.randn(2, 3, 6, 6)).shape
        torch.Size([2, 8, 6, 6])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 buckets: int, seed: int = 0, sign_hash: bool = True, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.stride, self.padding = stride, padding
        self._init_hash((out_channels, in_channels, kh, kw), buckets, seed, sign_hash)
        bound = 1.0 / math.sqrt(in_channels * kh * kw)
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.virtual_weight(), self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"shape={self.virtual_shape}, buckets={self.buckets}, seed={self.seed}"


def hashed_from_linear(linear: nn.Linear, buckets: int, seed: int = 0,
                       sign_hash: bool = True) -> HashedLinear:
    """A :class:`HashedLinear` initialised from ``linear`` by bucket averaging (bias copied).

    Example:
        >>> h = hashed_from_linear(nn.Linear(8, 4), buckets=8)
        >>> h.weight.shape
        torch.Size([8])
    """
    layer = HashedLinear(linear.in_features, linear.out_features, buckets, seed, sign_hash,
                         bias=linear.bias is not None)
    layer = layer.to(device=linear.weight.device, dtype=linear.weight.dtype)
    layer.load_dense(linear.weight)
    if linear.bias is not None:
        with torch.no_grad():
            layer.bias.copy_(linear.bias)
    return layer
