"""What a recipe's ``model:``, ``data:``, ``loss:`` and ``metric:`` build: a built-in
model or the user's factory or a Hugging Face folder; built-in data, the user's data
factory or sentence files; loss and metric callables."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from nncompress.errors import ConfigError
from nncompress.factory import build_model_from_factory, import_factory
from nncompress.recipes.schema import DataSpec, FactorySpec, ModelSpec, corpus_sizes
from nncompress.train.batches import make_loader, split_batch

log = logging.getLogger(__name__)


@dataclass
class BuiltData:
    """The splits a recipe trains, calibrates and tests on (Datasets, DataLoaders or lists
    of batches)."""

    train: Any
    test: Any
    calib: Any = None


def build_recipe_model(spec: ModelSpec) -> tuple[nn.Module, Any]:
    """``(model, pretrained)``: the recipe's model, and for ``huggingface:`` the
    ``Pretrained`` record (tokenizer, pooling) of ``nncompress.models.huggingface``.

    Example:
        >>> build_recipe_model(ModelSpec(name="lenet300"))[0].fc1.out_features
        300
    """
    if spec.factory is not None:
        return build_model_from_factory(spec.factory, spec.kwargs, spec.checkpoint), None
    if spec.huggingface is not None:
        from nncompress.models.huggingface import load_pretrained  # H1's loader (transformers)

        pretrained = load_pretrained(spec.huggingface)
        return pretrained.model, pretrained
    from nncompress.models import build_model

    return build_model(spec.name, **spec.kwargs), None


def build_recipe_data(spec: DataSpec, seed: int = 0, pretrained: Any = None) -> BuiltData:
    """The recipe's train/test (and calibration) data. A data factory returns
    ``(train, test)`` or ``{"train": ..., "test": ...[, "calib": ...]}``, each a ``Dataset``
    or a ``DataLoader``; anything else is a ``ConfigError`` naming the factory.

    Example:
        >>> build_recipe_data(DataSpec(factory="mydata:splits")).test  # doctest: +SKIP
    """
    if spec.factory is not None:
        data = _call_data_factory(spec.factory, spec.kwargs)
    elif spec.text is not None:
        data = _text_data(spec.text, pretrained)
    elif spec.corpus is not None:
        data = _corpus_data(spec.corpus, pretrained)
    else:
        from nncompress.data import load_dataset

        data = BuiltData(load_dataset(spec.name, "train", spec.root), load_dataset(spec.name, "test", spec.root))
    if spec.train_subset is not None:
        if not isinstance(data.train, Dataset):
            raise ConfigError("data.train_subset needs the training data as a Dataset, not a "
                              f"{type(data.train).__name__}")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(data.train), generator=g)[: spec.train_subset].tolist()
        data.train = Subset(data.train, idx)
    return data


def _call_data_factory(name: str, kwargs: Mapping[str, Any]) -> BuiltData:
    fn = import_factory(name, "data factory")
    try:
        out = fn(**dict(kwargs))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        raise ConfigError(f"data factory {name!r} with kwargs {dict(kwargs)!r} failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    if isinstance(out, Mapping):
        unknown = sorted(set(out) - {"train", "test", "calib"})
        if unknown or "train" not in out or "test" not in out:
            raise ConfigError(f"data factory {name!r} returned keys {sorted(out)}; expected train, test "
                              "and optionally calib")
        data = BuiltData(out["train"], out["test"], out.get("calib"))
    elif isinstance(out, (tuple, list)) and len(out) == 2:
        data = BuiltData(out[0], out[1])
    else:
        raise ConfigError(f"data factory {name!r} returned a {type(out).__name__}; expected (train, test) "
                          "or {'train': ..., 'test': ...}, each a Dataset or a DataLoader")
    for split in ("train", "test", "calib"):
        value = getattr(data, split)
        if value is not None and not isinstance(value, (Dataset, DataLoader)):
            raise ConfigError(f"data factory {name!r}: its {split} split is a {type(value).__name__}, "
                              "not a torch Dataset or DataLoader")
    return data


def _text_data(files: Mapping[str, str], pretrained: Any) -> BuiltData:
    from nncompress.data.text import read_lines

    return _text_sets({k: read_lines(f) for k, f in files.items()}, pretrained)


def _text_sets(lines: Mapping[str, list[str]], pretrained: Any) -> BuiltData:
    """TextDatasets of the calib/train/test passages, tokenized by the model's tokenizer."""
    if pretrained is None:
        raise ConfigError("data.text needs a tokenizer: use it with model: {huggingface: PATH}")
    from nncompress.data.text import TextDataset

    sets = {k: TextDataset(v, pretrained.tokenizer) for k, v in lines.items()}
    train = sets.get("train", sets.get("calib"))
    if train is None:
        raise ConfigError("data.text needs a train or calib file")
    return BuiltData(train, sets["test"], sets.get("calib"))


def _corpus_data(spec: Mapping[str, Any], pretrained: Any) -> BuiltData:
    """``data.corpus``: disjoint calib/train/test passages from Debian's package lists,
    tokenized like ``data.text``."""
    from nncompress.data.corpus import debian_splits

    c = corpus_sizes(spec)
    splits, _ = debian_splits({k: c[k] for k in ("calib", "train", "test")}, c["seed"])
    return _text_sets(splits, pretrained)


def first_sample(data: Any) -> Any:
    """The inputs of the first sample of ``data`` with a batch dimension of 1 (a Tensor,
    or a dict of tensors).

    Example:
        >>> first_sample(torch.utils.data.TensorDataset(torch.zeros(4, 3), torch.zeros(4))).shape
        torch.Size([1, 3])
    """
    for batch in make_loader(data, 1, shuffle=False):
        inputs, _ = split_batch(batch)
        if isinstance(inputs, torch.Tensor):
            return inputs[:1]
        if isinstance(inputs, Mapping):
            return {k: v[:1] for k, v in inputs.items()}
        raise ConfigError(f"the data's inputs are {type(inputs).__name__}; expected a Tensor or a dict")
    raise ConfigError("the test data is empty")


def build_callable(spec: FactorySpec | None, what: str) -> Callable[..., Any] | None:
    """The recipe's ``loss:`` as ``fn(logits, target, inputs)`` (a factory returning a
    two-argument callable is adapted) or ``metric:`` as ``fn(logits, target)``; None when
    the recipe has none.

    Example:
        >>> fn = build_callable(FactorySpec("torch.nn:MSELoss"), "loss")
        >>> float(fn(torch.ones(2), torch.zeros(2), None))
        1.0
    """
    if spec is None:
        return None
    factory = import_factory(spec.factory, f"{what} factory")
    try:
        fn = factory(**spec.kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        raise ConfigError(f"{what} factory {spec.factory!r} failed: {type(exc).__name__}: {exc}") from exc
    if not callable(fn):
        raise ConfigError(f"{what} factory {spec.factory!r} returned a {type(fn).__name__}, not a callable")
    if what == "metric" or _positional_count(fn) >= 3:  # a metric is called as fn(logits, target)
        return fn
    return lambda logits, target, inputs=None: fn(logits, target)


def _positional_count(fn: Callable[..., Any]) -> int:
    target = fn.forward if isinstance(fn, nn.Module) else fn
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 3
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
