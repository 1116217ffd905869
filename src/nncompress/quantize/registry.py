"""Quantization, one verb: ``quantize_model(model, config, run)`` dispatches on the type of
``config`` to the handler its quantizer registered (torchao's ``quantize_`` pattern).

Every quantizer is a config dataclass (a ``QuantizerConfig``) and one handler::

    @register_quantizer(MyConfig, name="mine")
    def _mine(model: nn.Module, config: MyConfig, run: QuantizeRun) -> QuantizeResult: ...

``run`` (a :class:`QuantizeRun`) carries what is not the method's own: training and
calibration data, fine-tuning settings, the loss (or a distillation loss), extra training
callbacks, masks of pruned weights, progress and seed. A handler trains only through
``run.fit``, so fine-tuning, distillation and pruned zeros work the same for every method.
The recipe stage ``quantize`` maps ``method: <name>`` to the config class registered under
that name and every other key to the config's fields (the config validates them), plus
the run keys ``finetune`` and ``distill``; it knows no quantizer by name.

Adding a quantizer (one new file in ``quantize/`` plus its tests; ``recipes/`` and
``format/`` untouched):

1. ``quantize/<name>_method.py``: a ``@dataclass`` subclass of :class:`QuantizerConfig`
   whose fields are the method's options (typed: a recipe's values are checked against
   the annotations) and whose ``__post_init__`` raises ``ConfigError`` naming the field,
   the value and what is allowed; ``training()`` returns ``"never"`` (post-training: a
   recipe's ``finetune``/``distill`` are refused), ``"optional"`` (fine-tunes when the run
   has ``finetune``) or ``"always"`` (trains, with its own default settings when none).
2. In that file, the handler registered with ``@register_quantizer(Config, name=...)``:
   change the model in place, train with ``run.fit(model, settings, callbacks)``,
   calibrate on ``run.calibration_data(name)``, call ``run.mark("after_<step>")`` at
   milestones (the recipe keeps the weights there), return ``QuantizeResult(model,
   summary)`` with a JSON-able summary for the report.
3. What must survive a file round trip goes through ``format``'s plug-in points from that
   file: packed values as codec hints (``nncompress.format.set_codec_hints``) for a
   registered codec, changed modules as a model record or an architecture. ``load`` finds
   them through the ``nncompress.quantize`` package (``format.records.PLUGIN_MODULES``
   names modules of it, and importing one imports the package).
4. Import the file in ``quantize/__init__.py`` (the built-in list, in the order of the
   recipe's "allowed" message) so that ``method: <name>`` works in every process.
5. Tests: the config's bad values (messages), the handler on a tiny model, a recipe with
   ``method: <name>`` through ``parse_recipe`` and the stage, a save/load round trip.
   ``tests/test_quant_registry.py`` registers a tiny quantizer in the test file and runs it
   through the recipe stage: a template.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import torch
from torch import nn
from torch.utils.data import Dataset

from nncompress.errors import ConfigError
from nncompress.prune.mask import MaskCallback, Masks
from nncompress.train.callbacks import Callback
from nncompress.train.loop import History, TrainConfig, fit

log = logging.getLogger(__name__)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
TRAINING = ("never", "optional", "always")
C = TypeVar("C", bound="QuantizerConfig")


@dataclass
class QuantizerConfig:
    """Base of every quantizer config (torchao's ``AOBaseConfig``): a dataclass of the
    method's options, registered with :func:`register_quantizer`."""

    def training(self) -> str:
        """How the method uses the run's fine-tuning settings: ``"never"`` (post-training),
        ``"optional"`` (fine-tunes when given them) or ``"always"`` (trains; its own
        defaults when given none)."""
        return "never"


@dataclass
class QuantizeRun:
    """What a quantizer may use besides its config; the same for every method.

    ``finetune``: training settings (``None``: no fine-tuning, or the method's default when
    it always trains); ``loss_fn(logits, y, x)`` replaces cross-entropy; ``distill(train)``
    builds a teacher loss for those settings when training starts (after the method has
    replaced its layers), used instead of ``loss_fn``; ``callbacks`` join every training;
    ``masks``: pruned weights held at zero during training (entries of tensors the method
    replaced or reshaped are dropped); ``snapshot(label)`` is called at the method's
    milestones; ``seed`` seeds the method's own randomness (k-means, hashing, sampling).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.quantize.kmeans_method import KMeansConfig
        >>> from nncompress.train import TrainConfig
        >>> g = torch.Generator().manual_seed(0)
        >>> train = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> run = QuantizeRun(train_data=train, finetune=TrainConfig(epochs=1))
        >>> layers = quantize_model(build_model("lenet300"), KMeansConfig(bits_fc=4), run).summary["layers"]
        >>> layers["fc1.weight"]["bits"], layers["fc1.weight"]["codebook_size"]
        (4.0, 16.0)
    """

    train_data: Dataset | None = None
    calib_data: Dataset | None = None
    finetune: TrainConfig | None = None
    loss_fn: LossFn | None = None
    distill: Callable[[TrainConfig], LossFn | None] | None = None
    callbacks: list[Callback] = field(default_factory=list)
    masks: Masks | None = None
    progress: bool = False
    seed: int = 0
    snapshot: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.loss_fn is not None and self.distill is not None:
            raise ConfigError("QuantizeRun: give loss_fn or distill, not both (distill builds the loss)")

    def fit(self, model: nn.Module, train: TrainConfig, callbacks: Sequence[Callback] = ()) -> History:
        """Train ``model`` on ``train_data`` under ``train`` with the method's ``callbacks``,
        then the masks' and the run's, and the run's loss (distillation if any)."""
        extra = []
        if self.masks is not None:
            params = dict(model.named_parameters())
            kept = {n: m for n, m in self.masks.items() if n in params and params[n].shape == m.shape}
            if kept:
                extra.append(MaskCallback(Masks(kept)))
        loss_fn = self.distill(train) if self.distill is not None else self.loss_fn
        return fit(model, self.train_data, train, callbacks=[*callbacks, *extra, *self.callbacks],
                   loss_fn=loss_fn, progress=self.progress)

    def calibration_data(self, method: str) -> Dataset:
        """``calib_data``, else ``train_data``; ``ConfigError`` when the run has neither."""
        data = self.calib_data if self.calib_data is not None else self.train_data
        if data is None:
            raise ConfigError(f"method {method!r} calibrates on data and needs calib_data (or train_data)")
        return data

    def mark(self, label: str) -> None:
        """A milestone of the method (``snapshot`` hook)."""
        if self.snapshot is not None:
            self.snapshot(label)


@dataclass
class QuantizeResult:
    """A handler's answer: the quantized model (the one given, changed in place) and a
    JSON-able summary for reports."""

    model: nn.Module
    summary: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[nn.Module, Any, QuantizeRun], QuantizeResult]


@dataclass(frozen=True)
class QuantizerSpec:
    name: str
    config: type
    handler: Handler


class QuantizerRegistry:
    """Method name <-> config type -> handler; ``QUANTIZERS`` is the default instance."""

    def __init__(self) -> None:
        self._by_name: dict[str, QuantizerSpec] = {}

    def register(self, config: type, name: str) -> Callable[[Handler], Handler]:
        """Decorator: ``handler`` quantizes with ``config`` instances; ``name`` is the
        recipe's ``method``. Registering a name again replaces it."""
        if not (isinstance(config, type) and issubclass(config, QuantizerConfig) and dataclasses.is_dataclass(config)):
            raise TypeError(f"quantizer {name!r}: {config!r} is not a dataclass subclass of QuantizerConfig")
        if not isinstance(name, str) or not name:
            raise TypeError(f"quantizer name {name!r} must be a non-empty string")
        taken = next((s.name for s in self._by_name.values() if s.config is config and s.name != name), None)
        if taken is not None:
            raise ConfigError(f"{config.__name__} is already the config of quantizer {taken!r}; "
                              f"a config type has one name")

        def deco(handler):
            self._by_name[name] = QuantizerSpec(name, config, handler)
            return handler
        return deco

    def unregister(self, name: str) -> None:
        """Remove a quantizer (tests registering their own)."""
        self._by_name.pop(name, None)

    def names(self) -> list[str]:
        """Method names in registration order."""
        return list(self._by_name)

    def configs(self) -> list[type]:
        """Config types in registration order."""
        return [s.config for s in self._by_name.values()]

    def get(self, name: str) -> QuantizerSpec:
        """The quantizer of a method name; ``ConfigError`` naming the allowed ones."""
        if name not in self._by_name:
            raise ConfigError(f"unknown method {name!r}; allowed: {self.names()}")
        return self._by_name[name]

    def of(self, config: Any) -> QuantizerSpec:
        """The quantizer of a config instance (its type or the nearest registered base)."""
        by_type = {s.config: s for s in self._by_name.values()}
        for t in type(config).__mro__:
            if t in by_type:
                return by_type[t]
        raise ConfigError(f"no quantizer is registered for {type(config).__name__}; registered configs: "
                          f"{[t.__name__ for t in by_type]}")


QUANTIZERS = QuantizerRegistry()
register_quantizer = QUANTIZERS.register


def build_config(cls: type[C], method: str, params: Mapping[str, Any] | None = None) -> C:
    """``cls(**params)`` with unknown keys refused by name (no type coercion: recipes check
    types against the annotations first).

    Example:
        >>> build_config(QuantizerConfig, "none", {}).training()
        'never'
    """
    params = dict(params or {})
    allowed = sorted(f.name for f in dataclasses.fields(cls) if f.init)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown} for method {method!r}; allowed: {allowed}")
    return cls(**params)


def check_training(method: str, config: QuantizerConfig, *, finetune: bool, distill: bool) -> str:
    """Whether fine-tuning settings (``finetune``) and distillation fit the method; returns
    its ``training()`` mode. ``ConfigError`` for settings a post-training method would
    ignore, or distillation when nothing trains."""
    mode = config.training()
    if mode not in TRAINING:
        raise ConfigError(f"method {method!r}: training() returned {mode!r}; allowed: {list(TRAINING)}")
    if mode == "never" and (finetune or distill):
        raise ConfigError(f"method {method!r} does not train (post-training): 'finetune' and 'distill' are not "
                          f"allowed; train the model before quantizing")
    if mode == "optional" and distill and not finetune:
        raise ConfigError(f"method {method!r}: 'distill' acts during training; add a 'finetune' block")
    return mode


@overload
def quantize_model(model: nn.Module, config: QuantizerConfig, run: QuantizeRun | None = None) -> QuantizeResult: ...


@overload
def quantize_model(model: nn.Module, config: str, run: Mapping[str, Any] | None = None, *,
                   train_data: Dataset | None = None, calib_data: Dataset | None = None,
                   train_cfg: TrainConfig | None = None, keep_zeros: bool | None = None,
                   calib_batches: int | None = None) -> nn.Module: ...


def quantize_model(model, config, run=None, **legacy):
    """Quantize ``model`` in place with the quantizer registered for ``type(config)``;
    returns its :class:`QuantizeResult`.

    Compatibility: ``quantize_model(model, "twn", params, train_data=, calib_data=,
    train_cfg=, keep_zeros=, calib_batches=)`` (the low-bit call of before; any registered
    method name works) builds the config from ``params`` and returns the model.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.quantize.methods import make_config
        >>> g = torch.Generator().manual_seed(0)
        >>> train = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> result = quantize_model(build_model("lenet300"), make_config("twn"), QuantizeRun(train_data=train))
        >>> model = quantize_model(build_model("lenet300"), "twn", train_data=train)  # the keyword form
        >>> result.model.fc1.weight[0].unique().numel(), model.fc1.weight[0].unique().numel()  # -a, 0, +a
        (3, 3)
    """
    if isinstance(config, str):
        return _by_name(model, config, legacy.pop("params", run), **legacy).model
    if legacy:
        raise TypeError(f"quantize_model: keywords {sorted(legacy)} go with a method name; put them in the "
                        f"config or the QuantizeRun")
    run = run if run is not None else QuantizeRun()
    spec = QUANTIZERS.of(config)
    mode = check_training(spec.name, config, finetune=run.finetune is not None, distill=run.distill is not None)
    if (mode == "always" or (mode == "optional" and run.finetune is not None)) and run.train_data is None:
        raise ConfigError(f"method {spec.name!r} trains and needs train_data")
    log.info("quantize_model: %s", spec.name)
    return spec.handler(model, config, run)


def _by_name(model: nn.Module, method: str, params: Mapping[str, Any] | None, *,
             train_data: Dataset | None = None, calib_data: Dataset | None = None,
             train_cfg: TrainConfig | None = None, keep_zeros: bool | None = None,
             calib_batches: int | None = None) -> QuantizeResult:
    """The compatibility form: ``keep_zeros`` / ``calib_batches`` are the low-bit configs'
    fields of those names; ``train_cfg`` is ignored by a method that does not train."""
    params = dict(params or {})
    for key, value in (("keep_zeros", keep_zeros), ("calib_batches", calib_batches)):
        if value is not None:
            params[key] = value
    config = build_config(QUANTIZERS.get(method).config, method, params)
    trains = config.training() != "never"
    return quantize_model(model, config, QuantizeRun(train_data=train_data, calib_data=calib_data,
                                                     finetune=train_cfg if trains else None))
