"""P7 inference modules holding a CSR weight: ``SparseLinear`` and ``SparseConv2d``.

Built from a pruned ``nn.Linear`` / ``nn.Conv2d``; inference only (the weight is a buffer,
not a parameter). ``threads`` optionally pins the sparse kernel to a thread count (see
``nncompress.sparse.threads``); ``to_dense()`` gives the equivalent dense module back.
"""

from __future__ import annotations

import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.sparse.kernels import csr_conv2d, csr_linear, to_csr
from nncompress.sparse.threads import check_threads, num_threads


class _CSRWeight(nn.Module):
    """Shared bookkeeping: CSR ``weight`` buffer, optional ``bias`` buffer, ``threads``."""

    def __init__(self, weight_csr: torch.Tensor, bias: torch.Tensor | None,
                 threads: int | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight_csr)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.threads = check_threads(threads)

    @property
    def nnz(self) -> int:
        """Number of stored (nonzero) weights."""
        return int(self.weight.values().numel())

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights."""
        rows, cols = self.weight.shape
        return 1.0 - self.nnz / max(rows * cols, 1)


class SparseLinear(_CSRWeight):
    """``y = x W^T + b`` with ``W`` stored as a CSR tensor (out, in).

    Example:
        >>> lin = nn.Linear(8, 4); lin.weight.data[:, :6] = 0
        >>> sp = SparseLinear.from_dense(lin)
        >>> x = torch.randn(2, 8); torch.allclose(sp(x), lin(x), atol=1e-6)
        True
    """

    def __init__(self, weight_csr: torch.Tensor, bias: torch.Tensor | None = None,
                 threads: int | None = None) -> None:
        super().__init__(weight_csr, bias, threads)
        self.out_features, self.in_features = weight_csr.shape

    @classmethod
    def from_dense(cls, linear: nn.Linear, threads: int | None = None) -> SparseLinear:
        """CSR copy of a (pruned) ``nn.Linear``; zeros in its weight are not stored."""
        if not isinstance(linear, nn.Linear):
            raise ConfigError(f"SparseLinear.from_dense needs nn.Linear, got {type(linear).__name__}")
        return cls(to_csr(linear.weight), linear.bias, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        with num_threads(self.threads):
            return csr_linear(x, self.weight, self.bias)

    def to_dense(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (same values, zeros filled in)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.weight.to_dense())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.nnz}, sparsity={self.sparsity:.3f}, threads={self.threads}")


def conv2d_unsupported(conv: nn.Conv2d) -> str | None:
    """Why a Conv2d cannot run as im2col + CSR matmul, or None when it can."""
    if conv.groups != 1:
        return f"groups={conv.groups} (only groups=1 supported)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (only 'zeros' supported)"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r} (only explicit integer padding supported)"
    return None


class SparseConv2d(_CSRWeight):
    """Conv2d as im2col (``F.unfold``) + CSR matmul; groups=1 and zero padding only.

    Example:
        >>> conv = nn.Conv2d(3, 8, 3, padding=1); conv.weight.data[:, :2] = 0
        >>> sp = SparseConv2d.from_dense(conv)
        >>> x = torch.randn(2, 3, 6, 6); torch.allclose(sp(x), conv(x), atol=1e-5)
        True
    """

    def __init__(self, weight_csr: torch.Tensor, bias: torch.Tensor | None,
                 in_channels: int, kernel_size: tuple[int, int], stride: tuple[int, int] = (1, 1),
                 padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1),
                 threads: int | None = None) -> None:
        super().__init__(weight_csr, bias, threads)
        self.out_channels = weight_csr.shape[0]
        self.in_channels = in_channels
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        expected = in_channels * self.kernel_size[0] * self.kernel_size[1]
        if weight_csr.shape[1] != expected:
            raise ConfigError(f"CSR weight has {weight_csr.shape[1]} columns, expected "
                              f"in_channels*kh*kw = {expected}")

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, threads: int | None = None) -> SparseConv2d:
        """CSR copy of a (pruned) ``nn.Conv2d``; raises ConfigError when unsupported."""
        if not isinstance(conv, nn.Conv2d):
            raise ConfigError(f"SparseConv2d.from_dense needs nn.Conv2d, got {type(conv).__name__}")
        why = conv2d_unsupported(conv)
        if why is not None:
            raise ConfigError(f"Conv2d not supported by SparseConv2d: {why}")
        w2 = conv.weight.reshape(conv.out_channels, -1)  # (out, in*kh*kw)
        return cls(to_csr(w2), conv.bias, conv.in_channels, conv.kernel_size, conv.stride,
                   conv.padding, conv.dilation, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, out, Ho, Wo)
        with num_threads(self.threads):
            return csr_conv2d(x, self.weight, self.bias, self.kernel_size, self.stride,
                              self.padding, self.dilation)

    def to_dense(self) -> nn.Conv2d:
        """The equivalent ``nn.Conv2d``."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         self.padding, self.dilation, bias=self.bias is not None,
                         device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.weight.to_dense().view_as(conv.weight))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, nnz={self.nnz}, "
                f"sparsity={self.sparsity:.3f}, threads={self.threads}")
