"""E3 low-bit execution kernels: XNOR + popcount binary Linear, multiplication-free
ternary Linear, shift-and-add power-of-two Linear; E2 convolution algorithms: im2col + GEMM,
Winograd F(2x2, 3x3), FFT and MEC (pure PyTorch, CPU)."""

from nncompress.kernels.binary import BinaryLinear, pack_signs, popcount64, popcount_lut, xnor_dot
from nncompress.kernels.conv import (
    conv2d_fft,
    conv2d_im2col,
    conv2d_mec,
    conv2d_winograd,
    im2col_memory,
    mec_memory,
    winograd_f23_matrices,
)
from nncompress.kernels.shift import ShiftLinear, quantize_input, shift_add_matmul
from nncompress.kernels.ternary import TernaryLinear, ternary_matmul

__all__ = [
    "BinaryLinear",
    "ShiftLinear",
    "TernaryLinear",
    "pack_signs",
    "popcount64",
    "popcount_lut",
    "quantize_input",
    "shift_add_matmul",
    "ternary_matmul",
    "xnor_dot",
    "conv2d_fft",
    "conv2d_im2col",
    "conv2d_mec",
    "conv2d_winograd",
    "im2col_memory",
    "mec_memory",
    "winograd_f23_matrices",
]
