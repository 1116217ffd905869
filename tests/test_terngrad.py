"""TernGrad (Q14): unbiased ternary codes, clipping, and the DDP hook on 2 gloo processes."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import nncompress.distributed.terngrad as terngrad_mod
from nncompress.distributed import (
    TernGradState,
    clip_by_sigma,
    pack_ternary,
    ternarize,
    terngrad_hook,
    unpack_ternary,
)
from nncompress.errors import ConfigError


def test_ternarize_codes_and_unbiased():
    g = torch.tensor([0.5, -0.25, 0.0, 1.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([ternarize(g, 1.0, gen) for _ in range(20000)]).float()  # (T, 5)
    assert set(draws.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.allclose(draws.mean(0), g, atol=0.02)  # E[s * code] = g (std/sqrt(T) < 0.004)
    assert draws[:, 2].abs().sum() == 0 and (draws[:, 3] == 1).all() and (draws[:, 4] == -1).all()
    assert ternarize(g, 0.0).abs().sum() == 0


def test_clip_by_sigma_and_bad_state():
    g = torch.tensor([1.0, -1.0, 1.0, -1.0, 10.0])
    bound = 1.0 * float(g.std())
    assert torch.equal(clip_by_sigma(g, 1.0), g.clamp(-bound, bound))
    assert torch.equal(clip_by_sigma(g, None), g)
    with pytest.raises(ConfigError, match="clip_sigma"):
        TernGradState(clip_sigma=0.0)


def _in_gloo_group(rank: int, world: int, init_file: str, body) -> None:
    """Spawned-process entry: join a gloo group of ``world`` processes, run ``body(rank, world)``,
    meet the others at a barrier; on error tear the group down and re-raise."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        body(rank, world)
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    # Success: leave without C++ teardown. Destroying gloo groups / DDP's reducer at exit
    # intermittently aborts ("terminate called without an active exception") under load.
    os._exit(0)


def _spawn_two(tmp_path, body) -> None:
    mp.spawn(_in_gloo_group, args=(2, str(tmp_path / "init"), body), nprocs=2, join=True)


def _hook_body(rank: int, world: int) -> None:
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    local = nn.Linear(6, 4)
    local.load_state_dict(model.state_dict())
    ddp = nn.parallel.DistributedDataParallel(model)
    state = TernGradState(seed=rank, clip_sigma=None)
    ddp.register_comm_hook(state, terngrad_hook)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(10 + rank))
    ddp(x).pow(2).sum().backward()
    local(x).pow(2).sum().backward()
    g_local = torch.cat([local.weight.grad.reshape(-1), local.bias.grad])  # this rank's dense grad
    g_ddp = torch.cat([model.weight.grad.reshape(-1), model.bias.grad])
    # shared scale = max over workers of max|g|
    peak = g_local.abs().max().reshape(1)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    assert abs(state.last_scale - float(peak)) <= 1e-6 * float(peak)
    # averaged gradient = s * (sum of codes in {-1,0,1}) / world
    k = g_ddp * world / state.last_scale
    assert torch.allclose(k, k.round(), atol=1e-4) and float(k.abs().max()) <= world
    # every rank ends with the same gradient
    all_g = [torch.zeros_like(g_ddp) for _ in range(world)]
    dist.all_gather(all_g, g_ddp)
    assert all(torch.equal(a, all_g[0]) for a in all_g)
    # a code never has the wrong sign: where all local grads agree in sign, so does the mean
    all_l = [torch.zeros_like(g_local) for _ in range(world)]
    dist.all_gather(all_l, g_local)
    pos = torch.stack(all_l).gt(0).all(0)
    neg = torch.stack(all_l).lt(0).all(0)
    assert (g_ddp[pos] >= 0).all() and (g_ddp[neg] <= 0).all()


def test_ddp_hook_two_gloo_processes(tmp_path):
    _spawn_two(tmp_path, _hook_body)


def _per_layer_body(rank: int, world: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    local = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    local.load_state_dict(model.state_dict())
    with torch.no_grad():  # give the layers very different gradient scales
        model[2].weight.mul_(100.0)
        local[2].weight.mul_(100.0)
    ddp = nn.parallel.DistributedDataParallel(model)
    state = TernGradState(seed=rank, clip_sigma=None, per_layer=True)
    ddp.register_comm_hook(state, terngrad_hook)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(10 + rank))
    ddp(x).pow(2).sum().backward()
    local(x).pow(2).sum().backward()
    params = list(model.parameters())
    assert len(state.last_scales) == len(params)  # one bucket, one scale per tensor
    peaks = []
    for p_ddp, p_local in zip(params, local.parameters(), strict=True):
        peak = p_local.grad.abs().max().reshape(1)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        peaks.append(float(peak))
        # each tensor's averaged gradient = its own scale * (integer sum of codes) / world
        k = p_ddp.grad * world / float(peak)
        assert torch.allclose(k, k.round(), atol=1e-4) and float(k.abs().max()) <= world
    assert sorted(state.last_scales) == pytest.approx(sorted(peaks), rel=1e-6)
    assert max(peaks) > 10 * min(peaks)  # a single per-bucket scale would differ


def test_ddp_hook_per_layer_scales(tmp_path):
    """``per_layer=True``: every parameter tensor gets its own shared scale (layer-wise)."""
    _spawn_two(tmp_path, _per_layer_body)


def test_per_layer_clipping_uses_each_tensors_std():
    """Layer-wise clipping bounds each part by its own sigma, unlike one bucket-wide bound."""
    small, big = torch.tensor([0.1, -0.1, 0.1, 0.5]), torch.tensor([10.0, -10.0, 10.0, 50.0])
    bucket_wide = clip_by_sigma(torch.cat([small, big]), 1.0)
    layer_wise = torch.cat([clip_by_sigma(small, 1.0), clip_by_sigma(big, 1.0)])
    assert float(layer_wise[:4].abs().max()) < 0.5 and float(bucket_wide[:4].abs().max()) == 0.5


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 1001])
def test_pack_unpack_round_trip(n):
    codes = torch.randint(-1, 2, (n,), dtype=torch.int8, generator=torch.Generator().manual_seed(n))
    packed = pack_ternary(codes)
    assert packed.dtype == torch.uint8 and packed.shape == ((n + 3) // 4,)  # ceil(n/4) bytes
    assert torch.equal(unpack_ternary(packed, n), codes)


def test_pack_layout_and_bad_input():
    # 2 bits per code, first code lowest: [1, -1, 0, 1] -> 0b01_00_11_01
    assert pack_ternary(torch.tensor([1, -1, 0, 1], dtype=torch.int8)).tolist() == [0b01001101]
    assert unpack_ternary(torch.tensor([0xFF], dtype=torch.uint8), 4).tolist() == [-1, -1, -1, -1]
    with pytest.raises(ConfigError, match="uint8"):
        unpack_ternary(torch.zeros(2, dtype=torch.int8), 4)
    with pytest.raises(ConfigError, match="do not fit"):
        unpack_ternary(torch.zeros(2, dtype=torch.uint8), 9)


class _CountingDist:
    """Proxy for ``torch.distributed`` in the hook's module: records each collective's input."""

    def __init__(self, real):
        self._real = real
        self.sent: list[tuple[str, torch.dtype, int]] = []

    def all_reduce(self, tensor, *args, **kwargs):
        self.sent.append(("all_reduce", tensor.dtype, tensor.numel() * tensor.element_size()))
        return self._real.all_reduce(tensor, *args, **kwargs)

    def all_gather(self, out, tensor, *args, **kwargs):
        self.sent.append(("all_gather", tensor.dtype, tensor.numel() * tensor.element_size()))
        return self._real.all_gather(out, tensor, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)


def _packed_body(rank: int, world: int) -> None:
    counter = _CountingDist(dist)
    terngrad_mod.dist = counter  # this spawned process only
    torch.manual_seed(0)
    # 6*5+5 + 5*3+3 = 53 gradients (not a multiple of 4), 4 tensors
    nets = [nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    states = [TernGradState(seed=rank, clip_sigma=2.5, per_layer=True, packed=packed)
              for packed in (False, True)]
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(10 + rank))
    grads = []
    for net, state in zip(nets, states, strict=True):
        ddp = nn.parallel.DistributedDataParallel(net)
        ddp.register_comm_hook(state, terngrad_hook)
        counter.sent.clear()
        ddp(x).pow(2).sum().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
        sent = list(counter.sent)
    n, k = grads[1].numel(), len(states[1].last_scales)
    assert n == 53 and k == 4
    # same seeds, same draws: the packed all-gather gives the int8 all-reduce's average
    assert torch.equal(grads[0], grads[1])
    assert states[0].last_scales == states[1].last_scales
    # packed: scales by all-reduce (MAX), codes as ceil(n/4) uint8 bytes by all-gather
    assert sent == [("all_reduce", torch.float32, 4 * k), ("all_gather", torch.uint8, (n + 3) // 4)]
    # each tensor's average = its scale * (integer sum of codes in {-1,0,1}) / world
    sizes = [p.numel() for p in nets[1].parameters()]
    for g, s in zip(torch.split(grads[1], sizes), states[1].last_scales, strict=True):
        c = g * world / s
        assert torch.allclose(c, c.round(), atol=1e-4) and float(c.abs().max()) <= world
    all_g = [torch.zeros_like(grads[1]) for _ in range(world)]
    dist.all_gather(all_g, grads[1])
    assert all(torch.equal(a, all_g[0]) for a in all_g)


def test_ddp_hook_packed_matches_int8(tmp_path):
    """``packed=True``: 2-bit codes by all-gather, same averaged gradient as the int8 hook."""
    _spawn_two(tmp_path, _packed_body)
