"""E3 low-bit execution kernels: XNOR + popcount binary Linear, multiplication-free
ternary Linear, shift-and-add power-of-two Linear (pure PyTorch, CPU)."""

from nncompress.kernels.binary import BinaryLinear, pack_signs, popcount64, popcount_lut, xnor_dot
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
]
