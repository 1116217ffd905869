"""The low-bit methods (Q3-Q12, every config of ``nncompress.quantize.methods.METHODS``) as
quantizers: wrap the layers (``quantize_``), calibrate the activation quantizers, train
(QAT, or INQ's partition steps), ``finalize`` to plain layers holding the packed values.

A method that trains uses the run's ``finetune`` settings, else 1 epoch of Adam at lr 1e-3
(cosine); a post-training one refuses them. With ``keep_zeros`` (default), weights that are
exactly zero (a pruned model) are held at zero during training; methods whose levels
contain 0 keep them zero after finalize.
"""

from __future__ import annotations

from dataclasses import asdict

from torch import nn

from nncompress.prune.mask import MaskCallback, Masks
from nncompress.quantize.api import calibrate, finalize, quantize_
from nncompress.quantize.inq import INQ
from nncompress.quantize.layers import is_quant_layer
from nncompress.quantize.methods import METHODS, INQConfig, QuantConfig
from nncompress.quantize.registry import QuantizeResult, QuantizeRun, register_quantizer
from nncompress.train.loop import TrainConfig


def default_train_config() -> TrainConfig:
    """QAT fine-tuning defaults: 1 epoch of Adam at lr 1e-3, cosine schedule."""
    return TrainConfig(epochs=1.0, lr=1e-3, optimizer="adam", lr_schedule="cosine")


def quantize_lowbit(model: nn.Module, config: QuantConfig, run: QuantizeRun) -> QuantizeResult:
    """Wrap, calibrate, train and finalize ``model`` with a low-bit ``config`` (in place).

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.quantize.methods import make_config
        >>> from nncompress.quantize.registry import quantize_model
        >>> g = torch.Generator().manual_seed(0)
        >>> train = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> res = quantize_model(build_model("lenet300"), make_config("twn"), QuantizeRun(train_data=train))
        >>> res.model.fc1.weight.unique().numel(), res.summary["params"]["per_channel"]  # -a, 0, +a per layer
        (3, False)
    """
    quantize_(model, config)
    names = [f"{n}.weight" for n, m in model.named_modules() if is_quant_layer(m) and m.wq is not None]
    if config.needs_calibration():
        calibrate(model, run.calibration_data(config.name), config.calib_batches)
    if config.needs_training():
        train = run.finetune or default_train_config()
        extra = []
        if config.keep_zeros:
            masks = Masks.from_zeros(model, names)
            if masks.total_sparsity() > 0:
                extra.append(MaskCallback(masks))
        if isinstance(config, INQConfig):
            inq = INQ(model)
            for frac in config.schedule:
                inq.step(frac)
                if frac < 1.0:
                    run.fit(model, train, [inq.callback(), *extra])
        else:
            run.fit(model, train, [*config.callbacks(model, names), *extra])
    finalize(model)
    run.mark(f"after_{config.name}")
    return QuantizeResult(model, {"params": asdict(config)})


for _name, _config in METHODS.items():
    register_quantizer(_config, name=_name)(quantize_lowbit)
