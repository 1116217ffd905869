"""The low-bit quantization primitives: ``quantize_`` (wrap for QAT / calibration),
``calibrate`` and ``finalize`` (plain layers holding exactly the packed values).
``quantize_model`` (a whole method, any quantizer) is ``nncompress.quantize.registry``'s,
importable from here too; the low-bit methods' handler is
``nncompress.quantize.lowbit_method``.

After ``finalize`` the model is made of plain ``nn.Linear`` / ``nn.Conv2d`` modules with
unchanged state-dict keys; its weights are the decoded packed values (bit-identical to
what ``nncompress.load`` returns), codec hints tell ``nncompress.save`` to store the real
bits, and activation quantizers (if any) run as forward pre-hooks described by
``activation_spec(model)`` (JSON; ``apply_activation_spec`` re-attaches them to a loaded
model).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nncompress.errors import ConfigError
from nncompress.format.records import ModelRecord, RestoreContext, register_record
from nncompress.quantize.activations import ActQuantizer, make_activation
from nncompress.quantize.layers import QUANT_LAYERS, is_quant_layer, set_submodule
from nncompress.quantize.methods import LayerInfo, QuantConfig
from nncompress.quantize.packing import FORMATS, roundtrip
from nncompress.quantize.registry import quantize_model  # noqa: F401  (its former home)
from nncompress.state import model_state, read_state

log = logging.getLogger(__name__)



def quantizable_layers(
    model: nn.Module, config: QuantConfig, filter_fn: Callable[[str, nn.Module], bool] | None = None
) -> list[LayerInfo]:
    """Linear / Conv2d layers the config applies to, in registration order.

    Example:
        >>> from nncompress.models import build_model
        >>> from nncompress.quantize.methods import make_config
        >>> [l.name for l in quantizable_layers(build_model("lenet5"), make_config("xnor"))]
        ['conv2', 'fc1']
    """
    all_layers = [(n, m) for n, m in model.named_modules() if type(m) in QUANT_LAYERS]
    count = len(all_layers)
    out = []
    for i, (n, m) in enumerate(all_layers):
        if config.skip_first_last and i in (0, count - 1):
            continue
        if any(fnmatch.fnmatch(n, p) for p in config.exclude):
            continue
        if filter_fn is not None and not filter_fn(n, m):
            continue
        out.append(LayerInfo(n, m, i, count))
    return out


def quantize_(
    model: nn.Module, config: QuantConfig, filter_fn: Callable[[str, nn.Module], bool] | None = None
) -> nn.Module:
    """Replace the config's layers by fake-quantizing ``QuantLinear`` / ``QuantConv2d``
    (in place; returns ``model``). State-dict keys of the weights do not change.

    Example:
        >>> from nncompress.models import build_model
        >>> from nncompress.quantize.methods import make_config
        >>> type(quantize_(build_model("lenet300"), make_config("twn")).fc1).__name__
        'QuantLinear'
    """
    layers = quantizable_layers(model, config, filter_fn)
    if not layers:
        raise ConfigError(
            f"method {config.name!r} found no Linear/Conv2d layer to quantize "
            f"(skip_first_last={config.skip_first_last}, exclude={config.exclude})"
        )
    for layer in layers:
        wq = config.weight_quantizer(layer)
        aq = config.act_quantizer(layer)
        new = QUANT_LAYERS[type(layer.module)].from_float(layer.module, wq, aq, config.grad_bits())
        set_submodule(model, layer.name, new)
    log.info("quantize_: %s on %d layers", config.name, len(layers))
    return model


def _act_quantizers(model: nn.Module) -> list[ActQuantizer]:
    return [m.aq for m in model.modules() if is_quant_layer(m) and m.aq is not None]


@torch.no_grad()
def calibrate(
    model: nn.Module, data: Dataset | DataLoader, batches: int = 8, batch_size: int = 256
) -> None:
    """Record the input range of every activation quantizer over ``batches`` batches.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.quantize.methods import make_config
        >>> g = torch.Generator().manual_seed(0)
        >>> train_set = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> model = quantize_(build_model("lenet300"), make_config("int8"))
        >>> calibrate(model, train_set, batches=2)
        >>> round(model.fc1.aq.lo, 2), round(model.fc1.aq.hi, 2)  # fc1's input is the data
        (-4.34, 4.56)
    """
    aqs = _act_quantizers(model)
    if not aqs:
        return
    loader = (
        data
        if isinstance(data, DataLoader)
        else DataLoader(data, batch_size=batch_size, shuffle=False)
    )
    was = model.training
    model.eval()
    for aq in aqs:
        aq.calibrating = True
    try:
        device = next(model.parameters()).device
        for i, (x, _) in enumerate(loader):
            if i >= batches:
                break
            model(x.to(device))
    finally:
        for aq in aqs:
            aq.calibrating = False
        model.train(was)


def _exact(fmt: str, q: torch.Tensor, params: dict[str, Any], name: str) -> torch.Tensor:
    if fmt not in FORMATS:  # fp16 / bf16: the lead's cast codecs; values already exact
        return q
    exact, _ = roundtrip(fmt, q, params)
    again, _ = roundtrip(fmt, exact, params)
    if not torch.equal(again, exact):
        raise RuntimeError(f"{name}: packing {fmt!r} is not idempotent; cannot finalize exactly")
    return exact


def finalize(model: nn.Module) -> nn.Module:
    """Replace every QAT layer by a plain one holding the exact packed weight values, set
    codec hints for ``nncompress.save`` and attach activation quantizers as hooks.

    Example:
        >>> from nncompress.models import build_model
        >>> from nncompress.quantize.methods import make_config
        >>> model = finalize(quantize_(build_model("lenet300"), make_config("twn")))
        >>> type(model.fc1).__name__, model.fc1.weight[0].unique().numel()  # ternary: -a, 0, +a
        ('Linear', 3)
    """
    hints: dict[str, Any] = {}
    specs = dict(read_state(model).activations)
    summary = dict(read_state(model).quant_summary)
    for name, mod in list(model.named_modules()):
        if not is_quant_layer(mod):
            continue
        weight = mod.weight.detach()
        if mod.wq is not None:
            q, (fmt, params) = mod.wq.quantize(mod.weight)
            weight = _exact(fmt, q.to(torch.float32).cpu(), params, name)
            hints[f"{name}.weight"] = (fmt, params)
            summary[name] = {"format": fmt, "bits": float(mod.wq.bits)}
        if mod.aq is not None:
            specs[name] = mod.aq.spec()
            summary.setdefault(name, {})["act_bits"] = float(mod.aq.bits)
        set_submodule(model, name, mod.to_float(weight))
    if hints:
        from nncompress.format import set_codec_hints
        from nncompress.quantize import codecs  # noqa: F401  (registers the codecs)

        set_codec_hints(model, hints)
    model_state(model, create=True).quant_summary = summary
    apply_activation_spec(model, specs)
    return model


def activation_spec(model: nn.Module) -> dict[str, dict[str, Any]]:
    """JSON description of the activation quantizers of a finalized model
    (layer name -> spec); empty when it has none.

    Example:
        >>> from nncompress.models import build_model
        >>> from nncompress.quantize.methods import make_config
        >>> activation_spec(finalize(quantize_(build_model("lenet5"), make_config("xnor"))))
        {'conv2': {'kind': 'xnor'}, 'fc1': {'kind': 'xnor'}}
    """
    return dict(read_state(model).activations)


def _quantizable(mod: nn.Module | None) -> bool:
    """A layer that can carry an input quantizer: Linear/Conv (or a subclass / a layer with
    a weight of its own, such as a hashed layer)."""
    if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return True
    return mod is not None and next(mod.children(), None) is None and \
        isinstance(getattr(mod, "weight", None), torch.Tensor) and not isinstance(mod, nn.modules.batchnorm._NormBase)


def apply_activation_spec(model: nn.Module, spec: dict[str, dict[str, Any]]) -> nn.Module:
    """(Re-)attach input quantizers to plain layers as forward pre-hooks (replacing any
    attached before); ``spec`` comes from ``activation_spec``. Returns ``model``.

    Example:
        >>> from nncompress.models import build_model
        >>> spec = {"fc2": {"kind": "affine", "bits": 8, "lo": 0.0, "hi": 2.5}}
        >>> model = apply_activation_spec(build_model("lenet300"), spec)
        >>> activation_spec(model) == spec
        True
    """
    for handle in read_state(model).activation_hooks:
        handle.remove()
    handles = []
    layers = dict(model.named_modules())
    for name, s in spec.items():
        aq = make_activation(s)
        mod = layers.get(name)
        if not _quantizable(mod):
            raise ConfigError(f"activation spec names layer {str(name)[:80]!r}, which is not a "
                              "Linear or Conv layer of the model")
        handles.append(
            mod.register_forward_pre_hook(lambda m, args, aq=aq: (aq(args[0]), *args[1:]))
        )
    state = model_state(model, create=True)
    state.activation_hooks, state.activations = handles, dict(spec)
    return model


def quant_summary(model: nn.Module) -> dict[str, dict[str, float | str]]:
    """Per finalized layer: packing format, nominal weight bits, activation bits.

    Example:
        >>> from nncompress.models import build_model
        >>> from nncompress.quantize.methods import make_config
        >>> quant_summary(finalize(quantize_(build_model("lenet300"), make_config("twn"))))["fc1"]
        {'format': 'lut', 'bits': 2.0}
    """
    return dict(read_state(model).quant_summary)


def _restore_record(model: nn.Module, spec: Any, ctx: RestoreContext) -> None:
    """The ``activations`` record of a file -> input quantizers re-attached (validated)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"activation record {str(spec)[:80]} is not an object")
    apply_activation_spec(model, spec)


register_record(ModelRecord("activations", capture=activation_spec, restore=_restore_record,
                            phase="behaviour", order=0, kind=dict))
