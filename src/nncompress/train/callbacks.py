"""Training callbacks: hooks at the phases of one training step (Distiller's shape).

A technique that acts during training (masks, regularisers, schedules, fake-quant) is a
``Callback``; ``fit`` calls every hook in order. Hooks default to no-ops.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class Callback:
    """Base class; override the hooks a technique needs.

    Hook order per step: ``on_batch_begin`` -> forward -> ``loss = before_backward(loss)``
    -> backward -> ``after_backward`` -> optimizer.step -> ``after_optimizer_step``.
    """

    def on_fit_begin(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called once before the first epoch."""

    def on_epoch_begin(self, epoch: int) -> None:
        """Called at the start of each epoch (0-based)."""

    def on_batch_begin(self, step: int) -> None:
        """Called before the forward pass of global step ``step``."""

    def before_backward(self, loss: torch.Tensor, model: nn.Module) -> torch.Tensor:
        """Return the loss to back-propagate (add a penalty here)."""
        return loss

    def after_backward(self, model: nn.Module) -> None:
        """Called after ``loss.backward()``; gradients may be edited here."""

    def after_optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called after ``optimizer.step()``; weights may be edited here."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Called after each epoch with its metrics (mutable: add your own)."""

    def on_fit_end(self, model: nn.Module) -> None:
        """Called once after training."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors/plain values needed to resume; saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class CallbackList(Callback):
    """Calls a sequence of callbacks in order."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = list(callbacks)

    def on_fit_begin(self, model, optimizer):
        for cb in self.callbacks:
            cb.on_fit_begin(model, optimizer)

    def on_epoch_begin(self, epoch):
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch)

    def on_batch_begin(self, step):
        for cb in self.callbacks:
            cb.on_batch_begin(step)

    def before_backward(self, loss, model):
        for cb in self.callbacks:
            loss = cb.before_backward(loss, model)
        return loss

    def after_backward(self, model):
        for cb in self.callbacks:
            cb.after_backward(model)

    def after_optimizer_step(self, model, optimizer):
        for cb in self.callbacks:
            cb.after_optimizer_step(model, optimizer)

    def on_epoch_end(self, epoch, metrics):
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, metrics)

    def on_fit_end(self, model):
        for cb in self.callbacks:
            cb.on_fit_end(model)

    def state_dict(self):
        return {str(i): cb.state_dict() for i, cb in enumerate(self.callbacks)}

    def load_state_dict(self, state):
        for i, cb in enumerate(self.callbacks):
            cb.load_state_dict(state.get(str(i), {}))
