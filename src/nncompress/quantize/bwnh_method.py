"""Binary weights via hashing (Q13, Hu et al. 2018) as a quantizer: ``bwnh_binarize`` fits
each chosen Linear/Conv layer's binary codes and per-filter scales to its inputs on the
first ``calib_images`` calibration images; the run's fine-tuning (optional) then trains the
binary network through BWN's straight-through estimator, and ``finalize`` freezes it
(1-bit signs plus one scale per filter in the file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from nncompress.errors import ConfigError
from nncompress.prune.targets import prunable_weights
from nncompress.quantize.api import finalize
from nncompress.quantize.bwnh import bwnh_binarize, bwnh_stats
from nncompress.quantize.registry import (
    QuantizerConfig,
    QuantizeResult,
    QuantizeRun,
    register_quantizer,
)


@dataclass
class BWNHConfig(QuantizerConfig):
    """Options of ``method: bwnh`` (Q13, binary weights via hashing).

    Example:
        >>> BWNHConfig(iters=3).training()
        'optional'
    """

    iters: int = 10
    """Coordinate-descent sweeps, >= 1."""
    sample: int | None = 16384
    """Input columns per layer used to fit (>= 1), or null: all."""
    calib_images: int = 1024
    """Images of the calibration pass (the first ones of the calibration data), >= 1."""
    sequential: bool = True
    """Fit each layer on the inputs of the already-binarised earlier layers (the paper's
    layer-wise scheme)."""
    include: list[str] | None = None
    """Glob patterns of the layers to binarise (default: every Linear/Conv layer)."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns of layers left alone."""

    def __post_init__(self) -> None:
        for key, value in (("iters", self.iters), ("calib_images", self.calib_images), ("sample", self.sample)):
            if value is None and key == "sample":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}={value!r} out of range; allowed: an integer >= 1"
                                  + (" or null (all columns)" if key == "sample" else ""))

    def training(self) -> str:
        return "optional"


def calibration_images(data: Any, n: int) -> torch.Tensor:
    """The first ``n`` inputs of a dataset (unshuffled), as one tensor."""
    x, _ = next(iter(DataLoader(data, batch_size=n, shuffle=False)))
    return x


@register_quantizer(BWNHConfig, name="bwnh")
def quantize_bwnh(model: nn.Module, config: BWNHConfig, run: QuantizeRun) -> QuantizeResult:
    """Binarise the chosen layers, fine-tune if the run says so, finalize. Summary: the
    layers and each one's relative output error under BWN and BWNH."""
    layers = [n[: -len(".weight")] for n in prunable_weights(model, config.include, config.exclude)]
    bwnh_binarize(model, calibration_images(run.calibration_data("bwnh"), config.calib_images), layers=layers,
                  iters=config.iters, sample=config.sample, sequential=config.sequential, seed=run.seed)
    stats = {n: s.relative() for n, s in bwnh_stats(model).items()}
    if run.finetune is not None:
        run.fit(model, run.finetune)
    finalize(model)
    run.mark("after_bwnh")
    params = {k: getattr(config, k) for k in ("iters", "sample", "calib_images", "sequential")}
    return QuantizeResult(model, {"layers": layers, "relative_error": stats, "params": params})
