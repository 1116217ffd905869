"""Relational distillation (nncompress.distill.relational) and its use in label-free
distillation: the in-batch similarity loss, the intermediate-layer term, refusals."""

import copy

import pytest
import torch
from torch import nn

from nncompress.distill import UnlabelledDistillConfig, distill_unlabelled
from nncompress.distill.relational import relational_loss, similarity_matrix
from nncompress.errors import ConfigError


def _rotation(d, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


@pytest.mark.parametrize("mode", ["mse", "kl"])
def test_zero_when_student_equals_teacher_and_positive_otherwise(mode):
    torch.manual_seed(0)
    t = torch.randn(6, 5)
    assert relational_loss(t, t.clone(), mode).item() == pytest.approx(0.0, abs=1e-7)
    assert relational_loss(3.0 * t, t, mode).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert relational_loss(torch.randn(6, 5), t, mode).item() > 1e-4


@pytest.mark.parametrize("mode", ["mse", "kl"])
def test_invariant_to_a_common_rotation_and_to_a_rotation_of_one_side(mode):
    torch.manual_seed(1)
    s, t = torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    q = _rotation(4, 2)
    base = relational_loss(s, t, mode)
    assert relational_loss(s @ q, t @ q, mode).item() == pytest.approx(base.item(), rel=1e-10)
    assert relational_loss(s @ q, t, mode).item() == pytest.approx(base.item(), rel=1e-10)


def test_mse_form_by_hand_and_widths_may_differ():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    r = 2 ** -0.5
    # off-diagonal pairs (i<j): s sims (0, r, r), t sims (1, 0, 0); each pair twice
    expected = ((0 - 1) ** 2 + r**2 + r**2) / 3
    assert relational_loss(s, t).item() == pytest.approx(expected, rel=1e-6)
    assert similarity_matrix(s).diagonal().tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_kl_form_by_hand():
    torch.manual_seed(3)
    s, t, temp = torch.randn(5, 3), torch.randn(5, 3), 0.2
    gs, gt = similarity_matrix(s), similarity_matrix(t)
    total = 0.0
    for i in range(5):
        keep = [j for j in range(5) if j != i]
        p = torch.softmax(gt[i, keep] / temp, 0)
        logq = torch.log_softmax(gs[i, keep] / temp, 0)
        total += float((p * (p.log() - logq)).sum())
    assert relational_loss(s, t, "kl", temp).item() == pytest.approx(temp**2 * total / 5, rel=1e-5)


@pytest.mark.parametrize("mode", ["mse", "kl"])
def test_gradient_matches_finite_differences(mode):
    torch.manual_seed(4)
    s = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: relational_loss(x, t, mode, 0.5), (s,), eps=1e-6, atol=1e-7)


def test_one_sentence_batch_and_bad_shapes():
    s = torch.randn(1, 4, requires_grad=True)
    loss = relational_loss(s, torch.randn(1, 4))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
    with pytest.raises(ValueError, match=r"same N"):
        relational_loss(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ConfigError, match="relational mode"):
        relational_loss(torch.randn(3, 4), torch.randn(3, 4), "l1")


# ---------------------------------------------------------------- inside distill_unlabelled

class Blocks(nn.Module):
    """input_ids -> (N, T, D), two named blocks (like encoder.layer.i)."""

    def __init__(self, vocab=40, dim=12):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList([nn.Linear(dim, dim), nn.Linear(dim, dim)])

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        for b in self.blocks:
            h = h + torch.tanh(b(h))
        return h


def _pair(seed=0, noise=0.3):
    torch.manual_seed(seed)
    teacher = Blocks().eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if name.startswith("blocks"):
                p.add_(noise * torch.randn_like(p))
    return teacher, student


def _batches(k, seed, n=8, t=5):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 40, (n, t), generator=g),
             "attention_mask": torch.ones(n, t, dtype=torch.long)} for _ in range(k)]


def _rel(model, batches):
    from nncompress.distill.unlabelled import pool_embeddings
    with torch.no_grad():
        return [pool_embeddings(model(**b), b["attention_mask"]) for b in batches]


def test_relational_term_lowers_the_relational_loss():
    teacher, student = _pair()
    data = _batches(4, 1)
    cfg = UnlabelledDistillConfig(loss="relational", epochs=6, lr=3e-3, warmup=0.0, schedule="constant",
                                  grad_clip=None)
    before = sum(float(relational_loss(s, t)) for s, t in zip(_rel(student, data), _rel(teacher, data)))
    rep = distill_unlabelled(student, teacher, data, cfg)
    after = sum(float(relational_loss(s, t)) for s, t in zip(_rel(student, data), _rel(teacher, data)))
    assert after < 0.5 * before
    assert rep.epoch_losses[-1] < rep.epoch_losses[0]


def test_layers_term_matches_named_blocks():
    teacher, student = _pair(seed=2)
    data = _batches(4, 3)
    cfg = UnlabelledDistillConfig(loss="layers", layers=["blocks.0"], epochs=10, lr=1e-2, warmup=0.0,
                                  schedule="constant", grad_clip=None)
    later = student.blocks[1].weight.detach().clone()
    rep = distill_unlabelled(student, teacher, data, cfg)
    assert rep.epoch_losses[-1] < 0.5 * rep.epoch_losses[0]
    assert torch.equal(student.blocks[1].weight, later)  # after the matched block: no gradient


def test_terms_with_relational_and_config_refusals():
    cfg = UnlabelledDistillConfig(weights={"relational": 2.0, "layers": 0.5}, layers=["encoder.layer.2"],
                                  relational_mode="kl", relational_temperature=0.05)
    assert cfg.terms() == {"cosine": 1.0, "relational": 2.0, "layers": 0.5}
    for kw, words in [({"relational_mode": "l1"}, ["relational_mode", "'l1'", "kl"]),
                      ({"relational_temperature": 0.0}, ["relational_temperature", "> 0"]),
                      ({"weights": {"relational": -1.0}}, ["relational", ">= 0"]),
                      ({"weights": {"layers": 1.0}}, ["'layers' loss term needs layers"]),
                      ({"layers": ["encoder.layer.2"]}, ["has no weight"]),
                      ({"layers": "encoder.layer.2", "loss": "layers"}, ["list of module names"])]:
        with pytest.raises(ConfigError) as err:
            UnlabelledDistillConfig(**kw)
        assert all(w in str(err.value) for w in words), str(err.value)


def test_unknown_layer_is_named_before_training():
    teacher, student = _pair()
    cfg = UnlabelledDistillConfig(loss="layers", layers=["blocks.7"])
    with pytest.raises(ConfigError, match=r"layers \['blocks.7'\] are not modules of the student"):
        distill_unlabelled(student, teacher, _batches(1, 0), cfg)


def test_recipe_distill_stage_takes_and_checks_the_options():
    from nncompress.recipes import parse_recipe
    stage = {"distill": {"weights": {"relational": 1.0}, "relational_mode": "kl", "epochs": 1}}
    recipe = parse_recipe({"name": "x", "stages": [stage]})
    assert recipe.stages[0].config.terms() == {"cosine": 1.0, "relational": 1.0}
    with pytest.raises(ConfigError, match="relational_mode"):
        parse_recipe({"name": "x", "stages": [{"distill": {"relational_mode": "cos"}}]})
    with pytest.raises(ConfigError, match="relational_temperature"):
        parse_recipe({"name": "x", "stages": [{"distill": {"relational_temperature": -1}}]})
