"""What techniques remember about a model lives in one typed ModelState, not in loose
private attributes, and travels with copy.deepcopy."""

import copy

import nncompress
from nncompress.decompose import decompose
from nncompress.format import set_codec_hints
from nncompress.models import arch_of, build_model
from nncompress.state import ModelState, model_state


def _private(model):
    return sorted(k for k in vars(model) if k.startswith("_nncompress"))


def test_one_typed_place_after_several_techniques(tmp_path):
    model = build_model("lenet5")
    assert isinstance(model_state(model), ModelState) and model_state(model).arch["name"] == "lenet5"
    decompose(model, {"fc1": {"method": "svd", "rank": 4}})
    set_codec_hints(model, {"fc2.weight": "raw"})
    assert _private(model) == ["_nncompress_state"]
    state = model_state(model)
    assert set(state.lowrank) == {"fc1"} and state.codec_hints == {"fc2.weight": "raw"}
    twin = copy.deepcopy(model)
    assert model_state(twin) == state and model_state(twin) is not state
    nncompress.save(model, tmp_path / "m.nnc")
    back = nncompress.load(tmp_path / "m.nnc")
    assert arch_of(back) == arch_of(model) and set(model_state(back).lowrank) == {"fc1"}


def test_a_plain_module_has_no_state_until_a_technique_writes_one():
    from torch import nn

    m = nn.Linear(3, 2)
    assert model_state(m) is None and arch_of(m) is None and _private(m) == []
    set_codec_hints(m, {"weight": "raw"})
    assert _private(m) == ["_nncompress_state"] and model_state(m).codec_hints == {"weight": "raw"}
