"""Static int8 runtime for CNNs/MLPs (``export_onnx(..., runtime="int8", calib=...)``):
onnxruntime fuses the QDQ graph into integer kernels, the int8 graph stays close to the
float model on the calibration distribution, the compressed weight storage is kept, and
bad calibration input or a too-large accuracy drop are refused with clear errors."""

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx", reason="the deploy extra is not installed: pip install 'nncompress[deploy]'")
ort = pytest.importorskip("onnxruntime", reason="the deploy extra is not installed: pip install 'nncompress[deploy]'")

from nncompress.deploy import ExportError, StaticInt8Config, export_onnx  # noqa: E402
from nncompress.deploy.calibrate import RangeObserver, activation_qparams, weight_scales  # noqa: E402
from nncompress.deploy.runtime import optimized_ops  # noqa: E402
from nncompress.errors import ConfigError  # noqa: E402


class TinyCNN(nn.Module):
    """conv-BN-ReLU-pool, conv-ReLU, a residual add, flatten, two Linears."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))  # (B, 8, 4, 4)
        x = torch.relu(self.conv3(torch.relu(self.conv2(x))) + x)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def tiny(seed=0):
    torch.manual_seed(seed)
    m = TinyCNN()
    with torch.no_grad():  # non-trivial BN statistics, as after training
        m.bn1.running_mean.uniform_(-0.2, 0.2)
        m.bn1.running_var.uniform_(0.5, 2.0)
        m.bn1.weight.uniform_(0.5, 1.5)
        m.bn1.bias.uniform_(-0.1, 0.1)
    return m.eval()


def data(n=512, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g)


LOOSE = StaticInt8Config(max_drop=100)  # tests that measure closeness themselves


def test_int8_graph_runs_on_integer_kernels_and_passes_checker(tmp_path):
    model, x = tiny(), data()
    rep = export_onnx(model, tmp_path / "m.onnx", x[:4], runtime="int8", calib=x, int8=LOOSE)
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)
    assert rep.runtime == "int8" and rep.ops["QuantizeLinear"] >= 5 and "BatchNormalization" not in rep.ops
    q = rep.quality
    assert q["targets"] == {"Conv": 3, "Gemm": 2} and q["folded_batchnorms"] == 1 and q["dropped_relus"] >= 3
    ops = optimized_ops(tmp_path / "m.onnx")
    # onnxruntime fused every Conv, Linear and the residual add into integer kernels
    assert ops.get("QLinearConv", 0) == 3 and ops.get("QGemm", 0) == 2 and ops.get("QLinearAdd", 0) == 1
    assert not {"Conv", "Gemm", "Relu", "BatchNormalization"} & set(ops)


def test_int8_close_to_float_model_on_calibration_distribution(tmp_path):
    model, x = tiny(), data()
    rep = export_onnx(model, tmp_path / "m.onnx", x[:4], runtime="int8", calib=x, check_data=data(512, seed=2),
                      int8=LOOSE)
    q = rep.quality
    assert q["metric"] == "agreement" and q["samples"] == 512
    assert q["sqnr_db"] >= 25  # 8-bit activations and weights: ~ 6 dB per bit, less the range use
    assert q["agreement"] >= 95
    # the file reproduces the figures: run it here
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    xc = data(512, seed=2)
    got = sess.run(None, {"input": xc.numpy()})[0]
    with torch.no_grad():
        ref = model(xc).numpy()
    assert 100 * (got.argmax(1) == ref.argmax(1)).mean() == pytest.approx(q["agreement"])
    err = ((ref - got) ** 2).sum() / (ref**2).sum()
    assert 10 * np.log10(1 / err) == pytest.approx(q["sqnr_db"], abs=1e-3)


def test_labelled_check_reports_accuracy_and_percentile_method(tmp_path):
    model, x = tiny(), data()
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the float model gets 100% on
    rep = export_onnx(model, tmp_path / "m.onnx", x[:4], runtime="int8", calib=[(x[:256], y[:256]), (x[256:], y[256:])],
                      int8=StaticInt8Config(method="percentile", percentile=99.9, max_drop=100))
    q = rep.quality
    assert q["metric"] == "accuracy" and q["torch"] == 100.0 and q["drop_pt"] == pytest.approx(100 - q["onnx"])
    assert q["method"] == "percentile" and q["calibration_samples"] == 512
    assert "int8 accuracy" in str(rep)


def test_compressed_storage_is_kept(tmp_path):
    """k-means-shared weights stay codebook + indices: the int8 weights are computed in the graph."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    with torch.no_grad():
        for m in (model[0], model[2]):
            book = torch.linspace(-0.2, 0.2, 16)
            m.weight.copy_(book[(m.weight.reshape(-1, 1) - book).abs().argmin(1)].reshape(m.weight.shape))
    x = torch.randn(256, 64)
    rep = export_onnx(model, tmp_path / "i.onnx", x[:4], runtime="int8", calib=x, int8=LOOSE)
    dense = export_onnx(model, tmp_path / "d.onnx", x[:4], forms=("dense",))
    assert {t.name: t.form for t in rep.tensors}["0.weight"] == "shared"
    assert rep.onnx_bytes < 0.25 * dense.onnx_bytes  # 4-bit indices, not 8-bit (nor 32-bit) weights
    assert optimized_ops(tmp_path / "i.onnx").get("QGemm", 0) == 2
    # uncompressed float weights are stored as their int8 codes (1 byte each), not as floats
    torch.manual_seed(1)
    plain = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    rep = export_onnx(plain, tmp_path / "p.onnx", x[:4], runtime="int8", calib=x, int8=LOOSE)
    int8_inits = [i for i in onnx.load(str(tmp_path / "p.onnx")).graph.initializer
                  if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert sorted(tuple(i.dims) for i in int8_inits) == [(10, 256), (256, 64)]
    assert rep.onnx_bytes < 0.3 * dense.onnx_bytes


def test_too_large_drop_is_refused_and_nothing_written(tmp_path):
    model = tiny()
    calib = data() * 1e-3  # ranges far too narrow for the check data: activations saturate
    with pytest.raises(ExportError, match=r"too far from the torch model: agreement .* drop of .* > max_drop 0.5"):
        export_onnx(model, tmp_path / "m.onnx", calib[:4], runtime="int8", calib=calib, check_data=data())
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("calib,match", [
    (None, r"calib=None: runtime='int8' needs calibration inputs"),
    (torch.zeros(4, 1, 9, 9), r"calib: batch 0 has shape \(4, 1, 9, 9\); the model takes \(batch, 1, 8, 8\)"),
    (torch.zeros(4, 1, 8, 8, dtype=torch.int64), r"calib: batch 0 has dtype torch.int64"),
    (torch.zeros(0, 1, 8, 8), r"calib holds no samples"),
    (torch.full((2, 1, 8, 8), float("nan")), r"calib: batch 0 holds NaN"),
    ("images.npy", r"calib is a str"),
    ([("x", 1)], r"calib: batch 0 is a tuple"),
])
def test_bad_calibration_input_is_named(tmp_path, calib, match):
    with pytest.raises(ConfigError, match=match):
        export_onnx(tiny(), tmp_path / "m.onnx", data(4), runtime="int8", calib=calib)
    assert not (tmp_path / "m.onnx").exists()


def test_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="apply to runtime='int8' only"):
        export_onnx(tiny(), tmp_path / "m.onnx", data(4), calib=data())
    with pytest.raises(ConfigError, match="runtime='int4' is not allowed"):
        export_onnx(tiny(), tmp_path / "m.onnx", data(4), runtime="int4")
    with pytest.raises(ConfigError, match="method"):
        StaticInt8Config(method="entropy")
    with pytest.raises(ConfigError, match="max_drop"):
        StaticInt8Config(max_drop=-1)
    with pytest.raises(ConfigError, match="percentile"):
        StaticInt8Config(percentile=40)


def test_qparams_formulas():
    s, z = activation_qparams(-1.0, 3.0)
    assert s == np.float32(4 / 255) and z == 64  # round(1 / (4/255)) = round(63.75)
    assert activation_qparams(0.5, 2.0)[1] == 0  # widened to contain 0
    assert activation_qparams(0.0, 0.0) == (1.0, 0)
    w = np.array([[[1.0, -2.54]], [[0.0, 0.0]]], np.float32)
    assert weight_scales(w, 0).tolist() == [np.float32(2.54 / 127), 1.0]
    obs = RangeObserver("percentile", 90.0)
    obs.update("a", np.arange(101, dtype=np.float32))
    assert obs.range("a") == pytest.approx((10.0, 90.0))


@pytest.mark.slow
def test_cli_export_and_bench_int8(tmp_path, capsys):
    """`nncompress export FILE OUT.onnx --runtime int8 --calib N` calibrates on the file's
    dataset and checks the whole test split; `bench --runtime int8` reports accuracy."""
    from pathlib import Path

    from nncompress.cli import main

    src = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "deep_compression" / "lenet300-seed0.nnc"
    try:
        from nncompress.data import load_dataset

        load_dataset("fashion-mnist", "test")
    except Exception:  # noqa: BLE001
        pytest.skip("Fashion-MNIST is not on this machine")
    out = tmp_path / "m.onnx"
    assert main(["export", str(src), str(out), "--runtime", "int8", "--calib", "64"]) == 0
    text = capsys.readouterr().out
    assert "static int8: minmax ranges from 64 fashion-mnist train samples" in text and "on 10,000 samples" in text
    assert optimized_ops(out).get("QGemm", 0) == 3
    assert main(["export", str(src), str(tmp_path / "x.onnx"), "--runtime", "int8", "--calib", "0"]) == 2
    assert "--calib must be" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
    assert main(["export", str(src), str(tmp_path / "x.onnx"), "--calib", "10"]) == 2
    assert "apply to --runtime int8" in capsys.readouterr().err
    assert main(["bench", str(src), "--onnx", str(out), "--runtime", "int8", "--calib", "64", "--rounds", "1",
                 "--batch", "1", "--json"]) == 0
    import json

    rep = json.loads(capsys.readouterr().out)
    assert rep["quality"] == "accuracy"
    acc = {r["runtime"]: r["quality"] for r in rep["rows"]}
    assert abs(acc["torch (loaded .nnc)"] - acc["onnxruntime int8 (m.onnx)"]) <= 0.5
