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

``packed=True`` sends the paper's 2-bit gradients: each worker packs its codes 4 per byte
(:func:`pack_ternary`, ``ceil(N/4)`` bytes) and the packed bytes are exchanged with one
all-gather instead of the all-reduce (sums of ternary codes over workers do not fit in 2
bits). Every worker unpacks all workers' codes and averages ``s * code`` locally. The
scales are still shared by the MAX all-reduce first, and the random draws are the same as
in the int8 mode, so both modes give the same averaged gradient for the same seeds. Per
worker this sends ``ceil(N/4)`` bytes plus the scales (16x less than fp32) and receives
``(world_size - 1) * ceil(N/4)`` bytes of the other workers' codes.

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


_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)


def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Pack ternary codes ``{-1, 0, +1}`` 4 per byte: a uint8 tensor of ``ceil(n/4)`` bytes.

    Each code takes 2 bits (two's complement: ``0 -> 00``, ``+1 -> 01``, ``-1 -> 11``),
    the first code of a group of 4 in the lowest bits; a last partial group is padded
    with zeros. ``codes`` is flattened; :func:`unpack_ternary` needs ``n`` to undo this.

    Example:
        >>> pack_ternary(torch.tensor([1, -1, 0, 1, -1], dtype=torch.int8)).tolist()
        [77, 3]
    """
    flat = codes.reshape(-1).to(torch.int8)
    n = flat.numel()
    two_bit = flat.view(torch.uint8) & 3  # -1 (0xFF) -> 3, 0 -> 0, 1 -> 1
    pad = -n % 4
    if pad:
        two_bit = torch.cat([two_bit, two_bit.new_zeros(pad)])
    groups = two_bit.reshape(-1, 4) << _SHIFTS.to(two_bit.device)  # (ceil(n/4), 4)
    return groups[:, 0] | groups[:, 1] | groups[:, 2] | groups[:, 3]


def unpack_ternary(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: the first ``n`` codes in ``packed`` as int8.

    Example:
        >>> unpack_ternary(torch.tensor([77, 3], dtype=torch.uint8), 5).tolist()
        [1, -1, 0, 1, -1]
    """
    if packed.dtype != torch.uint8:
        raise ConfigError(f"packed codes must be uint8, got {packed.dtype}")
    if not 0 <= n <= 4 * packed.numel():
        raise ConfigError(f"n={n} codes do not fit in {packed.numel()} packed bytes")
    two_bit = (packed.reshape(-1, 1) >> _SHIFTS.to(packed.device)) & 3  # (bytes, 4)
    signed = two_bit.reshape(-1)[:n].to(torch.int8)
    return (signed ^ 2) - 2  # sign-extend 2 bits: 0 -> 0, 1 -> 1, 3 -> -1


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
    ``packed=True`` exchanges 2-bit packed codes by all-gather instead of all-reducing
    int8 codes (see the module doc); the result is the same, the traffic 4x smaller.
    """

    seed: int = 0
    clip_sigma: float | None = 2.5
    process_group: dist.ProcessGroup | None = None
    per_layer: bool = False
    packed: bool = False
    generator: torch.Generator = field(init=False, repr=False)
    last_scale: float = field(default=0.0, init=False)
    last_scales: list[float] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.clip_sigma is not None and self.clip_sigma <= 0:
            raise ConfigError(f"clip_sigma={self.clip_sigma!r} is not allowed; use a number > 0 or None")
        self.generator = torch.Generator().manual_seed(self.seed)


def terngrad_hook(state: TernGradState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: exchange ternary codes with a shared scale (see module doc).

    Runs synchronously (an all-reduce of the scales, then an all-reduce of the int8 codes
    or, with ``state.packed``, an all-gather of the 2-bit packed codes) and returns a
    completed future holding the averaged gradient.
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
    if state.packed:
        wire = _gathered_code_sum(codes, world, group)
    else:
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


def _gathered_code_sum(codes: torch.Tensor, world: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """All-gather every worker's 2-bit packed ``codes`` and return their sum (int32, (N,))."""
    n = codes.numel()
    packed = pack_ternary(codes)  # (ceil(N/4),) uint8
    gathered = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(gathered, packed, group=group)
    per_worker = unpack_ternary(torch.cat(gathered), world * 4 * packed.numel()).reshape(world, -1)
    return per_worker[:, :n].sum(0, dtype=torch.int32)
