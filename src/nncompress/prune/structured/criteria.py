"""Channel-importance formulas (S1-S4, S6-S9) as pure tensor functions.

Convention everywhere: one score per output channel, HIGHER = MORE IMPORTANT; pruning
removes the lowest scores. Formulas whose paper ranks the other way (APoZ: high = prune)
are negated here so the pruner can treat every criterion alike. ``scoring.py`` gathers the
activations/gradients from a model and calls these.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nncompress.errors import ConfigError


def filter_norm(weight: torch.Tensor, p: int = 1) -> torch.Tensor:
    """S1 (Li et al. 2017): Lp norm of each output filter. ``weight``: (C_out, ...) -> (C_out,).

    Example:
        >>> filter_norm(torch.tensor([[1., -2.], [0., 3.]]), p=1)
        tensor([3., 3.])
    """
    if p not in (1, 2):
        raise ConfigError(f"norm order p={p!r} not allowed; use 1 or 2")
    return weight.detach().flatten(1).norm(p=p, dim=1)


def apoz(acts: torch.Tensor) -> torch.Tensor:
    """S2 (Hu et al. 2016): Average Percentage of Zeros of each channel after ReLU.

    ``acts``: (N, C, ...) pre- or post-ReLU activations -> (C,) fraction in [0, 1] of
    entries that ReLU sets to zero. A HIGH APoZ marks an UNIMPORTANT channel; the score
    used for ranking is ``1 - apoz`` (see ``apoz_score``).

    Example:
        >>> apoz(torch.tensor([[[1., -1.], [0., 2.]]]))
        tensor([0.5000, 0.5000])
    """
    a = torch.relu(acts.detach()).transpose(0, 1).flatten(1)  # (C, N*L)
    return (a == 0).float().mean(1)


def apoz_score(acts: torch.Tensor) -> torch.Tensor:
    """Ranking score of S2: ``1 - APoZ`` (higher = more important)."""
    return 1.0 - apoz(acts)


def gap_entropy(gap: torch.Tensor, bins: int = 10) -> torch.Tensor:
    """S3 (Luo & Wu 2017): entropy of each channel's global-average-pooled response.

    ``gap``: (N, C), the channel means over n images. Each channel's n values are
    histogrammed into ``bins`` equal bins over [min, max] of that channel;
    ``H_j = -sum_i p_i log p_i`` (natural log). A constant channel has H = 0. Low entropy =
    unimportant.

    Example:
        >>> gap_entropy(torch.tensor([[0.], [1.], [0.], [1.]]), bins=2)  # two equal bins: log 2
        tensor([0.6931])
    """
    if bins < 2:
        raise ConfigError(f"bins must be >= 2, got {bins}")
    g = gap.detach().float()  # (N, C)
    lo, hi = g.min(0).values, g.max(0).values  # (C,)
    width = (hi - lo).clamp_min(1e-12)
    idx = ((g - lo) / width * bins).long().clamp(0, bins - 1)  # (N, C)
    counts = torch.zeros(bins, g.shape[1]).scatter_add_(0, idx, torch.ones_like(g))  # (bins, C)
    p = counts / g.shape[0]
    h = -(p * torch.log(p.clamp_min(1e-30))).sum(0)
    return torch.where(hi > lo, h, torch.zeros_like(h))


def taylor(acts: torch.Tensor, grads: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """S4 (Molchanov et al. 2017): ``|mean over positions of a * dL/da|``, averaged over samples.

    ``acts``, ``grads``: (N, C, ...). With ``normalise`` the layer's vector is divided by
    its L2 norm (the paper's layer-wise normalisation), so layers compare.

    Example:
        >>> taylor(torch.tensor([[[1., 3.], [2., 0.]]]), torch.tensor([[[1., -1.], [1., 1.]]]), False)
        tensor([1., 1.])
    """
    prod = (acts.detach() * grads.detach()).flatten(2).mean(2)  # (N, C)
    s = prod.abs().mean(0)  # (C,)
    if normalise:
        s = s / s.norm().clamp_min(1e-12)
    return s


def class_discriminability(fire: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """S7, ICC-style: share of a filter's fire-score variance explained by the class.

    ``fire``: (N, C) fire scores (max of each filter's output per image); ``labels``: (N,).
    ``ICC_j = var_between / (var_between + var_within)``, with
    ``var_between = sum_c n_c (mu_c - mu)^2 / N`` and ``var_within = sum_c sum_i (x_i - mu_c)^2 / N``
    (the intraclass correlation of a one-way layout). 1 = the score separates the classes
    perfectly, 0 = it carries no class information. A constant filter scores 0.

    Example:
        >>> class_discriminability(torch.tensor([[0.], [0.], [2.], [2.]]), torch.tensor([0, 0, 1, 1]))
        tensor([1.])
    """
    x = fire.detach().float()  # (N, C)
    mu = x.mean(0)  # (C,)
    between = torch.zeros_like(mu)
    within = torch.zeros_like(mu)
    for c in labels.unique():
        xc = x[labels == c]  # (n_c, C)
        mc = xc.mean(0)
        between += xc.shape[0] * (mc - mu) ** 2
        within += ((xc - mc) ** 2).sum(0)
    tot = between + within
    return torch.where(tot > 0, between / tot.clamp_min(1e-30), torch.zeros_like(tot))


def activation_correlation(this: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
    """S8 (after Sun et al. 2016): ``max_k |corr(a_j, b_k)|`` between a channel of this layer
    and the channels of the next layer, over samples.

    ``this``: (N, C) and ``nxt``: (N, K) per-sample channel responses (e.g. GAP). A channel
    strongly correlated (either sign) with some next-layer channel is important; a channel
    with zero variance scores 0.

    Example:
        >>> activation_correlation(torch.tensor([[1., 0.], [2., 0.], [3., 0.]]),
        ...                        torch.tensor([[3.], [2.], [1.]])).round(decimals=4).tolist()
        [1.0, 0.0]
    """
    a = this.detach().float()
    b = nxt.detach().float()
    a = a - a.mean(0)
    b = b - b.mean(0)
    na, nb = a.norm(dim=0), b.norm(dim=0)  # (C,), (K,)
    corr = (a.T @ b) / (na[:, None] * nb[None, :]).clamp_min(1e-30)  # (C, K)
    corr = torch.where((na[:, None] > 0) & (nb[None, :] > 0), corr, torch.zeros_like(corr))
    return corr.abs().max(1).values


def oracle(loss_without: Callable[[int], float], channels: int, base_loss: float) -> torch.Tensor:
    """S9 oracle (Ding et al. 2019): loss increase when channel j alone is removed.

    ``loss_without(j)`` evaluates the loss with channel ``j`` silenced.

    Example:
        >>> oracle(lambda j: [1.0, 1.5, 1.1][j], 3, 1.0)
        tensor([0.0000, 0.5000, 0.1000])
    """
    return torch.tensor([loss_without(j) - base_loss for j in range(channels)])


def aofp(
    damage: Callable[[list[int]], float],
    channels: int,
    generator: torch.Generator,
    trials: int = 1,
) -> torch.Tensor:
    """S9 AOFP (Ding et al. ICML 2019), as a score: binary search over halves.

    Start with every channel a candidate. Split the candidates at random into halves A, B;
    ``damage(S)`` is the change of the next layer's output with the channels S silenced.
    The half with the larger damage leaves the candidate set (its channels are needed);
    the other half is searched further, until one channel is left. A channel's score is the
    number of halvings before the last one that it did not survive: channels that leave
    early (needed) score high, the last survivor (the least harmful to remove) 0. ``trials`` random
    restarts are averaged; ties within a level are broken by the damage of the half.

    Example:
        >>> aofp(lambda s: float(sum(s)), 4, torch.Generator().manual_seed(0)).argmin()
        tensor(0)
    """
    total = torch.zeros(channels)
    for _ in range(trials):
        score = torch.zeros(channels)
        cand = list(range(channels))
        level = 0
        while len(cand) > 1:
            perm = torch.randperm(len(cand), generator=generator).tolist()
            half = len(cand) // 2
            a = [cand[i] for i in perm[:half]]
            b = [cand[i] for i in perm[half:]]
            da, db = damage(a), damage(b)
            keep, leave, d_leave = (a, b, db) if da <= db else (b, a, da)
            for j in leave:
                score[j] = -level + 0.5 * d_leave / (abs(d_leave) + 1.0)  # in (-level, -level+0.5)
            cand = keep
            level += 1
        for j in cand:
            score[j] = -level
        total += score + level
    return total / trials


def random_search(
    loss_of_removed: Callable[[list[int]], float],
    channels: int,
    n_remove: int,
    candidates: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """S6 (Anwar et al. 2017): draw ``candidates`` random sets of ``n_remove`` channels,
    evaluate each on held-out data, keep the best.

    Score: 0 for the channels the best candidate removes, 1 for the others, plus a small
    Monte-Carlo tie-break (the mean held-out loss of the candidates that removed the
    channel, scaled into [0, 0.5)), so more channels than ``n_remove`` can still be ranked.

    Example:
        >>> score = random_search(lambda s: float(0 in s), 3, 1, 8, torch.Generator().manual_seed(0))
        >>> int(score.argmax()), float(score.min())  # removing channel 0 hurts: ranked first
        (0, 0.0)
    """
    if not 0 < n_remove < channels:
        return torch.ones(channels)
    losses: list[tuple[float, list[int]]] = []
    for _ in range(candidates):
        s = torch.randperm(channels, generator=generator)[:n_remove].tolist()
        losses.append((loss_of_removed(s), s))
    sums, counts = torch.zeros(channels), torch.zeros(channels)
    for loss, s in losses:
        sums[s] += loss
        counts[s] += 1
    mean = torch.where(counts > 0, sums / counts.clamp_min(1), sums.new_full((channels,), max(l for l, _ in losses)))
    lo, hi = mean.min(), mean.max()
    tie = 0.49 * (mean - lo) / (hi - lo) if hi > lo else torch.zeros(channels)
    best = min(losses, key=lambda t: t[0])[1]
    score = torch.ones(channels) + tie
    score[best] = tie[best]
    return score
