"""TernGrad (Q14, Wen et al. 2017): ternary gradients as a DDP communication hook.

Each worker sends its gradient ``g`` as ``s * sign(g) * b`` with ``b ~ Bernoulli(|g| / s)``
(codes in ``{-1, 0, +1}``, int8 on the wire), which is unbiased: ``E[s sign(g) b] = g``.
The scale ``s`` is shared by all workers ("scaler sharing"): ``s = max_workers max|g|``,
one all-reduce (MAX) of a scalar per bucket; the codes are then summed with one
all-reduce and the averaged gradient is ``s * sum(codes) / world_size``. With
``clip_sigma`` (TernGrad's gradient clipping, 2.5 in the paper) each worker first clips
``g`` to ``+-clip_sigma * std(g)``, which shrinks ``s`` and the variance.

By default one scale (and one clipping bound) covers a whole DDP bucket, which may hold
every layer of a small model. ``per_layer=True`` is the paper's layer-wise ternarizing:
each parameter tensor in the bucket gets its own clipping bound and its own shared scale
(one all-reduce (MAX) of a vector of ``k`` scalars for ``k`` tensors in the bucket).

Usage (``model`` wrapped in ``DistributedDataParallel``):

    >>> ddp.register_comm_hook(TernGradState(seed=rank), terngrad_hook)  # doctest: +SKIP
"""

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from nncompress.errors import ConfigError


def ternarize(g: torch.Tensor, scale: float | torch.Tensor,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic ternary codes ``sign(g) * Bernoulli(|g| / scale)`` as int8 (``|g| <= scale``).

    Example:
        >>> ternarize(torch.tensor([1.0, -1.0, 0.0]), 1.0).tolist()
        [1, -1, 0]
    """
    prob = (g.abs() / scale).clamp(0, 1) if float(scale) > 0 else torch.zeros_like(g)
    keep = torch.rand(g.shape, generator=generator, dtype=prob.dtype, device=g.device) < prob
    return (torch.sign(g) * keep).to(torch.int8)


def clip_by_sigma(g: torch.Tensor, clip_sigma: float | None) -> torch.Tensor:
    """Clip ``g`` to ``+-clip_sigma * std(g)`` (None: unchanged).

    Example:
        >>> clip_by_sigma(torch.tensor([0.0, 0.0, 0.0, 8.0]), 1.0).tolist()
        [0.0, 0.0, 0.0, 4.0]
    """
    if clip_sigma is None or g.numel() < 2:
        return g
    bound = clip_sigma * float(g.std())
    return g.clamp(-bound, bound)


@dataclass
class TernGradState:
    """Per-worker state of the hook: its random generator and the options.

    ``last_scales`` are the shared scales of the last bucket the hook saw (one value, or
    one per parameter tensor in bucket order with ``per_layer``); ``last_scale`` their max.
    """

    seed: int = 0
    clip_sigma: float | None = 2.5
    process_group: dist.ProcessGroup | None = None
    per_layer: bool = False
    generator: torch.Generator = field(init=False, repr=False)
    last_scale: float = field(default=0.0, init=False)
    last_scales: list[float] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.clip_sigma is not None and self.clip_sigma <= 0:
            raise ConfigError(f"clip_sigma={self.clip_sigma!r} is not allowed; use a number > 0 or None")
        self.generator = torch.Generator().manual_seed(self.seed)


def terngrad_hook(state: TernGradState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: all-reduce ternary codes with a shared scale (see module doc).

    Runs synchronously (two blocking all-reduces) and returns a completed future.
    """
    group = state.process_group
    world = dist.get_world_size(group)
    buf = bucket.buffer()  # (N,) flattened gradients of the bucket
    flat = buf.detach().float().cpu()
    sizes = [t.numel() for t in bucket.gradients()] if state.per_layer else [flat.numel()]
    parts = [clip_by_sigma(p, state.clip_sigma) for p in torch.split(flat, sizes)]
    scales = torch.stack([p.abs().max() if p.numel() else torch.zeros(()) for p in parts])  # (k,)
    dist.all_reduce(scales, op=dist.ReduceOp.MAX, group=group)
    codes = torch.cat([ternarize(p, scales[i], state.generator) for i, p in enumerate(parts)])
    wire = codes if world <= 127 else codes.to(torch.int32)  # int8 sums overflow beyond 127 workers
    dist.all_reduce(wire, op=dist.ReduceOp.SUM, group=group)
    state.last_scales = scales.tolist()
    state.last_scale = max(state.last_scales)
    per_elem = torch.repeat_interleave(scales / world, torch.tensor(sizes))  # (N,)
    out = (wire.to(torch.float32) * per_elem).to(dtype=buf.dtype, device=buf.device)
    buf.copy_(out)
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(buf)
    return fut
