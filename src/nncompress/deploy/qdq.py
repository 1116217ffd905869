"""Static int8 rewrite of a float ONNX graph (CNNs and MLPs) for ONNX Runtime's integer
kernels, written here (no ``onnxruntime.quantization``).

The rewrite works on the graph ``export_onnx`` builds (``translate.build_graph``):

* **Targets**: every ``Conv``, ``Gemm`` (``alpha = beta = 1``, no ``transA``) and ``MatMul``
  whose weight (and bias) are constants, i.e. initializers or the constant decoding
  subgraphs of :mod:`nncompress.deploy.storage`. A ``BatchNormalization`` that is a
  ``Conv``'s only consumer is folded into it (``W' = W * g / sqrt(v + eps)`` per output
  channel, ``b' = (b - m) * g / sqrt(v + eps) + beta``).
* **Weights** stay in their compressed storage: the int8 weight is computed *in the graph*
  from the decoded float weight, ``Cast<int8>(Clip(Round(W' / s), -127, 127))`` with one
  scale per output channel (folded by onnxruntime when the session is created), followed by
  a per-axis ``DequantizeLinear``. A weight stored uncompressed (float32 or float16) is
  stored as its int8 codes instead, the smaller form. Biases become int32 at scale ``s_x * s_w`` (what the
  integer kernels expect), stored as int32 initializers.
* **Activations**: each target's input and output (and the output of an ``Add`` of two
  quantized values, the residual adds) get one ``QuantizeLinear`` -> ``DequantizeLinear``
  pair (uint8, scale and zero point from the calibration batches). A ``ReLU`` that is the
  only consumer of such a value is dropped: quantizing with zero point 0 at the ReLU
  output's range clips the negatives, the same function. Values passed on unchanged in range
  (``MaxPool``, ``Flatten``, ``Reshape``, ``Transpose``, ``Identity``, ...) share the
  parameters of their input, so onnxruntime can drop the pair around them and run them on
  uint8. Model outputs stay float (the last layer dequantizes).

onnxruntime's graph optimizer (level >= 2, the default) fuses ``DQ -> Conv -> Q`` into
``QLinearConv``, ``DQ -> MatMul/Gemm -> Q`` into ``QLinearMatMul`` / ``QGemm`` (or
``MatMulIntegerToFloat`` without the output ``Q``) and ``DQ, DQ -> Add -> Q`` into
``QLinearAdd``; :func:`nncompress.deploy.runtime.optimized_ops` lists what it made.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nncompress.deploy.calibrate import (
    RangeObserver,
    StaticInt8Config,
    activation_qparams,
    weight_scales,
)
from nncompress.deploy.report import ExportError

log = logging.getLogger(__name__)

PRESERVING = ("MaxPool", "Reshape", "Flatten", "Transpose", "Identity", "Squeeze", "Unsqueeze")
"""Ops whose output values lie in their input's range: they share its quantization."""


@dataclass
class _Target:
    node: Any
    x: str
    w: str
    b: str | None
    axis: int
    """Axis of the weight that indexes output channels."""
    bns: list[Any] = field(default_factory=list)
    out: str = ""
    dense: bool = False
    """The weight is stored uncompressed (a float32 or float16 initializer): its int8 codes
    are stored instead (1 byte each), not computed in the graph."""


@dataclass
class QuantSummary:
    """What :func:`quantize_graph` did: targets per op, values quantized, folded BNs."""

    targets: dict[str, int]
    quantized_values: int
    folded_batchnorms: int
    dropped_relus: int
    calibration_samples: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Index:
    """Producers, consumers and constant values of a graph."""

    def __init__(self, graph):
        self.inits = {i.name: i for i in graph.initializer}
        self.inputs = [i.name for i in graph.input]
        self.outputs = {o.name for o in graph.output}
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = collections.defaultdict(list)
        self.const: set[str] = set(self.inits)
        for n in graph.node:
            for v in n.output:
                self.producer[v] = n
            for v in n.input:
                if v:
                    self.consumers[v].append(n)
            if all(v in self.const for v in n.input if v):
                self.const.update(n.output)

    def sole(self, v: str, op: str) -> Any | None:
        """The node consuming ``v`` when it is the only consumer, of type ``op``."""
        c = self.consumers.get(v, [])
        if len(c) == 1 and c[0].op_type == op and v not in self.outputs:
            return c[0]
        return None


def _attr(node, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _targets(idx: _Index, graph) -> list[_Target]:
    out = []
    for n in graph.node:
        ins = list(n.input)
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(ins) < 2 or ins[0] in idx.const:
            continue
        if ins[1] not in idx.const or (len(ins) > 2 and ins[2] and ins[2] not in idx.const):
            continue
        if n.op_type == "Gemm":
            if _attr(n, "alpha", 1.0) != 1.0 or _attr(n, "beta", 1.0) != 1.0 or _attr(n, "transA", 0):
                continue
            axis = 0 if _attr(n, "transB", 0) else 1
        else:
            axis = 0 if n.op_type == "Conv" else 1
        t = _Target(n, ins[0], ins[1], ins[2] if len(ins) > 2 and ins[2] else None, axis, [], n.output[0],
                    _dense_float(idx, ins[1]))
        if n.op_type == "Conv":
            while True:
                bn = idx.sole(t.out, "BatchNormalization")
                if bn is None or not all(v in idx.const for v in bn.input[1:5]) or len(bn.output) != 1:
                    break
                t.bns.append(bn)
                t.out = bn.output[0]
        out.append(t)
    return out


def _dense_float(idx: _Index, v: str) -> bool:
    """``v`` is a float32 initializer, or a ``Cast`` of a float16 one (the ``dense`` and
    ``fp16`` storage forms, larger than int8 codes)."""
    from onnx import TensorProto

    if v in idx.inits:
        return idx.inits[v].data_type == TensorProto.FLOAT
    p = idx.producer.get(v)
    return (p is not None and p.op_type == "Cast" and p.input[0] in idx.inits
            and idx.inits[p.input[0]].data_type == TensorProto.FLOAT16)


def _plan(idx: _Index, graph, targets: list[_Target]) -> tuple[dict[str, str], dict[str, str]]:
    """``root``: every quantized value -> the value whose range sets its parameters;
    ``absorbed``: a dropped ReLU's output -> its input (where the ``Q`` goes)."""
    wanted: set[str] = set()

    def after_relu(v: str) -> str:
        relu = idx.sole(v, "Relu")
        return relu.output[0] if relu is not None else v

    for t in targets:
        wanted.add(t.x)
        end = after_relu(t.out)
        if end not in idx.outputs:
            wanted.add(end)
    for n in graph.node:  # residual adds of two quantized values
        if n.op_type == "Add" and len(n.input) == 2 and all(v in wanted for v in n.input):
            end = after_relu(n.output[0])
            if end not in idx.outputs:
                wanted.add(end)
    absorbed: dict[str, str] = {}
    for v in list(wanted):
        p = idx.producer.get(v)
        if p is not None and p.op_type == "Relu" and p.input[0] not in wanted and idx.sole(p.input[0], "Relu") is p:
            absorbed[v] = p.input[0]
    root: dict[str, str] = {}
    order = [*idx.inputs, *(o for n in graph.node for o in n.output)]
    for v in order:
        if v not in wanted:
            continue
        chain, u = [v], v
        while True:
            p = idx.producer.get(u)
            if p is None or p.op_type not in PRESERVING or not p.input or p.input[0] in idx.const:
                break
            u = p.input[0]
            if u in root:
                for c in chain:
                    root[c] = root[u]
                break
            chain.append(u)
        root.setdefault(v, v)
    return root, absorbed


def _probe(proto, names: Sequence[str], input_names: Sequence[str], batches: Sequence[np.ndarray], observer,
           roots: Sequence[str]) -> dict[str, np.ndarray]:
    """Run the float graph on the calibration batches with ``names`` as extra outputs;
    update ``observer`` with the ``roots``; return the values of the other names (constants)
    from the first batch."""
    from onnx import TensorProto, helper

    from nncompress.deploy.runtime import ort_session

    probe = type(proto)()
    probe.CopyFrom(proto)
    del probe.graph.output[:]
    outs = []
    for i, v in enumerate(names):
        o = f"__probe_{i}"
        probe.graph.node.append(helper.make_node("Identity", [v], [o]))
        probe.graph.output.append(helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
        outs.append(o)
    sess = ort_session(probe.SerializeToString(), 1)
    consts: dict[str, np.ndarray] = {}
    root_set = set(roots)
    for k, x in enumerate(batches):
        got = sess.run(outs, {input_names[0]: x})
        for v, arr in zip(names, got):
            if v in root_set:
                observer.update(v, arr)
            elif k == 0:
                consts[v] = arr
    return consts


def quantize_graph(proto, batches: Sequence[np.ndarray], input_names: Sequence[str],
                   config: StaticInt8Config | None = None) -> QuantSummary:
    """Rewrite the float graph ``proto`` in place into static int8 QDQ form (see the module
    docstring), with activation ranges from ``batches`` (float32 inputs of the first graph
    input).

    Raises:
        ExportError: the graph has no Conv/Gemm/MatMul with constant weights, or more than
            one input.

    Example:
        >>> summary = quantize_graph(proto, [x_calib], ["input"])  # doctest: +SKIP
        >>> summary.targets  # doctest: +SKIP
        {'Conv': 2, 'Gemm': 2}
    """
    from onnx import helper, numpy_helper

    config = config or StaticInt8Config()
    graph = proto.graph
    if len(input_names) != 1:
        raise ExportError(f"runtime='int8' supports models with one input; this one has {len(input_names)}")
    idx = _Index(graph)
    targets = _targets(idx, graph)
    if not targets:
        raise ExportError("runtime='int8': the model has no Conv, Linear (Gemm) or MatMul layer with constant "
                          "weights to run on integer kernels")
    root, absorbed = _plan(idx, graph, targets)
    roots = sorted(set(root.values()))
    consts_needed = []
    for t in targets:
        consts_needed += [t.w] + ([t.b] if t.b else [])
        for bn in t.bns:
            consts_needed += list(bn.input[1:5])
    names = list(dict.fromkeys(roots + consts_needed))
    observer = RangeObserver(config.method, config.percentile, len(batches))
    consts = _probe(proto, names, input_names, batches, observer, roots)
    qparams = {}
    for v in roots:
        try:
            qparams[v] = activation_qparams(*observer.range(v))
        except KeyError:
            raise ExportError(f"runtime='int8': no calibration value was seen for {v!r}") from None

    # -- new nodes and initializers
    used = {v for n in graph.node for v in (*n.input, *n.output)} | set(idx.inits) | set(idx.inputs)
    counter = [0]

    def fresh(base: str) -> str:
        """A short unused name (``base`` only says what it is, for the reader of this code)."""
        while True:
            counter[0] += 1
            name = f"_q{counter[0]:x}"
            if name not in used:
                used.add(name)
                return name

    inits: list[Any] = []

    def const(arr: np.ndarray, base: str) -> str:
        name = fresh(base)
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    qp_names: dict[str, tuple[str, str]] = {}

    def qp(v: str) -> tuple[str, str]:
        r = root[v]
        if r not in qp_names:
            s, z = qparams[r]
            qp_names[r] = (const(np.asarray(s, np.float32), f"{r}.scale"), const(np.asarray(z, np.uint8), f"{r}.zero"))
        return qp_names[r]

    rename: dict[str, str] = {}
    q_source = {absorbed.get(v, v): v for v in root}  # where each pair's Q reads -> the quantized value
    skip = {id(bn) for t in targets for bn in t.bns}
    skip |= {id(idx.producer[v]) for v in absorbed}
    by_node = {id(t.node): t for t in targets}
    nodes: list[Any] = []

    def emit_pair(src: str) -> None:
        v = q_source[src]
        s, z = qp(v)
        q, dq = fresh(f"{v}.u8"), fresh(f"{v}.dq")
        nodes.append(helper.make_node("QuantizeLinear", [src, s, z], [q]))
        nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [dq]))
        rename[v] = dq

    for v in idx.inputs:
        if v in q_source:
            emit_pair(v)
    for n in graph.node:
        if id(n) in skip:
            continue
        t = by_node.get(id(n))
        if t is None:
            new = type(n)()
            new.CopyFrom(n)
            for i, v in enumerate(new.input):
                if v in rename:
                    new.input[i] = rename[v]
            nodes.append(new)
        else:
            nodes.append(_rewrite_target(t, consts, qparams[root[t.x]][0], qp(t.x)[0], rename, fresh, const, nodes))
        for o in nodes[-1].output:
            if o in q_source:
                emit_pair(o)
    # graph outputs produced by a skipped ReLU never happen (absorbed values are not outputs)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    _prune_dead(graph)
    counts = collections.Counter(t.node.op_type for t in targets)
    return QuantSummary(dict(sorted(counts.items())), len(root), sum(len(t.bns) for t in targets), len(absorbed),
                        int(sum(len(x) for x in batches)), config.method)


def _rewrite_target(t: _Target, consts: dict[str, np.ndarray], x_scale: np.float32, x_scale_name: str,
                    rename: dict[str, str], fresh, const, nodes: list[Any]):
    """Emit the weight's in-graph int8 subgraph into ``nodes``; return the target node with
    dequantized inputs and its output renamed past the folded BatchNorms."""
    from onnx import TensorProto, helper

    n = t.node
    w = consts[t.w].astype(np.float32)
    c = w.shape[t.axis]
    b = consts[t.b].astype(np.float32) if t.b else None
    w_ref = t.w
    if t.bns:
        fold = np.ones(c, np.float32)
        shift = np.zeros(c, np.float32)
        for bn in t.bns:
            g, beta, m, var = (consts[v].astype(np.float32) for v in bn.input[1:5])
            eps = float(_attr(bn, "epsilon", 1e-5))
            f = (g / np.sqrt(var + np.float32(eps))).astype(np.float32)
            fold, shift = (fold * f).astype(np.float32), ((shift - m) * f + beta).astype(np.float32)
        shape = [1] * w.ndim
        shape[t.axis] = c
        f_arr = fold.reshape(shape)
        w = (w * f_arr).astype(np.float32)
        if not t.dense:
            w_ref = fresh(f"{t.w}.bnfold")
            nodes.append(helper.make_node("Mul", [t.w, const(f_arr, f"{t.w}.bnscale")], [w_ref]))
        b = (((b if b is not None else 0) * fold) + shift).astype(np.float32)
    s_w = weight_scales(w, t.axis)
    shape = [1] * w.ndim
    shape[t.axis] = c
    s_name, wdq = const(s_w, f"{t.w}.scale"), fresh(f"{t.w}.dq")
    if t.dense:  # stored uncompressed: the int8 codes are the smallest exact form
        wq = const(np.clip(np.round(w / s_w.reshape(shape)), -127, 127).astype(np.int8), f"{t.w}.int8")
    else:  # compressed storage kept: the codes are computed from the decoded weight, folded at load
        ratio, rnd, clp, wq, s_b = (fresh(f"{t.w}.{k}") for k in ("div", "round", "clip", "int8", "scale_b"))
        nodes += [
            helper.make_node("Reshape", [s_name, const(np.asarray(shape, np.int64), "shape")], [s_b]),
            helper.make_node("Div", [w_ref, s_b], [ratio]),
            helper.make_node("Round", [ratio], [rnd]),
            helper.make_node("Clip", [rnd, const(np.asarray(-127.0, np.float32), "lo"),
                                      const(np.asarray(127.0, np.float32), "hi")], [clp]),
            helper.make_node("Cast", [clp], [wq], to=TensorProto.INT8),
        ]
    nodes.append(helper.make_node("DequantizeLinear", [wq, s_name, const(np.zeros(c, np.int8), f"{t.w}.zero")],
                                  [wdq], axis=t.axis))
    new = type(n)()
    new.CopyFrom(n)
    del new.input[:]
    new.input.extend([rename.get(t.x, t.x), wdq])
    if b is not None:  # int32 at scale s_x * s_w (the product in float32, in the graph and here alike)
        base = t.b or t.w
        bs, bdq = fresh(f"{base}.bias_scale"), fresh(f"{base}.bias_dq")
        nodes.append(helper.make_node("Mul", [x_scale_name, s_name], [bs]))
        if t.bns:  # folded bias: computed here, stored as int32
            b_scale = (np.float32(x_scale) * s_w).astype(np.float32)
            bq = const(np.clip(np.round(b / b_scale), -(2**31) + 1, 2**31 - 1).astype(np.int32), f"{base}.int32")
        else:  # from the stored bias, in the graph (folded at load)
            bq = fresh(f"{base}.int32")
            ratio_b, rnd_b = fresh(f"{base}.div"), fresh(f"{base}.round")
            nodes += [helper.make_node("Div", [t.b, bs], [ratio_b]), helper.make_node("Round", [ratio_b], [rnd_b]),
                      helper.make_node("Cast", [rnd_b], [bq], to=TensorProto.INT32)]
        nodes.append(helper.make_node("DequantizeLinear", [bq, bs], [bdq], axis=0))
        new.input.append(bdq)
    new.output[0] = t.out
    return new


def _prune_dead(graph) -> None:
    """Drop nodes whose outputs nobody reads, then unused initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {v for n in graph.node for v in n.input} | outputs
        keep = [n for n in graph.node if any(o in read for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    read = {v for n in graph.node for v in n.input}
    keep_init = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)
