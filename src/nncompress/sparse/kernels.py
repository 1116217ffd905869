"""P7 sparse kernels: Linear and Conv2d with a CSR weight, as pure tensor functions.

Kernel choice (measured on torch 2.13 CPU / MKL, 4096x4096 at 95% sparsity, one thread):
``addmv`` (CSR matrix-vector) for one input row, ``addmm`` on the transposed input
(``W_csr @ x^T``, the MKL sparse-times-dense path) for a batch, both with int32 indices
(~1.3-2x faster than int64). ``F.linear(x, W_csr)`` (which also raises under ``torch.inference_mode`` in torch 2.13) and
COO ``torch.sparse.mm`` were slower, CSC catastrophically so. See ``benchmarks/sparse_exec.py``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

INT32_MAX = 2**31 - 1


def to_csr(weight2d: torch.Tensor) -> torch.Tensor:
    """CSR copy of a 2-D dense weight, int32 indices when they fit (faster MKL path).

    Example:
        >>> w = torch.tensor([[0., 2.], [3., 0.]])
        >>> to_csr(w).values().tolist(), to_csr(w).crow_indices().dtype
        ([2.0, 3.0], torch.int32)
    """
    if weight2d.dim() != 2:
        raise ValueError(f"to_csr needs a 2-D tensor, got shape {tuple(weight2d.shape)}")
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support.*")
        csr = weight2d.detach().to_sparse_csr()
        fits = max(weight2d.shape) <= INT32_MAX and csr.values().numel() <= INT32_MAX
        if fits:
            csr = torch.sparse_csr_tensor(
                csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32),
                csr.values(), size=weight2d.shape, check_invariants=False)
    return csr


def csr_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``y = x W^T + b`` with ``W`` a CSR tensor of shape (out, in); x of shape (..., in).

    Example:
        >>> w = torch.tensor([[0., 2.], [3., 0.]])
        >>> csr_linear(torch.tensor([[1., 1.]]), to_csr(w), torch.zeros(2)).tolist()
        [[2.0, 3.0]]
    """
    out_features, in_features = weight.shape
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)  # (N, in)
    if x2.shape[0] == 1:
        xv = x2[0]  # (in,)
        y = torch.addmv(bias, weight, xv) if bias is not None else torch.mv(weight, xv)
        y = y.unsqueeze(0)  # (1, out)
    elif bias is not None:
        y = torch.addmm(bias.unsqueeze(1), weight, x2.t()).t()  # (out, N) -> (N, out)
    else:
        y = torch.mm(weight, x2.t()).t()  # (N, out)
    return y.reshape(*lead, out_features)


def conv2d_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution along one axis (the formula of ``nn.Conv2d``)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def csr_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               kernel_size: tuple[int, int], stride: tuple[int, int] = (1, 1),
               padding: tuple[int, int] = (0, 0),
               dilation: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Conv2d (groups=1, zero padding) as im2col + CSR matmul.

    ``weight`` is the CSR form of the conv weight reshaped to (out, in * kh * kw); ``x`` is
    (B, C, H, W) or unbatched (C, H, W).

    Example:
        >>> conv = torch.nn.Conv2d(1, 2, 3)
        >>> x = torch.randn(1, 1, 5, 5)
        >>> y = csr_conv2d(x, to_csr(conv.weight.reshape(2, -1)), conv.bias, (3, 3))
        >>> torch.allclose(y, conv(x), atol=1e-6)
        True
    """
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    b, _, h, w = x.shape
    ho = conv2d_out_size(h, kernel_size[0], stride[0], padding[0], dilation[0])
    wo = conv2d_out_size(w, kernel_size[1], stride[1], padding[1], dilation[1])
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    # cols: (B, C*kh*kw, L) with L = ho * wo
    k, length = cols.shape[1], cols.shape[2]
    cols2 = cols.transpose(0, 1).reshape(k, b * length)  # (C*kh*kw, B*L)
    if bias is not None:
        y = torch.addmm(bias.unsqueeze(1), weight, cols2)  # (out, B*L)
    else:
        y = torch.mm(weight, cols2)  # (out, B*L)
    y = y.view(-1, b, ho, wo).transpose(0, 1).contiguous()  # (B, out, ho, wo)
    return y[0] if unbatched else y
