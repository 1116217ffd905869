"""Distributed-training helpers: gradient compression hooks for DistributedDataParallel."""

from nncompress.distributed.terngrad import (
    TernGradState,
    clip_by_sigma,
    pack_ternary,
    ternarize,
    terngrad_hook,
    unpack_ternary,
)

__all__ = ["TernGradState", "clip_by_sigma", "pack_ternary", "ternarize", "terngrad_hook", "unpack_ternary"]
