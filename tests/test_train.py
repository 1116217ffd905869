import pytest
import torch

from nncompress.models import build_model
from nncompress.prune import adjusted_dropout
from nncompress.prune.retrain import dropout_consumers, frozen
from nncompress.train import Callback, TrainConfig, evaluate, fit, lr_multiplier


def test_fit_learns_and_is_deterministic(tiny_data):
    accs = []
    weights = []
    for _ in range(2):
        m = build_model("lenet300")
        torch.manual_seed(5)
        m = build_model("lenet300")
        before = evaluate(m, tiny_data)["accuracy"]
        fit(m, tiny_data, TrainConfig(epochs=3, lr=0.05, batch_size=32, seed=3))
        accs.append(evaluate(m, tiny_data)["accuracy"])
        weights.append(m.fc1.weight.detach().clone())
    assert accs[0] > before + 0.2
    assert torch.equal(weights[0], weights[1])


def assert_killed_run_resumes_exactly(cfg, data, ck, resume_callbacks=()):
    """A run killed at epoch 2 and resumed from its checkpoint ends with the same weights
    as an uninterrupted one."""
    torch.manual_seed(1)
    ref = build_model("lenet300")
    init = {k: v.clone() for k, v in ref.state_dict().items()}
    fit(ref, data, cfg)
    part = build_model("lenet300")
    part.load_state_dict(init)

    class Kill(Callback):
        def on_epoch_begin(self, epoch):
            if epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(part, data, cfg, checkpoint=ck, callbacks=[Kill()])
    resumed = build_model("lenet300")
    fit(resumed, data, cfg, checkpoint=ck, callbacks=list(resume_callbacks))
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_resume_gives_same_result(tiny_data, tmp_path):
    assert_killed_run_resumes_exactly(TrainConfig(epochs=3, lr=0.05, batch_size=32, seed=7), tiny_data,
                                      tmp_path / "ck.pt")


def test_lr_schedules():
    f = lr_multiplier("cosine", 100)
    assert f(0) == 1.0 and abs(f(50) - 0.5) < 1e-12 and abs(f(100)) < 1e-12
    g = lr_multiplier("step", 100, milestones=(0.5,), gamma=0.1)
    assert g(49) == 1.0 and abs(g(50) - 0.1) < 1e-12


def test_dropout_rule_and_consumers():
    assert adjusted_dropout(0.5, 400, 100) == 0.25
    m = build_model("lenet300", dropout=0.5)
    assert dropout_consumers(m, torch.zeros(1, 1, 28, 28)) == {"drop1": "fc2", "drop2": "fc3"}


def test_frozen_restores(lenet5):
    with frozen(lenet5, "conv"):
        assert not lenet5.conv1.weight.requires_grad and lenet5.fc1.weight.requires_grad
    assert lenet5.conv1.weight.requires_grad


def test_augment_shift_and_flip_by_hand():
    from nncompress.train.augment import augment_batch

    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, g, shift=1, hflip=True)
    assert out.shape == x.shape
    # Every output is the input flipped or not, shifted by one of 9 offsets, zero-filled.
    import torch.nn.functional as F

    cands = []
    for img in (x[0], x[0].flip(2)):
        p = F.pad(img, (1, 1, 1, 1))
        cands += [p[:, dy:dy + 4, dx:dx + 4] for dy in range(3) for dx in range(3)]
    for o in out:
        assert any(torch.equal(o, c) for c in cands)
    assert len({o.flatten().tolist().__str__() for o in out}) > 5  # really random
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(augment_batch(x, g2, shift=1, hflip=True), out)  # seeded


def test_weight_averaging_is_the_mean_of_epoch_end_snapshots(tiny_data, tmp_path):
    from nncompress.prune.mask import MaskCallback, Masks
    from nncompress.train.averaging import WeightAveraging

    class Snap(Callback):
        def __init__(self):
            self.snaps = []

        def on_fit_begin(self, model, optimizer):
            self.model = model

        def on_epoch_end(self, epoch, metrics):
            self.snaps.append({k: v.detach().clone() for k, v in self.model.named_parameters()})

    torch.manual_seed(0)
    model = build_model("lenet300")
    masks = Masks({"fc1.weight": torch.rand(300, 784) > 0.8})
    masks.apply(model)
    snap = Snap()
    fit(model, tiny_data, TrainConfig(epochs=4, lr=0.05, batch_size=32, momentum=0.9, weight_decay=1e-3,
                                      average_last=2), callbacks=[MaskCallback(masks), snap])
    for k, v in model.named_parameters():
        assert torch.allclose(v, (snap.snaps[2][k] + snap.snaps[3][k]) / 2, atol=1e-6), k
    assert torch.all(model.fc1.weight[~masks["fc1.weight"]] == 0)  # pruned stays exactly zero
    with pytest.raises(Exception, match="average_last"):
        TrainConfig(average_last=-1)
    with pytest.raises(Exception, match="first_epoch"):
        WeightAveraging(-1)
    # a killed run with averaging resumes to the same weights
    assert_killed_run_resumes_exactly(TrainConfig(epochs=3, lr=0.05, batch_size=32, seed=3, average_last=2),
                                      tiny_data, tmp_path / "ck.pt", resume_callbacks=[Callback()])
