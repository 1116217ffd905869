"""E2 convolution algorithms, each equal to ``torch.nn.functional.conv2d`` on what it
supports: im2col + GEMM, Winograd F(2x2, 3x3), FFT, and MEC (memory-efficient lowering)."""

from nncompress.kernels.conv.fft import conv2d_fft
from nncompress.kernels.conv.im2col import conv2d_im2col, im2col_memory
from nncompress.kernels.conv.mec import conv2d_mec, mec_memory
from nncompress.kernels.conv.winograd import conv2d_winograd, winograd_f23_matrices

__all__ = [
    "conv2d_fft",
    "conv2d_im2col",
    "conv2d_mec",
    "conv2d_winograd",
    "im2col_memory",
    "mec_memory",
    "winograd_f23_matrices",
]
