"""S13 Centripetal SGD (Ding et al., CVPR 2019): make filters identical, then merge them.

Each clustered layer's output channels are split into clusters (k-means on the filter
vectors, or an even split). For every per-channel parameter P of the channel group (the
layer's weight rows and bias, and the BatchNorm weight/bias after it) and every channel i
of cluster H, the loss gradient is replaced by (Ding et al. eq. 4, with ``eps`` the
centripetal strength)::

    g_i <- mean_{j in H} g_j + eps * (P_i - mean_{j in H} P_j)

so that the SGD step ``P_i <- P_i - lr * (g_i + wd * P_i)`` moves all members by the same
gradient while pulling them to the cluster centre: the differences between members shrink
by ``(1 - lr (eps + wd))`` per step (faster with momentum). BatchNorm running statistics
follow because identical filters produce identical channels.

:func:`csgd_merge` then keeps one channel per cluster: the producers' per-channel
parameters (and BatchNorm running stats) become the cluster mean, the consumers' input
columns of all members are summed into the kept one, and the other members are removed
physically with :func:`nncompress.prune.structured.removal.remove_channels`. When the
members coincide this is exact: ``sum_i W'_{:, i} y_i = (sum_i W'_{:, i}) y`` for identical
``y_i = y``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from nncompress.checks import check_float, check_int
from nncompress.errors import ConfigError
from nncompress.train.callbacks import Callback

log = logging.getLogger(__name__)
CLUSTER_METHODS = ("kmeans", "even")


def cluster_filters(weight: torch.Tensor, n_clusters: int, method: str = "kmeans", seed: int = 0) -> torch.Tensor:
    """Cluster label (0..k-1) of each output channel of ``weight`` (O, ...).

    ``even``: consecutive channels in k nearly equal groups. ``kmeans``: scikit-learn's
    k-means on the flattened filters (every label is used).

    Example:
        >>> cluster_filters(torch.zeros(5, 3), 2, "even").tolist()
        [0, 0, 0, 1, 1]
    """
    o = weight.shape[0]
    check_int(n_clusters, "n_clusters", 1, o)
    if method == "even":
        return torch.arange(o) * n_clusters // o
    if method == "kmeans":
        try:
            from sklearn.cluster import KMeans
        except ImportError:
            raise ConfigError("cluster method 'kmeans' needs scikit-learn: pip install scikit-learn "
                              "(it comes with nncompress[test] and nncompress[bench]), or use method 'even'") from None

        x = weight.detach().reshape(o, -1).double().cpu().numpy()
        labels = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit_predict(x)
        labels = torch.as_tensor(labels, dtype=torch.long)
        # relabel in order of first appearance, so labels are 0..k-1 and deterministic
        _, first = torch.unique(labels, return_inverse=True)
        return first
    raise ConfigError(f"cluster method {method!r} not allowed; use one of {CLUSTER_METHODS}")


def centripetal_grad(param: torch.Tensor, grad: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """``mean_H g + eps * (p - mean_H p)`` per channel (dim 0), H = the channel's cluster.

    Example:
        >>> centripetal_grad(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 4.0]), torch.tensor([0, 0]), 0.5).tolist()
        [2.5, 3.5]
    """
    k = int(labels.max()) + 1
    p2, g2 = param.detach().reshape(param.shape[0], -1), grad.reshape(grad.shape[0], -1)  # (O, D)
    counts = torch.zeros(k, dtype=p2.dtype, device=p2.device).index_add_(
        0, labels, torch.ones_like(labels, dtype=p2.dtype))  # (k,)
    mean_g = torch.zeros(k, g2.shape[1], dtype=g2.dtype, device=g2.device).index_add_(0, labels, g2) / counts[:, None]
    mean_p = torch.zeros(k, p2.shape[1], dtype=p2.dtype, device=p2.device).index_add_(0, labels, p2) / counts[:, None]
    return (mean_g[labels] + eps * (p2 - mean_p[labels])).view_as(grad)


def _group_for(model: nn.Module, layer: str, groups):
    from nncompress.prune.structured.groups import group_of

    g = group_of(groups, layer)
    if g.name != layer or g.coupled:
        raise ConfigError(f"C-SGD needs an uncoupled channel group rooted at {layer!r} (got group {g.name!r},"
                          f" coupled={g.coupled})")
    return g


def _channel_params(model: nn.Module, group) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, local index of each root channel) for every per-channel parameter."""
    out = []
    for mname, local in group.producers.items():
        mod = model.get_submodule(mname)
        for pname in ("weight", "bias"):
            p = getattr(mod, pname, None)
            if isinstance(p, nn.Parameter):
                out.append((p, torch.as_tensor(local, dtype=torch.long)))
    return out


class CSGDCallback(Callback):
    """Centripetal SGD on the channel groups rooted at the layers of ``clusters``.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.train import TrainConfig, fit
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> model, example = build_model("lenet5"), torch.randn(1, 1, 28, 28)
        >>> labels = {"conv1": cluster_filters(model.conv1.weight, 10)}
        >>> cb = CSGDCallback(model, labels, example, eps=0.05)
        >>> _ = fit(model, data, TrainConfig(epochs=1, batch_size=16), callbacks=[cb])
        >>> csgd_merge(model, labels, example).conv1.out_channels  # 20 filters merged into 10
        10
    """

    def __init__(self, model: nn.Module, clusters: Mapping[str, torch.Tensor], example_inputs: torch.Tensor,
                 eps: float = 0.05):
        from nncompress.prune.structured.groups import find_groups

        check_float(eps, "centripetal strength eps", 0)
        groups = find_groups(model, example_inputs)
        self.eps = eps
        self.items: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        for layer, labels in clusters.items():
            g = _group_for(model, layer, groups)
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.numel() != g.channels:
                raise ConfigError(f"{layer}: {labels.numel()} labels for {g.channels} channels")
            for p, local in _channel_params(model, g):
                self.items.append((p, local, labels))

    @torch.no_grad()
    def after_backward(self, model):
        for p, local, labels in self.items:
            if p.grad is None:
                continue
            sel = p.grad.index_select(0, local.to(p.device))
            new = centripetal_grad(p.index_select(0, local.to(p.device)), sel, labels.to(p.device), self.eps)
            p.grad.index_copy_(0, local.to(p.device), new)


def cluster_spread(model: nn.Module, clusters: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Largest |w_i - mean_H w| over each layer's clusters (0 when fully converged)."""
    out = {}
    for layer, labels in clusters.items():
        w = model.get_submodule(layer).weight.detach()
        zero = torch.zeros_like(w)
        out[layer] = float(centripetal_grad(w, zero, torch.as_tensor(labels), 1.0).abs().max())
    return out


@torch.no_grad()
def csgd_merge(model: nn.Module, clusters: Mapping[str, torch.Tensor], example_inputs: torch.Tensor,
               optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
    """Merge every cluster into its first channel and remove the others (in place).

    Producers (layer, BatchNorm) get the cluster-mean parameters and running statistics;
    consumers get the sum of the members' input columns. Returns ``model``.

    Example:
        >>> from nncompress.models import build_model
        >>> m = csgd_merge(build_model("lenet5"), {"conv1": torch.tensor([0, 0, 1, 1] * 5)}, torch.randn(1, 1, 28, 28))
        >>> m.conv1.out_channels
        2
    """
    from nncompress.prune.structured.groups import find_groups
    from nncompress.prune.structured.removal import remove_channels

    plan: dict[str, list[int]] = {}
    groups = find_groups(model, example_inputs)
    for layer, labels in clusters.items():
        g = _group_for(model, layer, groups)
        labels = torch.as_tensor(labels, dtype=torch.long)
        members = [torch.nonzero(labels == c).flatten().tolist() for c in range(int(labels.max()) + 1)]
        members = [m for m in members if m]
        for mname, local in g.producers.items():
            mod = model.get_submodule(mname)
            tensors = [getattr(mod, n) for n in ("weight", "bias", "running_mean", "running_var")
                       if isinstance(getattr(mod, n, None), torch.Tensor)]
            for t in tensors:
                for mem in members:
                    idx = torch.as_tensor([local[i] for i in mem], device=t.device)
                    t[idx[0]] = t.index_select(0, idx).mean(0)
        for cname, per_channel in g.consumers.items():
            w = model.get_submodule(cname).weight  # (O, I, ...) inputs on dim 1
            if getattr(model.get_submodule(cname), "groups", 1) != 1:
                raise ConfigError(f"C-SGD merge needs a groups=1 consumer, {cname!r} is grouped")
            for mem in members:
                keep_cols = torch.as_tensor(per_channel[mem[0]], device=w.device)
                for other in mem[1:]:
                    cols = torch.as_tensor(per_channel[other], device=w.device)
                    w[:, keep_cols] += w[:, cols]
        plan[layer] = sorted(i for mem in members for i in mem[1:])
    remove_channels(model, {k: v for k, v in plan.items() if v}, example_inputs, optimizer)
    log.info("C-SGD merged %s", {k: len(v) for k, v in plan.items()})
    return model


def clusters_for(model: nn.Module, layers: Mapping[str, int] | Sequence[str], *, ratio: float = 0.5,
                 method: str = "kmeans", seed: int = 0) -> dict[str, torch.Tensor]:
    """Cluster labels for each layer: ``layers`` maps layer -> number of clusters, or is a
    list of layers each clustered to ``round(ratio * channels)``."""
    out = {}
    items = layers.items() if isinstance(layers, Mapping) else (
        (n, max(1, int(round(ratio * model.get_submodule(n).weight.shape[0])))) for n in layers)
    for name, k in items:
        out[name] = cluster_filters(model.get_submodule(name).weight, int(k), method, seed)
    return out
