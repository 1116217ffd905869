import math

import pytest
import torch
import torch.nn.functional as F

from nncompress.distill import distillation_loss_fn, kd_loss
from nncompress.errors import ConfigError


def test_kd_formula_by_hand():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([0])
    T, a = 2.0, 0.3
    ps = torch.softmax(s / T, 1)[0]
    pt = torch.softmax(t / T, 1)[0]
    kl = float((pt * (pt.log() - ps.log())).sum())
    ce = float(F.cross_entropy(s, y))
    expected = (1 - a) * ce + a * T * T * kl
    assert float(kd_loss(s, t, y, a, T)) == pytest.approx(expected, rel=1e-6)


def test_kd_pure_hard_and_identical_logits():
    z = torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    assert float(kd_loss(z, z, y, alpha=1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(z, z * 3, y, alpha=0.0)) == pytest.approx(float(F.cross_entropy(z, y)))


def test_teacher_frozen_and_bad_args():
    teacher = torch.nn.Linear(4, 3)
    fn = distillation_loss_fn(teacher, 0.5, 2.0)
    x = torch.randn(2, 4)
    student = torch.nn.Linear(4, 3)
    loss = fn(student(x), torch.tensor([0, 1]), x)
    loss.backward()
    assert teacher.weight.grad is None and student.weight.grad is not None
    assert not math.isnan(loss.item())
    with pytest.raises(ConfigError, match="alpha"):
        kd_loss(x[:, :3], x[:, :3], torch.tensor([0, 1]), alpha=1.5)
