"""K2 attention transfer (Zagoruyko & Komodakis 2017, arXiv 1612.03928).

An activation ``a (B, C, H, W)`` gives the spatial attention map ``A = sum_c |a_c|^p``,
flattened to ``(B, H*W)`` and L2-normalised per sample. The student is trained to match
the teacher's normalised maps at chosen layer pairs of the same spatial size (channel
counts may differ)::

    L = CE-or-KD + beta / 2 * sum_j mean_{b, e} (Q_s,j - Q_t,j)^2

Normalisation (stated, as the paper leaves it open): the squared L2 distance of the
normalised maps is averaged over the batch and the ``H*W`` map elements, as in the
authors' code, with ``beta = 1e3`` by default; that is the paper's ``beta / 2 *
||Q_s - Q_t||_2^2`` with ``beta`` divided by the number of map elements.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.checks import check_float
from nncompress.distill.kd import DistillConfig, _freeze, kd_loss
from nncompress.errors import ConfigError

log = logging.getLogger(__name__)


def attention_map(a: torch.Tensor, p: float = 2.0, normalize: bool = True) -> torch.Tensor:
    """Spatial attention map ``sum_c |a_c|^p`` of ``a (B, C, H, W)`` as ``(B, H*W)``,
    L2-normalised per sample unless ``normalize=False``.

    Example:
        >>> a = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])  # (1, 2, 1, 2)
        >>> attention_map(a, normalize=False).tolist()
        [[2.0, 0.0]]
        >>> attention_map(a).tolist()
        [[1.0, 0.0]]
    """
    if a.dim() != 4:
        raise ConfigError(f"attention_map needs a (B, C, H, W) activation, got shape {tuple(a.shape)}")
    check_float(p, "p", 0, lo_open=True)
    am = a.abs().pow(p).sum(dim=1).flatten(1)  # (B, H*W)
    return F.normalize(am, dim=1) if normalize else am


def at_loss(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor],
            beta: float = 1000.0) -> torch.Tensor:
    """``beta / 2 * sum_j mean((Q_s,j - Q_t,j)^2)`` over pairs of normalised maps, each
    ``(B, H*W)`` (from ``attention_map``); the mean runs over batch and map elements.

    Example:
        >>> q = attention_map(torch.rand(2, 3, 4, 4))
        >>> float(at_loss([q], [q]))
        0.0
    """
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ConfigError(f"need the same non-zero number of student and teacher maps, got "
                          f"{len(student_maps)} and {len(teacher_maps)}")
    check_float(beta, "beta", 0)
    total = student_maps[0].new_zeros(())
    for j, (qs, qt) in enumerate(zip(student_maps, teacher_maps)):
        if qs.shape != qt.shape:
            raise ConfigError(f"pair {j}: student map {tuple(qs.shape)} and teacher map "
                              f"{tuple(qt.shape)} differ; pair layers of the same spatial size")
        total = total + (qs - qt).pow(2).mean()
    return beta / 2.0 * total


def _submodule(model: nn.Module, name: str, role: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        some = [n for n in modules if n][:8]
        raise ConfigError(f"{role} has no submodule {name!r}; names look like {some}")
    return modules[name]


class AttentionTransferLoss:
    """A ``loss_fn(logits, y, x)`` for ``fit``: ``CE`` (or K1 ``kd_loss`` when ``kd`` is
    a ``DistillConfig``) plus ``at_loss`` between the student's and the frozen teacher's
    attention maps at the ``pairs`` of ``(student_layer, teacher_layer)`` module names.

    Student forward hooks are registered on construction (``fit`` runs the student before
    calling the loss) and removed by ``remove()`` or on leaving a ``with`` block; each call
    consumes the captured activations, so a stale one is never reused. Teacher hooks live
    only during the teacher's forward pass (eval mode, no gradient).

    Example:
        >>> with AttentionTransferLoss(student, teacher, [("layers.2", "layers.2")]) as loss_fn:
        ...     fit(student, data, cfg, loss_fn=loss_fn)  # doctest: +SKIP
    """

    def __init__(self, student: nn.Module, teacher: nn.Module,
                 pairs: Sequence[tuple[str, str]], beta: float = 1000.0, p: float = 2.0,
                 kd: DistillConfig | None = None, label_smoothing: float = 0.0):
        if not pairs:
            raise ConfigError("pairs must name at least one (student_layer, teacher_layer)")
        check_float(beta, "beta", 0)
        check_float(p, "p", 0, lo_open=True)
        self.pairs = [(str(s), str(t)) for s, t in pairs]
        self.teacher = _freeze(teacher)
        self.beta, self.p, self.kd, self.label_smoothing = beta, p, kd, label_smoothing
        self._teacher_mods = [_submodule(teacher, t, "teacher") for _, t in self.pairs]
        self._acts: dict[int, torch.Tensor] = {}
        self._handles = [
            _submodule(student, s, "student").register_forward_hook(self._store(j))
            for j, (s, _) in enumerate(self.pairs)
        ]

    def _store(self, j: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self._acts[j] = output

        return hook

    def _teacher_acts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        acts: dict[int, torch.Tensor] = {}
        handles = [m.register_forward_hook(lambda _m, _i, out, j=j: acts.__setitem__(j, out))
                   for j, m in enumerate(self._teacher_mods)]
        try:
            self.teacher.eval()
            with torch.no_grad():
                logits = self.teacher(x)
        finally:
            for h in handles:
                h.remove()
        return logits, [acts[j] for j in range(len(self.pairs))]

    def at_term(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(at_loss, teacher_logits)`` for the student activations captured by the last
        student forward pass on ``x``; consumes those activations."""
        missing = [self.pairs[j][0] for j in range(len(self.pairs)) if j not in self._acts]
        if missing:
            raise ConfigError(f"no student activation captured at {missing}: run the student "
                              f"on the batch before the loss, and do not call remove() first")
        s_acts = [self._acts.pop(j) for j in range(len(self.pairs))]
        t_logits, t_acts = self._teacher_acts(x)
        for (sn, tn), sa, ta in zip(self.pairs, s_acts, t_acts):
            if sa.shape[0] != x.shape[0]:
                raise ConfigError(f"student activation at {sn!r} has batch {sa.shape[0]}, the "
                                  f"batch has {x.shape[0]}: the capture is stale")
            if sa.shape[2:] != ta.shape[2:]:
                raise ConfigError(f"spatial sizes differ: student {sn!r} {tuple(sa.shape[2:])} vs "
                                  f"teacher {tn!r} {tuple(ta.shape[2:])}; pair layers of equal H x W")
        qs = [attention_map(a, self.p) for a in s_acts]
        qt = [attention_map(a, self.p) for a in t_acts]
        return at_loss(qs, qt, self.beta), t_logits

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        at, t_logits = self.at_term(x)
        if self.kd is None:
            base = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        else:
            base = kd_loss(logits, t_logits, y, self.kd.alpha, self.kd.temperature,
                           self.label_smoothing)
        return base + at

    def remove(self) -> None:
        """Remove the student hooks and drop captured activations (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._acts.clear()

    def __enter__(self) -> AttentionTransferLoss:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def attention_transfer_loss_fn(student: nn.Module, teacher: nn.Module,
                               pairs: Sequence[tuple[str, str]], beta: float = 1000.0,
                               p: float = 2.0, kd: DistillConfig | None = None
                               ) -> AttentionTransferLoss:
    """Factory of the ``fit`` loss ``CE-or-KD + AT`` (see ``AttentionTransferLoss``);
    call ``.remove()`` on the result (or use it in ``with``) when training ends.

    Example:
        >>> loss_fn = attention_transfer_loss_fn(student, teacher, [("layers.8", "layers.8")],
        ...                                      kd=DistillConfig(0.5, 4.0))  # doctest: +SKIP
        >>> fit(student, data, cfg, loss_fn=loss_fn); loss_fn.remove()  # doctest: +SKIP
    """
    return AttentionTransferLoss(student, teacher, pairs, beta=beta, p=p, kd=kd)
