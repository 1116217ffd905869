"""ONNX export that keeps the compression (nncompress.deploy): every storage form runs in
onnxruntime like the torch model, passes onnx.checker, and the committed Deep Compression
LeNet-300-100 file exports to at most 3x its .nnc bytes."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

onnx = pytest.importorskip("onnx", reason="the deploy extra is not installed: pip install 'nncompress[deploy]'")
ort = pytest.importorskip("onnxruntime", reason="the deploy extra is not installed: pip install 'nncompress[deploy]'")

from nncompress.deploy import (  # noqa: E402
    ExportError,
    export_onnx,
    translate,  # noqa: E402
)
from nncompress.deploy import storage as st  # noqa: E402
from nncompress.errors import ConfigError  # noqa: E402
from nncompress.models import build_model  # noqa: E402

DC = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "deep_compression"


def parity(model, path, x=None, batch=3, **kw):
    """Export, run onnx.checker on the file, compare onnxruntime with torch on a batch size
    other than the export's (the batch axis is dynamic); return the report."""
    report = export_onnx(model, path, x, **kw)
    assert report.max_abs_diff is not None and report.max_abs_diff <= report.tolerance
    onnx.checker.check_model(str(path), full_check=True)
    assert Path(path).stat().st_size == report.onnx_bytes
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = sess.get_inputs()[0].shape
    assert shape[0] == "batch"
    g = torch.Generator().manual_seed(7)
    xb = torch.randn(batch, *shape[1:], generator=g)
    got = sess.run(None, {"input": xb.numpy()})[0]
    with torch.no_grad():
        want = model.eval()(xb).numpy()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    return report


def forms_of(report):
    return {t.name: t.form for t in report.tensors}


def share_(model, values: int, sparsity: float = 0.0, seed: int = 0):
    """Make every Linear/Conv weight take at most ``values`` distinct nonzero values (a
    k-means-like codebook) after zeroing the ``sparsity`` smallest magnitudes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                w = m.weight
                book = torch.sort(torch.randn(values, generator=g) * w.std()).values
                idx = (w.reshape(-1, 1) - book).abs().argmin(1)
                shared = book[idx].reshape(w.shape)
                if sparsity:
                    k = int(w.numel() * sparsity)
                    cut = w.abs().flatten().kthvalue(k).values
                    shared[w.abs() <= cut] = 0
                w.copy_(shared)
    return model


def affine_codes_(model, bits: int, symmetric: bool, per_channel: bool):
    """Weights = ``(q - z) * s`` with b-bit codes, as nncompress's uniform methods write."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                w = m.weight
                dims = tuple(range(1, w.dim())) if per_channel else tuple(range(w.dim()))
                lo = w.amin(dim=dims, keepdim=True).clamp(max=0)
                hi = w.amax(dim=dims, keepdim=True).clamp(min=0)
                if symmetric:
                    s = torch.maximum(hi, -lo) / (2 ** (bits - 1) - 1)
                    z = torch.full_like(s, 2.0 ** (bits - 1))
                    q = (torch.round(w / s) + z).clamp(1, 2**bits - 1)
                else:
                    s = (hi - lo) / (2**bits - 1)
                    z = torch.round(-lo / s).clamp(0, 2**bits - 1)
                    q = (torch.round(w / s) + z).clamp(0, 2**bits - 1)
                w.copy_((q - z) * s)
    return model


# ----------------------------------------------------------------------------- storage forms

def test_shared_weights_export_as_codebook_and_indices(tmp_path):
    model = share_(build_model("lenet300"), 16)
    report = parity(model, tmp_path / "m.onnx")
    forms = forms_of(report)
    assert {forms[f"fc{i}.weight"] for i in (1, 2, 3)} == {"shared"}
    fc1 = next(t for t in report.tensors if t.name == "fc1.weight")
    assert "4-bit indices" in fc1.detail and fc1.bytes < fc1.numel // 2 + 600  # 4 bits each + codebook and nodes
    assert report.ops["Gather"] >= 3


def test_pruned_shared_weights_export_compact(tmp_path):
    model = share_(build_model("lenet5"), 32, sparsity=0.9)
    report = parity(model, tmp_path / "m.onnx")
    forms = forms_of(report)
    assert forms["fc1.weight"] == forms["conv2.weight"] == "pruned-shared"
    fc1 = next(t for t in report.tensors if t.name == "fc1.weight")
    # 40,000 nonzeros: 5-bit indices + a few bits of gap each, far below 4 bytes
    assert fc1.bytes < 0.2 * fc1.dense_bytes
    assert {"CumSum", "ScatterElements"} <= set(report.ops)


def test_pruned_float_weights_and_long_gaps(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))
    with torch.no_grad():
        w = model[0].weight
        w[w.abs() < w.abs().flatten().kthvalue(int(0.97 * w.numel())).values] = 0  # random values kept
        model[2].weight.zero_()
        model[2].weight[0, 3] = 0.5
        model[2].weight[9, 500] = -0.25  # one gap of ~5,000: filler codes
    report = parity(model, tmp_path / "m.onnx", torch.randn(4, 64))
    forms = forms_of(report)
    assert forms["0.weight"] == "pruned"
    t = next(t for t in report.tensors if t.name == "2.weight")
    assert t.form in ("pruned", "pruned-shared")
    assert int(re.search(r"\(([\d,]+) fillers", t.detail).group(1).replace(",", "")) > 0


@pytest.mark.parametrize("bits,symmetric,per_channel", [(8, True, True), (8, False, True), (8, True, False),
                                                        (4, True, True), (2, False, False)])
def test_int_code_weights_export_as_dequantize_linear(tmp_path, bits, symmetric, per_channel):
    model = affine_codes_(build_model("lenet5"), bits, symmetric, per_channel)
    report = parity(model, tmp_path / "m.onnx")
    forms = forms_of(report)
    w = {k: v for k, v in forms.items() if k.endswith("weight")}
    if per_channel:
        assert set(w.values()) == {"int8"}
        fc1 = next(t for t in report.tensors if t.name == "fc1.weight")
        assert "per channel" in fc1.detail and report.ops["DequantizeLinear"] >= 4
        expected = 1 if bits == 8 else bits / 8
        assert fc1.bytes <= expected * fc1.numel + 3000  # codes + 500 scales (+ zero points)
    else:  # one scale: a codebook of <= 2^bits values or int8, whichever is smaller
        assert set(w.values()) <= {"int8", "shared", "pruned-shared"}
    if bits == 8 and per_channel:
        x = next(i for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer if i.name == "fc1.weight.q")
        assert x.data_type == (onnx.TensorProto.INT8 if symmetric else onnx.TensorProto.UINT8)


def test_dense_weights_stay_dense(tmp_path):
    model = build_model("lenet5")
    report = parity(model, tmp_path / "m.onnx")
    assert {forms_of(report)[f"{n}.weight"] for n in ("conv1", "conv2", "fc1", "fc2")} == {"dense"}
    params = sum(p.numel() for p in model.parameters())
    assert 4 * params <= report.onnx_bytes <= 4 * params + 4000


def test_fp16_values_export_as_half(tmp_path):
    model = build_model("lenet300")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    report = parity(model, tmp_path / "m.onnx")
    assert forms_of(report)["fc1.weight"] == "fp16"


def test_structurally_pruned_smaller_models(tmp_path):
    lenet = build_model("lenet300")
    lenet.fc1, lenet.fc2, lenet.fc3 = nn.Linear(784, 120), nn.Linear(120, 37), nn.Linear(37, 10)
    share_(lenet, 16, sparsity=0.8)
    report = parity(lenet, tmp_path / "lenet.onnx")
    assert next(t for t in report.tensors if t.name == "fc2.weight").shape == (37, 120)

    resnet = build_model("resnet20")
    block = resnet.layers[4]  # narrower inner width 32 -> 11
    block.conv1, block.bn1 = nn.Conv2d(32, 11, 3, 1, 1, bias=False), nn.BatchNorm2d(11)
    block.conv2 = nn.Conv2d(11, 32, 3, 1, 1, bias=False)
    resnet.layers[7] = Shortcut(64)  # a removed residual block: relu(affine(x))
    _randomize_bn(resnet)
    report = parity(resnet, tmp_path / "resnet.onnx")
    assert {"Conv", "BatchNormalization", "Add", "Relu", "Gemm"} <= set(report.ops)
    assert next(t for t in report.tensors if t.name == "layers.4.conv1.weight").shape == (11, 32, 3, 3)


class Affine(nn.BatchNorm2d):
    """Per-channel scale and shift through F.batch_norm (like nncompress's ChannelAffine)."""

    def __init__(self, channels):
        super().__init__(channels, eps=0.0)

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class Shortcut(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.shortcut = nn.Identity()
        self.affine = Affine(channels)
        with torch.no_grad():
            self.affine.weight.uniform_(0.5, 1.5)
            self.affine.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        return torch.relu(self.affine(self.shortcut(x)))


def _randomize_bn(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_resnet20_shared_and_opsets(tmp_path):
    model = share_(build_model("resnet20"), 16, sparsity=0.5)
    _randomize_bn(model)
    for opset in (13, 21):
        report = parity(model, tmp_path / f"r{opset}.onnx", opset=opset)
        assert report.opset == opset
        assert forms_of(report)["layers.0.conv1.weight"] in ("shared", "pruned-shared")


def test_decoding_is_folded_by_onnxruntime(tmp_path):
    """Every decoding subgraph has static shapes: onnxruntime folds it at load time."""
    model = share_(build_model("lenet300"), 32, sparsity=0.95)
    export_onnx(model, tmp_path / "m.onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tmp_path / "m.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert not ops & {"Gather", "ScatterElements", "CumSum", "Compress"}, ops


# ----------------------------------------------------------------------------- committed file

def test_committed_deep_compression_lenet300_within_3x_nnc(tmp_path):
    path = DC / "lenet300-seed0.nnc"
    report = export_onnx(path, tmp_path / "lenet300.onnx")
    nnc = path.stat().st_size
    assert report.source_bytes == nnc
    assert report.onnx_bytes <= 3 * nnc and report.onnx_bytes <= 40_000
    assert report.layers["fc1"] == "pruned-shared"
    assert report.max_abs_diff <= report.tolerance
    onnx.checker.check_model(str(tmp_path / "lenet300.onnx"), full_check=True)
    dense = export_onnx(path, tmp_path / "dense.onnx", forms=("dense",), check=False)
    assert dense.onnx_bytes > 40 * report.onnx_bytes
    assert set(forms_of(dense).values()) == {"dense"}


# ----------------------------------------------------------------------------- errors

def test_unsupported_layer_names_it(tmp_path):
    class WithGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.rnn = nn.GRU(8, 8)

        def forward(self, x):
            return self.rnn(self.fc(x))[0]

    with pytest.raises(ExportError, match=r"layer 'rnn' \(GRU\).*not supported") as err:
        export_onnx(WithGRU(), tmp_path / "m.onnx", torch.randn(2, 3, 8))
    assert isinstance(err.value, ConfigError)
    assert not (tmp_path / "m.onnx").exists()

    class Sorts(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return torch.sort(self.fc(x)).values

    with pytest.raises(ExportError, match="op sort"):
        export_onnx(Sorts(), tmp_path / "m.onnx", torch.randn(2, 8))


def test_hooks_and_untraceable_forward_are_named(tmp_path):
    model = build_model("lenet300")
    model.fc2.register_forward_pre_hook(lambda mod, inp: None)
    with pytest.raises(ExportError, match=r"layer 'fc2' \(Linear\) has forward hooks"):
        export_onnx(model, tmp_path / "m.onnx")

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    model = nn.Sequential(nn.Linear(4, 4), Branchy())
    with pytest.raises(ExportError, match=r"layer '1' \(Branchy\) cannot be traced"):
        export_onnx(model, tmp_path / "m.onnx", torch.randn(2, 4))


def test_mismatch_raises_naming_first_differing_layer(tmp_path, monkeypatch):
    monkeypatch.setitem(translate.FUNCTIONS, torch.relu, translate._act("Sigmoid"))  # a wrong translation
    with pytest.raises(ExportError, match=r"differs from the torch model.*first differing: .*op relu"):
        export_onnx(build_model("lenet5"), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(build_model("lenet5"), tmp_path / "m.onnx", opset=9)
    with pytest.raises(ConfigError, match="forms"):
        export_onnx(build_model("lenet5"), tmp_path / "m.onnx", forms=("zip",))
    with pytest.raises(ConfigError, match="example_inputs"):
        export_onnx(nn.Linear(3, 3), tmp_path / "m.onnx")


# ----------------------------------------------------------------------------- codecs

@pytest.mark.parametrize("bits", range(1, 9))
def test_bit_packing_roundtrip(bits):
    rng = np.random.default_rng(bits)
    for n in (1, 7, 8, 1001):
        codes = rng.integers(0, 2**bits, n)
        assert np.array_equal(st.decode_codes(codes, bits), codes)
        assert st.pack_bits(codes, bits).size == (n * bits + 7) // 8 if bits != 8 else True


@pytest.mark.parametrize("bits", range(1, 9))
def test_gap_stream_roundtrip(bits):
    rng = np.random.default_rng(bits)
    pos = np.sort(rng.choice(100_000, 700, replace=False))
    codes, fillers = st.gap_entries(pos, bits)
    assert codes.max() < 2**bits
    assert np.array_equal(st.gap_positions(codes, bits, fillers), pos)


def test_cli_export_to_onnx_keeps_the_compression(tmp_path, capsys):
    """`nncompress export FILE.nnc OUT.onnx` writes the checked ONNX model; a bad opset is
    refused before any work."""
    from pathlib import Path

    from nncompress.cli import main

    src = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "deep_compression" / "lenet300-seed0.nnc"
    out = tmp_path / "m.onnx"
    assert main(["export", str(src), str(out)]) == 0
    assert "pruned-shared" in capsys.readouterr().out
    assert 0 < out.stat().st_size <= 3 * src.stat().st_size
    assert main(["export", str(src), str(tmp_path / "x.onnx"), "--opset", "99"]) == 2
    assert "--opset 99" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
