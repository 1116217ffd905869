"""DistributedDataParallel inside ``fit``: under ``torchrun`` (a ``torch.distributed``
process group is initialised) every training call wraps the model in DDP for its duration,
splits a dataset with a ``DistributedSampler`` and can compress the all-reduced gradients
with TernGrad (``nncompress.distributed``)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

log = logging.getLogger(__name__)
GRAD_COMPRESSION = ("terngrad", "terngrad-packed", "int8")


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` without a process group.

    Example:
        >>> world()
        (0, 1)
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (or in a single process): the one that writes files."""
    return world()[0] == 0


def epoch_sampler(dataset: Dataset, seed: int, epoch: int) -> DistributedSampler:
    """A ``DistributedSampler`` over ``dataset`` (shuffled from ``seed``) set to ``epoch``.

    Example:
        >>> epoch_sampler(ds, 0, 3)  # doctest: +SKIP
    """
    sampler = DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return sampler


def wrap_ddp(model: nn.Module, grad_compression: str | None = None, seed: int = 0) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` (same parameters; ``device_ids`` set on
    CUDA), with the TernGrad communication hook when ``grad_compression`` is ``terngrad``
    or ``terngrad-packed``, the 8-bit gradient hook (``nncompress.distributed.grad8bit``)
    when it is ``int8``. Rank 0's parameters and buffers are broadcast at wrap time.

    Example:
        >>> net = wrap_ddp(model, "terngrad")  # doctest: +SKIP
    """
    from torch.nn.parallel import DistributedDataParallel

    p = next(model.parameters(), None)
    device_ids = [p.device] if p is not None and p.device.type == "cuda" else None
    net = DistributedDataParallel(model, device_ids=device_ids)
    if grad_compression == "int8":  # Q18: Dettmers' 8-bit dynamic tree codes, all-gathered
        from nncompress.distributed.grad8bit import Grad8bitState, grad8bit_hook

        net.register_comm_hook(Grad8bitState(), grad8bit_hook)
    elif grad_compression is not None:
        from nncompress.distributed.terngrad import TernGradState, terngrad_hook

        rank = world()[0]
        net.register_comm_hook(TernGradState(seed=seed * 1000 + rank, packed=grad_compression == "terngrad-packed"),
                               terngrad_hook)
    return net


def unwrap(net: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the model itself otherwise)."""
    return getattr(net, "module", net)


def broadcast_model(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every process (in place); no-op in a
    single process.

    Example:
        >>> broadcast_model(model)  # doctest: +SKIP
    """
    if world()[1] == 1:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            torch.distributed.broadcast(t.data, src)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every process (itself in a single process).
    Used only between the processes of one run, never on file contents."""
    if world()[1] == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src)
    return box[0]


def broadcast_masks(masks: Any, src: int = 0) -> Any:
    """Rank ``src``'s pruning masks on every process (the same object in a single
    process): each bool mask is broadcast in place as uint8 (gloo has no bool)."""
    if world()[1] == 1 or masks is None:
        return masks
    for name in sorted(masks):
        m = masks[name]
        buf = m.to(torch.uint8)
        torch.distributed.broadcast(buf, src)
        m.copy_(buf.bool())
    return masks


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if world()[1] > 1:
        torch.distributed.barrier()


def init_from_env(device: torch.device) -> bool:
    """Under torchrun (``WORLD_SIZE`` > 1 in the environment) initialise the process group:
    nccl for CUDA, gloo otherwise. Returns True when distributed.

    Example:
        >>> init_from_env(torch.device("cpu"))  # doctest: +SKIP
    """
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist = torch.distributed
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    return True


def state_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``model`` (names, shapes and bytes)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def ranks_agree(model: nn.Module) -> bool:
    """True when every process holds bit-identical parameters and buffers (True in a
    single process).

    Example:
        >>> ranks_agree(model)  # doctest: +SKIP
        True
    """
    if world()[1] == 1:
        return True
    digests: list[Any] = [None] * world()[1]
    torch.distributed.all_gather_object(digests, state_digest(model))
    return len(set(digests)) == 1
