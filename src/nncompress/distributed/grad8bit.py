"""8-bit approximate gradients for data parallelism (Q18, Dettmers, ICLR 2016, "8-Bit
Approximations for Parallelism in Deep Learning") as a DDP communication hook.

Each worker divides a gradient tensor by its absolute maximum ``M`` and rounds every
element to the nearest of 256 values (an 8-bit code); it sends the uint8 codes and ``M``
(fp32). The codes of different workers cannot be added in 8 bits, so they are exchanged by
one all-gather (plus one all-gather of the scales); every worker decodes all workers'
codes and averages them in the same order, so all replicas get bit-identical gradients.
Per worker and step this sends ``N`` bytes + 4 per scale instead of DDP's ``4 N``.

Data types (``kind``):

* ``"dynamic"`` (the paper's dynamic tree type, default): bit 7 is the sign; then ``e``
  zero bits give the decimal exponent ``10^-e`` (``e`` = 0..6); a 1 bit ends them (the
  indicator); the remaining ``6 - e`` bits are a linear fraction: bin ``q`` of
  ``2^(6-e)`` equal bins of ``[0.1, 1]``, decoded at its centre. Large values keep 6
  fraction bits, small ones trade them for range (down to ``~1e-7 M``); code
  ``0b?0000000`` is zero. 254 non-zero values, symmetric.
* ``"linear"``: ``round(127 x / M)`` (uniform absmax int8).

A value is encoded to the nearest table value, so the error of each element is at most half
the gap between the two table values around ``x / M``, times ``M`` (:func:`error_bound`).

Usage (``model`` wrapped in ``DistributedDataParallel``):

    >>> ddp.register_comm_hook(Grad8bitState(), grad8bit_hook)  # doctest: +SKIP
"""

from dataclasses import dataclass, field
from functools import cache

import torch
import torch.distributed as dist

from nncompress.errors import ConfigError

KINDS = ("dynamic", "linear")


@cache
def _table(kind: str) -> torch.Tensor:
    if kind == "linear":
        return (torch.arange(256, dtype=torch.float64) - 128).clamp_min(-127) / 127
    values = torch.zeros(256, dtype=torch.float64)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        rest = code & 0x7F  # 7 bits: e zeros, the indicator 1, 6 - e fraction bits
        if rest == 0:
            continue  # zero
        e = 7 - rest.bit_length()  # leading zeros of the 7-bit field
        bits = 6 - e
        q = rest & ((1 << bits) - 1)
        values[code] = sign * 10.0 ** (-e) * (0.1 + 0.9 * (q + 0.5) / (1 << bits))
    return values


def code_table(kind: str = "dynamic") -> torch.Tensor:
    """The value (in units of ``M``) of each of the 256 codes, float32, indexed by code.

    Example:
        >>> t = code_table("dynamic")
        >>> round(float(t[0b01111111]), 6), float(t[0]), round(float(t[0b00000001]), 12)
        (0.992969, 0.0, 5.5e-07)
    """
    _check_kind(kind)
    return _table(kind).float()


@cache
def _sorted(kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(distinct values ascending, their codes, midpoints between neighbours), float64."""
    table = _table(kind)
    values = torch.unique(table)  # ascending
    codes = torch.tensor([int((table == v).nonzero()[0]) for v in values], dtype=torch.uint8)
    return values, codes, (values[1:] + values[:-1]) / 2


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"8-bit gradient kind={kind!r} is not allowed; use one of {list(KINDS)}")


def encode_8bit(x: torch.Tensor, kind: str = "dynamic") -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, M)``: ``x`` flattened to uint8 codes of the nearest table value of
    ``x / M`` and its absolute maximum ``M`` (fp32 scalar; 0 for an all-zero tensor).

    Example:
        >>> codes, m = encode_8bit(torch.tensor([1.0, -0.5, 0.0]))
        >>> decode_8bit(codes, m).tolist()
        [0.992968738079071, -0.500781238079071, 0.0]
    """
    _check_kind(kind)
    flat = x.detach().reshape(-1).to(torch.float32).cpu()
    m = flat.abs().max() if flat.numel() else torch.zeros(())
    values, codes, mids = _sorted(kind)
    if float(m) == 0.0:
        zero = int(codes[int((values == 0).nonzero()[0])])
        return torch.full((flat.numel(),), zero, dtype=torch.uint8), m.to(torch.float32)
    idx = torch.bucketize(flat.double() / float(m), mids)  # (N,) index into the sorted values
    return codes[idx], m.to(torch.float32)


def decode_8bit(codes: torch.Tensor, scale: torch.Tensor | float, kind: str = "dynamic") -> torch.Tensor:
    """Float32 values ``table[codes] * M`` (flat).

    Example:
        >>> decode_8bit(torch.tensor([0, 128 + 127], dtype=torch.uint8), 2.0).tolist()
        [0.0, -1.985937476158142]
    """
    if codes.dtype != torch.uint8:
        raise ConfigError(f"8-bit codes must be uint8, got {codes.dtype}")
    return code_table(kind).to(codes.device)[codes.long()] * scale


def error_bound(x: torch.Tensor, kind: str = "dynamic") -> torch.Tensor:
    """Per element, the largest error nearest rounding can make: ``M`` times half the gap
    between the two table values around ``x / M`` (the gap to the end value beyond the
    table's range).

    Example:
        >>> round(float(error_bound(torch.tensor([1.0]))), 6)  # 1 - 0.99297, above the largest value
        0.007031
    """
    flat = x.detach().reshape(-1).double().cpu()
    m = float(flat.abs().max()) if flat.numel() else 0.0
    if m == 0.0:
        return torch.zeros_like(flat, dtype=torch.float32)
    values, _, _ = _sorted(kind)
    r = flat / m
    hi = torch.searchsorted(values, r).clamp(1, len(values) - 1)
    lo_v, hi_v = values[hi - 1], values[hi]
    inside = (r >= lo_v) & (r <= hi_v)
    half = torch.where(inside, (hi_v - lo_v) / 2, torch.minimum((r - lo_v).abs(), (r - hi_v).abs()))
    return (half * m).float()


@dataclass
class Grad8bitState:
    """Per-worker state of :func:`grad8bit_hook`: the data type (``kind``), one scale per
    parameter tensor of a bucket (``per_layer``, the paper's per-matrix max) or per bucket,
    the process group, and counters of the last bucket and of every bucket so far
    (``bytes_sent``: codes + scales each worker handed to the collectives)."""

    kind: str = "dynamic"
    per_layer: bool = True
    process_group: dist.ProcessGroup | None = None
    bytes_sent: int = field(default=0, init=False)
    elements: int = field(default=0, init=False)
    last_scales: list[float] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        if not isinstance(self.per_layer, bool):
            raise ConfigError(f"per_layer={self.per_layer!r} must be true or false")


def grad8bit_hook(state: Grad8bitState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: all-gather every worker's 8-bit codes and scales, decode and
    average (see the module doc). Runs synchronously; returns a completed future holding
    the averaged gradient.

    Example:
        >>> ddp.register_comm_hook(Grad8bitState(kind="dynamic"), grad8bit_hook)  # doctest: +SKIP
    """
    group = state.process_group
    world = dist.get_world_size(group)
    buf = bucket.buffer()  # (N,) flattened gradients of the bucket
    flat = buf.detach().float().cpu()
    sizes = [t.numel() for t in bucket.gradients()] if state.per_layer else [flat.numel()]
    encoded = [encode_8bit(p, state.kind) for p in torch.split(flat, sizes)]
    codes = torch.cat([c for c, _ in encoded])  # (N,) uint8
    scales = torch.stack([s for _, s in encoded]).to(torch.float32)  # (k,)
    all_codes = [torch.empty_like(codes) for _ in range(world)]
    all_scales = [torch.empty_like(scales) for _ in range(world)]
    dist.all_gather(all_scales, scales, group=group)
    dist.all_gather(all_codes, codes, group=group)
    per_elem = torch.repeat_interleave(torch.stack(all_scales), torch.tensor(sizes), dim=1)  # (world, N)
    table = code_table(state.kind)
    total = torch.zeros_like(flat)
    for w in range(world):  # the same order on every worker: identical sums
        total += table[all_codes[w].long()] * per_elem[w]
    state.bytes_sent += codes.numel() * codes.element_size() + scales.numel() * scales.element_size()
    state.elements += flat.numel()
    state.last_scales = scales.tolist()
    buf.copy_((total / world).to(dtype=buf.dtype, device=buf.device))
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(buf)
    return fut
