"""Relational distillation: the student's in-batch similarity structure matches the
teacher's (Park et al. 2019, "Relational Knowledge Distillation"; Tung & Mori 2019,
"Similarity-Preserving Knowledge Distillation").

For a batch of N sentence embeddings the relation is the (N, N) matrix of pairwise cosine
similarities ``G = normalize(E) normalize(E)^T``. Per-example losses (cosine, MSE) tie each
student embedding to its own teacher embedding; this term ties the *neighbourhoods*: which
sentences are close to which, the quantity a nearest-neighbour search (top-k overlap) sees.
The diagonal (always 1) is left out. Two forms:

- ``mse``: ``mean_{i != j} (G_s[i, j] - G_t[i, j])^2`` (Tung & Mori's similarity-preserving
  loss on cosine Gram matrices; RKD's distance term up to the normalisation);
- ``kl``: per row i, the teacher's distribution over the other sentences
  ``p_t(j | i) = softmax_{j != i}(G_t[i, j] / T)`` against the student's,
  ``T^2 mean_i KL(p_t(.|i) || p_s(.|i))``: a soft nearest-neighbour ranking target; a small
  T weights the closest neighbours most.

Both are invariant to any rotation (orthogonal map) and positive scaling applied to the
embeddings of one model, and 0 when the student's similarities equal the teacher's.

Example:
    >>> import torch
    >>> t = torch.randn(8, 4)
    >>> float(relational_loss(t, t))
    0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nncompress.checks import check_choice, check_float

RELATIONAL_MODES = ("mse", "kl")


def similarity_matrix(embeddings: torch.Tensor) -> torch.Tensor:
    """(N, N) cosine similarities of the rows of (N, D) ``embeddings``.

    Example:
        >>> g = similarity_matrix(torch.tensor([[1., 0.], [1., 1.]]))
        >>> [[round(v, 4) for v in row] for row in g.tolist()]
        [[1.0, 0.7071], [0.7071, 1.0]]
    """
    e = F.normalize(embeddings, dim=-1)
    return e @ e.T


def relational_loss(student: torch.Tensor, teacher: torch.Tensor, mode: str = "mse",
                    temperature: float = 0.1) -> torch.Tensor:
    """Distance between the in-batch cosine-similarity matrices of (N, D) ``student`` and
    (N, D') ``teacher`` embeddings (the widths may differ), diagonal excluded: ``mse`` of the
    off-diagonal similarities, or ``kl`` of the row-wise softmax at ``temperature`` (times
    ``temperature**2``). A batch of one sentence has no pairs: the loss is 0.

    Example:
        >>> s = torch.tensor([[1., 0.], [0., 1.], [1., 1.]])
        >>> t = torch.tensor([[1., 0.], [1., 0.1], [1., 1.]])
        >>> round(float(relational_loss(s, t)), 4)  # mean of the 6 squared differences
        0.3315
    """
    check_choice(mode, RELATIONAL_MODES, "relational mode")
    check_float(temperature, "relational temperature", 0, lo_open=True)
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(f"relational_loss needs (N, D) student and teacher embeddings with the same N, "
                         f"got {tuple(student.shape)} and {tuple(teacher.shape)}")
    n = student.shape[0]
    if n < 2:
        return student.sum() * 0.0
    gs, gt = similarity_matrix(student), similarity_matrix(teacher.to(student.dtype))
    off = ~torch.eye(n, dtype=torch.bool, device=student.device)
    if mode == "mse":
        return (gs - gt)[off].pow(2).mean()
    # kl: rows without the diagonal, (N, N-1)
    s = F.log_softmax(gs[off].view(n, n - 1) / temperature, dim=-1)
    t = F.log_softmax(gt[off].view(n, n - 1) / temperature, dim=-1)
    return temperature**2 * (t.exp() * (t - s)).sum(-1).mean()
