"""P3 neuron pruning: remove the neurons that connection pruning has left dead.

After magnitude pruning a Linear chain (LeNet-300-100), a hidden neuron j is dead when

* all its incoming weights are zero: its output is the constant ``act(b_j)``; that constant
  is measured at the consumer's input with a forward hook (so any elementwise activation or
  eval-mode dropout in between is honoured) and folded into the consumer's bias,
  ``b'_consumer += W_consumer[:, j] * c_j``, which is exact; or
* all its outgoing weights (the consumer's column j) are zero: it contributes nothing.

Dead neurons are then physically removed with ``remove_channels`` (S14 machinery), so
the layers become smaller (300 -> fewer) and the outputs do not change. Only groups whose
root and consumers are all ``nn.Linear`` are considered (a zero conv filter's constant is
not spatially constant after zero padding, so folding it would not be exact).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from nncompress.analysis.capture import capture_io
from nncompress.prune.structured.groups import build_graph, groups_from_graph
from nncompress.prune.structured.removal import remove_channels

log = logging.getLogger(__name__)


@torch.no_grad()
def prune_dead_neurons(model: nn.Module, example_inputs: torch.Tensor, atol: float = 0.0) -> dict[str, int]:
    """Fold and remove dead hidden neurons of Linear layers, in place.

    Returns ``{layer name: neurons removed}``. ``atol``: weights with ``|w| <= atol`` count
    as zero (default: exactly zero, as left by masks).

    Example:
        >>> from nncompress.models import build_model
        >>> model = build_model("lenet300")
        >>> model.fc1.weight.data[:10] = 0  # ten neurons with no input left
        >>> prune_dead_neurons(model, torch.zeros(2, 1, 28, 28))
        {'fc1': 10}
    """
    x = example_inputs if example_inputs.shape[0] > 1 else example_inputs.repeat(2, *[1] * (example_inputs.dim() - 1))
    groups = groups_from_graph(model, build_graph(model, x[:1]))
    modules = dict(model.named_modules())
    plan: dict[str, list[int]] = {}
    for g in groups:
        root = modules[g.name]
        cons = {c: modules[c] for c in g.consumers}
        if not isinstance(root, nn.Linear) or not all(isinstance(m, nn.Linear) for m in cons.values()):
            continue
        if g.coupled:
            continue  # several layers write these neurons: incoming weights are not one row
        dead_in = (root.weight.abs() <= atol).all(1)  # (C,) local order of the root
        dead_out = torch.ones(g.channels, dtype=torch.bool)
        for c, m in cons.items():
            cols = torch.tensor(g.consumers[c], dtype=torch.long)  # (C, k) consumer inputs per neuron
            zero = m.weight[:, cols].abs() <= atol  # (out, C, k)
            dead_out &= zero.transpose(0, 1).flatten(1).all(1)
        local = torch.tensor(g.producers[g.name], dtype=torch.long)
        dead_in = dead_in[local]  # root order
        if not (dead_in | dead_out).any():
            continue
        fold = dead_in & ~dead_out
        if fold.any():
            inputs = {n: io[0] for n, io in capture_io(model, list(cons), x).items()}
            for c, m in cons.items():
                for j in fold.nonzero().flatten().tolist():
                    cols = g.consumers[c][j]
                    val = inputs[c][:, cols]  # (N, k): the neuron's constant output
                    if not torch.allclose(val, val[:1].expand_as(val)):
                        log.warning("neuron %d of %s is not constant at %s; kept", j, g.name, c)
                        fold[j] = False
                        dead_in[j] = False
                        continue
                    if m.bias is None:
                        if val.abs().max() > 0:
                            fold[j] = False
                            dead_in[j] = False
                        continue
                    m.bias.add_(m.weight[:, cols] @ val[0])
                    m.weight[:, cols] = 0.0  # its contribution now lives in the bias
        dead = (dead_in | dead_out).nonzero().flatten().tolist()
        if len(dead) >= g.channels:
            dead = dead[1:]  # keep one neuron so the layer still exists
        if dead:
            plan[g.name] = [g.producers[g.name][j] for j in dead]
    if plan:
        remove_channels(model, plan, x[:1])
    counts = {k: len(v) for k, v in plan.items()}
    log.info("dead neurons removed: %s", counts)
    return counts
