"""Residual block removal (depth pruning): exactness, choice by damage, accounting, format."""

import copy

import pytest
import torch
from torch import nn

import nncompress
from nncompress.errors import ConfigError
from nncompress.models import build_model
from nncompress.models.resnet import BasicBlock
from nncompress.prune.structured import ScoreData, layer_costs, structured_prune
from nncompress.prune.structured.blocks import (
    ResidualShortcut,
    affine_from_moments,
    block_damage,
    least_damaging_blocks,
    remove_blocks,
    removed_blocks,
    residual_blocks,
)
from nncompress.prune.structured.cost import total

G = torch.Generator().manual_seed(0)
X = torch.randn(48, 1, 28, 28, generator=G)
Y = torch.randint(0, 10, (48,), generator=G)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("resnet20")
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the branch means are not 0
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.bias.uniform_(-0.3, 0.3)
    return model.eval()


def _silence(block: BasicBlock) -> None:
    """Make the block's branch output a per-channel constant (conv2 weights 0)."""
    with torch.no_grad():
        block.conv2.weight.zero_()


class AffineBranchBlock(nn.Module):
    """A residual block whose branch is an exact per-channel line of its input."""

    def __init__(self, channels: int):
        super().__init__()
        self.shortcut = nn.Identity()
        self.scale = nn.Parameter(torch.linspace(-0.5, 0.8, channels).view(1, -1, 1, 1))
        self.shift = nn.Parameter(torch.linspace(0.3, -0.2, channels).view(1, -1, 1, 1))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x + self.shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.branch(x) + self.shortcut(x))


class LineNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block = AffineBranchBlock(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.stem(x))).mean(dim=(2, 3)))


def test_affine_fit_recovers_a_line_and_falls_back_to_the_mean():
    s = torch.randn(1000, 3, generator=G) * torch.tensor([1.0, 2.0, 0.0]) + 1.0  # channel 2: constant shortcut
    b = s * torch.tensor([0.5, -0.25, 3.0]) + torch.tensor([1.0, 2.0, -1.0]) + \
        torch.tensor([0.0, 0.0, 1.0]) * torch.randn(1000, 3, generator=G)
    moments = (len(s), s.sum(0), b.sum(0), (s * s).sum(0), (s * b).sum(0))
    scale, shift = affine_from_moments(*moments, fit="affine")
    torch.testing.assert_close(scale[:2], torch.tensor([1.5, 0.75]), rtol=0, atol=1e-5)
    torch.testing.assert_close(shift[:2], torch.tensor([1.0, 2.0]), rtol=0, atol=1e-5)
    assert scale[2] == 1.0 and torch.isclose(shift[2], b[:, 2].mean())  # no line through a constant: the mean
    scale, shift = affine_from_moments(*moments, fit="mean")
    assert torch.equal(scale, torch.ones(3)) and torch.allclose(shift, b.mean(0))
    with pytest.raises(ConfigError, match="fit='ols'"):
        affine_from_moments(*moments, fit="ols")


def test_removing_a_line_branch_is_exact_with_the_affine_fit_only():
    torch.manual_seed(0)
    model = LineNet().eval()
    before = model(X)
    mean_fit = remove_blocks(copy.deepcopy(model), ["block"], X, fit="mean")
    assert not torch.allclose(mean_fit(X), before, atol=1e-3)
    remove_blocks(model, ["block"], X)  # the default fit
    torch.testing.assert_close(model(X), before, rtol=0, atol=1e-5)


@torch.no_grad()
def test_affine_fit_reconstructs_the_block_output_at_least_as_well_as_the_mean():
    model = _model()
    h = model.layers[:5](torch.relu(model.bn1(model.conv1(X))))
    want = model.layers[5].branch(h) + model.layers[5].shortcut(h)  # pre-ReLU output of the block
    errors = {}
    for fit in ("mean", "affine"):
        trial = remove_blocks(copy.deepcopy(model), ["layers.5"], X, fit=fit)
        shell = trial.layers[5]
        errors[fit] = float((shell.affine(shell.shortcut(h)) - want).pow(2).mean())
    assert errors["affine"] <= errors["mean"] * (1 + 1e-6)
    dmg = {fit: block_damage(model, X, Y, ["layers.5"], fit=fit)["layers.5"] for fit in ("mean", "affine")}
    assert dmg["mean"] != dmg["affine"]


def test_blocks_are_found_in_module_order():
    assert residual_blocks(_model()) == [f"layers.{i}" for i in range(9)]


def test_removing_a_constant_branch_is_exact():
    model = _model()
    _silence(model.layers[4])
    before = model(X)
    remove_blocks(model, ["layers.4"], X)
    assert isinstance(model.layers[4], ResidualShortcut)
    assert removed_blocks(model) == ["layers.4"]
    torch.testing.assert_close(model(X), before, rtol=0, atol=1e-5)


def test_mean_fit_shift_is_the_branch_mean_per_channel():
    model = _model()
    block = model.layers[7]
    h = model.layers[:7](torch.relu(model.bn1(model.conv1(X))))
    want = block.branch(h).mean(dim=(0, 2, 3))
    remove_blocks(model, ["layers.7"], X, fit="mean")
    torch.testing.assert_close(model.layers[7].affine.bias.detach(), want, rtol=0, atol=1e-5)
    assert torch.equal(model.layers[7].affine.weight, torch.ones_like(model.layers[7].affine.weight))


def test_damage_is_zero_for_a_constant_branch_and_it_goes_first():
    model = _model()
    _silence(model.layers[2])
    dmg = block_damage(model, X, Y)
    assert set(dmg) == set(residual_blocks(model))
    assert abs(dmg["layers.2"]) < 1e-5
    assert least_damaging_blocks({**dmg, "layers.2": -1.0}, 1) == ["layers.2"]
    assert isinstance(model.layers[2], BasicBlock)  # measuring did not change the model


def test_removal_saves_the_branch_macs():
    model = _model()
    before = total(layer_costs(model, X[:1]), "macs")
    block_macs = sum(c.macs for c in layer_costs(model, X[:1])
                     if c.name.startswith("layers.5.") and "shortcut" not in c.name)
    remove_blocks(model, ["layers.5"], X)
    after = total(layer_costs(model, X[:1]), "macs")
    affine = 32 * 14 * 14  # the depthwise scale+shift: one MAC per output value
    assert before - after == block_macs - affine


def test_structured_prune_counts_blocks_in_the_target_and_round_trips(tmp_path):
    model = _model()
    x, y = X[:32], Y[:32]
    res = structured_prune(model, "l1", 0.5, "macs", ScoreData(x, y, held_out_x=X[32:], held_out_y=Y[32:]),
                           example_inputs=X[:1], blocks=1, keep_coupled=True)
    assert len(res.blocks) == 1 and removed_blocks(model) == list(res.blocks)
    assert res.mac_reduction >= 2.0
    # keep_coupled: the residual stream keeps its 16/32/64 channels
    widths = [b.conv2.out_channels for b in model.layers if isinstance(b, BasicBlock)]
    assert set(widths) == {16, 32, 64} and model.fc.in_features == 64
    assert any(b.conv1.out_channels < b.conv2.out_channels for b in model.layers if isinstance(b, BasicBlock))
    path = tmp_path / "depth.nnc"
    nncompress.save(model, path)
    back = nncompress.load(path).eval()
    assert removed_blocks(back) == removed_blocks(model)
    assert torch.equal(back(X), model(X))


class UserNet(nn.Module):
    """A model nncompress did not build: two blocks behind a stem."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.a = BasicBlock(8, 8, 8)
        self.b = BasicBlock(8, 8, 16, stride=2)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.b(self.a(torch.relu(self.stem(x)))).mean(dim=(2, 3)))


def test_one_block_name_as_a_string():
    model = _model()
    res = structured_prune(model, "l1", 0.2, data=ScoreData(X, Y), example_inputs=X[:1], blocks="layers.4")
    assert list(res.blocks) == ["layers.4"] and removed_blocks(model) == ["layers.4"]


def test_user_model_loads_into_a_skeleton(tmp_path):
    torch.manual_seed(1)
    model = UserNet().eval()
    remove_blocks(model, ["b"], X, fit="affine")  # a projection shortcut stays; scale and shift are stored
    path = tmp_path / "user.nnc"
    nncompress.save(model, path)
    back = nncompress.load(path, model=UserNet()).eval()
    assert isinstance(back.b, ResidualShortcut)
    assert torch.equal(back(X), model(X))


def test_residual_channels_are_pruned_through_a_removed_block(tmp_path):
    model = _model()
    remove_blocks(model, ["layers.1"], X)
    res = structured_prune(model, "l1", 0.4, "macs", example_inputs=X[:1], data=ScoreData(X, Y))
    assert res.mac_reduction >= 1 / 0.6
    stream = model.layers[1].affine.num_features  # the stage-1 residual stream, through the shell
    assert stream == model.conv1.out_channels == model.layers[0].conv2.out_channels
    path = tmp_path / "thin.nnc"
    nncompress.save(model, path)
    assert torch.equal(nncompress.load(path).eval()(X), model.eval()(X))


def test_bad_requests_are_rejected():
    model = _model()
    data = ScoreData(X, Y)
    with pytest.raises(ConfigError, match="not removable"):
        remove_blocks(model, ["fc"], X)
    with pytest.raises(ConfigError, match="twice"):
        remove_blocks(model, ["layers.1", "layers.1"], X)
    with pytest.raises(ConfigError, match="out of range"):
        least_damaging_blocks({"a": 0.1}, 2)
    with pytest.raises(ConfigError, match="needs data"):
        structured_prune(model, "l1", 0.5, example_inputs=X[:1], blocks=1)
    with pytest.raises(ConfigError, match="latency"):
        structured_prune(model, "l1", 0.5, "latency", data, example_inputs=X[:1], blocks=1)
    with pytest.raises(ConfigError, match="optimizer"):
        structured_prune(model, "l1", 0.5, data=data, example_inputs=X[:1], blocks=1,
                         optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ConfigError, match="blocks=-1"):
        structured_prune(model, "l1", 0.5, data=data, example_inputs=X[:1], blocks=-1)
    with pytest.raises(ConfigError, match="block_fit='lsq'"):
        structured_prune(model, "l1", 0.5, data=data, example_inputs=X[:1], blocks=1, block_fit="lsq")
    with pytest.raises(ConfigError, match="fit='lsq'"):
        remove_blocks(model, ["layers.1"], X, fit="lsq")
    with pytest.raises(ConfigError, match="blocks=True"):
        structured_prune(model, "l1", 0.5, data=data, example_inputs=X[:1], blocks=True)
    with pytest.raises(ConfigError, match="energy-aware"):
        structured_prune(model, "energy-aware", 0.5, data=data, example_inputs=X[:1], blocks=1)
    assert removed_blocks(model) == []  # nothing was half-done
