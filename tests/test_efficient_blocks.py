"""Efficient blocks (depthwise separable, ShuffleNet unit, fire, bottleneck) and the small
nets built from them: parameter/MAC formulas, channel shuffle order, shapes, registry and
``.nnc`` round trip, argument validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import nncompress
from nncompress.errors import ConfigError
from nncompress.models import arch_of, build_model
from nncompress.models.blocks import (
    Bottleneck,
    DepthwiseSeparable,
    Fire,
    ShuffleUnit,
    channel_shuffle,
)

EFFICIENT = ["mobilenet-small", "shufflenet-small", "squeezenet-small"]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def macs(m: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        m.eval()(x)
    return counter.get_total_flops() // 2


def test_depthwise_separable_params_and_macs_match_formula():
    c, o = 8, 16
    block = DepthwiseSeparable(c, o)
    conv_weights = 9 * c + c * o  # 72 + 128
    bn = 2 * c + 2 * o
    assert n_params(block) == conv_weights + bn == 248
    standard = nn.Conv2d(c, o, 3, padding=1, bias=False)
    assert n_params(standard) == 9 * c * o == 1152
    # MACs on a 10x10 map (BN/ReLU are not counted): (9C + CO) * H * W
    assert macs(block, torch.zeros(1, c, 10, 10)) == (9 * c + c * o) * 100 == 20000
    assert macs(standard, torch.zeros(1, c, 10, 10)) == 9 * c * o * 100


def test_shuffle_unit_params_match_formula():
    # stride 2: 24 -> 96, mid 96/4 = 24, branch 96 - 24 = 72, groups 3
    s2 = ShuffleUnit(24, 96, groups=3, stride=2)
    assert n_params(s2) == (24 * 24 // 3 + 9 * 24 + 24 * 72 // 3) + 2 * (24 + 24 + 72) == 1224
    # stride 1: 96 -> 96, mid 24, branch 96
    s1 = ShuffleUnit(96, 96, groups=3, stride=1)
    assert n_params(s1) == (96 * 24 // 3 + 9 * 24 + 24 * 96 // 3) + 2 * (24 + 24 + 96) == 2040
    # grouping divides the 1x1 weights by g: groups=1 has 3x the 1x1 weights
    g1 = ShuffleUnit(96, 96, groups=1, mid_ch=24)
    assert n_params(g1) - n_params(s1) == (96 * 24 + 24 * 96) * 2 // 3


def test_fire_params_match_formula():
    block = Fire(16, 8, 16, 16)
    assert n_params(block) == (16 * 8 + 8) + (8 * 16 + 16) + (9 * 8 * 16 + 16) == 1448
    bn = Fire(16, 8, 16, 16, batch_norm=True)  # biases replaced by BN scale + shift
    assert n_params(bn) == (16 * 8 + 8 * 16 + 9 * 8 * 16) + 2 * (8 + 16 + 16) == 1488


def test_bottleneck_params_match_formula():
    proj = Bottleneck(32, 8, 64, stride=2)
    assert n_params(proj) == (32 * 8 + 9 * 8 * 8 + 8 * 64 + 32 * 64) + 2 * (8 + 8 + 64 + 64) == 3680
    ident = Bottleneck(64, 16, 64)
    assert isinstance(ident.shortcut, nn.Identity)
    assert n_params(ident) == (64 * 16 + 9 * 16 * 16 + 16 * 64) + 2 * (16 + 16 + 64) == 4544


def test_channel_shuffle_exact_order_and_inverse():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    assert torch.equal(channel_shuffle(x, 1), x)
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 12, 3, 3, generator=g)
    for groups in (2, 3, 4, 6):
        shuffled = channel_shuffle(y, groups)
        assert not torch.equal(shuffled, y)
        # a permutation of whole channels
        assert sorted(shuffled[0, :, 0, 0].tolist()) == sorted(y[0, :, 0, 0].tolist())
        assert torch.equal(channel_shuffle(shuffled, 12 // groups), y)


@pytest.mark.parametrize("block, x_shape, out_shape", [
    (DepthwiseSeparable(8, 16, 1), (2, 8, 14, 14), (2, 16, 14, 14)),
    (DepthwiseSeparable(8, 16, 2), (2, 8, 14, 14), (2, 16, 7, 7)),
    (ShuffleUnit(24, 24, 3, 1), (2, 24, 14, 14), (2, 24, 14, 14)),
    (ShuffleUnit(24, 96, 3, 2), (2, 24, 14, 14), (2, 96, 7, 7)),
    (Fire(16, 8, 16, 24), (2, 16, 14, 14), (2, 40, 14, 14)),
    (Fire(16, 8, 16, 24, batch_norm=True), (2, 16, 14, 14), (2, 40, 14, 14)),
    (Bottleneck(16, 4, 16, 1), (2, 16, 14, 14), (2, 16, 14, 14)),
    (Bottleneck(16, 4, 32, 2), (2, 16, 14, 14), (2, 32, 7, 7)),
])
def test_block_output_shapes(block, x_shape, out_shape):
    assert block(torch.randn(x_shape)).shape == out_shape


def test_shuffle_unit_stride2_keeps_pooled_input_first():
    unit = ShuffleUnit(6, 24, groups=3, stride=2).eval()
    x = torch.rand(1, 6, 8, 8)  # non-negative, so relu keeps the pooled input as is
    out = unit(x)
    assert torch.allclose(out[:, :6], nn.functional.avg_pool2d(x, 3, 2, 1))


@pytest.mark.parametrize("name", EFFICIENT)
def test_registered_model_builds_runs_and_round_trips(tmp_path, name):
    torch.manual_seed(0)
    model = build_model(name, width=0.5)
    assert arch_of(model) == {"name": name, "kwargs": {"width": 0.5}}
    model.train()
    model(torch.randn(8, 1, 28, 28))  # move BN running statistics away from their defaults
    model.eval()
    x = torch.randn(2, 1, 28, 28)
    out = model(x)
    assert out.shape == (2, 10)
    nncompress.save(model, tmp_path / f"{name}.nnc")
    back = nncompress.load(tmp_path / f"{name}.nnc")
    assert type(back) is type(model)
    assert torch.equal(back(x), out)
    groups = [m.groups for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [m.groups for m in back.modules() if isinstance(m, nn.Conv2d)] == groups
    assert name == "squeezenet-small" or max(groups) > 1  # grouped/depthwise convs were loaded


def test_width_and_groups_change_the_models():
    assert n_params(build_model("mobilenet-small", width=0.5)) < n_params(build_model("mobilenet-small"))
    assert n_params(build_model("squeezenet-small", width=2.0)) > n_params(build_model("squeezenet-small"))
    paper = build_model("squeezenet-small", batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in paper.modules())
    assert paper(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    g3, g1 = build_model("shufflenet-small", groups=3), build_model("shufflenet-small", groups=1)
    assert n_params(g3) < n_params(g1)
    assert build_model("shufflenet-small", groups=4, width=0.5)(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize("make, words", [
    (lambda: DepthwiseSeparable(0, 4), "in_ch"),
    (lambda: DepthwiseSeparable(4, 8, stride=3), "stride"),
    (lambda: channel_shuffle(torch.zeros(1, 6, 2, 2), 4), "groups=4"),
    (lambda: ShuffleUnit(24, 96, groups=5, stride=2), "groups=5"),
    (lambda: ShuffleUnit(24, 48, groups=3, stride=1), "in_ch (24)"),
    (lambda: ShuffleUnit(96, 48, groups=3, stride=2), "out_ch (48)"),
    (lambda: ShuffleUnit(24, 24, groups=3, mid_ch=4), "mid_ch = 4"),
    (lambda: Fire(16, 0, 8, 8), "squeeze"),
    (lambda: Bottleneck(16, 4, 16, stride=0), "stride"),
    (lambda: build_model("mobilenet-small", width=0), "width"),
    (lambda: build_model("shufflenet-small", groups=0), "groups"),
    (lambda: build_model("squeezenet-small", depth=3), "depth"),
])
def test_bad_arguments_raise_config_error(make, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        make()
