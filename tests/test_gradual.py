"""P4 gradual pruning: schedule formulas and the callback's events."""

import pytest
import torch

from nncompress.errors import ConfigError
from nncompress.prune.gradual import (
    GradualConfig,
    GradualPruning,
    cubic_sparsity,
    exponential_sparsity,
    linear_sparsity,
    sparsity_schedule,
)
from nncompress.train import TrainConfig, fit


def test_cubic_formula_by_hand():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 with s_i=.1, s_f=.9, t0=10, n=4, dt=5
    for t, frac in [(10, 0.0), (15, 0.25), (20, 0.5), (30, 1.0)]:
        assert cubic_sparsity(t, 0.1, 0.9, 10, 4, 5) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - frac) ** 3)
    assert cubic_sparsity(0, 0.1, 0.9, 10, 4, 5) == pytest.approx(0.1)
    assert cubic_sparsity(99, 0.1, 0.9, 10, 4, 5) == 0.9


def test_linear_and_exponential():
    assert linear_sparsity(5, 0.0, 0.5, 0, 2, 5) == pytest.approx(0.25)
    # density halves every quarter for s_f = 1 - 1/16
    assert 1 - exponential_sparsity(1, 0.0, 1 - 1 / 16, 0, 4, 1) == pytest.approx(0.5)


def test_schedule_rejects_unknown_name():
    with pytest.raises(ConfigError, match="cubic"):
        sparsity_schedule("quadratic", 0, 0.5, 0, 1, 1)


def test_callback_reaches_target_and_masks_stay(lenet300, tiny_data):
    cfg = GradualConfig(final_sparsity=0.8, n=3, dt=2, t0=1)
    cb = GradualPruning(lenet300, cfg)
    fit(lenet300, tiny_data, TrainConfig(epochs=3, batch_size=32, lr=0.01), callbacks=[cb])
    assert [s for s, _ in cb.events] == [1, 3, 5, 7]
    # each event hits the schedule's sparsity exactly, layer-wise
    assert cb.events[-1][1] == pytest.approx(0.8, abs=1e-4)
    sp = cb.masks.sparsity()
    assert all(v == pytest.approx(0.8, abs=1e-3) for v in sp.values())
    for name, m in cb.masks.items():
        w = dict(lenet300.named_parameters())[name]
        assert torch.all(w[~m] == 0)
    # monotone: targets rise
    totals = [t for _, t in cb.events]
    assert totals == sorted(totals)


def test_global_scope_counts(lenet300, tiny_data):
    cb = GradualPruning(lenet300, GradualConfig(final_sparsity=0.5, n=1, dt=1, scope="global", schedule="constant"))
    fit(lenet300, tiny_data, TrainConfig(epochs=1, batch_size=64), callbacks=[cb])
    total = sum(m.numel() for m in cb.masks.values())
    assert sum(cb.masks.kept().values()) == total - round(0.5 * total)


def test_dispatcher_gradual_and_one_shot_rounds(lenet300, tiny_data):
    from nncompress.prune.sparse_train import sparse_train

    res = sparse_train(lenet300, "gradual", tiny_data, TrainConfig(epochs=2, batch_size=32),
                       final_sparsity=0.75, start=0.0, end=0.5, n_events=4)
    assert res.masks.total_sparsity() == pytest.approx(0.75, abs=1e-3)
    assert len(res.history) == 2
    res = sparse_train(lenet300, "magnitude", tiny_data, TrainConfig(epochs=2, batch_size=64), rounds=[0.8, 0.9])
    assert res.masks.total_sparsity() == pytest.approx(0.9, abs=1e-3) and len(res.history) == 2
    for n, m in res.masks.items():
        assert torch.all(dict(lenet300.named_parameters())[n][~m] == 0)
