"""Block floating point (Q15): round trip, error bound, edge blocks, idempotence, errors."""

import pytest
import torch

from nncompress.errors import ConfigError
from nncompress.quantize.bfp import (
    bfp_bits_per_value,
    bfp_dequantize,
    bfp_max_relative_error,
    bfp_quantize,
    bfp_round,
    bfp_storage_bits,
)


def test_exact_round_trip_of_representable_values():
    # 8-bit mantissas, step 2^-4 in block 0 and 2^2 in block 1: all values representable
    m = torch.tensor([[127, -3, 0, 64], [-100, 5, 1, -1]], dtype=torch.int8)
    e = torch.tensor([[3, 9]], dtype=torch.int8).reshape(1, 2)
    x = bfp_dequantize(m.reshape(1, 8), e, mantissa_bits=8, block=4)
    m2, e2 = bfp_quantize(x, mantissa_bits=8, block=4)
    assert torch.equal(m2, m.reshape(1, 8)) and torch.equal(e2, e)
    assert torch.equal(bfp_round(x, 8, 4), x)


def test_hand_computed_block():
    # max 1.0, b=4: qmax 7, step 2^ceil(log2(1/7)) = 0.25, e = -2 + 3 = 1
    m, e = bfp_quantize(torch.tensor([1.0, -0.5, 0.3, 0.1]), mantissa_bits=4, block=4)
    assert m.tolist() == [4, -2, 1, 0] and e.tolist() == [1]


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("block", [1, 5, 16, None])
def test_error_within_half_step_per_block(bits, block):
    x = torch.randn(6, 37) * torch.logspace(-3, 2, 37)  # very different scales per column
    m, e = bfp_quantize(x, bits, block)
    q = bfp_dequantize(m, e, bits, block, dtype=torch.float64)
    qmax = 2 ** (bits - 1) - 1
    assert int(m.abs().max()) <= qmax  # no overflow
    eb = e.to(torch.float64)
    if block is None:
        half = (2.0 ** (eb - (bits - 1)) / 2).expand(x.shape)
    else:
        half = (2.0 ** (eb - (bits - 1)) / 2).repeat_interleave(block, -1)[:, :37]
    err = (x.double() - q).abs()
    assert (err <= half * (1 + 1e-12)).all()
    # relative to each block's max: < 1/(2^(b-1)-1)
    peak = x.double().abs().max() if block is None else None
    if peak is not None:
        assert float(err.max() / peak) < bfp_max_relative_error(bits)
    # exponent is the smallest that avoids overflow: one less would overflow the block max
    if block == 16:
        blocks = torch.nn.functional.pad(x.double().abs(), (0, 48 - 37)).reshape(6, 3, 16).amax(-1)
        assert (blocks / 2.0 ** (eb - (bits - 1)) <= qmax).all()
        assert (blocks / 2.0 ** (eb - 1 - (bits - 1)) > qmax).all()


def test_all_zero_block():
    x = torch.zeros(2, 8)
    x[1, 4:] = torch.tensor([0.5, -0.25, 0.125, 1.0])
    m, e = bfp_quantize(x, 8, 4)
    assert e[0].tolist() == [-128, -128] and e[1, 0] == -128
    assert torch.equal(m[0], torch.zeros(8, dtype=torch.int8))
    assert torch.equal(bfp_round(x, 8, 4), x)


def test_block_max_power_of_two():
    for k in (-5, 0, 3):
        x = torch.tensor([2.0**k, -(2.0**k) / 3])
        m, e = bfp_quantize(x, 8, None)
        assert int(m[0]) == 64 and int(e) == k + 1  # step 2^(e-7) = 2^(k-6): 2^k -> 64 <= 127
        assert float(bfp_round(x, 8, None)[0]) == 2.0**k


@pytest.mark.parametrize("bits,block", [(3, 4), (8, 32), (12, None), (24, 7)])
def test_idempotent(bits, block):
    x = torch.randn(5, 50) * 3
    once = bfp_round(x, bits, block)
    assert torch.equal(bfp_round(once, bits, block), once)
    if bits < 24:
        assert not torch.equal(once, x)


@pytest.mark.parametrize("bits", [1, 25, 0, 8.0, True])
def test_bits_out_of_range(bits):
    with pytest.raises(ConfigError, match="mantissa_bits"):
        bfp_quantize(torch.ones(4), bits, 4)


@pytest.mark.parametrize("block", [0, -3])
def test_bad_block(block):
    with pytest.raises(ConfigError, match="block"):
        bfp_round(torch.ones(4), 8, block)


def test_non_finite_and_huge_rejected():
    with pytest.raises(ConfigError):
        bfp_quantize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ConfigError, match="exponent"):
        bfp_quantize(torch.tensor([2.0**127]), 8, None)


def test_storage_bits_formula():
    assert bfp_storage_bits((10, 40), 8, 32) == 10 * 40 * 8 + 10 * 2 * 8
    assert bfp_storage_bits((10, 64), 4, 16) == 10 * 64 * (4 + 8 / 16)
    assert bfp_storage_bits((3, 5, 7), 6, None) == 3 * 5 * 7 * 6 + 8
    assert bfp_bits_per_value(8, 32) == 8.25


def test_shapes_and_dtypes():
    m, e = bfp_quantize(torch.randn(2, 3, 33), 16, 16)
    assert m.dtype == torch.int16 and m.shape == (2, 3, 33) and e.shape == (2, 3, 3)
    assert e.dtype == torch.int8
    m, e = bfp_quantize(torch.randn(5), 20, None)
    assert m.dtype == torch.int32 and e.shape == ()


def test_bfp_codec_round_trip_is_bfp_round_and_idempotent():
    from nncompress.format import get_codec

    codec = get_codec("bfp")
    t = torch.randn(7, 45) * 2
    enc = codec.encode(t, mantissa_bits=6, block=16)
    back = codec.decode(enc)
    assert torch.equal(back, bfp_round(t, 6, 16))
    assert enc.nbytes == (7 * 45 * 6 + 7) // 8 + 7 * 3  # packed mantissas + one byte per block
    again = codec.decode(codec.encode(back, mantissa_bits=6, block=16))
    assert torch.equal(again, back)
    whole = codec.decode(codec.encode(t, mantissa_bits=8, block=None))
    assert torch.equal(whole, bfp_round(t, 8, None))
    with pytest.raises(ConfigError, match="unknown"):
        codec.encode(t, bits=6)


def test_bfp_codec_through_save_and_load(tmp_path, lenet300):
    import nncompress

    with torch.no_grad():
        lenet300.fc1.weight.copy_(bfp_round(lenet300.fc1.weight, 4, 64))
    info = nncompress.save(lenet300, tmp_path / "m.nnc", codecs={"fc1.weight": ("bfp", {"mantissa_bits": 4,
                                                                                        "block": 64})})
    back = nncompress.load(tmp_path / "m.nnc")
    assert torch.equal(back.fc1.weight, lenet300.fc1.weight)  # already BFP: stored exactly
    size = {t.name: t for t in info.tensors}["fc1.weight"]
    assert size.codec == "bfp"
