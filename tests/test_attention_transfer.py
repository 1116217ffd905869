"""K2 attention transfer: maps, loss, hooks and gradients."""

import math

import pytest
import torch
from torch.nn import functional as F

from nncompress.distill import (
    AttentionTransferLoss,
    DistillConfig,
    at_loss,
    attention_map,
    attention_transfer_loss_fn,
    kd_loss,
)
from nncompress.errors import ConfigError
from nncompress.models import build_model
from nncompress.train import TrainConfig, fit

PAIRS = [("layers.0", "layers.0"), ("layers.2", "layers.2")]  # 28x28 and 7x7 with blocks=1


def _nets():
    torch.manual_seed(0)
    teacher = build_model("resnet20", widths=(6, 6, 6), blocks=1)
    student = build_model("resnet20", widths=(3, 4, 5), blocks=1)
    return student, teacher


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_attention_map_by_hand():
    a = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]], [[2.0, 0.0], [1.0, -1.0]]]])  # (1, 2, 2, 2)
    assert attention_map(a, normalize=False).tolist() == [[5.0, 4.0, 1.0, 10.0]]
    assert attention_map(a, p=1, normalize=False).tolist() == [[3.0, 2.0, 1.0, 4.0]]
    q = attention_map(a)
    torch.testing.assert_close(q, torch.tensor([[5.0, 4.0, 1.0, 10.0]]) / math.sqrt(142.0))
    with pytest.raises(ConfigError, match="B, C, H, W"):
        attention_map(torch.ones(2, 3))


def test_at_loss_by_hand_and_zero_cases():
    q1, q2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert float(at_loss([q1], [q2], beta=2.0)) == pytest.approx(1.0)  # 2/2 * mean(1, 1)
    assert float(at_loss([q1, q1], [q2, q1], beta=10.0)) == pytest.approx(5.0)
    a = torch.rand(3, 4, 5, 5)
    assert float(at_loss([attention_map(a)], [attention_map(a)])) == 0.0
    scaled = at_loss([attention_map(a)], [attention_map(2.5 * a)])  # normalisation removes scale
    assert float(scaled) == pytest.approx(0.0, abs=1e-9)
    assert float(at_loss([attention_map(a)], [attention_map(torch.rand(3, 4, 5, 5))])) > 1e-3


def test_at_loss_rejects_mismatches():
    with pytest.raises(ConfigError, match="differ"):
        at_loss([torch.rand(2, 16)], [torch.rand(2, 9)])
    with pytest.raises(ConfigError, match="number"):
        at_loss([torch.rand(2, 16)], [])
    with pytest.raises(ConfigError, match="beta"):
        at_loss([torch.rand(2, 4)], [torch.rand(2, 4)], beta=-1.0)


def test_loss_fn_equals_kd_plus_at_and_grads_go_to_student_only():
    student, teacher = _nets()
    teacher.train()  # the loss must put it in eval mode
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    kd = DistillConfig(alpha=0.5, temperature=4.0)
    with attention_transfer_loss_fn(student, teacher, PAIRS, beta=1000.0, kd=kd) as loss_fn:
        assert not teacher.training
        teacher.train()  # switched back by someone: each call must restore eval mode
        stats = [b.clone() for b in teacher.buffers()]
        logits = student(x)
        loss = loss_fn(logits, y, x)
        assert not teacher.training
        assert all(torch.equal(a, b) for a, b in zip(stats, teacher.buffers()))  # BN stats kept
        loss.backward()
    # the same value by hand
    acts = {}
    hs = [dict(student.named_modules())[n].register_forward_hook(
        lambda m, i, o, n=n: acts.__setitem__(("s", n), o)) for n, _ in PAIRS]
    hs += [dict(teacher.named_modules())[n].register_forward_hook(
        lambda m, i, o, n=n: acts.__setitem__(("t", n), o)) for _, n in PAIRS]
    with torch.no_grad():
        s_logits, t_logits = student(x), teacher(x)
    for h in hs:
        h.remove()
    ref = kd_loss(s_logits, t_logits, y, 0.5, 4.0) + 500.0 * sum(
        (F.normalize(acts[("s", s)].pow(2).sum(1).flatten(1), dim=1)
         - F.normalize(acts[("t", t)].pow(2).sum(1).flatten(1), dim=1)).pow(2).mean()
        for s, t in PAIRS)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_at_term_alone_reaches_early_student_layers():
    student, teacher = _nets()
    with AttentionTransferLoss(student, teacher, [("layers.0", "layers.0")]) as loss_fn:
        x = torch.randn(3, 1, 28, 28)
        student(x)
        at, _ = loss_fn.at_term(x)
        assert at.item() > 0
        at.backward()
    assert student.conv1.weight.grad.abs().sum() > 0
    assert student.fc.weight.grad is None  # after the hooked layer: untouched by AT


def test_hooks_are_removed_and_captures_not_reused():
    student, teacher = _nets()
    n_s, n_t = _hooks(student), _hooks(teacher)
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([0, 1])
    with AttentionTransferLoss(student, teacher, PAIRS) as loss_fn:
        assert _hooks(student) == n_s + len(PAIRS)
        loss_fn(student(x), y, x)
        assert _hooks(teacher) == n_t  # teacher hooks live only during its forward pass
        with pytest.raises(ConfigError, match="no student activation"):
            loss_fn(student.fc(torch.zeros(2, 5)), y, x)  # no new student forward: stale
    assert _hooks(student) == n_s and _hooks(teacher) == n_t
    loss_fn.remove()  # idempotent
    assert _hooks(student) == n_s


def test_mismatched_spatial_sizes_raise_and_clean_up():
    student, teacher = _nets()
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([0, 1])
    with AttentionTransferLoss(student, teacher, [("layers.0", "layers.1")]) as loss_fn:
        with pytest.raises(ConfigError, match="spatial sizes differ"):
            loss_fn(student(x), y, x)
        assert _hooks(teacher) == 0
    assert _hooks(student) == 0


def test_bad_arguments_raise():
    student, teacher = _nets()
    with pytest.raises(ConfigError, match="no submodule 'nope'"):
        AttentionTransferLoss(student, teacher, [("nope", "layers.0")])
    with pytest.raises(ConfigError, match="at least one"):
        AttentionTransferLoss(student, teacher, [])
    with pytest.raises(ConfigError, match="beta"):
        AttentionTransferLoss(student, teacher, PAIRS, beta=-1.0)
    assert _hooks(student) == 0  # a failed construction leaves no hook behind


def test_fit_with_at_trains_student_and_leaves_teacher(tiny_data):
    student, teacher = _nets()
    t_before = [p.clone() for p in teacher.parameters()]
    s_before = student.conv1.weight.clone()
    with AttentionTransferLoss(student, teacher, PAIRS, kd=DistillConfig()) as loss_fn:
        hist = fit(student, tiny_data, TrainConfig(epochs=1, max_steps=3, batch_size=32),
                   loss_fn=loss_fn)
    assert math.isfinite(hist.epochs[0]["train_loss"])
    assert not torch.equal(student.conv1.weight, s_before)
    assert all(torch.equal(a, b) for a, b in zip(t_before, teacher.parameters()))
    assert _hooks(student) == 0
