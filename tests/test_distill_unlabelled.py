"""Label-free distillation (nncompress.distill.unlabelled): formulas, invariants, refusals."""

import copy
import math

import pytest
import torch
from torch import nn

from nncompress.distill import (
    UnlabelledDistillConfig,
    cosine_loss,
    distill_unlabelled,
    masked_mse,
    pool_embeddings,
    soft_target_loss,
)
from nncompress.errors import ConfigError
from nncompress.prune.mask import Masks
from nncompress.quantize.sharing import SharingConfig, share_weights


class TinyEncoder(nn.Module):
    """input_ids/attention_mask -> (N, T, D) hidden states, like a transformers encoder."""

    def __init__(self, vocab=50, dim=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc1 = nn.Linear(dim, 32)
        self.fc2 = nn.Linear(32, dim)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)  # (N, T, D)
        return h + self.fc2(torch.tanh(self.fc1(h)))


def _batches(n_batches, seed, n=8, t=6, vocab=50):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(0, vocab, (n, t), generator=g)
        lengths = torch.randint(2, t + 1, (n,), generator=g)
        mask = (torch.arange(t)[None, :] < lengths[:, None]).long()  # (N, T)
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _teacher_student(seed=0, noise=0.15):
    torch.manual_seed(seed)
    teacher = TinyEncoder().eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if name.startswith("fc"):
                p.add_(noise * torch.randn_like(p))
    return teacher, student


def _cfg(**kw):
    base = dict(lr=3e-3, epochs=4, warmup=0.0, schedule="constant", grad_clip=None)
    base.update(kw)
    return UnlabelledDistillConfig(**base)


# ---------------------------------------------------------------- formulas

def test_cosine_loss_is_one_minus_cos_on_a_hand_example():
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    t = torch.tensor([[4.0, 3.0], [0.0, 2.0]])
    # cos = 24/25 and 0 -> mean(1 - cos) = (1/25 + 1) / 2
    assert cosine_loss(s, t).item() == pytest.approx((1 / 25 + 1) / 2, abs=1e-7)


def test_pooling_and_masked_mse_ignore_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    assert pool_embeddings(h, mask).tolist() == [[2.0, 3.0]]
    assert masked_mse(h, torch.zeros_like(h), mask).item() == pytest.approx((1 + 4 + 9 + 16) / 4)


def test_soft_target_loss_equals_t2_kl():
    torch.manual_seed(0)
    s, t, temp = torch.randn(4, 5), torch.randn(4, 5), 3.0
    p = torch.softmax(t / temp, -1)
    expected = temp**2 * (p * (p.log() - torch.log_softmax(s / temp, -1))).sum(-1).mean()
    assert soft_target_loss(s, t, temp).item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------- training

def test_loss_decreases_and_held_out_cosine_rises():
    teacher, student = _teacher_student()
    rep = distill_unlabelled(student, teacher, _batches(6, 1), _cfg(), eval_batches=_batches(3, 2))
    assert rep.steps == 24 and len(rep.epoch_losses) == 4
    assert rep.epoch_losses[-1] < 0.5 * rep.epoch_losses[0]
    assert rep.cosine_after > rep.cosine_before
    assert rep.teacher_cached


def test_teacher_is_not_changed():
    teacher, student = _teacher_student()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distill_unlabelled(student, teacher, _batches(2, 1), _cfg(epochs=1))
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_masks_stay_exactly_zero():
    teacher, student = _teacher_student()
    w = student.fc1.weight
    mask = torch.rand(w.shape, generator=torch.Generator().manual_seed(3)) > 0.5
    masks = Masks({"fc1.weight": mask})
    distill_unlabelled(student, teacher, _batches(4, 1), _cfg(epochs=2, weight_decay=0.1), masks=masks)
    assert torch.all(student.fc1.weight[~mask] == 0)
    assert torch.any(student.fc1.weight[mask] != teacher.fc1.weight[mask])  # the kept ones trained


def test_shared_layers_keep_codebook_values_and_codebook_changes():
    teacher, student = _teacher_student()
    shared = share_weights(student, SharingConfig(bits_fc=2, include=["fc1", "fc2"]))
    cb0 = {n: l.codebook.clone() for n, l in shared.items()}
    rep = distill_unlabelled(student, teacher, _batches(6, 1), _cfg(), shared=shared,
                             eval_batches=_batches(3, 2))
    for name, layer in shared.items():
        w = dict(student.named_parameters())[name].detach()
        assert torch.unique(w[layer.mask]).numel() <= 4
        assert torch.equal(w[layer.mask], layer.codebook[layer.labels])
        assert torch.all(w[~layer.mask] == 0)
        assert not torch.equal(layer.codebook, cb0[name])  # the centroids trained
    assert rep.cosine_after > rep.cosine_before


def test_centroid_gradient_is_the_sum_of_member_gradients():
    """One plain step: the codebook's Adam update has the sign of the summed member grads."""
    teacher, student = _teacher_student()
    shared = share_weights(student, SharingConfig(bits_fc=2, include=["fc1"]))
    layer = shared["fc1.weight"]
    probe = copy.deepcopy(student)
    from nncompress.distill.unlabelled import _loss, _targets, call_model
    b = _batches(1, 1)[0]
    with torch.no_grad():
        tgt = _targets(call_model(teacher, b), b, {"cosine": 1.0})
    loss = _loss(_targets(call_model(probe, b), b, {"cosine": 1.0}), tgt, b, _cfg())
    loss.backward()
    g = probe.fc1.weight.grad[layer.mask]
    summed = torch.zeros(layer.codebook.numel()).index_add_(0, layer.labels, g)
    cb0 = layer.codebook.clone()
    distill_unlabelled(student, teacher, [b], _cfg(epochs=1, lr=1e-3), shared=shared)
    moved = layer.codebook - cb0
    nonzero = summed.abs() > 1e-8
    assert torch.equal(torch.sign(moved[nonzero]), -torch.sign(summed[nonzero]))


def test_frozen_parameters_do_not_move():
    teacher, student = _teacher_student()
    frozen = {k: v.clone() for k, v in student.named_parameters() if k.startswith("fc1.")}
    distill_unlabelled(student, teacher, _batches(3, 1), _cfg(epochs=2, weight_decay=0.1, freeze=["fc1.*"]))
    params = dict(student.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in frozen.items())
    assert params["fc1.weight"].requires_grad  # restored afterwards
    assert not torch.equal(params["fc2.weight"], teacher.fc2.weight)


def test_early_stop_restores_the_best_weights():
    """A learning rate far too high: held-out cosine falls, patience stops, step 0 comes back."""
    teacher, student = _teacher_student()
    held = _batches(2, 2)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    rep = distill_unlabelled(student, teacher, _batches(4, 1), _cfg(epochs=6, lr=0.5, eval_every=2, patience=2),
                             eval_batches=held)
    assert rep.stopped_early and rep.steps == 4 and [s for s, _ in rep.evals] == [0, 2, 4]
    assert rep.best_step == 0 and rep.best_cosine == max(c for _, c in rep.evals)
    assert rep.cosine_after == pytest.approx(rep.cosine_before, abs=1e-6)
    assert all(torch.equal(start[k], v) for k, v in student.state_dict().items())


def test_tuple_tensor_batches_kd_on_logits():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 5)).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student[2].weight.add_(0.3 * torch.randn_like(student[2].weight))
    xs = [(torch.randn(16, 6), torch.zeros(16)) for _ in range(4)]
    rep = distill_unlabelled(student, teacher, xs, _cfg(loss="kd", weights={"mse": 0.1}, epochs=5),
                             eval_batches=[x for x, _ in xs[:2]])
    assert rep.step_losses[-1] < rep.step_losses[0]
    assert rep.cosine_after > rep.cosine_before


def test_dataset_with_collate_fn():
    class DS(torch.utils.data.Dataset):
        def __init__(self):
            self.items = [{"input_ids": torch.randint(0, 50, (int(k),)),
                           "attention_mask": torch.ones(int(k), dtype=torch.long)}
                          for k in torch.randint(2, 7, (20,), generator=torch.Generator().manual_seed(0))]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

        @staticmethod
        def collate_fn(items):
            t = max(len(i["input_ids"]) for i in items)
            pad = lambda v: torch.nn.functional.pad(v, (0, t - len(v)))  # noqa: E731
            return {k: torch.stack([pad(i[k]) for i in items]) for k in items[0]}

    teacher, student = _teacher_student()
    rep = distill_unlabelled(student, teacher, DS(), _cfg(batch_size=8, epochs=2))
    assert rep.steps == 6 and not rep.teacher_cached


def test_transformers_bert_shared():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16,
                                  initializer_range=0.5)  # large weights: 3-bit sharing hurts visibly
    teacher = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    student = copy.deepcopy(teacher)
    shared = share_weights(student, SharingConfig(bits_fc=3))
    batches = _batches(4, 1, vocab=60)
    rep = distill_unlabelled(student, teacher, batches, _cfg(epochs=5, lr=1e-2), shared=shared,
                             eval_batches=_batches(2, 2, vocab=60))
    assert rep.cosine_after > rep.cosine_before + 0.05
    for name, layer in shared.items():
        w = dict(student.named_parameters())[name].detach()
        assert torch.equal(w[layer.mask], layer.codebook[layer.labels])
        assert layer.codebook.numel() <= 8


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("kw, words", [
    ({"loss": "l1"}, ["loss", "'l1'", "cosine"]),
    ({"weights": {"huber": 1.0}}, ["weights key", "huber"]),
    ({"weights": {"cosine": -1.0}}, ["weights['cosine']", "-1.0"]),
    ({"weights": {"cosine": 0.0}}, ["must not all be 0"]),
    ({"temperature": 0}, ["temperature", "> 0"]),
    ({"epochs": 0}, ["epochs", "> 0"]),
    ({"max_steps": 0}, ["max_steps", ">= 1"]),
    ({"lr": -1e-3}, ["lr", "> 0"]),
    ({"centroid_lr": 0.0}, ["centroid_lr", "> 0"]),
    ({"weight_decay": -0.1}, ["weight_decay", ">= 0"]),
    ({"warmup": 1.0}, ["warmup", "[0, 1)"]),
    ({"schedule": "step"}, ["schedule", "'step'", "linear"]),
    ({"batch_size": 0}, ["batch_size", ">= 1"]),
    ({"grad_clip": 0}, ["grad_clip", "> 0"]),
    ({"eval_every": -1}, ["eval_every", ">= 0"]),
    ({"patience": 1.5}, ["patience", "1.5"]),
    ({"freeze": "fc1.*"}, ["freeze", "glob patterns"]),
])
def test_bad_config_values_are_named(kw, words):
    with pytest.raises(ConfigError) as err:
        UnlabelledDistillConfig(**kw)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_bad_call_arguments_are_named():
    teacher, student = _teacher_student()
    b = _batches(1, 1)
    with pytest.raises(ConfigError, match="freeze pattern 'nothing.*'"):
        distill_unlabelled(student, teacher, b, _cfg(freeze=["nothing.*"]))
    with pytest.raises(ConfigError, match=r"masks names \['fc9.weight'\]"):
        distill_unlabelled(student, teacher, b, _cfg(), masks=Masks({"fc9.weight": torch.ones(2)}))
    with pytest.raises(ConfigError, match="eval_every=2 needs eval_batches"):
        distill_unlabelled(student, teacher, b, _cfg(eval_every=2))
    with pytest.raises(ConfigError, match="no training batches"):
        distill_unlabelled(student, teacher, [], _cfg())
    with pytest.raises(ConfigError, match="no length; set max_steps"):
        distill_unlabelled(student, teacher, _Unsized(b), _cfg())


class _Unsized:
    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)


def test_lr_schedule_warmup_then_decay():
    from nncompress.distill.unlabelled import _lr_factor
    cfg = UnlabelledDistillConfig(warmup=0.2, schedule="linear")
    f = [_lr_factor(s, 10, cfg) for s in range(10)]
    assert f[0] < f[1] < f[2] == 1.0 and f[-1] == pytest.approx(1 - 7 / 8)  # 8 decay steps
    cfg = UnlabelledDistillConfig(warmup=0.0, schedule="cosine")
    assert _lr_factor(5, 10, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_progress_reporter_gets_every_step_and_epoch_loss():
    """``progress=RunProgress.fits(label)``: one curve point per epoch whose loss is the mean of
    that epoch's step losses, and plain lines off a terminal."""
    import io

    from nncompress.progress import RunProgress

    teacher, student = _teacher_student()
    out = io.StringIO()
    run = RunProgress(out, terminal=False)
    run.stage = "distill"
    rep = distill_unlabelled(student, teacher, _batches(5, 1), _cfg(epochs=3), progress=run.fits("distillation"))
    (curve,) = run.curves
    assert curve["label"] == "distillation" and curve["stage"] == "distill"
    assert [p["epoch"] for p in curve["epochs"]] == [0, 1, 2]
    per_epoch = [rep.step_losses[i:i + 5] for i in range(0, 15, 5)]
    for point, losses in zip(curve["epochs"], per_epoch, strict=True):
        assert point["train_loss"] == pytest.approx(sum(losses) / 5)
    assert "    distillation: epoch 3/3  loss" in out.getvalue()
