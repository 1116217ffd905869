"""Symbolic tracing of a model for ONNX export: a ``torch.fx`` graph in which standard
``torch.nn`` layers stay whole (a layer that cannot be traced is named), and one run of
it on the example inputs that records every node's value (shape and dtype of tensors)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from nncompress.deploy.report import ExportError


def channel_shuffle_fn():
    """``nncompress.models.blocks.channel_shuffle`` (kept whole by the tracer), or None."""
    try:
        from nncompress.models.blocks import channel_shuffle
    except ImportError:  # pragma: no cover - models always ship it
        return None
    return channel_shuffle


class _Tracer(fx.Tracer):
    """Keeps standard layers whole and remembers the module being traced when it fails."""

    def __init__(self):
        fn = channel_shuffle_fn()
        super().__init__(autowrap_functions=(fn,) if fn is not None else ())
        self.path: list[str] = []
        self.failed_in: str | None = None

    def call_module(self, m, forward, args, kwargs):
        path = self.path_of_module(m)
        self.path.append(path)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = path
            raise
        finally:
            self.path.pop()


def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx`` graph of ``model``; a layer that cannot be traced is named."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - report where and why
        where = tracer.failed_in
        layer = f"layer {where!r} ({type(model.get_submodule(where)).__name__})" if where else "the model's forward"
        raise ExportError(f"{layer} cannot be traced for ONNX export "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); the exporter "
                          "needs a forward without data-dependent Python control flow") from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


class _Recorder(fx.Interpreter):
    """Runs the traced graph, keeping each node's value (tensors only when asked)."""

    def __init__(self, gm: fx.GraphModule, keep_tensors: bool):
        super().__init__(gm)
        self.values: dict[str, Any] = {}
        self.keep = keep_tensors

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.values[n.name] = out.detach().clone() if self.keep else ValueMeta(tuple(out.shape), out.dtype)
        else:
            self.values[n.name] = out
        return out


@dataclass
class ValueMeta:
    """Shape and dtype of a traced tensor value."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def record(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], keep_tensors: bool = False) -> dict[str, Any]:
    """Each node's value on ``inputs`` (shape and dtype of tensors unless ``keep_tensors``)."""
    rec = _Recorder(gm, keep_tensors)
    with torch.no_grad():
        rec.run(*inputs)
    return rec.values
