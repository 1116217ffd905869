"""``lbcnn-lenet5`` is a built-in model name: its files load without a skeleton and
regenerate the same binary filters; bad arguments in a file are ``FormatError``."""

import json

import pytest
import torch

import nncompress
from nncompress.errors import FormatError
from nncompress.format.container import pack_container, unpack_container
from nncompress.models import LBConv2d, build_model


def test_lbcnn_lenet5_loads_by_name(tmp_path):
    model = build_model("lbcnn-lenet5", mid_channels=8, seed=3).eval()
    path = tmp_path / "lb.nnc"
    nncompress.save(model, path)
    assert nncompress.read_info(path).arch == {"name": "lbcnn-lenet5", "kwargs": {"mid_channels": 8, "seed": 3}}
    loaded = nncompress.load(path)  # no skeleton
    assert isinstance(loaded.conv1, LBConv2d) and torch.equal(loaded.conv2.anchors, model.conv2.anchors)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("kwargs", [{"sparsity": 5.0}, {"bogus": 1}, {"mid_channels": 10**7}])
def test_bad_arguments_in_a_file(tmp_path, kwargs):
    path = tmp_path / "lb.nnc"
    nncompress.save(build_model("lbcnn-lenet5", mid_channels=4).eval(), path)
    c = unpack_container(path.read_bytes())
    meta = json.loads(json.dumps(c.meta))
    meta["arch"]["kwargs"] = kwargs
    path.write_bytes(pack_container(meta, c.sections))
    with pytest.raises(FormatError, match="lbcnn-lenet5"):
        nncompress.load(path)
