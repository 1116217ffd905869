"""Hostile files: each test is the smallest edit (CRCs recomputed, as an attacker would) that
once got past the loader with a raw Python error, a huge allocation, a hang or wrong values.
Every one must now raise ``FormatError`` quickly."""

import copy
import json
import struct
import time
import zlib

import pytest
import torch

import nncompress
from nncompress.errors import ConfigError, FormatError
from nncompress.format import pack_container, unpack_container
from nncompress.format.signing import sign_file
from nncompress.models import build_model
from nncompress.prune import magnitude_prune

_FIXED = struct.Struct("<4sHHQI")


def _pack_text(header_text: bytes, payload: bytes = b"", reserved: int = 0) -> bytes:
    """A container from raw header JSON text (what pack_container cannot produce)."""
    header = zlib.compress(header_text, 9)
    body = _FIXED.pack(b"NNC1", 1, reserved, len(header), zlib.crc32(header)) + header + payload
    return body + struct.pack("<I", zlib.crc32(body))


def _edit(path, fn):
    """Rewrite ``path`` after ``fn(meta, sections)`` edits a copy; CRCs recomputed."""
    c = unpack_container(path.read_bytes())
    meta, sections = copy.deepcopy(c.meta), dict(c.sections)
    fn(meta, sections)
    out = path.with_name("edited.nnc")
    out.write_bytes(pack_container(meta, sections))
    return out


def _tensor(meta, name):
    return next(t for t in meta["tensors"] if t["name"] == name)


@pytest.fixture
def small_file(tmp_path):
    model = build_model("lenet300", in_features=16)
    path = tmp_path / "m.nnc"
    nncompress.save(model, path)
    return path


@pytest.fixture
def sparse_file(tmp_path):
    model = build_model("lenet300", in_features=16)
    magnitude_prune(model, sparsity=0.8)
    path = tmp_path / "s.nnc"
    nncompress.save(model, path, codecs={"fc1.weight": "sparse"})
    return path


def _rejects(path, match=None, **kw):
    t0 = time.perf_counter()
    with pytest.raises(FormatError, match=match):
        nncompress.load(path, **kw)
    assert time.perf_counter() - t0 < 5


def test_header_json_limits(tmp_path):
    p = tmp_path / "x.nnc"
    cases = {
        b"[" * 5000 + b"]" * 5000: "nested",
        b'{"meta": {"a": ' + b"9" * 5000 + b'}, "sections": []}': "digits",
        b'{"meta": {"tensors": [], "a": 1e400}, "sections": []}': "finite",
        b'{"meta": {"tensors": [], "a": NaN}, "sections": []}': "NaN",
        b'{"meta": {"tensors": []}, "meta": {}, "sections": []}': "duplicate key",
        b'{"meta": {"tensors": []}, "sections": [], "extra": 1}': "keys",
        b'{"meta": [], "sections": []}': "object",
    }
    for text, match in cases.items():
        p.write_bytes(_pack_text(text))
        _rejects(p, match)


def test_container_layout_rules(tmp_path):
    p = tmp_path / "x.nnc"
    good = b'{"meta": {"tensors": []}, "sections": []}'
    p.write_bytes(_pack_text(good, reserved=7))
    _rejects(p, "reserved")
    p.write_bytes(_pack_text(good, payload=b"junk"))
    _rejects(p, "belong to no section")
    gap = json.dumps({"meta": {"tensors": []}, "sections": [
        {"name": "a", "offset": 0, "length": 2, "crc32": zlib.crc32(b"ab")},
        {"name": "b", "offset": 0, "length": 2, "crc32": zlib.crc32(b"ab")}]}).encode()
    p.write_bytes(_pack_text(gap, payload=b"abab"))
    _rejects(p, "without gaps or overlaps")
    p.write_bytes(_pack_text(b'{"meta": {"tensors": [], "oops": 1}, "sections": []}'))
    _rejects(p, "unknown header field")


def test_large_header_parses_fast(tmp_path, small_file):
    out = _edit(small_file, lambda m, s: m["metadata"].update(blob=["x" * 64] * 1500))
    assert len(zlib.compress(json.dumps(unpack_container(out.read_bytes()).meta).encode())) > 0
    t0 = time.perf_counter()
    nncompress.read_info(out)
    assert time.perf_counter() - t0 < 1.0


def test_huge_declared_shape_rejected_before_allocation(sparse_file):
    def huge(meta, sections):
        t = _tensor(meta, "fc1.weight")
        t["shape"] = [50000, 50000]
    _rejects(_edit(sparse_file, huge), "elements")


def test_max_params_bounds_and_raises_the_limit(sparse_file):
    with pytest.raises(FormatError, match="max-params"):
        nncompress.load(sparse_file, max_params=1000)
    assert nncompress.load(sparse_file, max_params=10**6) is not None
    with pytest.raises(ConfigError, match="max_params"):
        nncompress.load(sparse_file, max_params=-1)


def test_sparse_values_length_and_transposed_shape(sparse_file):
    def odd(meta, sections):
        key = _tensor(meta, "fc1.weight")["sections"]["values"]
        sections[key] = sections[key] + b"\x00\x00"
    _rejects(_edit(sparse_file, odd), "values")

    def transpose(meta, sections):
        t = _tensor(meta, "fc1.weight")
        t["shape"] = t["shape"][::-1]
    _rejects(_edit(sparse_file, transpose))


def test_dtype_relabel_rejected(small_file):
    def relabel(meta, sections):
        _tensor(meta, "fc1.bias")["dtype"] = "int32"
    _rejects(_edit(small_file, relabel), "int32")


def test_int8_exponent_that_overflows(tmp_path):
    model = build_model("lenet300", in_features=16)
    path = tmp_path / "i.nnc"
    nncompress.save(model, path, codecs={"fc1.bias": "int8"})

    def big(meta, sections):
        _tensor(meta, "fc1.bias")["meta"]["exponent"] = 130
    _rejects(_edit(path, big), "exponent")


def test_arch_kwargs_checked_on_meta_device(small_file):
    def huge(meta, sections):
        meta["arch"]["kwargs"]["in_features"] = 10**8
    _rejects(_edit(small_file, huge), "parameters and buffers")

    def bad(meta, sections):
        meta["arch"]["kwargs"]["num_classes"] = "ten"
    _rejects(_edit(small_file, bad), "architecture")


def test_activation_record_ranges(tmp_path, small_file):
    for spec, match in (({"kind": "dorefa", "bits": 2**40}, "bits"), ({"kind": "dorefa", "bits": -1}, "bits"),
                        ({"kind": "log", "bits": 4, "lo": 0.0, "hi": 1e300}, r"hi=1e\+300 exceeds the bound"),
                        ({"kind": "nope"}, "unknown activation"), ({"kind": "xnor"}, None)):
        def add(meta, sections, spec=spec):
            meta["activations"] = {"fc1" if match else "missing.layer": spec}
        _rejects(_edit(small_file, add), match)


def test_hashed_record_ranges(tmp_path):
    from nncompress.quantize.hashed_arch import hash_model, record_hashed_arch

    model = build_model("lenet300", in_features=16)
    hash_model(model, buckets={"fc1": 50})
    record_hashed_arch(model)
    path = tmp_path / "h.nnc"
    nncompress.save(model, path)
    assert nncompress.load(path) is not None
    for key, value, match in (("seed", 2**63, "seed"), ("in", 10**9, "300 x 1000000000"),
                              ("bias", 1, "bias"), ("buckets", 0, "buckets")):
        def edit(meta, sections, key=key, value=value):
            meta["arch"]["kwargs"]["layers"]["fc1"][key] = value
        _rejects(_edit(path, edit), match)


def test_removed_blocks_and_lowrank_records(tmp_path, small_file):
    def blocks(meta, sections):
        meta["removed_blocks"] = ["layers.99"]
    _rejects(_edit(small_file, blocks), "removed_blocks record")

    def lowrank(meta, sections):
        meta["lowrank"] = {"fc1": {"method": "svd", "ranks": [10**9], "geometry": {"in": 16, "out": 300}}}
    _rejects(_edit(small_file, lowrank), "lowrank record")


def test_forward_check_on_recorded_input_shape(small_file):
    assert unpack_container(small_file.read_bytes()).meta["input_shape"] == [16]

    def wrong(meta, sections):
        meta["input_shape"] = [17]
    _rejects(_edit(small_file, wrong), "input shape")


def test_orphan_section_and_shared_section(small_file):
    def orphan(meta, sections):
        sections["zz"] = b"abc"
    _rejects(_edit(small_file, orphan), "belong to no tensor")

    def shared(meta, sections):
        a, b = meta["tensors"][0], meta["tensors"][2]
        b["sections"]["data"] = a["sections"]["data"]
    _rejects(_edit(small_file, shared))


def test_signing_detects_any_change(tmp_path, small_file):
    key = tmp_path / "k.key"
    key.write_bytes(b"s" * 32)
    with pytest.raises(FormatError, match="not signed"):
        nncompress.load(small_file, verify_key=key)
    sign_file(small_file, key)
    ref = nncompress.load(small_file)
    loaded = nncompress.load(small_file, verify_key=key)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(FormatError, match="signature does not match"):
        nncompress.load(small_file, verify_key=b"t" * 32)

    def value_edit(meta, sections):
        key_name = _tensor(meta, "fc3.bias")["sections"]["data"]
        data = bytearray(sections[key_name])
        data[0] ^= 1
        sections[key_name] = bytes(data)
    edited = _edit(small_file, value_edit)
    assert nncompress.load(edited) is not None  # without a key, a value edit is a valid file
    with pytest.raises(FormatError, match="signature does not match"):
        nncompress.load(edited, verify_key=key)

    def meta_edit(meta, sections):
        meta["metadata"]["accuracy"] = 0.99
    with pytest.raises(FormatError, match="signature does not match"):
        nncompress.load(_edit(small_file, meta_edit), verify_key=key)
    with pytest.raises(ConfigError, match="16..4096"):
        nncompress.load(small_file, verify_key=b"short")


def test_committed_files_still_load_bit_identically():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "deep_compression"
    files = sorted(root.glob("*.nnc"))
    assert files
    for f in files:
        state, _ = nncompress.format.load_state(f)
        model = nncompress.load(f)
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_second_campaign_findings(tmp_path, small_file):
    """What the 10,000-file campaign still found after the first hardening."""
    def no_arch(meta, sections):
        meta["arch"] = None
    _rejects(_edit(small_file, no_arch), "skeleton")

    def on_dropout(meta, sections):
        meta["activations"] = {"drop0": {"kind": "xnor"}}
    _rejects(_edit(small_file, on_dropout), "drop0")

    resnet = build_model("resnet20", widths=[4, 4, 4], blocks=1)
    path = tmp_path / "r.nnc"
    nncompress.save(resnet, path)

    def many_blocks(meta, sections):
        meta["arch"]["kwargs"]["blocks"] = 10000
    _rejects(_edit(path, many_blocks), "blocks")


def test_lowrank_geometry_and_hashed_buckets(tmp_path):
    from nncompress.decompose import decompose
    from nncompress.quantize.hashed_arch import hash_model, record_hashed_arch

    model, _ = decompose(build_model("lenet5"), {"conv1": {"method": "separable", "rank": 2}})
    path = tmp_path / "lr.nnc"
    nncompress.save(model, path)
    assert nncompress.load(path) is not None
    for key, value in (("padding", [1000000, 1000000]), ("padding", [True, 0]), ("stride", [10**9, 1])):
        def geom(meta, sections, key=key, value=value):
            meta["lowrank"]["conv1"]["geometry"][key] = value
        _rejects(_edit(path, geom), key)

    hashed = build_model("lenet300", in_features=16)
    hash_model(hashed, buckets={"fc3": 20})
    record_hashed_arch(hashed)
    hpath = tmp_path / "h.nnc"
    nncompress.save(hashed, hpath)

    def one_bucket(meta, sections):
        meta["arch"]["kwargs"]["layers"]["fc3"]["buckets"] = 1
    _rejects(_edit(hpath, one_bucket), "cannot be resized")
