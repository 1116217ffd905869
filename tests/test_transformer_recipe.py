"""A compressed transformer through a recipe: one-shot OBS on a k-means grid, embedding
sharing and label-free distillation (the stages of the minilm recipes), on a tiny BERT
standing in for the bundled model; the score is the cosine to the model as given."""

import pytest
import torch
from torch import nn

import nncompress
from nncompress.errors import ConfigError
from nncompress.quantize.sharing import SharingConfig, recover_sharing, share_weights
from nncompress.recipes import load_recipe, parse_recipe
from nncompress.recipes.runner import run_recipe
from nncompress.recipes.schema import corpus_sizes


def test_recover_sharing_finds_hinted_tables_and_shared_layers():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(20, 8), nn.Linear(80, 60), nn.Linear(4, 4))
    shared = share_weights(m, SharingConfig(bits_fc=2, bits_emb=2, rows_per_codebook=5,
                                            include=["0", "1"]))
    got = recover_sharing(m)
    assert set(got) == {"0.weight", "1.weight"}  # the unshared 4x4 layer is not taken
    for name in got:
        assert torch.equal(got[name].values(), shared[name].values())
        assert torch.equal(got[name].mask, shared[name].mask)


@pytest.mark.parametrize("spec,match", [
    ({"source": "web"}, "source 'web' not allowed"),
    ({"train": 0}, r"train=0 not allowed"),
    ({"tests": 5}, r"unknown key\(s\) \['tests'\]"),
])
def test_corpus_spec_is_checked(spec, match):
    with pytest.raises(ConfigError, match=match):
        corpus_sizes(spec)


def test_minilm_recipes_parse():
    for name in ("minilm-8x", "minilm-12x"):
        recipe = load_recipe(name)
        assert recipe.model.huggingface == "all-MiniLM-L6-v2"
        assert [s.name for s in recipe.stages][-1] in ("distill", "evaluate")


def test_transformer_recipe_gptq_embeddings_distill(tmp_path, tiny_minilm):
    folder, tiny, _ = tiny_minilm
    original = {k: v.clone() for k, v in tiny.state_dict().items()}
    words = "a cat sat on the mat while the dog barked at rain in spring and the sun was warm".split()
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(words[i] for i in torch.randint(len(words), (6,), generator=g).tolist()) for _ in range(48)]
    (tmp_path / "calib.txt").write_text("\n".join(lines[:16]) + "\n")
    (tmp_path / "train.txt").write_text("\n".join(lines[16:40]) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(lines[40:]) + "\n")
    recipe = parse_recipe({
        "name": "tiny-minilm", "model": {"huggingface": folder},
        "data": {"text": {k: str(tmp_path / f"{k}.txt") for k in ("calib", "train", "test")}},
        "stages": [{"quantize": {"method": "gptq", "grid": "kmeans", "bits": 3, "batch_size": 8}},
                   {"quantize": {"method": "kmeans", "bits_emb": 3, "include": ["embeddings.*"]}},
                   {"distill": {"loss": "cosine", "epochs": 2, "lr": 1e-3, "batch_size": 8}}]})
    report = run_recipe(recipe, tmp_path / "m.nnc")
    scores = [s["accuracy"] for s in report["stages"]]
    assert all(0.0 < s <= 1.0 + 1e-6 for s in scores)  # cosine to the model as given
    distill = next(s for s in report["stages"] if s["stage"] == "distill")
    assert distill["shared_tensors"] >= 13  # 12 encoder Linears + pooler + tables
    assert scores[2] > scores[1]  # distillation raised the cosine the compression lost
    assert report["stages"][-1]["accuracy"] == pytest.approx(scores[2], abs=1e-6)  # the file's model
    loaded = nncompress.load(tmp_path / "m.nnc")  # a transformers model, no skeleton
    for name, p in loaded.named_parameters():
        if name.endswith("weight") and p.dim() == 2 and "word_embeddings" not in name \
                and "LayerNorm" not in name and "position" not in name and "token_type" not in name:
            assert torch.unique(p).numel() <= 2 ** 3, name  # on its codebook after distillation
    assert torch.unique(loaded.embeddings.word_embeddings.weight).numel() <= 2 ** 3
    for k, v in tiny.state_dict().items():  # the run compressed the model it was given ...
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert not torch.equal(original["encoder.layer.0.attention.self.query.weight"],
                           tiny.encoder.layer[0].attention.self.query.weight)


def test_transformer_recipe_pq_embeddings_relational_distill(tmp_path, tiny_minilm):
    """PQ word embeddings train their fp16 codewords in the distill stage (relational +
    cosine) and are rounded back to fp16 values, so the saved file holds the distilled model
    (the runner checks the loaded file scores exactly the same)."""
    folder, tiny, _ = tiny_minilm
    words = "a cat sat on the mat while the dog barked at rain in spring and the sun was warm".split()
    g = torch.Generator().manual_seed(1)
    lines = [" ".join(words[i] for i in torch.randint(len(words), (6,), generator=g).tolist()) for _ in range(40)]
    for k, (a, b) in {"calib": (0, 8), "train": (8, 32), "test": (32, 40)}.items():
        (tmp_path / f"{k}.txt").write_text("\n".join(lines[a:b]) + "\n")
    recipe = parse_recipe({
        "name": "tiny-pq", "model": {"huggingface": folder},
        "data": {"text": {k: str(tmp_path / f"{k}.txt") for k in ("calib", "train", "test")}},
        "stages": [{"quantize": {"method": "pq", "sub_dim": 4, "centroids": 16,
                                 "include": ["embeddings.word_embeddings"]}},
                   {"distill": {"weights": {"relational": 1.0}, "epochs": 2, "lr": 1e-3, "batch_size": 8}}]})
    report = run_recipe(recipe, tmp_path / "m.nnc")
    distill = next(s for s in report["stages"] if s["stage"] == "distill")
    assert distill["accuracy"] > report["stages"][0]["accuracy"]
    books = tiny.embeddings.word_embeddings.codebooks
    assert torch.equal(books, books.half().float())  # rounded after training
    loaded = nncompress.load(tmp_path / "m.nnc")
    assert torch.equal(loaded.embeddings.word_embeddings.codebooks, books)


def test_transformer_recipe_frequency_tiers_distill_and_file(tmp_path, tiny_minilm):
    """``rare_bits``: the rows the calib/train passages look up keep 4 bits, the others 1 bit
    (per block of 4096 rows of a tier), through distillation (centroids trained per tier)
    and the file (codec kmeans_tiers)."""
    folder, tiny, tokenizer = tiny_minilm
    words = "a cat sat on the mat while the dog barked at rain in spring and the sun was warm".split()
    g = torch.Generator().manual_seed(2)
    lines = [" ".join(words[i] for i in torch.randint(len(words), (6,), generator=g).tolist()) for _ in range(40)]
    for k, (a, b) in {"calib": (0, 8), "train": (8, 32), "test": (32, 40)}.items():
        (tmp_path / f"{k}.txt").write_text("\n".join(lines[a:b]) + "\n")
    recipe = parse_recipe({
        "name": "tiny-tiers", "model": {"huggingface": folder},
        "data": {"text": {k: str(tmp_path / f"{k}.txt") for k in ("calib", "train", "test")}},
        "stages": [{"quantize": {"method": "kmeans", "bits_emb": 4, "rare_bits": 1, "rows_per_codebook": 4096,
                                 "include": ["embeddings.word_embeddings"]}},
                   {"distill": {"epochs": 2, "lr": 1e-3, "batch_size": 8}}]})
    report = run_recipe(recipe, tmp_path / "m.nnc")
    distill = next(s for s in report["stages"] if s["stage"] == "distill")
    assert distill["shared_tensors"] == 1
    used = {i for ids in tokenizer(lines[:32])["input_ids"] for i in ids}  # the calib + train passages
    table = nncompress.load(tmp_path / "m.nnc").embeddings.word_embeddings.weight.detach()
    assert torch.equal(table, tiny.embeddings.word_embeddings.weight.detach())
    rare = torch.tensor(sorted(set(range(table.shape[0])) - used))
    frequent = torch.tensor(sorted(used))
    assert torch.unique(table[frequent]).numel() <= 16
    blocks = -(-rare.numel() // 4096)
    assert torch.unique(table[rare]).numel() <= 2 * blocks
    codecs = {t.name: t.codec for t in nncompress.read_info(tmp_path / "m.nnc").tensors}
    assert codecs["embeddings.word_embeddings.weight"] == "kmeans_tiers"
