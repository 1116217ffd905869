"""Distributed-training helpers: gradient compression hooks for DistributedDataParallel
(TernGrad Q14, 8-bit approximate gradients Q18)."""

from nncompress.distributed.grad8bit import (
    Grad8bitState,
    code_table,
    decode_8bit,
    encode_8bit,
    error_bound,
    grad8bit_hook,
)
from nncompress.distributed.terngrad import (
    TernGradState,
    clip_by_sigma,
    pack_ternary,
    ternarize,
    terngrad_hook,
    unpack_ternary,
)

__all__ = ["Grad8bitState", "code_table", "decode_8bit", "encode_8bit", "error_bound", "grad8bit_hook",
           "TernGradState", "clip_by_sigma", "pack_ternary", "ternarize", "terngrad_hook", "unpack_ternary"]
