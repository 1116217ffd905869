"""``method: pq`` (Q17, product quantization) as a quantizer: the chosen layers become PQ
layers (``nncompress.quantize.pq``); with the run's fine-tuning the codewords train with
the codes fixed and are rounded to fp16 again afterwards. The file stores codes and fp16
codebooks; the ``pq`` model record rebuilds the layers on load."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from nncompress.quantize.pq import PQConfig, product_quantize, round_codebooks
from nncompress.quantize.registry import (
    QuantizerConfig,
    QuantizeResult,
    QuantizeRun,
    register_quantizer,
)


@dataclass
class PQMethodConfig(PQConfig, QuantizerConfig):
    """Options of ``method: pq``: those of :class:`PQConfig` (``sub_dim``, ``centroids``,
    ``iters``, ``include``, ``exclude``, ``fp16_codebooks``, ``seed``).

    Example:
        >>> PQMethodConfig(sub_dim=2, centroids=16).training()
        'optional'
    """

    def training(self) -> str:
        return "optional"


@register_quantizer(PQMethodConfig, name="pq")
def quantize_pq(model: nn.Module, config: PQMethodConfig, run: QuantizeRun) -> QuantizeResult:
    """Product-quantize the chosen layers, fine-tune the codewords if the run says so.
    Summary: per layer subspaces, codewords, bits per weight, relative error."""
    report = product_quantize(model, config)
    run.mark("after_pq")
    if run.finetune is not None:
        run.fit(model, run.finetune)
        if config.fp16_codebooks:
            round_codebooks(model)
    return QuantizeResult(model, {"layers": report.layers})
