"""Packings store the real bits and decode exactly; codecs plug into the .nnc format."""

import math

import pytest
import torch

from nncompress.errors import ConfigError
from nncompress.quantize.packing import (
    decode_binary,
    decode_int,
    decode_lut,
    decode_pow2,
    decode_shift,
    encode_binary,
    encode_int,
    encode_lut,
    encode_pow2,
    encode_shift,
)
from nncompress.quantize.pow2 import inq_quantize, shift_quantize
from nncompress.quantize.ternary import twn_quantize


def test_binary_is_one_bit_plus_channel_scales():
    w = torch.tensor([[0.5, -0.5, 0.5], [-2.0, -2.0, 2.0]])
    p = encode_binary(w)
    assert p.sections["signs"] == bytes([0b10100100])  # 1 0 1 | 0 0 1, MSB first
    assert len(p.sections["scale"]) == 2 * 4
    assert p.meta["bits"] == {"weights": 8, "index": 0, "other": 64}
    assert torch.equal(decode_binary(p, [2, 3]), w)
    with pytest.raises(ConfigError, match="not binary"):
        encode_binary(torch.tensor([[0.5, 0.25]]))


def test_ternary_lut_uses_two_bits():
    torch.manual_seed(0)
    w = twn_quantize(torch.randn(64, 50))
    p = encode_lut(w, huffman="no")
    assert p.meta["k"] == 3 and p.meta["width"] == 2
    assert len(p.sections["codes"]) == math.ceil(64 * 50 * 2 / 8)
    assert torch.equal(decode_lut(p, [64, 50]), w)
    ph = encode_lut(w, huffman="yes")
    assert ph.meta["stream"] == "huffman" and torch.equal(decode_lut(ph, [64, 50]), w)


def test_lut_per_channel_codebooks():
    w = torch.tensor([[1.0, -1.0, 0.0], [3.0, 3.0, -2.0]])
    p = encode_lut(w, per_channel=True, huffman="no")
    assert p.meta["k"] == 3 and torch.equal(decode_lut(p, [2, 3]), w)


def test_int_roundtrip_with_given_scales_is_exact():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    s = (w.abs().amax(dim=1) / 127).tolist()
    q = torch.round(w / torch.tensor(s)[:, None]).clamp(-127, 127)
    exact = ((q + 128) - 128) * torch.tensor(s)[:, None]
    p = encode_int(exact, bits=8, scale=s, zero_point=[128] * 8)
    assert len(p.sections["codes"]) == 8 * 16
    assert torch.equal(decode_int(p, [8, 16]), exact)
    with pytest.raises(ConfigError, match="bits=20"):
        encode_int(w, bits=20)


def test_pow2_codes_and_width():
    w = inq_quantize(torch.randn(300) * 0.2, 0, -7)
    p = encode_pow2(w, n_max=0, n_min=-7, bits=5, huffman="no")
    assert p.meta["width"] == 5 and len(p.sections["codes"]) == math.ceil(300 * 5 / 8)
    assert torch.equal(decode_pow2(p, [300]), w)
    with pytest.raises(ConfigError, match="not 0 or"):
        encode_pow2(torch.tensor([0.3]))


def test_shift_codes_n_times_b_bits():
    torch.manual_seed(0)
    w = shift_quantize(torch.randn(10, 20), 2, 4, per_channel=True)
    p = encode_shift(w, n=2, bits=4, per_channel=True, huffman="no")
    assert len(p.sections["codes"]) == 10 * 20 * 2 * 4 // 8
    assert torch.equal(decode_shift(p, [10, 20]), w)


def test_codecs_write_exact_files(tmp_path):
    import nncompress.format as nnc
    from nncompress.models import build_model
    from nncompress.quantize import codecs  # noqa: F401

    model = build_model("lenet300")
    with torch.no_grad():
        model.fc1.weight.copy_(twn_quantize(model.fc1.weight))
    info = nnc.save(model, tmp_path / "m.nnc", codecs={"fc1.weight": ("lut", {"huffman": "no"})})
    entry = next(t for t in info.tensors if t.name == "fc1.weight")
    assert entry.codec == "lut"
    bits = entry.meta["bits"]
    assert 8 * entry.nbytes == bits["weights"] + bits["other"]
    assert bits["weights"] == 8 * math.ceil(300 * 784 * 2 / 8)
    loaded = nnc.load(tmp_path / "m.nnc")
    assert torch.equal(loaded.fc1.weight, model.fc1.weight)
