"""fit / evaluate on DataLoaders and on tensor, tuple and dict batches (the batch contract)."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from nncompress.errors import ConfigError
from nncompress.train import TrainConfig, evaluate, fit
from nncompress.train.batches import batch_len, call_model, logits_of, split_batch


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long()
    return x, y


class DictSet(Dataset):
    """Items are dicts of 1-D tensors of different lengths; collate_fn pads (as text datasets do)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        n = 3 + i % 3
        return {"input_ids": self.x[i, :n], "labels": self.y[i]}

    @staticmethod
    def collate_fn(items):
        width = max(len(it["input_ids"]) for it in items)
        ids = torch.zeros(len(items), width)
        mask = torch.zeros(len(items), width)
        for k, it in enumerate(items):
            ids[k, : len(it["input_ids"])] = it["input_ids"]
            mask[k, : len(it["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.stack([it["labels"] for it in items])}


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 2)

    def forward(self, input_ids, attention_mask):  # (B, T), (B, T)
        first = input_ids[:, :1]  # the informative feature x[:, 0]
        return self.fc(first * attention_mask[:, :1])


def test_batch_helpers_follow_the_contract():
    x, y = torch.zeros(3, 2), torch.tensor([0, 1, 0])
    assert split_batch(x)[1] is None
    assert split_batch((x, y))[1] is y
    assert split_batch([x])[1] is None
    inputs, target = split_batch({"input_ids": x, "labels": y})
    assert set(inputs) == {"input_ids"} and target is y
    assert batch_len({"input_ids": x}) == 3
    seen = {}
    call_model(lambda **kw: seen.update(kw), {"a": x})
    assert set(seen) == {"a"}
    assert logits_of((x, y)) is x
    with pytest.raises(ConfigError, match="batch is a Tensor"):
        split_batch(3)


def test_dataloader_equals_dataset_path_for_same_order():
    """A DataLoader without shuffling trains exactly like the same list of batches."""
    x, y = _data()
    cfg = TrainConfig(epochs=2, lr=0.1, batch_size=16, lr_schedule="constant")
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    torch.manual_seed(0)
    a = nn.Linear(6, 2)
    b = nn.Linear(6, 2)
    b.load_state_dict(a.state_dict())
    ha = fit(a, loader, cfg)
    fit(b, [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)], cfg)
    assert len(ha.epochs) == 2
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert evaluate(a, loader) == evaluate(a, TensorDataset(x, y))


def test_dict_batches_train_and_evaluate_with_collate_fn():
    torch.manual_seed(0)
    x, y = _data(96)
    ds = DictSet(x, y)
    model = DictNet()
    with torch.no_grad():
        model.fc.weight.mul_(-1)  # start wrong: predicts the opposite class
    before = evaluate(model, ds)["accuracy"]
    hist = fit(model, ds, TrainConfig(epochs=8, lr=0.5, batch_size=16))
    after = evaluate(model, ds)
    assert hist.epochs[-1]["train_loss"] < hist.epochs[0]["train_loss"]
    assert before < 0.9
    assert after["accuracy"] >= 0.9


def test_unlabelled_batches_need_a_loss_and_a_metric():
    model = nn.Linear(4, 4)
    batches = [torch.randn(8, 4) for _ in range(3)]
    with pytest.raises(ConfigError, match="no labels"):
        fit(model, batches, TrainConfig(epochs=1))
    with pytest.raises(ConfigError, match="metric_fn"):
        evaluate(model, batches)

    def recon(out, target, inputs):  # autoencoder-like loss on unlabelled batches
        return ((out - inputs) ** 2).mean()

    def neg_mse(out, target):
        return -float(((out - 0) ** 2).mean())

    start = evaluate(model, batches, loss_fn=recon, metric_fn=neg_mse)["loss"]
    fit(model, batches, TrainConfig(epochs=20, lr=0.1, lr_schedule="constant"), loss_fn=recon)
    assert evaluate(model, batches, loss_fn=recon, metric_fn=neg_mse)["loss"] < start


def test_metric_fn_is_sample_weighted():
    model = nn.Identity()
    batches = [(torch.ones(3, 1), torch.zeros(3)), (torch.ones(1, 1), torch.zeros(1))]
    calls = iter([1.0, 0.0])
    res = evaluate(model, batches, metric_fn=lambda out, y: next(calls))
    assert res["accuracy"] == pytest.approx(0.75)


def test_fit_rejects_data_of_unknown_length():
    with pytest.raises(ConfigError, match="length"):
        fit(nn.Linear(2, 2), (b for b in [torch.zeros(1, 2)]), TrainConfig())
