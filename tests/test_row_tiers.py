"""Frequency tiers of embedding rows (quantize.row_tiers, the kmeans_tiers codec, method
kmeans ``rare_bits``): counts, tiers, values on their tier's codebook, exact file round trip,
hostile metadata refused, bad options named."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import nncompress
from nncompress.errors import ConfigError, FormatError
from nncompress.format.codecs import EncodedTensor, codec_hints
from nncompress.quantize.kmeans_method import KMeansConfig
from nncompress.quantize.registry import QuantizeRun, quantize_model
from nncompress.quantize.row_tiers import count_row_usage, row_tiers
from nncompress.quantize.rowblock_codec import CODEC as ROWS
from nncompress.quantize.sharing import (
    SharingConfig,
    recover_sharing,
    share_rows_tiered,
    sharing_of_tiers,
)
from nncompress.quantize.tier_codec import CODEC


class TinyText(nn.Module):
    """input_ids/attention_mask -> (N, T, D); counts how often its Linear ran."""

    def __init__(self, vocab=40, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, dim)
        self.fc_calls = 0

    def forward(self, input_ids, attention_mask=None):
        self.fc_calls += 1
        return self.fc(self.emb(input_ids))


def _batches(seed=0, n=4, vocab=10):
    """Dict batches over the first ``vocab`` ids, padded with id 0 where the mask is 0."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (3, 5), generator=g)
        mask = torch.ones(3, 5, dtype=torch.long)
        mask[0, 3:] = 0
        ids[0, 3:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_counts_are_the_masked_lookups_and_the_forward_stops_at_the_table():
    model = TinyText()
    batches = _batches()
    counts = count_row_usage(model, {"emb.weight": model.emb}, batches)["emb.weight"]
    want = torch.zeros(40, dtype=torch.int64)
    for b in batches:
        want += torch.bincount(b["input_ids"][b["attention_mask"].bool()], minlength=40)
    assert torch.equal(counts, want) and counts[0] == 0  # padding not counted
    assert model.fc_calls == len(batches)  # forward entered...
    model.fc_calls = 0
    hits = []
    h = model.fc.register_forward_hook(lambda *a: hits.append(1))
    count_row_usage(model, {"emb.weight": model.emb}, batches)
    h.remove()
    assert hits == []  # ...but stopped once the table had counted


def test_row_tiers_and_bad_threshold():
    assert row_tiers(torch.tensor([0, 3, 1, 2]), 2).tolist() == [1, 0, 1, 0]
    with pytest.raises(ConfigError, match="rare_below=0"):
        row_tiers(torch.tensor([1]), 0)


@pytest.mark.parametrize("rpc", [None, 3])
def test_each_tier_block_lies_on_its_own_codebook(rpc):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(12, 6, generator=g)
    tiers = torch.tensor([0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1])
    s = share_rows_tiered(w, tiers, [3, 1], rpc, SharingConfig())
    v = s.values().reshape(12, 6)
    for t, bits in ((0, 3), (1, 1)):
        rows = torch.nonzero(tiers == t).flatten()
        step = rpc or rows.numel()
        for start in range(0, rows.numel(), step):
            assert torch.unique(v[rows[start:start + step]]).numel() <= 2 ** bits
    back = sharing_of_tiers(v, tiers.tolist(), rpc)  # recovered from the values alone
    assert torch.equal(back.values(), s.values()) and back.codebook.numel() == s.codebook.numel()


def test_codec_round_trip_is_exact_and_smaller_than_one_tier():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, 16, generator=g)
    tiers = (torch.arange(64) % 4 != 0).long()  # a quarter frequent
    v = share_rows_tiered(w, tiers, [4, 1], 8, SharingConfig()).values().reshape(64, 16)
    enc = CODEC.encode(v, tiers=tiers, rows_per_codebook=8)
    assert torch.equal(CODEC.decode(enc), v)
    assert enc.nbytes < ROWS.encode(v, rows_per_codebook=8).nbytes  # the rare rows cost 1 bit, not 4


def _damaged(enc, **meta):
    return EncodedTensor(enc.codec, enc.shape, enc.dtype, {**enc.meta, **meta}, dict(enc.sections))


def test_hostile_metadata_is_refused():
    v = torch.tensor([[1.0, 2.0], [3.0, 3.0], [1.0, 1.0]])
    enc = CODEC.encode(v, tiers=[0, 1, 0])
    bad_rows = copy.deepcopy(enc.meta["tiers"])
    bad_rows[0]["rows"] = 1
    for damaged, match in [(_damaged(enc, tier_count=3), "tier_bits"),
                           (_damaged(enc, tiers=bad_rows), "rows_per_codebook|hold 2 rows|rows are of tier"),
                           (_damaged(enc, tier_count=99), "tier_count"),
                           (_damaged(enc, tiers="x"), "'tiers' must be a list")]:
        with pytest.raises(FormatError, match=match):
            CODEC.decode(damaged)
    wrong = dict(enc.sections)
    wrong["tiers"] = np.packbits(np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=np.uint8)).tobytes()
    with pytest.raises(FormatError):
        CODEC.decode(EncodedTensor(enc.codec, enc.shape, enc.dtype, enc.meta, wrong))


def test_method_kmeans_rare_bits_file_round_trip_and_recovery(tmp_path):
    torch.manual_seed(0)
    model = TinyText()
    cfg = KMeansConfig(bits_emb=4, rare_bits=1, rows_per_codebook=16, include=["emb"])
    quantize_model(model, cfg, QuantizeRun(calib_data=_batches(0), train_data=_batches(1)))
    assert codec_hints(model)["emb.weight"][0] == "kmeans_tiers"
    w = model.emb.weight.detach()
    assert torch.unique(w[10:]).numel() <= 2 * 2  # ids >= 10 never looked up: 1 bit per block of 16 rows
    assert torch.unique(w[1:10]).numel() <= 16  # the used rows: 4 bits
    path = tmp_path / "t.nnc"
    nncompress.save(model, path)
    info = {t.name: t.codec for t in nncompress.read_info(path).tensors}
    assert info["emb.weight"] == "kmeans_tiers"
    back = nncompress.load(path, model=TinyText())
    assert torch.equal(back.emb.weight, w)
    shared = recover_sharing(model)["emb.weight"]  # what distillation trains
    assert torch.equal(shared.values().reshape(w.shape), w)


@pytest.mark.parametrize("kw, match", [
    ({"bits_emb": 4, "rare_bits": 4}, r"rare_bits=4 not allowed; allowed: an integer in 1\.\.3"),
    ({"rare_bits": 1}, "rare_bits needs bits_emb"),
    ({"bits_emb": 4, "rare_bits": 1, "rare_below": 0}, "rare_below=0"),
])
def test_bad_tier_options_are_named(kw, match):
    with pytest.raises(ConfigError, match=match):
        KMeansConfig(**kw)


def test_rare_bits_without_data_is_a_clear_error():
    with pytest.raises(ConfigError, match="no calibration or training data"):
        quantize_model(TinyText(), KMeansConfig(bits_emb=4, rare_bits=1, include=["emb"]), QuantizeRun())


def test_rare_bits_refuses_a_table_tied_to_an_output_head():
    model = TinyText()
    head = nn.Linear(8, 40, bias=False)
    head.weight = model.emb.weight
    model.head = head
    with pytest.raises(ConfigError, match=r"tied to \['head.weight'\]"):
        quantize_model(model, KMeansConfig(bits_emb=4, rare_bits=1, include=["emb"]),
                       QuantizeRun(calib_data=_batches(0)))
