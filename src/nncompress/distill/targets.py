"""What label-free distillation compares and how: a model called on any batch form, its
first output (last hidden state), logits, masked-mean sentence embeddings, the outputs of
named modules (captured by forward hooks), and the losses between student and teacher
(cosine, masked MSE, the K1 soft-target loss). Pure tensor functions, used by
``distill.unlabelled``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Batch = Any  # a Tensor, a tuple/list (inputs first) or a dict of tensors (tokenizer output)


def pool_embeddings(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sentence embeddings (N, D): masked mean of (N, T, D) states over the tokens; an
    (N, D) output is returned as it is, other shapes are flattened to (N, -1).

    Example:
        >>> h = torch.tensor([[[1., 1.], [3., 3.]]])
        >>> pool_embeddings(h, torch.tensor([[1, 0]])).tolist()
        [[1.0, 1.0]]
    """
    if hidden.dim() == 3:
        if attention_mask is None:
            return hidden.mean(1)
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (N, T, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (N, D)
    return hidden if hidden.dim() == 2 else hidden.flatten(1)


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean_i (1 - cos(s_i, t_i))`` over rows of (N, D) embeddings.

    Example:
        >>> float(cosine_loss(torch.tensor([[1., 0.]]), torch.tensor([[1., 1.]])))  # 1 - 1/sqrt 2
        0.2928932309150696
    """
    return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()


def masked_mse(student: torch.Tensor, teacher: torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of (N, T, D) states over the tokens where ``attention_mask`` is 1
    (all tokens when None), averaged over tokens and features.

    Example:
        >>> s, t = torch.zeros(1, 2, 2), torch.tensor([[[1., 1.], [9., 9.]]])
        >>> float(masked_mse(s, t, torch.tensor([[1, 0]])))
        1.0
    """
    sq = (student - teacher).pow(2)  # (N, T, D)
    if attention_mask is None or student.dim() != 3:
        return sq.mean()
    m = attention_mask.to(sq.dtype).unsqueeze(-1)  # (N, T, 1)
    return (sq * m).sum() / (m.sum() * sq.shape[-1]).clamp(min=1e-9)


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """K1's soft term ``T^2 KL(softmax(t/T) || softmax(s/T))`` over the last dimension,
    averaged over rows (N, C) or over unmasked tokens (N, T, C).

    Example:
        >>> z = torch.randn(3, 5)
        >>> float(soft_target_loss(z, z, 2.0))
        0.0
    """
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)  # (N,) or (N, T)
    if kl.dim() == 2 and attention_mask is not None:
        m = attention_mask.to(kl.dtype)
        kl = (kl * m).sum() / m.sum().clamp(min=1e-9)
    else:
        kl = kl.mean()
    return temperature**2 * kl


# ---------------------------------------------------------------- batches and outputs

def call_model(model: nn.Module, batch: Batch) -> Any:
    """The calling convention of the batch contract: ``model(**b)`` for a dict,
    ``model(b[0])`` for a tuple/list, ``model(b)`` for a tensor.

    Example:
        >>> call_model(nn.Identity(), (torch.ones(1), torch.zeros(1))).tolist()
        [1.0]
    """
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)


def _first_output(out: Any) -> torch.Tensor:
    """The hidden states of a model's output: ``last_hidden_state``, else the tensor, else ``[0]``."""
    if torch.is_tensor(out):
        return out
    hidden = getattr(out, "last_hidden_state", None)
    if torch.is_tensor(hidden):
        return hidden
    if isinstance(out, Mapping):
        return next(iter(out.values()))
    return out[0]


def _logits(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    if torch.is_tensor(logits):
        return logits
    if isinstance(out, Mapping) and torch.is_tensor(out.get("logits")):
        return out["logits"]
    return _first_output(out)


def _attention_mask(batch: Batch) -> torch.Tensor | None:
    if isinstance(batch, Mapping):
        m = batch.get("attention_mask")
        return m if torch.is_tensor(m) else None
    return None


def _to(batch: Batch, device: torch.device) -> Batch:
    if torch.is_tensor(batch):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def _capture_layers(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """While open, every forward pass of ``model`` records the output (its first tensor) of
    the modules ``names`` into the yielded dict, under ``layer:NAME``."""
    got: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = []
    for name in names:
        def hook(_module: nn.Module, _inputs: Any, output: Any, key: str = f"layer:{name}") -> None:
            got[key] = _first_output(output)
        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield got
    finally:
        for h in handles:
            h.remove()
