"""Distributed-training helpers: gradient compression hooks for DistributedDataParallel."""

from nncompress.distributed.terngrad import TernGradState, clip_by_sigma, ternarize, terngrad_hook

__all__ = ["TernGradState", "clip_by_sigma", "ternarize", "terngrad_hook"]
