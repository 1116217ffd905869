"""E4 local binary convolution: fixed sparse binary filters from a seed, only the 1x1
weights stored; the file regenerates the exact filters."""

import pytest
import torch

import nncompress
from nncompress.errors import ConfigError
from nncompress.models import LeNet5
from nncompress.models.lbcnn import LBConv2d, binary_filters, lbcnn_lenet5


def test_filters_are_binary_sparse_and_seeded():
    f = binary_filters(64, 8, 3, 0.3, 7)
    assert set(f.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert abs(f.ne(0).float().mean().item() - 0.3) < 0.05
    assert torch.equal(f, binary_filters(64, 8, 3, 0.3, 7)) and not torch.equal(f, binary_filters(64, 8, 3, 0.3, 8))


def test_only_the_1x1_weights_are_learned_and_stored():
    layer = LBConv2d(4, 6, 3, mid_channels=10)
    assert {n for n, _ in layer.named_parameters()} == {"mix.weight", "mix.bias"}
    assert set(layer.state_dict()) == {"mix.weight", "mix.bias"}


def test_file_regenerates_the_exact_binary_filters(tmp_path):
    torch.manual_seed(0)
    model = lbcnn_lenet5(mid_channels=12, seed=5).eval()
    nncompress.save(model, tmp_path / "lb.nnc", input_shape=[1, 28, 28])
    skeleton = LeNet5()
    loaded = nncompress.load(tmp_path / "lb.nnc", model=skeleton)
    assert isinstance(loaded.conv2, LBConv2d)
    assert torch.equal(loaded.conv1.anchors, model.conv1.anchors) and torch.equal(loaded.conv2.anchors,
                                                                                   model.conv2.anchors)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))


def test_bad_sparsity_is_refused():
    with pytest.raises(ConfigError, match="sparsity=0 out of range"):
        LBConv2d(1, 2, 3, sparsity=0)
