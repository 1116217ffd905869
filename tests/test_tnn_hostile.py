"""Activation parameters read from a file: TNN's ternary levels and the calibrated ranges
of the affine/linear/log quantizers beyond ``MAX_ACT_VALUE`` (2^32), or ternary levels off
the two shapes ``fit`` produces, are refused at load with a ``FormatError`` naming the
value and the bound; the same bound refuses the calibration."""

import json

import pytest
import torch

import nncompress
from nncompress.errors import ConfigError, FormatError
from nncompress.format.container import pack_container, unpack_container
from nncompress.models import build_model
from nncompress.quantize.activations import make_activation
from nncompress.quantize.api import apply_activation_spec
from nncompress.quantize.tnn_method import MAX_LEVEL, TernaryAct


def _file_with(tmp_path, **levels):
    torch.manual_seed(0)
    model = build_model("lenet300")
    apply_activation_spec(model, {"fc2": {"kind": "ternary", "delta": 0.5, "alpha": 1.0, "center": 1.0}})
    path = tmp_path / "t.nnc"
    nncompress.save(model, path)
    assert nncompress.load(path) is not None  # the genuine file loads
    c = unpack_container(path.read_bytes())
    meta = json.loads(json.dumps(c.meta))
    meta["activations"]["fc2"].update(levels)
    path.write_bytes(pack_container(meta, c.sections))
    return path


@pytest.mark.parametrize("levels, words", [
    ({"alpha": 2.0**40}, ["alpha=1099511627776.0", "bound 4294967296.0"]),  # the reported file
    ({"alpha": 2.0**40, "center": 2.0**40, "delta": 2.0**39}, ["alpha=1099511627776.0", "bound 4294967296.0"]),
    ({"alpha": 1.0, "center": 0.0, "delta": 2.0**33}, ["delta=8589934592.0", "bound"]),
    ({"alpha": 1.0, "center": -2.0**35, "delta": 0.5}, ["center=-34359738368.0", "bound"]),
    ({"alpha": 1.0, "center": 5.0, "delta": 100.0}, ["center=5.0", "alpha=1.0", "delta=100.0", "allowed"]),
    ({"alpha": 1.0, "center": 0.0, "delta": 3.0}, ["delta=3.0 > alpha=1.0"]),
])
def test_implausible_levels_in_a_file_are_refused_by_name(tmp_path, levels, words):
    path = _file_with(tmp_path, **levels)
    with pytest.raises(FormatError) as err:
        nncompress.load(path)
    for word in words:
        assert word in str(err.value)


def test_the_largest_allowed_level_loads(tmp_path):
    path = _file_with(tmp_path, alpha=MAX_LEVEL, center=MAX_LEVEL, delta=MAX_LEVEL / 2)
    nncompress.load(path)


def test_a_calibration_beyond_the_bound_is_refused():
    q = TernaryAct()
    q.calibrating = True
    q(torch.tensor([0.0, 1e10, 3e10]))  # non-negative inputs far beyond 2^32
    q.calibrating = False
    with pytest.raises(ConfigError, match="exceeds the bound"):
        q.fit()
    ok = TernaryAct()
    ok.calibrating = True
    ok(torch.tensor([0.0, 1.0, 2.0, 2.0]))
    ok.calibrating = False
    ok.fit()
    assert (ok.delta, ok.alpha, ok.center) == (0.5, 1.0, 1.0)


@pytest.mark.parametrize("kind", ["affine", "linear", "log"])
@pytest.mark.parametrize("edit, word", [({"hi": 2**40}, "hi=1099511627776.0"), ({"lo": -(2.0**33)}, "lo=-8589934592.0")])
def test_calibrated_ranges_beyond_the_bound_are_refused(tmp_path, kind, edit, word):
    """The same bound for the ranges of the calibrated quantizers: a fuzz edit of 'hi' to
    2^40 loaded as a different model before."""
    torch.manual_seed(0)
    model = build_model("lenet300")
    apply_activation_spec(model, {"fc2": {"kind": kind, "bits": 5, "lo": 0.0, "hi": 4.0}})
    path = tmp_path / "a.nnc"
    nncompress.save(model, path)
    c = unpack_container(path.read_bytes())
    meta = json.loads(json.dumps(c.meta))
    meta["activations"]["fc2"].update(edit)
    path.write_bytes(pack_container(meta, c.sections))
    with pytest.raises(FormatError, match="exceeds the bound 4294967296.0") as err:
        nncompress.load(path)
    assert word in str(err.value)


def test_a_calibrated_range_beyond_the_bound_is_refused_before_training():
    q = make_activation({"kind": "affine", "bits": 8})
    q.calibrating = True
    q(torch.tensor([0.0, 1e10]))
    q.calibrating = False
    with pytest.raises(ConfigError, match="hi=10000000000.0 exceeds the bound"):
        q(torch.tensor([1.0]))
