"""Text data: reading passages, padding dict batches, the Debian corpus split."""

import pytest
import torch
from torch.utils.data import DataLoader

from nncompress.data.corpus import (
    clean_passage,
    debian_corpus,
    distinct_passages,
    normalise,
    parse_descriptions,
)
from nncompress.data.text import TextDataset, pad_batch, read_lines, text_batches
from nncompress.errors import ConfigError, DataNotFoundError


class ToyTokenizer:
    """Word -> id (1 = [CLS], 2 = [SEP], 0 = pad), like a tokenizer's __call__ without tensors."""

    pad_token_id = 0

    def __call__(self, texts, truncation=True, max_length=128):
        ids = [[1] + [10 + (sum(map(ord, w)) % 50) for w in t.split()][: max_length - 2] + [2] for t in texts]
        return {"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids],
                "token_type_ids": [[0] * len(i) for i in ids]}


def test_read_lines(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("first passage\n\n  second one  \nthird\n")
    assert read_lines(f) == ["first passage", "second one", "third"]
    assert read_lines(f, limit=2) == ["first passage", "second one"]
    with pytest.raises(ConfigError, match="does not exist"):
        read_lines(tmp_path / "none.txt")
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(ConfigError, match="no non-empty line"):
        read_lines(tmp_path / "e.txt")
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(ConfigError, match="UTF-8"):
        read_lines(tmp_path / "b.txt")


def test_text_dataset_collate_pads_to_longest():
    ds = TextDataset(["a b c d", "a", "a b"], ToyTokenizer(), max_length=16)
    assert all(v.dim() == 1 for v in ds[0].values())
    loader = DataLoader(ds, batch_size=3, collate_fn=getattr(ds, "collate_fn", None))
    b = next(iter(loader))
    assert b["input_ids"].shape == (3, 6)  # [CLS] + 4 words + [SEP]
    assert b["attention_mask"].tolist()[1] == [1, 1, 1, 0, 0, 0]
    assert b["input_ids"][1, 3:].tolist() == [0, 0, 0]
    assert b["token_type_ids"].sum() == 0
    # truncation keeps max_length tokens
    assert TextDataset(["a b c d e f g h"], ToyTokenizer(), max_length=4)[0]["input_ids"].shape == (4,)


def test_text_batches_order_and_sizes():
    sents = [" ".join(["w"] * (i + 1)) for i in range(7)]
    batches = text_batches(ToyTokenizer(), sents, batch_size=3)
    assert [b["input_ids"].shape[0] for b in batches] == [3, 3, 1]
    assert batches[0]["attention_mask"].sum(1).tolist() == [3, 4, 5]
    with pytest.raises(ConfigError, match="batch_size"):
        text_batches(ToyTokenizer(), sents, batch_size=0)


def test_pad_batch_pad_id():
    b = pad_batch([{"input_ids": torch.tensor([5, 6])}, {"input_ids": torch.tensor([7])}], pad_id=9)
    assert b["input_ids"].tolist() == [[5, 6], [7, 9]]


FAKE = """Package: alpha
Version: 1
Description: fast text editor for the terminal
 Alpha edits text files quickly.
 .
  * syntax highlighting
Homepage: https://example.org

Package: alpha-doc
Description: fast text editor for the terminal (documentation)

Package: beta
Description: Beta image viewer with thumbnails
Tag: role::program

Package: gamma
Description: x

""" + "\n".join(f"Package: p{i}\nDescription: library number {i} for parsing documents of kind {i}\n"
                for i in range(40))


def test_parse_and_clean():
    descs = parse_descriptions(FAKE)
    assert descs[0] == ("fast text editor for the terminal",
                        "Alpha edits text files quickly.\n\n * syntax highlighting")
    assert clean_passage(*descs[0]) == ("Fast text editor for the terminal. Alpha edits text files quickly. "
                                        "syntax highlighting")
    assert clean_passage("x") is None  # too short
    assert normalise("Fast Editor (data files)!") == "fast editor"


def test_corpus_splits_are_disjoint(tmp_path):
    passages = distinct_passages(parse_descriptions(FAKE))
    assert len({normalise(p) for p in passages}) == len(passages)
    assert not any("documentation" in p for p in passages)  # alpha-doc duplicates alpha
    rep = debian_corpus(tmp_path, calib=5, train=20, eval=10, seed=1, text=FAKE)
    assert rep.counts == {"calib": 5, "train": 20, "eval": 10}
    splits = {k: read_lines(tmp_path / f"{k}.txt") for k in rep.counts}
    keys = {k: {normalise(s) for s in v} for k, v in splits.items()}
    assert not keys["calib"] & keys["train"] and not keys["calib"] & keys["eval"] and not keys["train"] & keys["eval"]
    again = debian_corpus(tmp_path / "b", calib=5, train=20, eval=10, seed=1, text=FAKE)
    assert read_lines(tmp_path / "b" / "eval.txt") == splits["eval"] and again.counts == rep.counts
    with pytest.raises(DataNotFoundError, match="ask for fewer"):
        debian_corpus(tmp_path, calib=100, train=1, eval=1, text=FAKE)
    with pytest.raises(ConfigError, match="calib"):
        debian_corpus(tmp_path, calib=0, text=FAKE)


def test_corpus_without_apt_cache(tmp_path, monkeypatch):
    import nncompress.data.corpus as corpus

    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)
    with pytest.raises(DataNotFoundError, match="apt-cache is not installed"):
        debian_corpus(tmp_path)
