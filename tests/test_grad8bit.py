"""Q18 8-bit approximate gradients: the dynamic tree data type, nearest-value encoding within
the scheme's error bound, 4x less traffic than fp32, and the DDP hook on 2 gloo processes."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from nncompress.distributed.grad8bit import (
    Grad8bitState,
    code_table,
    decode_8bit,
    encode_8bit,
    error_bound,
    grad8bit_hook,
)
from nncompress.errors import ConfigError


def test_dynamic_table_layout():
    t = code_table("dynamic").double()
    assert t[0] == 0 and t[0x80] == 0
    assert torch.equal(t[0x80:], -t[:0x80])  # sign bit
    pos = t[1:0x80]
    assert len(pos.unique()) == 127 and (pos > 0).all() and pos.max() < 1
    # e leading zeros after the sign -> values in [0.1, 1] * 10^-e, 2^(6-e) of them
    for e in range(7):
        lo, hi = 1 << (6 - e), 1 << (7 - e)  # codes with exactly e leading zeros in 7 bits
        v = pos[lo - 1:hi - 1]
        assert len(v) == 1 << (6 - e)
        assert (v > 0.1 * 10.0**-e).all() and (v < 10.0**-e).all()
        assert torch.allclose(v.diff(), torch.full_like(v.diff(), 0.9 * 10.0**-e / len(v)))  # linear bins
    lin = code_table("linear")
    assert torch.equal(lin[128:], torch.arange(128) / 127.0)


@pytest.mark.parametrize("kind", ["dynamic", "linear"])
def test_encoding_is_nearest_and_within_the_bound(kind):
    g = torch.randn(5000, generator=torch.Generator().manual_seed(0)) * torch.logspace(-6, 0, 5000)
    codes, m = encode_8bit(g, kind)
    assert codes.dtype == torch.uint8 and codes.numel() == g.numel() and float(m) == float(g.abs().max())
    dec = decode_8bit(codes, m, kind)
    err = (dec - g).abs()
    table = code_table(kind).double() * float(m)
    best = (g.double()[:, None] - table[None, :]).abs().min(1).values  # brute-force nearest value
    assert torch.allclose(err.double(), best, rtol=1e-5, atol=1e-6 * float(m))
    assert (err <= error_bound(g, kind) * (1 + 1e-5) + 1e-7 * float(m)).all()
    if kind == "dynamic":  # relative precision where linear int8 loses small values
        small = g.abs() < 1e-3 * float(m)
        lin_err = (decode_8bit(*encode_8bit(g, "linear"), "linear") - g).abs()
        assert err[small].mean() < 0.1 * lin_err[small].mean()


def test_zero_tensor_and_bad_input():
    codes, m = encode_8bit(torch.zeros(7))
    assert float(m) == 0 and torch.equal(decode_8bit(codes, m), torch.zeros(7))
    with pytest.raises(ConfigError, match="kind"):
        encode_8bit(torch.ones(2), "fp8")
    with pytest.raises(ConfigError, match="uint8"):
        decode_8bit(torch.zeros(2, dtype=torch.int8), 1.0)
    with pytest.raises(ConfigError, match="kind"):
        Grad8bitState(kind="tree")


def _in_gloo_group(rank: int, world: int, init_file: str, body) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        body(rank, world)
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    os._exit(0)  # no C++ teardown (see tests/test_terngrad.py)


def _hook_body(rank: int, world: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    local = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    local.load_state_dict(model.state_dict())
    ddp = nn.parallel.DistributedDataParallel(model)
    state = Grad8bitState()
    ddp.register_comm_hook(state, grad8bit_hook)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(10 + rank))
    ddp(x).pow(2).sum().backward()
    local(x).pow(2).sum().backward()
    n = sum(p.numel() for p in model.parameters())
    k = len(list(model.parameters()))
    assert state.elements == n and state.bytes_sent == n + 4 * k  # 1 byte a gradient + fp32 scales
    assert 4 * n / state.bytes_sent > 3.5  # vs fp32's 4 n bytes (4x as n grows)
    for p_ddp, p_local in zip(model.parameters(), local.parameters(), strict=True):
        g = p_local.grad
        mine = [torch.zeros_like(g) for _ in range(world)]
        dist.all_gather(mine, g)
        exact = torch.stack(mine).mean(0)
        bound = torch.stack([error_bound(t).reshape(g.shape) for t in mine]).mean(0)
        assert ((p_ddp.grad - exact).abs() <= bound * (1 + 1e-5) + 1e-7).all()
        want = torch.stack([decode_8bit(*encode_8bit(t)).reshape(g.shape) for t in mine]).sum(0) / world
        assert torch.allclose(p_ddp.grad, want, rtol=0, atol=1e-7)
        same = [torch.zeros_like(g) for _ in range(world)]
        dist.all_gather(same, p_ddp.grad)
        assert all(torch.equal(a, same[0]) for a in same)  # bit-identical on every rank


@pytest.mark.slow  # two processes start and import torch (~17 s on the shared 2-core machine)
def test_ddp_hook_two_gloo_processes(tmp_path):
    mp.spawn(_in_gloo_group, args=(2, str(tmp_path / "init"), _hook_body), nprocs=2, join=True)
