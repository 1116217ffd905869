"""S10 Optimal Brain Damage (LeCun, Denker & Solla 1990): saliency ``0.5 * h_ii * w_i^2``.

The diagonal of the Hessian is estimated over many batches with running sums (never from
the last batch alone):

* ``fisher`` (default): the diagonal of the empirical Fisher, the mean over samples of the
  squared *per-sample* gradient (``torch.func.vmap`` of ``grad``), a Gauss-Newton proxy
  of the Hessian at a minimum; ``labels='model'`` samples the labels from the model's
  own softmax, giving the true Fisher (= Gauss-Newton for cross-entropy).
* ``hutchinson``: ``E[z * (H z)]`` with Rademacher z and a Hessian-vector product by
  double back-propagation; unbiased for the Hessian diagonal of the mean loss.
* ``layerwise``: the exact Hessian diagonal of each layer's own reconstruction error
  ``mean ||W x - W_0 x||^2`` (the objective layer-wise OBS minimises, ``H = 2 X X^T / M``),
  i.e. ``h_oj = 2 mean(x_j^2)`` for every output row o: the diagonal counterpart of
  layer-wise OBS (OBS without the off-diagonal terms and without the compensating update).
  Its saliencies are comparable within a layer only, so it needs ``scope='layer'``.

Both are sum-weighted by batch size, so the estimate over batches of sizes b_1..b_k is the
estimate over all the samples at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from nncompress.checks import check_choice
from nncompress.errors import ConfigError
from nncompress.modules import calibration_batches, layer_inputs_2d
from nncompress.prune.magnitude import SCOPES, check_sparsity, finish_masks, select_masks
from nncompress.prune.mask import Masks
from nncompress.prune.targets import module_of, prunable_weights

log = logging.getLogger(__name__)
ESTIMATORS = ("fisher", "hutchinson", "layerwise")
FISHER_LABELS = ("empirical", "model")


def obd_saliency(weight: torch.Tensor, hessian_diag: torch.Tensor) -> torch.Tensor:
    """``0.5 * h_ii * w_i^2`` element-wise (same shape as ``weight``).

    Example:
        >>> obd_saliency(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 4.0])).tolist()
        [2.0, 2.0]
    """
    return 0.5 * hessian_diag * weight.detach() ** 2


def diag_fisher(
    model: nn.Module,
    data: Dataset | DataLoader,
    names: Iterable[str] | None = None,
    *,
    n_samples: int | None = None,
    batch_size: int = 64,
    labels: str = "empirical",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher ``mean_n (d loss_n / d w)^2`` of the named parameters.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.train import TrainConfig, fit
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> h = diag_fisher(build_model("lenet300"), data, n_samples=32)
        >>> sorted(h), bool((h["fc1.weight"] >= 0).all())
        (['fc1.weight', 'fc2.weight', 'fc3.weight'], True)
    """
    from torch.func import functional_call, grad, vmap

    check_choice(labels, FISHER_LABELS, "labels")
    names = list(names) if names is not None else list(prunable_weights(model))
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    sub = {k: params[k] for k in names}
    device = next(iter(sub.values())).device

    def loss_one(p_sub, x, y):
        out = functional_call(model, ({**params, **p_sub}, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0))

    per_sample_grad = vmap(grad(loss_one), in_dims=(None, 0, 0))
    gen = torch.Generator().manual_seed(seed)
    acc = {k: torch.zeros_like(v) for k, v in sub.items()}
    count = 0
    was_training = model.training
    model.eval()
    try:
        for x, y in calibration_batches(data, batch_size, n_samples):
            x, y = x.to(device), y.to(device)
            if labels == "model":
                with torch.no_grad():
                    probs = F.softmax(model(x), dim=1).cpu()
                y = torch.multinomial(probs, 1, generator=gen).squeeze(1).to(device)
            g = per_sample_grad(sub, x, y)  # name -> (B, *shape)
            for k in acc:
                acc[k] += g[k].pow(2).sum(0)
            count += len(y)
    finally:
        model.train(was_training)
    if count == 0:
        raise ConfigError("diag_fisher got no samples")
    return {k: v / count for k, v in acc.items()}


def diag_hessian_hutchinson(
    model: nn.Module,
    data: Dataset | DataLoader,
    names: Iterable[str] | None = None,
    *,
    n_samples: int | None = None,
    batch_size: int = 64,
    probes: int = 1,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Hutchinson estimate ``E_z[z * H z]`` of the Hessian diagonal of the mean loss.

    Each batch's estimate of its own mean-loss Hessian is weighted by the batch size.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.train import TrainConfig, fit
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> h = diag_hessian_hutchinson(build_model("lenet300"), data, n_samples=32, probes=2)
        >>> h["fc1.weight"].shape
        torch.Size([300, 784])
    """
    names = list(names) if names is not None else list(prunable_weights(model))
    all_params = dict(model.named_parameters())
    ps = [all_params[k] for k in names]
    gen = torch.Generator().manual_seed(seed)
    acc = [torch.zeros_like(p) for p in ps]
    count = 0
    device = ps[0].device
    was_training = model.training
    model.eval()
    try:
        for x, y in calibration_batches(data, batch_size, n_samples):
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, ps, create_graph=True)
            for i in range(probes):
                zs = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p) for p in ps]
                hz = torch.autograd.grad(grads, ps, zs, retain_graph=i < probes - 1)
                for a, z, h in zip(acc, zs, hz):
                    a += z * h * (len(y) / probes)
            count += len(y)
    finally:
        model.train(was_training)
    if count == 0:
        raise ConfigError("diag_hessian_hutchinson got no samples")
    return {k: a.detach() / count for k, a in zip(names, acc)}


@torch.no_grad()
def diag_layerwise(
    model: nn.Module,
    data: Dataset | DataLoader,
    names: Iterable[str] | None = None,
    *,
    n_samples: int | None = None,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Diagonal of each layer's reconstruction-error Hessian, ``2 mean(x_j^2)`` per weight.

    ``x`` are the layer's input rows (Linear inputs, or Conv2d ``unfold`` patches), gathered
    by forward pre-hooks and summed over all batches; the result has the weight's shape.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.train import TrainConfig, fit
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> h = diag_layerwise(build_model("lenet300"), data, n_samples=32)
        >>> h["fc1.weight"].shape, bool((h["fc1.weight"] >= 0).all())
        (torch.Size([300, 784]), True)
    """

    names = list(names) if names is not None else list(prunable_weights(model))
    owners = {n: module_of(model, n) for n in names}
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = dict.fromkeys(names, 0)

    def hook_for(name: str):
        def hook(mod, inputs):
            x2 = layer_inputs_2d(mod, inputs[0].detach(), "layer-wise OBS").double()
            sums[name] = sums.get(name, 0) + x2.pow(2).sum(0)
            rows[name] += x2.shape[0]
        return hook

    handles = [owners[n].register_forward_pre_hook(hook_for(n)) for n in names]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for x, _ in calibration_batches(data, batch_size, n_samples):
            model(x.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for n in names:
        if not rows[n]:
            raise ConfigError(f"diag_layerwise: layer {n!r} saw no inputs")
        w = owners[n].weight
        col = (2.0 * sums[n] / rows[n]).to(w.dtype)  # (d,)
        out[n] = col.reshape(1, *w.shape[1:]).expand_as(w).clone()
    return out


def hessian_diag(model: nn.Module, data, names=None, *, estimator: str = "fisher", **kw) -> dict[str, torch.Tensor]:
    """Dispatch to :func:`diag_fisher`, :func:`diag_hessian_hutchinson` or
    :func:`diag_layerwise` by name."""
    if estimator == "layerwise":
        return diag_layerwise(model, data, names, **kw)
    if estimator == "fisher":
        return diag_fisher(model, data, names, **kw)
    if estimator == "hutchinson":
        return diag_hessian_hutchinson(model, data, names, **kw)
    raise ConfigError(f"estimator {estimator!r} not allowed; use one of {ESTIMATORS}")


@torch.no_grad()
def obd_prune(
    model: nn.Module,
    data: Dataset | DataLoader,
    sparsity: float | Mapping[str, float],
    *,
    scope: str = "layer",
    estimator: str = "fisher",
    n_samples: int | None = 2048,
    batch_size: int = 64,
    include=None,
    exclude=(),
    previous: Masks | None = None,
    apply: bool = True,
    **estimator_kw,
) -> Masks:
    """Prune the weights of least OBD saliency to ``sparsity`` (per layer or globally).

    ``sparsity`` may be a dict ``{param_name: s, 'default': s}`` with ``scope='layer'``
    (layers not named and without a default are left dense). Already-pruned weights (``previous``) have saliency 0 and stay pruned.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.train import TrainConfig, fit
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> masks = obd_prune(build_model("lenet300"), data, 0.9, n_samples=32)
        >>> round(masks.total_sparsity(), 3)
        0.9
    """
    check_choice(scope, SCOPES, "scope")
    if estimator == "layerwise" and scope == "global":
        raise ConfigError("estimator 'layerwise' gives saliencies comparable within a layer only; "
                          "use scope='layer'")
    weights = prunable_weights(model, include, exclude)
    if isinstance(sparsity, Mapping):
        if scope == "global":
            raise ConfigError("global scope needs one number for sparsity")
        unknown = set(sparsity) - set(weights) - {"default"}
        if unknown:
            raise ConfigError(f"sparsity names unknown layers {sorted(unknown)}; allowed: {list(weights)}")
        per_layer = {n: sparsity.get(n, sparsity.get("default")) for n in weights}
    else:
        per_layer = dict.fromkeys(weights, check_sparsity(sparsity))
    with torch.enable_grad():
        h = hessian_diag(model, data, list(weights), estimator=estimator, n_samples=n_samples,
                         batch_size=batch_size, **estimator_kw)
    sal = {n: obd_saliency(w, h[n]) for n, w in weights.items()}
    if previous is not None:
        for n, m in previous.items():
            if n in sal:
                sal[n] = torch.where(m.to(sal[n].device), sal[n], torch.full_like(sal[n], -1.0))
    return finish_masks(model, select_masks(sal, sparsity if scope == "global" else per_layer, scope),
                        previous, apply)
