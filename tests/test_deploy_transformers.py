"""ONNX export of transformers encoders loaded from .nnc files (deploy.transformers_onnx):
parity in onnxruntime for each storage form, checker, bytes, the int8 runtime, the CLI."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")

import onnx  # noqa: E402

import nncompress  # noqa: E402
from nncompress.deploy.blocks import block_codebooks, group_grid  # noqa: E402
from nncompress.deploy.graph import GraphBuilder  # noqa: E402
from nncompress.deploy.transformers_onnx import (  # noqa: E402
    INPUT_NAMES,
    encode_weight,
    example_text_inputs,
    export_transformers_onnx,
)
from nncompress.errors import ConfigError  # noqa: E402


def _bert(seed: int = 0):
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(seed)
    return transformers.BertModel(cfg).eval()


def _run(path, model, batch: int, seq: int, seed: int = 3):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xs = example_text_inputs(model, batch, seq, seed=seed)
    got = sess.run(None, {k: t.numpy() for k, t in zip(INPUT_NAMES, xs)})[0]
    with torch.no_grad():
        ref = model(input_ids=xs[0], attention_mask=xs[1], token_type_ids=xs[2]).last_hidden_state.numpy()
    return got, ref


def _shared_file(tmp_path, **cfg):
    from nncompress.quantize.sharing import SharingConfig, share_weights

    m = _bert()
    share_weights(m, SharingConfig(**cfg))
    path = tmp_path / "m.nnc"
    nncompress.save(m, path)
    return path


@pytest.mark.parametrize("cfg,form", [
    ({"bits_fc": 4}, "shared"),
    ({"bits_fc": 4, "bits_emb": 4, "rows_per_codebook": 2}, "block-shared"),
])
def test_shared_bert_parity_dynamic_axes(tmp_path, cfg, form):
    path = _shared_file(tmp_path, **cfg)
    out = tmp_path / "m.onnx"
    rep = export_transformers_onnx(path, out)
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    forms = collections.Counter(t.form for t in rep.tensors)
    assert forms[form] >= 2 and forms["shared"] >= 12  # every encoder Linear as codebook + indices
    model = nncompress.load(path)
    for batch, seq in [(1, 5), (3, 23)]:  # other batch and sequence lengths than the export's
        got, ref = _run(out, model, batch, seq)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    assert rep.max_abs_diff <= rep.tolerance
    # the shared weights take ~4 bits each (1/8 of float32) plus codebook and decoding nodes
    shared = [t for t in rep.tensors if t.form == "shared"]
    assert sum(t.bytes for t in shared) < 0.25 * sum(t.dense_bytes for t in shared)


def test_gptq_grouped_bert_parity(tmp_path):
    from nncompress.quantize.oneshot import OneShotConfig, oneshot_compress

    m = _bert()
    ids, mask, types = example_text_inputs(m, 4, 12)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    oneshot_compress(m, OneShotConfig(bits=4, group_size=16, include=["encoder.*"]), [batch])
    path = tmp_path / "g.nnc"
    nncompress.save(m, path)
    rep = export_transformers_onnx(path, tmp_path / "g.onnx")
    forms = collections.Counter(t.form for t in rep.tensors)
    assert forms["grouped-int"] == 12, forms
    got, ref = _run(tmp_path / "g.onnx", nncompress.load(path), 2, 7)
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_int8_and_fp16_forms(tmp_path):
    m = _bert()
    with torch.no_grad():
        q = m.encoder.layer[0].attention.self.query.weight
        s = q.abs().amax(dim=1, keepdim=True) / 127
        q.copy_(torch.round(q / s) * s)  # int8 per output channel
        k = m.encoder.layer[0].attention.self.key.weight
        k.copy_(k.half().float())
    rep = export_transformers_onnx(m, tmp_path / "q.onnx")
    forms = {t.name: t.form for t in rep.tensors}
    assert forms["encoder.layer.0.attention.self.query.weight"] == "int8"
    assert forms["encoder.layer.0.attention.self.key.weight"] == "fp16"
    got, ref = _run(tmp_path / "q.onnx", m, 2, 9)
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_int8_runtime_uses_integer_matmuls(tmp_path):
    path = _shared_file(tmp_path, bits_fc=4)
    f32 = export_transformers_onnx(path, tmp_path / "f.onnx")
    rep = export_transformers_onnx(path, tmp_path / "i.onnx", runtime="int8")
    assert rep.ops["MatMulInteger"] == 12 and rep.ops["DynamicQuantizeLinear"] == 12
    # int8 weights are computed in the graph: the file stays as small as the float export
    assert rep.onnx_bytes < 1.15 * f32.onnx_bytes
    got, ref = _run(tmp_path / "i.onnx", nncompress.load(path), 2, 11)
    cos = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > 0.98


def test_block_forms_formulas():
    w = np.repeat(np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), [3, 3], axis=0)
    books, idx = block_codebooks(w, 3)
    assert np.array_equal(books[np.arange(6)[:, None] // 3, idx], w)
    assert block_codebooks(np.arange(600, dtype=np.float32).reshape(2, 300), 2) is None
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (8, 40))
    scales = rng.uniform(0.01, 0.1, (8, 5, 1)).astype(np.float16).astype(np.float32)
    w = ((codes.reshape(8, 5, 8) - 7) * scales).reshape(8, 40).astype(np.float32)
    u, zero, s, bits = group_grid(w, 8)
    assert bits <= 4 and np.array_equal(((u - zero) * s.astype(np.float32)).reshape(8, 40), w)
    b = GraphBuilder(17)
    assert encode_weight(b, "w", w, groups=[8])[1] == "grouped-int"


def test_bytes_bound_and_errors(tmp_path):
    from nncompress.format import read_info

    path = _shared_file(tmp_path, bits_fc=4, bits_emb=4)
    rep = export_transformers_onnx(path, tmp_path / "m.onnx")
    # each compressed tensor within 1.25x of its bytes in the .nnc, plus its decoding nodes
    # (a few hundred bytes; the whole file of a model this small is mostly graph structure)
    nnc = {t.name: t.nbytes for t in read_info(path).tensors}
    w = [t for t in rep.tensors if t.form in ("shared", "block-shared")]
    assert len(w) >= 14  # 12 encoder Linears, word and position embeddings
    for t in w:
        assert t.bytes <= 1.25 * nnc[t.name] + 600, (t.name, t.bytes, nnc[t.name])
    with pytest.raises(ConfigError, match="runtime"):
        export_transformers_onnx(path, tmp_path / "x.onnx", runtime="int4")
    with pytest.raises(ConfigError, match="transformers model"):
        export_transformers_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")


def test_cli_export_transformers(tmp_path, capsys):
    from nncompress.cli import main

    path = _shared_file(tmp_path, bits_fc=4)
    assert main(["export", str(path), str(tmp_path / "c.onnx"), "--runtime", "int8"]) == 0
    out = capsys.readouterr().out
    assert "input_ids" in out and "int8" in out
    assert (tmp_path / "c.onnx").is_file()


def test_bench_tiny_file(tmp_path, capsys):
    from nncompress.cli import main
    from nncompress.deploy.bench import bench_file, interleaved_median, mean_pool

    path = _shared_file(tmp_path, bits_fc=4)
    rep = bench_file(str(path), str(tmp_path / "b.onnx"), rounds=2, batches=(1, 2), seq=8)
    assert [r.runtime.split(" ")[0] for r in rep.rows] == ["torch", "onnxruntime", "onnxruntime"]
    assert all(set(r.latency_ms) == {1, 2} and r.bytes > 0 for r in rep.rows)
    assert (tmp_path / "b.onnx").is_file()  # exported where --onnx points
    assert rep.rows[0].bytes == path.stat().st_size
    assert "ms batch 1" in rep.table()
    with pytest.raises(ConfigError, match="rounds"):
        interleaved_median({"a": lambda: None}, rounds=0)
    e = mean_pool(np.array([[[1.0, 0.0], [0.0, 5.0]]]), np.array([[1, 0]]))
    assert np.allclose(e, [[1.0, 0.0]])  # masked tokens do not count
    assert main(["bench", str(path), "--rounds", "1", "--batch", "1", "--seq", "8", "--onnx",
                 str(tmp_path / "b.onnx")]) == 0
    assert "onnxruntime fp32" in capsys.readouterr().out


def test_bench_device_option(tmp_path, capsys):
    """``--device cpu`` runs; a device this machine lacks is refused by name before any work."""
    from nncompress.cli import main
    from nncompress.deploy.bench import bench_file

    path = _shared_file(tmp_path, bits_fc=4)
    rep = bench_file(str(path), str(tmp_path / "b.onnx"), rounds=1, batches=(1,), seq=8, device="cpu")
    assert rep.rows[0].latency_ms[1] > 0
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cuda"):
            bench_file(str(path), None, rounds=1, batches=(1,), seq=8, device="cuda:3")
        assert main(["bench", str(path), "--device", "cuda:3"]) == 2
        assert "cuda" in capsys.readouterr().err.lower()
