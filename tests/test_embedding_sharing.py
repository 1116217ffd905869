"""Embedding tables in k-means sharing (issue 16 item 3): per table / per block of rows,
tied heads shared once, the kmeans_rows codec, centroid fine-tuning, bad options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nncompress
from nncompress.errors import ConfigError, FormatError
from nncompress.format.codecs import EncodedTensor
from nncompress.quantize.kmeans_method import KMeansConfig
from nncompress.quantize.rowblock_codec import CODEC
from nncompress.quantize.sharing import CentroidFineTuner, SharingConfig, share_rows, share_weights


class TinyLM(nn.Module):
    """Embedding -> Linear -> output head (tied to the embedding when ``tied``)."""

    def __init__(self, vocab: int = 40, dim: int = 8, tied: bool = False, sparse: bool = False):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, sparse=sparse)
        self.fc = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(self.emb(x))))


def _model(**kw) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(**kw)


def test_default_leaves_embeddings_alone():
    m = _model()
    before = m.emb.weight.detach().clone()
    shared = share_weights(m, SharingConfig(bits_fc=3))
    assert "emb.weight" not in shared and torch.equal(m.emb.weight, before)


def test_per_table_round_trip(tmp_path):
    m = _model()
    shared = share_weights(m, SharingConfig(bits_fc=3, bits_emb=2))
    assert torch.unique(m.emb.weight).numel() <= 4
    assert shared["emb.weight"].codebook.numel() <= 4
    path = tmp_path / "m.nnc"
    info = nncompress.save(m, path)
    assert {t.name: t.codec for t in info.tensors}["emb.weight"] == "kmeans_rows"
    x = torch.arange(40).reshape(4, 10)
    loaded = nncompress.load(path, model=TinyLM())
    assert torch.equal(loaded.emb.weight, m.emb.weight)
    assert torch.equal(loaded(x), m(x))


def test_per_block_codebooks(tmp_path):
    m = _model(vocab=50)
    shared = share_weights(m, SharingConfig(bits_fc=3, bits_emb=2, rows_per_codebook=16))
    layer = shared["emb.weight"]
    assert layer.codebook.numel() <= 4 * 4  # ceil(50 / 16) = 4 blocks, <= 2^2 each
    w = m.emb.weight.detach()
    for start in range(0, 50, 16):
        assert torch.unique(w[start:start + 16]).numel() <= 4
    # each block's values come from its own codebook (labels of a block lie in its range)
    labels = layer.labels.reshape(50, 8)
    assert (labels[:16].max() < labels[16:32].min())
    path = tmp_path / "m.nnc"
    nncompress.save(m, path)
    loaded = nncompress.load(path, model=TinyLM(vocab=50))
    assert torch.equal(loaded.emb.weight, m.emb.weight)
    # per-block codebooks fit the table better than one codebook of the same bits
    one = share_rows(w.clone(), 2, None, SharingConfig())
    ref = _model(vocab=50).emb.weight.detach()
    err_blocks = ((share_rows(ref, 2, 16, SharingConfig()).values().reshape(50, 8) - ref) ** 2).sum()
    err_one = ((share_rows(ref, 2, None, SharingConfig()).values().reshape(50, 8) - ref) ** 2).sum()
    assert err_blocks <= err_one and one.codebook.numel() <= 4


def test_tied_head_shared_once_and_still_tied(tmp_path):
    m = _model(tied=True)
    shared = share_weights(m, SharingConfig(bits_fc=3, bits_emb=3))
    assert sorted(shared) == ["emb.weight", "fc.weight"]  # the head's alias is not shared again
    assert m.head.weight is m.emb.weight
    path = tmp_path / "m.nnc"
    info = nncompress.save(m, path)
    assert {t.name: t.codec for t in info.tensors}["head.weight"] == "kmeans_rows"
    loaded = nncompress.load(path, model=TinyLM(tied=True))
    assert loaded.head.weight is loaded.emb.weight
    assert torch.equal(loaded.emb.weight, m.emb.weight)


@pytest.mark.parametrize("sparse", [False, True])
def test_centroid_finetuning_of_embedding_keeps_codebook(sparse):
    m = _model(sparse=sparse)
    bits = 2
    shared = share_weights(m, SharingConfig(bits_fc=3, bits_emb=bits, rows_per_codebook=20))
    tuner = CentroidFineTuner(shared, lr=0.1)
    opt = torch.optim.SGD([p for n, p in m.named_parameters() if n == "fc.bias"], lr=0.1)
    tuner.on_fit_begin(m, opt)
    before = shared["emb.weight"].codebook.clone()
    x = torch.randint(0, 40, (8, 5))
    loss = m(x).pow(2).mean()
    loss.backward()
    grad = m.emb.weight.grad.to_dense().clone() if sparse else m.emb.weight.grad.clone()
    layer = shared["emb.weight"]
    expected = torch.zeros_like(layer.codebook).index_add_(0, layer.labels, grad.reshape(-1))
    tuner.after_backward(m)
    opt.step()
    tuner.after_optimizer_step(m, opt)
    assert torch.allclose(layer.codebook, before - 0.1 * expected)  # sum of member gradients
    w = m.emb.weight.detach()
    for start in range(0, 40, 20):
        assert torch.unique(w[start:start + 20]).numel() <= 2**bits
    assert torch.equal(w.reshape(-1), layer.values())


@pytest.mark.parametrize("kw, match", [
    ({"bits_emb": 1}, "bits_emb .*2..8.*1"),
    ({"bits_emb": 9}, "bits_emb .*2..8.*9"),
    ({"bits_emb": 4, "rows_per_codebook": 0}, "rows_per_codebook .*>= 1.*0"),
    ({"bits_emb": 4, "rows_per_codebook": -3}, "rows_per_codebook .*-3"),
])
def test_bad_options_name_the_value(kw, match):
    with pytest.raises(ConfigError, match=match):
        SharingConfig(**kw)
    with pytest.raises(ConfigError, match=match):
        KMeansConfig(**kw)


def test_kmeans_method_config_passes_embedding_options():
    cfg = KMeansConfig(bits_emb=3, rows_per_codebook=7).sharing(seed=0)
    assert (cfg.bits_emb, cfg.rows_per_codebook) == (3, 7)


def test_codec_checks_untrusted_metadata():
    w = torch.tensor([[0.5, -1.0], [0.5, 0.5], [2.0, 3.0]])
    enc = CODEC.encode(w, rows_per_codebook=2, huffman="no")
    assert torch.equal(CODEC.decode(enc), w)

    def variant(meta=None, sections=None):
        return EncodedTensor(enc.codec, enc.shape, enc.dtype, {**enc.meta, **(meta or {})},
                             {**enc.sections, **(sections or {})})

    for bad, match in [
        (variant({"rows_per_codebook": 0}), "rows_per_codebook"),
        (variant({"codebook_size": 0}), "codebook_size"),
        (variant({"codebook_dtype": "int8"}), "codebook_dtype"),
        (variant(sections={"codebooks": enc.sections["codebooks"][:-2]}), "codebooks"),
        (variant({"values": "zip"}), "values"),
    ]:
        with pytest.raises(FormatError, match=match):
            CODEC.check(bad)
    with pytest.raises(FormatError):  # index past the codebook size
        CODEC.decode(variant({"codebook_size": 1, "value_bits": 1},
                             {"codebooks": enc.sections["codebooks"][: 2 * 2]}))


def test_codec_refuses_a_table_with_too_many_values():
    with pytest.raises(ConfigError, match="max_codebook=4"):
        CODEC.encode(torch.arange(20.0).reshape(4, 5), max_codebook=4)
    with pytest.raises(ConfigError, match="rows_per_codebook=0"):
        CODEC.encode(torch.zeros(2, 2), rows_per_codebook=0)


def test_dense_table_is_smaller_than_deep():
    torch.manual_seed(0)
    w = torch.randn(300, 16)
    table = share_rows(w, 4, None, SharingConfig()).values().reshape(300, 16)
    rows = CODEC.encode(table)
    deep = nncompress.format.builtin_codecs.DEEP.encode(table)
    assert rows.nbytes < deep.nbytes
    assert np.array_equal(CODEC.decode(rows).numpy(), table.numpy())


def test_rows_per_codebook_larger_than_the_table_saves(tmp_path):
    """A block size above the row count (one block) is stored as the row count."""
    import nncompress
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(2, 8))
    share_weights(m, SharingConfig(bits_emb=2, rows_per_codebook=16))
    nncompress.save(m, tmp_path / "e.nnc")
    back = nncompress.load(tmp_path / "e.nnc", model=nn.Sequential(nn.Embedding(2, 8)))
    assert torch.equal(back[0].weight, m[0].weight)
