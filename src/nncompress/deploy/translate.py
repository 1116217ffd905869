"""Translate a PyTorch model to an ONNX graph, layer by layer, through ``torch.fx``.

The model is traced symbolically (``tracing.trace``: standard ``torch.nn`` layers stay whole),
run once on the example inputs to learn every value's shape (``tracing.record``), and each
traced node is written as ONNX nodes
with ``onnx.helper``; parameters and buffers go through :mod:`nncompress.deploy.storage`,
which keeps their compression. Anything without a translation raises ``ExportError``
naming the layer (its module path) and what is supported.

The batch dimension (dim 0 of every input) is dynamic: reshapes keep it as ``-1`` and the
inputs and outputs declare it as ``batch``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from nncompress.deploy.graph import GraphBuilder
from nncompress.deploy.report import ExportError, TensorStorage
from nncompress.deploy.storage import FORMS, encode_tensor
from nncompress.deploy.tracing import ValueMeta, channel_shuffle_fn


@dataclass
class Static:
    """A traced value that is not a tensor (a size, a shape): known from the example run."""

    value: Any


# ----------------------------------------------------------------------------- context

@dataclass
class Context:
    gm: fx.GraphModule
    b: GraphBuilder
    meta: dict[str, Any]
    forms: tuple[str, ...]
    batch: int
    env: dict[str, Any] = field(default_factory=dict)
    storage: list[TensorStorage] = field(default_factory=list)
    stored: dict[int, str] = field(default_factory=dict)
    node: fx.Node | None = None
    layer_of_value: dict[str, str] = field(default_factory=dict)

    # -- values
    def val(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.env[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(self.val(x) for x in a)
        return a

    def tensor(self, a: Any) -> str:
        """ONNX name of a tensor argument; a Python number becomes a float32 constant."""
        v = self.val(a)
        if isinstance(v, str):
            return v
        if isinstance(v, Static) and isinstance(v.value, (int, float)):
            v = v.value
        if isinstance(v, (bool, int, float)):
            return self.b.scalar(float(v), np.float32, "c")
        raise self.error(f"argument {str(a)[:60]} is not a tensor")

    def shape(self, a: fx.Node) -> tuple[int, ...]:
        m = self.meta.get(a.name)
        if not isinstance(m, ValueMeta):
            raise self.error(f"{a.name} has no tensor shape")
        return m.shape

    def out_shape(self) -> tuple[int, ...]:
        return self.shape(self.node)

    def rank(self, a: fx.Node) -> int:
        return len(self.shape(a))

    # -- naming
    def layer(self, node: fx.Node | None = None) -> str:
        node = node or self.node
        if node.op == "call_module":
            return str(node.target)
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path = list(stack.values())[-1]
            path = path[0] if isinstance(path, tuple) else path
            return f"{path}/{node.name}" if path else node.name
        return node.name

    def describe(self, node: fx.Node | None = None) -> str:
        """How an error names the layer: its module path and type, and the op for functions."""
        node = node or self.node
        if node.op == "call_module":
            mod = self.gm.get_submodule(str(node.target))
            return f"layer {str(node.target)!r} ({type(mod).__name__})"
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path, cls = list(stack.values())[-1]
            cls_name = getattr(cls, "__name__", str(cls).rpartition(".")[2].rstrip("'>"))
            where = f"layer {path!r} ({cls_name})"
        else:
            where = f"the forward of {type(self.gm).__name__}"
        return f"{where}, op {_target_name(node)} (traced node {node.name!r})"

    def error(self, what: str) -> ExportError:
        if self.node is None:
            return ExportError(what)
        return ExportError(f"{self.describe()}: {what}")

    # -- parameters
    def param(self, t: torch.Tensor | None, name: str) -> str | None:
        """Store a parameter / buffer once (smallest exact form); its ONNX value name."""
        if t is None:
            return None
        key = id(t)
        if key in self.stored:
            return self.stored[key]
        if not t.is_floating_point():
            raise self.error(f"tensor {name} has dtype {t.dtype}; only floating point is supported")
        w = t.detach().to(torch.float32).cpu().numpy()
        out, form, nbytes, detail, nonzero, distinct = encode_tensor(self.b, name, w, self.forms)
        layer = name.rpartition(".")[0] or name
        self.storage.append(TensorStorage(name, layer, form, tuple(w.shape), int(w.size), nonzero,
                                          distinct, nbytes, 4 * int(w.size), detail))
        self.stored[key] = out
        return out

    def node_out(self, op: str, inputs: list[str], **attrs: Any) -> str:
        """A layer's main node, its output and node named after the traced node."""
        return self.b.node(op, inputs, hint=self.node.name, name=self.layer(), **attrs)


def _target_name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", str(t))


def _pair(v: Any, n: int) -> list[int]:
    if isinstance(v, (list, tuple)):
        return [int(x) for x in v]
    return [int(v)] * n


def _arg(node: fx.Node, i: int, key: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


# ----------------------------------------------------------------------------- modules

def _linear(ctx: Context, x: fx.Node, weight: torch.Tensor, bias: torch.Tensor | None, prefix: str) -> str:
    w = ctx.param(weight, f"{prefix}.weight")
    b = ctx.param(bias, f"{prefix}.bias")
    xin = ctx.tensor(x)
    if ctx.rank(x) == 2:
        return ctx.node_out("Gemm", [xin, w] + ([b] if b else []), transB=1)
    wt = ctx.b.node("Transpose", [w], hint=f"{prefix}.weight.T", perm=[1, 0])
    y = ctx.b.node("MatMul", [xin, wt], hint=ctx.node.name + ".mm")
    return ctx.node_out("Add", [y, b]) if b else y


def _conv(ctx: Context, x: fx.Node, m: nn.modules.conv._ConvNd, prefix: str) -> str:
    if m.transposed:
        raise ctx.error("transposed convolution is not supported")
    if m.padding_mode != "zeros":
        raise ctx.error(f"padding_mode={m.padding_mode!r} is not supported (only 'zeros')")
    k = len(m.kernel_size)
    if isinstance(m.padding, str):
        rp = list(m._reversed_padding_repeated_twice)
        begin = [rp[2 * (k - 1 - i)] for i in range(k)]
        end = [rp[2 * (k - 1 - i) + 1] for i in range(k)]
    else:
        begin = end = list(m.padding)
    w = ctx.param(m.weight, f"{prefix}.weight")
    b = ctx.param(m.bias, f"{prefix}.bias")
    return ctx.node_out("Conv", [ctx.tensor(x), w] + ([b] if b else []),
                        kernel_shape=list(m.kernel_size), strides=list(m.stride), pads=begin + end,
                        dilations=list(m.dilation), group=int(m.groups))


def _batchnorm(ctx: Context, x: str, channels: int, weight, bias, mean, var, eps: float, prefix: str) -> str:
    if mean is None or var is None:
        raise ctx.error("BatchNorm without running statistics (track_running_stats=False) is not supported")
    scale = ctx.param(weight, f"{prefix}.weight") if weight is not None else \
        ctx.b.const(np.ones(channels, np.float32), f"{prefix}.ones")
    shift = ctx.param(bias, f"{prefix}.bias") if bias is not None else \
        ctx.b.const(np.zeros(channels, np.float32), f"{prefix}.zeros")
    m = ctx.param(mean, f"{prefix}.running_mean")
    v = ctx.param(var, f"{prefix}.running_var")
    return ctx.node_out("BatchNormalization", [x, scale, shift, m, v], epsilon=float(eps))


def _pool_attrs(ctx: Context, kernel, stride, padding, n: int) -> dict[str, Any]:
    kernel = _pair(kernel, n)
    stride = _pair(stride if stride not in (None, [], ()) else kernel, n)
    pads = _pair(padding, n)
    return {"kernel_shape": kernel, "strides": stride, "pads": pads + pads}


def _maxpool(ctx: Context, x: fx.Node, kernel, stride, padding, dilation, ceil_mode, n: int) -> str:
    attrs = _pool_attrs(ctx, kernel, stride, padding, n)
    dil = _pair(dilation, n)
    return ctx.node_out("MaxPool", [ctx.tensor(x)], dilations=dil if any(d != 1 for d in dil) else None,
                        ceil_mode=int(bool(ceil_mode)), **attrs)


def _avgpool(ctx: Context, x: fx.Node, kernel, stride, padding, ceil_mode, count_include_pad,
             divisor_override, n: int) -> str:
    if divisor_override:
        raise ctx.error("avg_pool with divisor_override is not supported")
    attrs = _pool_attrs(ctx, kernel, stride, padding, n)
    return ctx.node_out("AveragePool", [ctx.tensor(x)], ceil_mode=int(bool(ceil_mode)),
                        count_include_pad=int(bool(count_include_pad)), **attrs)


def _adaptive(ctx: Context, x: fx.Node, output_size, op: str) -> str:
    in_shape = ctx.shape(x)
    n = len(in_shape) - 2
    out = [in_shape[2 + i] if o is None else int(o) for i, o in enumerate(_pair(output_size, n)
                                                                        if output_size is not None else [None] * n)]
    if all(o == 1 for o in out):
        return ctx.node_out("GlobalAveragePool" if op == "avg" else "GlobalMaxPool", [ctx.tensor(x)])
    if all(in_shape[2 + i] % o == 0 for i, o in enumerate(out)):
        k = [in_shape[2 + i] // o for i, o in enumerate(out)]
        return ctx.node_out("AveragePool" if op == "avg" else "MaxPool", [ctx.tensor(x)],
                            kernel_shape=k, strides=k)
    raise ctx.error(f"adaptive pooling from {in_shape[2:]} to {out} (not a divisor) is not supported")


def _flatten(ctx: Context, x: fx.Node, start: int, end: int) -> str:
    r = ctx.rank(x)
    start, end = start % r if r else 0, end % r if r else 0
    if end == r - 1 and start == 1:
        return ctx.node_out("Flatten", [ctx.tensor(x)], axis=1)
    return _reshape_to(ctx, x, ctx.out_shape())


def _reshape_to(ctx: Context, x: fx.Node, shape: tuple[int, ...]) -> str:
    """Reshape to the traced output shape, with dim 0 left to the batch (-1) when it is."""
    target = list(shape)
    in_shape = ctx.shape(x)
    if target and in_shape and target[0] == in_shape[0] == ctx.batch:
        target[0] = -1
    return ctx.node_out("Reshape", [ctx.tensor(x), ctx.b.int64s(target)])


def _act(op: str, **attrs: Any) -> Callable[[Context, fx.Node], str]:
    def run(ctx: Context, x: Any) -> str:
        return ctx.node_out(op, [ctx.tensor(x)], **attrs)
    return run


def _clip(ctx: Context, x: Any, lo: float | None, hi: float | None) -> str:
    ins = [ctx.tensor(x),
           ctx.b.scalar(lo, np.float32, "lo") if lo is not None else "",
           ctx.b.scalar(hi, np.float32, "hi") if hi is not None else ""]
    while ins and ins[-1] == "":
        ins.pop()
    return ctx.node_out("Clip", ins)


def _silu(ctx: Context, x: Any) -> str:
    xi = ctx.tensor(x)
    s = ctx.b.node("Sigmoid", [xi], hint=ctx.node.name + ".sig")
    return ctx.node_out("Mul", [xi, s])


def _hardswish(ctx: Context, x: Any, inplace: bool = False) -> str:
    xi = ctx.tensor(x)
    if ctx.b.opset >= 14:
        return ctx.node_out("HardSwish", [xi])
    hs = ctx.b.node("HardSigmoid", [xi], alpha=1.0 / 6, beta=0.5)
    return ctx.node_out("Mul", [xi, hs])


def _gelu(ctx: Context, x: Any, approximate: str = "none") -> str:
    b, xi = ctx.b, ctx.tensor(x)
    if ctx.b.opset >= 20:
        return ctx.node_out("Gelu", [xi], approximate=approximate)
    if approximate == "tanh":
        c = math.sqrt(2.0 / math.pi)
        cube = b.node("Mul", [b.node("Mul", [xi, xi]), xi])
        inner = b.node("Mul", [b.node("Add", [xi, b.node("Mul", [cube, b.scalar(0.044715)])]), b.scalar(c)])
        t = b.node("Add", [b.node("Tanh", [inner]), b.scalar(1.0)])
    else:
        t = b.node("Add", [b.node("Erf", [b.node("Div", [xi, b.scalar(math.sqrt(2.0))])]), b.scalar(1.0)])
    return ctx.node_out("Mul", [b.node("Mul", [xi, t]), b.scalar(0.5)])


def _softmax(op: str) -> Callable:
    def run(ctx: Context, x: Any, dim: int | None = None) -> str:
        if dim is None:
            raise ctx.error(f"{op} without dim is not supported")
        return ctx.node_out(op, [ctx.tensor(x)], axis=int(dim))
    return run


def _module(ctx: Context, node: fx.Node) -> str:
    m = ctx.gm.get_submodule(str(node.target))
    prefix = str(node.target)
    if node.kwargs or len(node.args) != 1:
        raise ctx.error("a layer called with more than one input is not supported")
    x = node.args[0]
    if isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
        return ctx.val(x)
    if type(m) is nn.Linear:
        return _linear(ctx, x, m.weight, m.bias, prefix)
    if type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        return _conv(ctx, x, m, prefix)
    if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        if m.training:
            raise ctx.error("BatchNorm in training mode")
        return _batchnorm(ctx, ctx.tensor(x), m.num_features, m.weight, m.bias, m.running_mean,
                          m.running_var, m.eps, prefix)
    if type(m) in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d):
        if m.return_indices:
            raise ctx.error("max pooling with return_indices is not supported")
        n = ctx.rank(x) - 2
        return _maxpool(ctx, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, n)
    if type(m) in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d):
        n = ctx.rank(x) - 2
        return _avgpool(ctx, x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                        getattr(m, "divisor_override", None), n)
    if type(m) in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d):
        return _adaptive(ctx, x, m.output_size, "avg")
    if type(m) in (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d):
        if m.return_indices:
            raise ctx.error("max pooling with return_indices is not supported")
        return _adaptive(ctx, x, m.output_size, "max")
    if type(m) is nn.Flatten:
        return _flatten(ctx, x, m.start_dim, m.end_dim)
    simple = {nn.ReLU: "Relu", nn.Sigmoid: "Sigmoid", nn.Tanh: "Tanh", nn.Softsign: "Softsign"}
    if type(m) in simple and simple[type(m)]:
        return _act(simple[type(m)])(ctx, x)
    if type(m) is nn.Hardswish:
        return _hardswish(ctx, x)
    if type(m) is nn.ReLU6:
        return _clip(ctx, x, 0.0, 6.0)
    if type(m) is nn.Hardtanh:
        return _clip(ctx, x, m.min_val, m.max_val)
    if type(m) is nn.LeakyReLU:
        return _act("LeakyRelu", alpha=float(m.negative_slope))(ctx, x)
    if type(m) is nn.ELU:
        return _act("Elu", alpha=float(m.alpha))(ctx, x)
    if type(m) is nn.Hardsigmoid:
        return _act("HardSigmoid", alpha=1.0 / 6, beta=0.5)(ctx, x)
    if type(m) is nn.SiLU:
        return _silu(ctx, x)
    if type(m) is nn.GELU:
        return _gelu(ctx, x, m.approximate)
    if type(m) is nn.Softmax:
        return _softmax("Softmax")(ctx, x, m.dim)
    if type(m) is nn.LogSoftmax:
        return _softmax("LogSoftmax")(ctx, x, m.dim)
    raise ctx.error(f"layer type {type(m).__name__} is not supported by the ONNX exporter; supported: "
                    "Linear, Conv1d/2d/3d, BatchNorm1d/2d/3d, Max/Avg/AdaptiveAvg/AdaptiveMax pooling, "
                    "Flatten, Identity, Dropout, ReLU, ReLU6, LeakyReLU, ELU, Sigmoid, Tanh, Softsign, Hardtanh, "
                    "Hardswish, Hardsigmoid, SiLU, GELU, Softmax, LogSoftmax")


# ----------------------------------------------------------------------------- functions

def _binary(op: str | None) -> Callable:
    """Elementwise ``op`` of tensors / numbers; on sizes (``x.size(1) // g``) the traced value
    stays static. ``op`` None: sizes only (floor division)."""
    def run(ctx: Context, a: Any, b: Any, alpha: Any = None) -> Any:
        va, vb = ctx.val(a), ctx.val(b)
        if not isinstance(va, str) and not isinstance(vb, str):
            return Static(ctx.meta[ctx.node.name])
        if op is None:
            raise ctx.error("floor division of tensors is not supported")
        rhs = ctx.tensor(b)
        if alpha not in (None, 1):
            rhs = ctx.b.node("Mul", [rhs, ctx.b.scalar(float(alpha))], hint=ctx.node.name + ".alpha")
        return ctx.node_out(op, [ctx.tensor(a), rhs])
    return run


def _f_relu(ctx: Context, x: Any, inplace: bool = False) -> str:
    return ctx.node_out("Relu", [ctx.tensor(x)])


def _f_flatten(ctx: Context, x: fx.Node, start_dim: int = 0, end_dim: int = -1) -> str:
    return _flatten(ctx, x, start_dim, end_dim)


def _f_cat(ctx: Context, tensors: Any, dim: int = 0) -> str:
    return ctx.node_out("Concat", [ctx.tensor(t) for t in tensors], axis=int(dim))


def _reduce(op: str) -> Callable:
    def run(ctx: Context, x: fx.Node, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> str:
        if dtype is not None:
            raise ctx.error(f"{op} with dtype= is not supported")
        r = ctx.rank(x)
        axes = list(range(r)) if dim is None else [int(d) % r for d in _pair(dim, 1)]
        keep = int(bool(keepdim))
        new_style = ctx.b.opset >= 18 or op == "ReduceSum"
        if new_style:
            return ctx.node_out(op, [ctx.tensor(x), ctx.b.int64s(axes, "axes")], keepdims=keep)
        return ctx.node_out(op, [ctx.tensor(x)], axes=axes, keepdims=keep)
    return run


def _f_batch_norm(ctx: Context, x: Any, running_mean, running_var, weight=None, bias=None,
                  training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> str:
    if training:
        raise ctx.error("batch_norm with training=True (batch statistics) is not supported")
    tensors = []
    for a in (weight, bias, running_mean, running_var):
        if a is None:
            tensors.append(None)
        elif isinstance(a, fx.Node) and a.op == "get_attr":
            tensors.append(ctx.gm.get_parameter(a.target) if _is_param(ctx.gm, a.target)
                           else ctx.gm.get_buffer(a.target))
        else:
            raise ctx.error("batch_norm statistics must be module parameters or buffers")
    channels = ctx.shape(x)[1]
    prefix = str(running_mean.target).rpartition(".")[0] if isinstance(running_mean, fx.Node) else ctx.node.name
    w, b, m, v = tensors
    return _batchnorm(ctx, ctx.tensor(x), channels, w, b, m, v, eps, prefix)


def _is_param(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_parameter(target)
        return True
    except AttributeError:
        return False


def _f_linear(ctx: Context, x: fx.Node, weight: fx.Node, bias: fx.Node | None = None) -> str:
    def attr(a):
        if a is None:
            return None
        if isinstance(a, fx.Node) and a.op == "get_attr":
            return ctx.gm.get_parameter(a.target) if _is_param(ctx.gm, a.target) else ctx.gm.get_buffer(a.target)
        raise ctx.error("linear weights must be module parameters or buffers")
    w = attr(weight)
    prefix = str(weight.target).rpartition(".")[0]
    return _linear(ctx, x, w, attr(bias), prefix)


def _f_max_pool(ctx: Context, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                return_indices=False) -> str:
    if return_indices:
        raise ctx.error("max pooling with return_indices is not supported")
    return _maxpool(ctx, x, kernel_size, stride, padding, dilation, ceil_mode, ctx.rank(x) - 2)


def _f_avg_pool(ctx: Context, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                count_include_pad=True, divisor_override=None) -> str:
    return _avgpool(ctx, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                    divisor_override, ctx.rank(x) - 2)


def _f_adaptive_avg(ctx: Context, x, output_size) -> str:
    return _adaptive(ctx, x, output_size, "avg")


def _f_identity(ctx: Context, x, *args, **kwargs) -> Any:
    return ctx.val(x)


def _f_dropout(ctx: Context, x, p=0.5, training=True, inplace=False) -> Any:
    if training:
        raise ctx.error("dropout with training=True is random; export needs the eval forward")
    return ctx.val(x)


def _f_reshape(ctx: Context, x: fx.Node, *shape: Any) -> str:
    return _reshape_to(ctx, x, ctx.out_shape())


def _f_transpose(ctx: Context, x: fx.Node, dim0: int, dim1: int) -> str:
    r = ctx.rank(x)
    perm = list(range(r))
    d0, d1 = int(dim0) % r, int(dim1) % r
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return ctx.node_out("Transpose", [ctx.tensor(x)], perm=perm)


def _f_permute(ctx: Context, x: fx.Node, *dims: Any) -> str:
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = tuple(dims[0])
    r = ctx.rank(x)
    return ctx.node_out("Transpose", [ctx.tensor(x)], perm=[int(d) % r for d in dims])


def _f_size(ctx: Context, x: Any, *args: Any) -> Static:
    return Static(ctx.meta[ctx.node.name])


def _f_getitem(ctx: Context, x: Any, idx: Any) -> Any:
    v = ctx.val(x)
    if isinstance(v, Static):
        return Static(ctx.meta[ctx.node.name])
    if isinstance(v, (list, tuple)):
        return v[idx]
    raise ctx.error("indexing or slicing a tensor is not supported")


def _f_getattr(ctx: Context, x: Any, name: str) -> Static:
    if name in ("shape", "dtype", "ndim"):
        return Static(ctx.meta[ctx.node.name])
    raise ctx.error(f"attribute .{name} of a traced value is not supported")


def _f_clamp(ctx: Context, x, min=None, max=None) -> str:  # noqa: A002 - torch's names
    return _clip(ctx, x, None if min is None else float(min), None if max is None else float(max))


def _f_channel_shuffle(ctx: Context, x: fx.Node, groups: int) -> str:
    b, c, h, w = ctx.shape(x)
    g = int(groups)
    y = ctx.b.node("Reshape", [ctx.tensor(x), ctx.b.int64s([-1, g, c // g, h, w])], hint=ctx.node.name + ".g")
    y = ctx.b.node("Transpose", [y], hint=ctx.node.name + ".t", perm=[0, 2, 1, 3, 4])
    return ctx.node_out("Reshape", [y, ctx.b.int64s([-1, c, h, w])])


FUNCTIONS: dict[Any, Callable] = {
    torch.relu: _f_relu, F.relu: _f_relu, torch.relu_: _f_relu,
    torch.sigmoid: _act("Sigmoid"), F.sigmoid: _act("Sigmoid"),
    torch.tanh: _act("Tanh"), F.tanh: _act("Tanh"),
    F.silu: lambda ctx, x, inplace=False: _silu(ctx, x),
    F.gelu: lambda ctx, x, approximate="none": _gelu(ctx, x, approximate),
    F.hardswish: _hardswish,
    F.relu6: lambda ctx, x, inplace=False: _clip(ctx, x, 0.0, 6.0),
    F.leaky_relu: lambda ctx, x, negative_slope=0.01, inplace=False: _act("LeakyRelu", alpha=float(negative_slope))(ctx, x),
    F.softmax: lambda ctx, x, dim=None, _stacklevel=3, dtype=None: _softmax("Softmax")(ctx, x, dim),
    torch.softmax: lambda ctx, x, dim=None, dtype=None: _softmax("Softmax")(ctx, x, dim),
    F.log_softmax: lambda ctx, x, dim=None, _stacklevel=3, dtype=None: _softmax("LogSoftmax")(ctx, x, dim),
    operator.add: _binary("Add"), torch.add: _binary("Add"), operator.iadd: _binary("Add"),
    operator.sub: _binary("Sub"), torch.sub: _binary("Sub"),
    operator.mul: _binary("Mul"), torch.mul: _binary("Mul"), operator.imul: _binary("Mul"),
    operator.truediv: _binary("Div"), torch.div: _binary("Div"),
    operator.floordiv: _binary(None),
    torch.flatten: _f_flatten,
    torch.cat: _f_cat, torch.concat: _f_cat,
    torch.mean: _reduce("ReduceMean"), torch.sum: _reduce("ReduceSum"),
    torch.amax: _reduce("ReduceMax"),
    F.batch_norm: _f_batch_norm,
    F.linear: _f_linear,
    F.max_pool2d: _f_max_pool, F.max_pool1d: _f_max_pool,
    F.avg_pool2d: _f_avg_pool, F.avg_pool1d: _f_avg_pool,
    F.adaptive_avg_pool2d: _f_adaptive_avg, F.adaptive_avg_pool1d: _f_adaptive_avg,
    F.dropout: _f_dropout,
    torch.reshape: _f_reshape,
    torch.transpose: _f_transpose, torch.permute: _f_permute,
    torch.clamp: _f_clamp, torch.clip: _f_clamp,
    operator.getitem: _f_getitem,
    getattr: _f_getattr,
}

_shuffle = channel_shuffle_fn()
if _shuffle is not None:
    FUNCTIONS[_shuffle] = _f_channel_shuffle

METHODS: dict[str, Callable] = {
    "relu": _f_relu, "relu_": _f_relu, "sigmoid": _act("Sigmoid"), "tanh": _act("Tanh"),
    "softmax": _softmax("Softmax"), "log_softmax": _softmax("LogSoftmax"),
    "add": _binary("Add"), "add_": _binary("Add"), "sub": _binary("Sub"), "mul": _binary("Mul"),
    "mul_": _binary("Mul"), "div": _binary("Div"),
    "flatten": _f_flatten, "view": _f_reshape, "reshape": _f_reshape,
    "mean": _reduce("ReduceMean"), "sum": _reduce("ReduceSum"), "amax": _reduce("ReduceMax"),
    "transpose": _f_transpose, "permute": _f_permute,
    "contiguous": _f_identity, "size": _f_size, "clamp": _f_clamp, "clip": _f_clamp,
}


def _call(ctx: Context, fn: Callable, node: fx.Node) -> Any:
    try:
        return fn(ctx, *node.args, **node.kwargs)
    except TypeError as exc:
        raise ctx.error(f"arguments {str(node.args)[:80]} {str(node.kwargs)[:80]} are not supported "
                        f"({exc})") from None


# ----------------------------------------------------------------------------- graph

def build_graph(gm: fx.GraphModule, meta: dict[str, Any], opset: int, forms=FORMS,
                batch: int = 1, input_names: list[str] | None = None):
    """ONNX nodes, initializers, inputs and outputs for the traced model.

    Returns ``(builder, inputs, outputs, storage, value_of_node)``: ``inputs`` and
    ``outputs`` are ``(name, shape with 'batch' for dim 0)`` lists, ``value_of_node`` maps
    each traced node to its ONNX value name (for the per-layer diagnosis).
    """
    b = GraphBuilder(opset)
    ctx = Context(gm, b, meta, tuple(forms), batch)
    inputs, outputs = [], []
    for node in gm.graph.nodes:
        ctx.node = node
        if node.op == "placeholder":
            m = meta.get(node.name)
            if not isinstance(m, ValueMeta):
                raise ExportError(f"input {node.name!r} is not a tensor in the example inputs")
            if m.dtype != torch.float32:
                raise ExportError(f"input {node.name!r} has dtype {m.dtype}; only float32 inputs are supported")
            name = (input_names or [])[len(inputs)] if input_names and len(input_names) > len(inputs) else node.name
            b.reserve(name)
            ctx.env[node.name] = name
            inputs.append((name, ["batch", *m.shape[1:]]))
        elif node.op == "get_attr":
            t = _attr(gm, str(node.target))
            if isinstance(t, torch.Tensor):
                ctx.env[node.name] = ctx.param(t, str(node.target))
            else:
                ctx.env[node.name] = Static(t)
        elif node.op == "call_module":
            ctx.env[node.name] = _module(ctx, node)
        elif node.op == "call_function":
            fn = FUNCTIONS.get(node.target)
            if fn is None:
                raise ctx.error(f"function {_target_name(node)} is not supported by the ONNX exporter")
            ctx.env[node.name] = _call(ctx, fn, node)
        elif node.op == "call_method":
            fn = METHODS.get(str(node.target))
            if fn is None:
                raise ctx.error(f"tensor method .{node.target}() is not supported by the ONNX exporter")
            ctx.env[node.name] = _call(ctx, fn, node)
        elif node.op == "output":
            result = node.args[0]
            flat = list(result) if isinstance(result, (list, tuple)) else [result]
            for i, r in enumerate(flat):
                v = ctx.val(r)
                if not isinstance(v, str) or not isinstance(r, fx.Node):
                    raise ExportError(f"model output {i} is not a tensor; only tensor outputs are supported")
                name = "output" if len(flat) == 1 else f"output_{i}"
                shape = list(ctx.shape(r))
                if shape and shape[0] == batch:
                    shape[0] = "batch"
                v = b.node("Identity", [v], hint=name)
                outputs.append((v, shape))
        if isinstance(ctx.env.get(node.name), str) and node.op not in ("placeholder", "output"):
            ctx.layer_of_value.setdefault(ctx.env[node.name], ctx.describe(node))
    value_of_node = {n: v for n, v in ctx.env.items() if isinstance(v, str)}
    return b, inputs, outputs, ctx.storage, value_of_node, ctx.layer_of_value


def _attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
