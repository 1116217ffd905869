import struct
import zlib

import numpy as np
import pytest
import torch
from torch import nn

import nncompress
from nncompress.errors import ConfigError, FormatError
from nncompress.format import get_codec, pack_container, read_info, unpack_container
from nncompress.format.model_io import plan_codecs
from nncompress.models import build_model
from nncompress.prune import magnitude_prune


def _share(model, levels=16):
    """Round every nonzero weight to one of a few values (what k-means sharing produces)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("weight"):
                step = p.abs().max() / levels
                p.copy_(torch.round(p / step) * step * (p != 0))


def _same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_saved_then_loaded_equals_evaluated_model(tmp_path, lenet5):
    magnitude_prune(lenet5, sparsity=0.9)
    _share(lenet5)
    x = torch.randn(8, 1, 28, 28)
    lenet5.eval()
    ref = lenet5(x)
    info = nncompress.save(lenet5, tmp_path / "m.nnc", metadata={"accuracy": 0.5})
    back = nncompress.load(tmp_path / "m.nnc")
    _same(lenet5, back)
    assert torch.equal(back(x), ref)
    assert info.file_bytes == (tmp_path / "m.nnc").stat().st_size
    assert read_info(tmp_path / "m.nnc").metadata == {"accuracy": 0.5}
    assert {t.codec for t in info.tensors if t.name.endswith("weight")} == {"deep"}


def test_user_model_needs_skeleton_and_resizes(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4, 5))
    small = nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4, 5))
    small[1].running_mean.uniform_()
    nncompress.save(small, tmp_path / "s.nnc")
    with pytest.raises(FormatError, match="skeleton"):
        nncompress.load(tmp_path / "s.nnc")
    back = nncompress.load(tmp_path / "s.nnc", model=model)
    assert back[0].out_channels == 6 and back[1].num_features == 6 and back[4].in_features == 24
    x = torch.randn(2, 1, 4, 4)
    small.eval()
    assert torch.equal(back(x), small(x))


def test_sparse_and_deep_codec_edge_cases():
    deep, sparse = get_codec("deep"), get_codec("sparse")
    cases = [torch.zeros(3, 4), torch.ones(2, 3), torch.tensor([[0.0] * 100 + [2.5]]),
             torch.zeros(0, 4), torch.tensor([[1.5]])]
    for t in cases:
        for codec in (deep, sparse):
            assert torch.equal(codec.decode(codec.encode(t, index_bits=2)), t)


def test_filler_entries_for_long_gaps():
    t = torch.zeros(1, 1000)
    t[0, 999] = 3.0
    enc = get_codec("deep").encode(t, index_bits=3)
    assert enc.meta["entries"] == 125  # ceil(1000 / 8) entries: 124 fillers + 1 nonzero
    assert torch.equal(get_codec("deep").decode(enc), t)


def test_deep_rejects_unshared_weights():
    with pytest.raises(ConfigError, match="share weights"):
        get_codec("deep").encode(torch.randn(100, 100), max_codebook=256)


def test_auto_prefers_raw_for_dense_and_deep_for_shared(lenet300):
    auto = get_codec("auto")
    assert auto.encode(lenet300.fc2.weight.detach()).codec == "raw"
    magnitude_prune(lenet300, sparsity=0.9)
    _share(lenet300)
    assert auto.encode(lenet300.fc2.weight.detach()).codec == "deep"


def test_container_roundtrip_and_damage(tmp_path):
    blob = pack_container({"k": [1, 2]}, {"a": b"\x00\x01", "b": b"hello"})
    c = unpack_container(blob)
    assert c.meta == {"k": [1, 2]} and c.sections == {"a": b"\x00\x01", "b": b"hello"}
    for i in range(0, len(blob), 3):  # flip a byte anywhere
        bad = bytearray(blob)
        bad[i] ^= 0xFF
        with pytest.raises(FormatError):
            unpack_container(bytes(bad))
    for cut in (0, 5, 19, len(blob) - 1):
        with pytest.raises(FormatError):
            unpack_container(blob[:cut])


def test_hostile_header_rejected():
    # A well-checksummed file whose header claims a section far outside the file.
    import json

    header = zlib.compress(json.dumps({"meta": {}, "sections": [
        {"name": "x", "offset": 0, "length": 10**12, "crc32": 0}]}).encode())
    body = struct.pack("<4sHHQI", b"NNC1", 1, 0, len(header), zlib.crc32(header)) + header
    blob = body + struct.pack("<I", zlib.crc32(body))
    with pytest.raises(FormatError, match="outside"):
        unpack_container(blob)


def test_damaged_file_never_loads(tmp_path, lenet300):
    path = tmp_path / "m.nnc"
    nncompress.save(lenet300, path)
    blob = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.integers(0, len(blob), 20):
        bad = bytearray(blob)
        bad[int(i)] ^= 0x10
        path.write_bytes(bytes(bad))
        with pytest.raises(FormatError):
            nncompress.load(path)
    path.write_bytes(b"not a model, but long enough to have a header")
    with pytest.raises(FormatError, match="not an .nnc"):
        nncompress.load(path)


def test_save_is_atomic(tmp_path, lenet300, monkeypatch):
    path = tmp_path / "m.nnc"
    path.write_bytes(b"old")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("nncompress.format.model_io.pack_container", boom)
    with pytest.raises(RuntimeError):
        nncompress.save(lenet300, path)
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]


def test_codec_choices_and_errors(tmp_path, lenet300):
    plan = plan_codecs(lenet300, {"fc1.weight": ("sparse", {"index_bits": 4})})
    assert plan["fc1.weight"] == ("sparse", {"index_bits": 4}) and plan["fc1.bias"] == ("raw", {})
    with pytest.raises(ConfigError, match="unknown tensors"):
        plan_codecs(lenet300, {"nope.weight": "raw"})
    with pytest.raises(ConfigError, match="unknown tensor codec"):
        nncompress.save(lenet300, tmp_path / "x.nnc", codecs={"fc1.weight": "zip"})
    with pytest.raises(ConfigError, match="index_bits"):
        nncompress.save(lenet300, tmp_path / "x.nnc", codecs={"fc1.weight": ("sparse", {"index_bits": 40})})


def test_fp16_is_declared_lossy(tmp_path):
    m = build_model("lenet300")
    info = nncompress.save(m, tmp_path / "h.nnc", codecs={"fc1.bias": "fp16"})
    back = nncompress.load(tmp_path / "h.nnc")
    assert torch.equal(back.fc1.bias, m.fc1.bias.half().float())
    assert [t.codec for t in info.tensors if t.name == "fc1.bias"] == ["fp16"]


def test_saved_file_has_normal_permissions(tmp_path, lenet300):
    import os

    umask = os.umask(0o022)
    try:
        nncompress.save(lenet300, tmp_path / "p.nnc")
    finally:
        os.umask(umask)
    assert (tmp_path / "p.nnc").stat().st_mode & 0o777 == 0o644


def test_deep_codebook_in_half_precision_only_when_lossless():
    deep = get_codec("deep")
    exact = torch.tensor([[0.0, 0.5, -1.25, 0.0, 0.5, 3.0]])  # all fp16-representable
    enc = deep.encode(exact, index_bits=2)
    assert enc.meta["codebook_dtype"] == "float16" and len(enc.sections["codebook"]) == 2 * 3
    assert torch.equal(deep.decode(enc), exact)
    inexact = torch.tensor([[0.0, 0.1, -1.25, 1e-9]])  # 0.1 and 1e-9 are not
    enc = deep.encode(inexact, index_bits=2)
    assert enc.meta["codebook_dtype"] == "float32" and len(enc.sections["codebook"]) == 4 * 3
    assert torch.equal(deep.decode(enc), inexact)
    bad = dict(enc.meta, codebook_dtype="float64")
    with pytest.raises(FormatError, match="codebook_dtype' = 'float64'"):
        deep.decode(type(enc)(enc.codec, enc.shape, enc.dtype, bad, enc.sections))
    odd = dict(enc.sections, codebook=enc.sections["codebook"][:-1])
    with pytest.raises(FormatError, match="section 'codebook': 11 bytes stored, 12 expected"):
        deep.decode(type(enc)(enc.codec, enc.shape, enc.dtype, enc.meta, odd))


def test_int8_codec_is_idempotent_and_bounded():
    codec = get_codec("int8")
    g = torch.Generator().manual_seed(0)
    for t in [torch.randn(250, generator=g) * 0.3, torch.tensor([0.0, 0.0]), torch.tensor([1e-30, -2e-30]),
              torch.tensor([127.0, -3.0]), torch.zeros(0)]:
        enc = codec.encode(t)
        assert len(enc.sections["data"]) == t.numel()  # one byte per value
        once = codec.decode(enc)
        if t.numel():
            step = 2.0 ** enc.meta["exponent"]
            assert float((once - t).abs().max()) <= step / 2 + 1e-12
            assert float(t.abs().max()) / step <= 127
        again = codec.encode(once)  # what save does with a model the encode stage rounded
        assert again.meta["exponent"] == enc.meta["exponent"] or not t.abs().max() > 0
        assert torch.equal(codec.decode(again), once)
    bad = codec.encode(torch.ones(3))
    with pytest.raises(FormatError, match="exponent' = 999"):
        codec.decode(type(bad)(bad.codec, bad.shape, bad.dtype, {"exponent": 999}, bad.sections))
    with pytest.raises(ConfigError, match="NaN"):
        codec.encode(torch.tensor([float("nan")]))
