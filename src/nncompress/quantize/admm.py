"""ADMM extremely-low-bit quantization (Q10, Leng et al. 2017, arXiv 1707.09870).

The constraint ``W in C = alpha * {level set}`` is split off: minimise
``f(W) + I_C(G)`` s.t. ``W = G`` with the scaled augmented Lagrangian
``f(W) + rho/2 ||W - G + lambda||^2``. Training alternates
  1. W: SGD steps on ``f(W) + rho/2 ||W - G + lambda||^2`` (``before_backward`` adds it),
  2. G: ``G = Proj_C(W + lambda)`` (every ``interval`` steps),
  3. lambda: ``lambda += W - G``.
The projection onto ``alpha * Q`` alternates in closed form (paper section 3.3):
``Q = nearest level of V / alpha``, then ``alpha = <V, Q> / <Q, Q>``, until Q stops
changing. At the end W is replaced by its projection.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.train.callbacks import Callback

log = logging.getLogger(__name__)

ADMM_LEVELS: dict[str, tuple[float, ...]] = {
    "ternary": (-1.0, 0.0, 1.0),
    "int5": (-2.0, -1.0, 0.0, 1.0, 2.0),
    "pow2": (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0),
}
"""The paper's three level sets: {-a,0,a}, {-2a..2a}, {-4a,-2a,-a,0,a,2a,4a}."""


def level_set(name: str) -> torch.Tensor:
    """The named level set as a sorted float32 tensor.

    Example:
        >>> level_set("int5").tolist()
        [-2.0, -1.0, 0.0, 1.0, 2.0]
    """
    if name not in ADMM_LEVELS:
        raise ConfigError(f"ADMM levels={name!r} not allowed; use one of {tuple(ADMM_LEVELS)}")
    return torch.tensor(ADMM_LEVELS[name], dtype=torch.float32)


def nearest_level(v: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Nearest entry of the sorted ``levels`` to each entry of ``v`` (ties go up).

    Example:
        >>> nearest_level(torch.tensor([0.4, 0.6, 3.1, -9.0]), level_set("pow2")).tolist()
        [0.0, 1.0, 4.0, -4.0]
    """
    mids = (levels[1:] + levels[:-1]) / 2  # (L-1,)
    idx = torch.bucketize(v.float().contiguous(), mids, right=True)
    return levels[idx]


def admm_project(
    v: torch.Tensor, levels: torch.Tensor, iters: int = 20
) -> tuple[torch.Tensor, float]:
    """Project ``v`` onto ``alpha * levels``: returns (``alpha * Q`` as float32, alpha).

    Starts from ``alpha = mean|v| / mean|levels != 0|`` and alternates Q and alpha.

    Example:
        >>> g, a = admm_project(torch.tensor([1.0, -1.1, 0.1, 0.9]), level_set("ternary"))
        >>> round(a, 4), g.tolist() == [a * x for x in (1.0, -1.0, 0.0, 1.0)]
        (1.0, True)
    """
    v = v.detach().float()
    nz = levels[levels != 0].abs().mean()
    alpha = float(v.abs().mean() / nz) if v.abs().sum() > 0 else 1.0
    q = torch.zeros_like(v)
    for _ in range(iters):
        q_new = nearest_level(v / alpha, levels)
        qq = float((q_new * q_new).sum())
        if qq == 0:
            q = q_new
            break
        alpha = float((v * q_new).sum()) / qq
        if torch.equal(q_new, q):
            break
        q = q_new
    a = torch.tensor(alpha, dtype=torch.float32)
    return a * q, float(a)


class ADMMCallback(Callback):
    """ADMM training for the named weights (a ``Callback`` for ``fit``).

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.train import TrainConfig, fit
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> model = build_model("lenet300")
        >>> cb = ADMMCallback(model, ["fc1.weight"], "ternary", rho=0.1)
        >>> _ = fit(model, data, TrainConfig(epochs=1), callbacks=[cb])
        >>> w, alpha = admm_project(model.fc1.weight.detach(), cb.levels)  # the final projection
        >>> w.unique().numel()  # -alpha, 0, +alpha
        3
    """

    def __init__(
        self,
        model: nn.Module,
        names: list[str],
        levels: str = "ternary",
        rho: float = 0.1,
        interval: int = 50,
        rho_growth: float = 1.0,
    ):
        if rho <= 0:
            raise ConfigError(f"ADMM rho={rho} must be > 0")
        if interval < 1:
            raise ConfigError(f"ADMM interval={interval} must be >= 1")
        self.levels = level_set(levels)
        self.names = list(names)
        self.rho, self.interval, self.rho_growth = float(rho), int(interval), float(rho_growth)
        params = dict(model.named_parameters())
        self._params = {n: params[n] for n in self.names}
        self.G = {n: admm_project(p, self.levels)[0] for n, p in self._params.items()}
        self.lam = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self._params.items()}
        self._step = 0

    def before_backward(self, loss: torch.Tensor, model: nn.Module) -> torch.Tensor:
        penalty = sum(((p - self.G[n] + self.lam[n]) ** 2).sum() for n, p in self._params.items())
        return loss + 0.5 * self.rho * penalty

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._step += 1
        if self._step % self.interval:
            return
        for n, p in self._params.items():
            self.G[n] = admm_project(p.float() + self.lam[n], self.levels)[0]
            self.lam[n] += p.float() - self.G[n]
        self.rho *= self.rho_growth

    def residual(self) -> float:
        """Relative primal residual ``||W - G|| / ||W||`` over all weights."""
        num = sum(
            float(((p.detach().float() - self.G[n]) ** 2).sum()) for n, p in self._params.items()
        )
        den = sum(float((p.detach().float() ** 2).sum()) for p in self._params.values())
        return (num / max(den, 1e-30)) ** 0.5

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        metrics["admm_residual"] = self.residual()
        log.info("ADMM epoch %d: residual %.4f rho %.3g", epoch, metrics["admm_residual"], self.rho)

    def state_dict(self):
        return {"G": dict(self.G), "lam": dict(self.lam), "step": self._step, "rho": self.rho}

    def load_state_dict(self, state):
        if state:
            self.G, self.lam = dict(state["G"]), dict(state["lam"])
            self._step, self.rho = int(state["step"]), float(state["rho"])
