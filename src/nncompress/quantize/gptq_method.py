"""One-shot second-order compression as a quantizer: ``method: gptq`` (``GPTQConfig``).

Calibrates on ``run.calibration_data("gptq")`` (batches of ``batch_size``, a dataset's
``collate_fn`` used when it has one) and runs :func:`nncompress.quantize.oneshot.oneshot_compress`.
The file stores uniform grids with the ``gptq`` codec (``quantize.gptq_codec``) and k-means
grids with ``deep``; both decode to exactly the simulated weights. With the k-means grid
the method fine-tunes the centroids when the run has ``finetune`` (``CentroidFineTuner``:
a centroid's gradient is the sum of its members', stepped as ``centroid_step`` says).

This registration lives in ``oneshot`` (not in ``quantize/``) because ``oneshot`` builds on
``quantize`` (k-means, ``SharedWeights``); a quantize module importing ``oneshot`` would be
a package cycle. ``import nncompress.quantize.oneshot`` registers the method.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.utils.data import DataLoader

from nncompress.checks import check_choice, check_float, check_int
from nncompress.quantize.oneshot.api import OneShotConfig, oneshot_compress
from nncompress.quantize.registry import (
    QuantizerConfig,
    QuantizeResult,
    QuantizeRun,
    register_quantizer,
)
from nncompress.quantize.sharing import CENTROID_STEPS, CentroidFineTuner


@dataclass
class GPTQConfig(OneShotConfig, QuantizerConfig):
    """Options of ``method: gptq``: those of :class:`OneShotConfig` (4 bits by default) and
    the calibration batch size.

    Example:
        >>> GPTQConfig(bits=3, group_size=64).training()
        'never'
    """

    bits: int | None = 4
    """Bits per weight of the quantization grid, 2..8 (None: sparsity only)."""
    batch_size: int = 32
    """Calibration samples per forward pass."""
    centroid_lr: float | None = None
    """k-means grid: learning rate of the centroids during the run's fine-tuning (default: its lr)."""
    centroid_step: str = "mean"
    """k-means grid: centroid update of the fine-tuning, ``mean`` (each centroid moves by
    ``centroid_lr`` times its weights' mean gradient) or ``sum`` (the summed gradient, whose
    step grows with the cluster); as ``method: kmeans``'s ``centroid_step``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.batch_size = check_int(self.batch_size, "batch_size", 1)
        if self.centroid_lr is not None:
            self.centroid_lr = check_float(self.centroid_lr, "centroid_lr", 0, None, lo_open=True)
        check_choice(self.centroid_step, CENTROID_STEPS, "centroid_step")

    def training(self) -> str:
        return "optional" if self.grid == "kmeans" and self.bits is not None else "never"


@register_quantizer(GPTQConfig, name="gptq")
def quantize_gptq(model: nn.Module, config: GPTQConfig, run: QuantizeRun) -> QuantizeResult:
    """One-shot compression of the model in place; summary: per-layer errors (OBS vs
    round-to-nearest) and the pass's figures."""
    data = run.calibration_data("gptq")
    loader = data if isinstance(data, DataLoader) else DataLoader(
        data, batch_size=config.batch_size, collate_fn=getattr(data, "collate_fn", None))
    result = oneshot_compress(model, config, loader)
    run.mark("after_gptq")
    if run.finetune is not None and result.shared is not None:
        lr = config.centroid_lr if config.centroid_lr is not None else run.finetune.lr
        run.fit(model, run.finetune, [CentroidFineTuner(result.shared, lr, step=config.centroid_step)])
        result.shared.round_codebooks(model)
    summary = {k: v for k, v in result.summary.items() if k != "config"}
    return QuantizeResult(model, {**summary, "errors": result.errors})
