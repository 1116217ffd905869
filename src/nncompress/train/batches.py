"""One calling convention for batches: a Tensor, a tuple/list (inputs first, a label second
if any) or a dict (tokenizer output, optionally with ``labels``).

``model(**b)`` for a dict, ``model(b[0])`` for a tuple/list, ``model(b)`` for a Tensor.
A dict's ``labels`` entry, when present, is the target and is not passed to the model.
Datasets whose items are dicts carry a ``collate_fn`` attribute, which ``make_loader`` uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from nncompress.errors import ConfigError

Batch = Any  # torch.Tensor | tuple | list | Mapping[str, torch.Tensor]
LABEL_KEY = "labels"


def split_batch(batch: Batch) -> tuple[Any, torch.Tensor | None]:
    """``(inputs, target)`` of a batch; ``target`` is None for an unlabelled batch.

    Example:
        >>> x, y = split_batch((torch.zeros(2, 3), torch.tensor([0, 1])))
        >>> x.shape, y.tolist()
        (torch.Size([2, 3]), [0, 1])
        >>> split_batch({"input_ids": torch.ones(2, 4, dtype=torch.long)})[1] is None
        True
    """
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if k != LABEL_KEY}
        return inputs, batch.get(LABEL_KEY)
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ConfigError("an empty tuple is not a batch; give (inputs,) or (inputs, labels)")
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise ConfigError(f"a batch is a Tensor, a tuple/list (inputs, labels) or a dict of tensors, "
                      f"got {type(batch).__name__}")


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Run ``model`` on the inputs part of a batch: ``model(**inputs)`` for a dict, else
    ``model(inputs)``.

    Example:
        >>> call_model(nn.Identity(), torch.ones(1)).tolist()
        [1.0]
    """
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def logits_of(output: Any) -> torch.Tensor:
    """The main tensor of a model output: the Tensor itself, ``.logits`` / ``["logits"]`` of a
    Hugging Face output, else the first element of a tuple or the first value of a dict.

    Example:
        >>> logits_of((torch.ones(2), torch.zeros(1))).tolist()
        [1.0, 1.0]
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping) and output:
        return logits_of(output["logits"] if "logits" in output else next(iter(output.values())))
    if isinstance(output, (tuple, list)) and output:
        return logits_of(output[0])
    raise ConfigError(f"the model returned {type(output).__name__}; expected a Tensor, a tuple whose first "
                      f"element is one, or an output with .logits")


def to_device(value: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to ``device``.

    Example:
        >>> to_device({"a": torch.ones(1)}, torch.device("cpu"))["a"].device.type
        'cpu'
    """
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value) if isinstance(value, list) else \
            tuple(to_device(v, device) for v in value)
    return value


def batch_len(batch: Batch) -> int:
    """Number of samples in a batch (the first dimension of its first tensor).

    Example:
        >>> batch_len({"input_ids": torch.ones(3, 5)})
        3
    """
    inputs, _ = split_batch(batch)
    while not isinstance(inputs, torch.Tensor):
        if isinstance(inputs, Mapping) and inputs:
            inputs = next(iter(inputs.values()))
        elif isinstance(inputs, (tuple, list)) and inputs:
            inputs = inputs[0]
        else:
            raise ConfigError(f"cannot tell the batch size of {type(inputs).__name__}")
    return int(inputs.shape[0]) if inputs.dim() else 1


def make_loader(data: Dataset | DataLoader | Iterable, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None, sampler: Sampler | None = None) -> Iterable:
    """A ``DataLoader`` over ``data`` using the dataset's ``collate_fn`` if it has one; a
    ``DataLoader`` (or any other iterable of batches, e.g. a list) is returned unchanged.

    Example:
        >>> ds = torch.utils.data.TensorDataset(torch.zeros(5, 2), torch.zeros(5))
        >>> len(make_loader(ds, 2))
        3
    """
    if isinstance(data, DataLoader) or not isinstance(data, Dataset):
        if not isinstance(data, Iterable):
            raise ConfigError(f"data must be a Dataset, a DataLoader or an iterable of batches, "
                              f"got {type(data).__name__}")
        return data
    if sampler is not None:
        shuffle = False
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, sampler=sampler,
                      collate_fn=getattr(data, "collate_fn", None))


def dataset_of(data: Any) -> Dataset | None:
    """The ``Dataset`` behind ``data`` (itself, or a ``DataLoader``'s), or None for a plain
    iterable of batches."""
    if isinstance(data, DataLoader):
        return data.dataset
    return data if isinstance(data, Dataset) else None
