"""FFT convolution: the cross-correlation becomes a product in the frequency domain,
``Y[n, k] = IFFT(sum_c FFT(x[n, c]) * conj(FFT(w[k, c])))``.

The transform size is the zero-padded input size ``(H + 2ph, W + 2pw)`` and the kernel is
zero-padded to it: the circular correlation equals the linear one at every output
position ``y <= H + 2ph - KH`` (the window never wraps), which are exactly the outputs
kept. Strides subsample the stride-1 result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nncompress.kernels.conv._args import IntPair, add_bias, check_conv


def conv2d_fft(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
               groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` via ``torch.fft.rfft2``; any kernel size, stride and zero padding;
    ``dilation=1``, ``groups=1``.

    Example:
        >>> x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 5, 5)
        >>> torch.allclose(conv2d_fft(x, w, padding=2), F.conv2d(x, w, padding=2), atol=1e-4)
        True
    """
    (sh, sw), (ph, pw), (oh, ow) = check_conv(input, weight, bias, stride, padding, dilation, groups)
    xp = F.pad(input, (pw, pw, ph, ph))  # (N, C, Hp, Wp)
    size = xp.shape[-2:]
    xf = torch.fft.rfft2(xp, s=size)  # (N, C, Hp, Wp//2+1)
    wf = torch.fft.rfft2(weight, s=size)  # kernel zero-padded to (Hp, Wp): (OC, C, Hp, Wp//2+1)
    yf = torch.einsum("ncuv,kcuv->nkuv", xf, wf.conj())  # correlation = product with conj
    y = torch.fft.irfft2(yf, s=size)  # (N, OC, Hp, Wp), circular correlation
    y = y[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw]  # valid, strided outputs
    return add_bias(y.contiguous(), bias)
