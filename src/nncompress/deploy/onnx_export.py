"""``export_onnx``: a compressed model to an ONNX file that keeps the compression on disk,
checked against the PyTorch model in onnxruntime before it is written."""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nncompress.deploy.calibrate import StaticInt8Config, calibration_arrays
from nncompress.deploy.int8_check import int8_quality
from nncompress.deploy.qdq import quantize_graph
from nncompress.deploy.report import ExportError, ExportReport
from nncompress.deploy.runtime import checked_bytes, ort_session
from nncompress.deploy.storage import FORMS
from nncompress.deploy.tracing import record, trace
from nncompress.deploy.translate import build_graph
from nncompress.errors import ConfigError

DEFAULT_OPSET = 17
"""ONNX opset written by default (onnxruntime >= 1.14 runs it)."""
OPSETS = range(13, 22)
"""Opsets the exporter writes: 13 (per-axis DequantizeLinear) to 21."""
DEFAULT_TOLERANCE = 1e-4
"""Parity bound: ``max |ort - torch| <= tolerance * max(1, max |torch output|)``."""
CHECK_THREADS = 1
RUNTIMES = ("float", "int8")
"""``float``: weights decoded to float32 at load; ``int8``: integer kernels (dynamic for
transformers, static with calibration data for other models)."""
log = logging.getLogger(__name__)


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"nncompress.deploy.export_onnx needs the {module!r} package: "
                          "pip install 'nncompress[deploy]' (onnx>=1.16, onnxruntime>=1.18)") from None


def _example_inputs(model: nn.Module, example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if example_inputs is None:
        from nncompress.models.registry import arch_of, default_input_shape

        shape = default_input_shape(arch_of(model))
        if shape is None:
            raise ConfigError("example_inputs=None, and the model is not a built-in architecture whose "
                              "input shape is known; pass example_inputs (a batch of inputs)")
        g = torch.Generator().manual_seed(0)
        return (torch.randn(4, *shape, generator=g),)
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise ConfigError("example_inputs must be a tensor or a tuple of tensors (a batch: dim 0 is the batch)")
    if any(t.dim() == 0 for t in inputs) or len({t.shape[0] for t in inputs}) != 1:
        raise ConfigError(f"example_inputs shapes {[tuple(t.shape) for t in inputs]}: every input needs the "
                          "same batch size in dim 0")
    return tuple(t.detach().to(torch.float32).cpu() for t in inputs)


def _check_hooks(model: nn.Module) -> None:
    for name, mod in model.named_modules():
        if getattr(mod, "_forward_pre_hooks", None) or getattr(mod, "_forward_hooks", None):
            raise ExportError(
                f"layer {name or '<model>'!r} ({type(mod).__name__}) has forward hooks (an activation "
                "quantizer of a low-bit method, or a user hook); the ONNX exporter cannot express them. "
                "Remove the hooks to export the weights' forward only")


def _flatten_outputs(out: Any) -> list[torch.Tensor]:
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    if not all(isinstance(o, torch.Tensor) for o in outs):
        raise ExportError("the model returns something other than a tensor or a tuple of tensors")
    return [o.detach().float() for o in outs]


def _max_diff(a: Sequence[Any], b: Sequence[torch.Tensor]) -> tuple[float, float]:
    """(max |a - b|, max |b|) over all outputs."""
    diff, scale = 0.0, 0.0
    for x, y in zip(a, b):
        y = y.numpy()
        if tuple(x.shape) != tuple(y.shape):
            return float("inf"), 1.0
        if y.size:
            diff = max(diff, float(abs(x.astype("float64") - y).max()))
            scale = max(scale, float(abs(y).max()))
    return diff, scale


def _diagnose(proto, gm, inputs, value_of_node: dict[str, str], layer_of_value: dict[str, str],
              input_names: list[str], tolerance: float) -> str:
    """Name the first traced layer whose onnxruntime output differs from torch's."""
    from onnx import TensorProto, helper

    values = record(gm, inputs, keep_tensors=True)
    produced = {o for n in proto.graph.node for o in n.output}
    probe = type(proto)()
    probe.CopyFrom(proto)
    order = []
    have = {o.name for o in probe.graph.output}
    for node in gm.graph.nodes:
        v = value_of_node.get(node.name)
        t = values.get(node.name)
        if v in produced and isinstance(t, torch.Tensor) and t.is_floating_point() and v not in have:
            probe.graph.output.append(helper.make_tensor_value_info(v, TensorProto.FLOAT, None))
            have.add(v)
            order.append((node.name, v))
    if not order:
        return "no layer output could be compared"
    sess = ort_session(probe.SerializeToString(), CHECK_THREADS)
    names = [o.name for o in probe.graph.output]
    got = dict(zip(names, sess.run(None, {n: t.numpy() for n, t in zip(input_names, inputs)})))
    for node_name, v in order:
        ref = values[node_name].float()
        diff, scale = _max_diff([got[v]], [ref])
        tol = tolerance * max(1.0, scale)
        if diff > tol:
            return (f"first differing: {layer_of_value.get(v, node_name)}, max |ort - torch| "
                    f"= {diff:.3g} > {tol:.3g}")
    return "every layer output is within the tolerance; the difference accumulates over layers"


def export_onnx(model_or_nnc_path: nn.Module | str | os.PathLike, out_path: str | os.PathLike,
                example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None, *,
                opset: int = DEFAULT_OPSET, check: bool = True, forms: Iterable[str] = FORMS,
                tolerance: float = DEFAULT_TOLERANCE, verify_key=None, runtime: str = "float",
                calib: Any = None, int8: StaticInt8Config | None = None, check_data: Any = None) -> ExportReport:
    """Export a (compressed) model to ONNX, keeping each weight in its smallest exact form.

    Every parameter is stored in the smallest of ``forms`` that reproduces it (see
    :mod:`nncompress.deploy.storage`): k-means-shared weights as uint8 / 4-bit indices +
    codebook + ``Gather``; pruned ones as gap-coded positions + values or indices +
    ``ScatterElements``; int8-code weights as int8 + ``DequantizeLinear``; others dense.
    The batch dimension is dynamic.

    With ``check`` (default) the graph is run in onnxruntime on ``example_inputs`` and on
    its first sample (batch 1) and compared with the torch model; a difference above
    ``tolerance * max(1, max |torch output|)`` raises :class:`ExportError` (a
    ``ConfigError``) naming the first layer that differs, and nothing is written.

    Args:
        model_or_nnc_path: an ``nn.Module`` or a ``.nnc`` file (loaded with
            ``nncompress.load``; ``verify_key`` is passed on).
        out_path: the ``.onnx`` file to write (atomically).
        example_inputs: a batch (tensor or tuple of tensors); default for built-in
            architectures: 4 seeded standard-normal samples of their input shape.
        opset: ONNX opset, 13..21.
        forms: storage forms allowed (``dense`` is always); ``("dense",)`` writes a plain
            float32 model.
        runtime: ``float`` (weights decoded to float32 at load) or ``int8``: for
            transformers models dynamic int8 MatMuls (see ``deploy.transformers_onnx``); for
            other models static int8 (see :mod:`nncompress.deploy.qdq`): activation scales
            from ``calib``, per-channel int8 weights computed in the graph from the stored
            (compressed) weights, run by onnxruntime's integer kernels (QLinearConv, ...).
        calib: ``runtime="int8"`` (non-transformers): calibration inputs from the user's
            data: a tensor (N, ...), a Dataset / DataLoader of ``(x, y)`` or a list of
            batches. Required there, refused elsewhere.
        int8: the static int8 options (:class:`StaticInt8Config`: range method, the
            accuracy drop allowed).
        check_data: ``runtime="int8"``: labelled data (same forms as ``calib``) on which
            the int8 graph's accuracy must stay within ``int8.max_drop`` points of the torch
            model's (default: the calibration batches; without labels, the share of
            predictions that differ from the torch model's is held to the same bound).
            The measured figures are in ``ExportReport.quality``.

    A transformers model (or a ``.nnc`` file holding one) is exported by
    :func:`nncompress.deploy.transformers_onnx.export_transformers_onnx` (inputs
    ``input_ids``/``attention_mask``/``token_type_ids``, dynamic batch and sequence).

    Example:
        >>> report = export_onnx("lenet300.nnc", "lenet300.onnx")  # doctest: +SKIP
        >>> report.onnx_bytes, report.layers  # doctest: +SKIP
        (35210, {'fc1': 'pruned-shared', ...})
    """
    _need("onnx")  # a clear ImportError naming the extra
    from onnx import TensorProto, helper

    from nncompress._version import __version__

    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in OPSETS:
        raise ConfigError(f"opset={opset!r} is not allowed; use an int in {OPSETS.start}..{OPSETS.stop - 1}")
    forms = tuple(forms) if not isinstance(forms, str) else (forms,)
    bad = [f for f in forms if f not in FORMS]
    if bad:
        raise ConfigError(f"forms {bad} are not allowed; allowed: {', '.join(FORMS)}")
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
        raise ConfigError(f"tolerance={tolerance!r} is not allowed; use a float in (0, 1)")
    source_bytes = None
    if isinstance(model_or_nnc_path, (str, os.PathLike)):
        from nncompress.format import load

        source_bytes = Path(model_or_nnc_path).stat().st_size if Path(model_or_nnc_path).is_file() else None
        model = load(model_or_nnc_path, verify_key=verify_key)
    elif isinstance(model_or_nnc_path, nn.Module):
        model = model_or_nnc_path
    else:
        raise ConfigError(f"model_or_nnc_path must be an nn.Module or a .nnc path, got "
                          f"{type(model_or_nnc_path).__name__}")
    from nncompress.models.hf_arch import is_transformers_model

    if is_transformers_model(model):
        from nncompress.deploy.transformers_onnx import export_transformers_onnx

        src = model_or_nnc_path if source_bytes is not None else None
        return export_transformers_onnx(model, out_path, runtime=runtime, check=check, tolerance=tolerance,
                                        forms=forms, source=src)
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime={runtime!r} is not allowed; use one of {', '.join(RUNTIMES)}")
    if runtime == "float" and (calib is not None or check_data is not None or int8 is not None):
        raise ConfigError("calib, check_data and int8 apply to runtime='int8' only")
    inputs = _example_inputs(model, example_inputs)
    calib_batches = check_batches = None
    if runtime == "int8":
        int8 = int8 if int8 is not None else StaticInt8Config()
        if not isinstance(int8, StaticInt8Config):
            raise ConfigError(f"int8 must be a StaticInt8Config, got {type(int8).__name__}")
        if len(inputs) != 1:
            raise ConfigError(f"runtime='int8' supports models with one input; example_inputs has {len(inputs)}")
        shape = tuple(inputs[0].shape[1:])
        calib_batches = calibration_arrays(calib, shape, int8.batch_size, "calib")
        check_batches = (calibration_arrays(check_data, shape, int8.batch_size, "check_data")
                         if check_data is not None else calib_batches)
    batch = int(inputs[0].shape[0])
    input_names = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    was_training = model.training
    model.eval()
    try:
        _check_hooks(model)
        with torch.no_grad():
            ref = _flatten_outputs(model(*inputs))
        gm = trace(model)
        meta = record(gm, inputs)
        b, ins, outs, storage, value_of_node, layer_of_value = build_graph(
            gm, meta, opset, forms, batch, input_names)
        graph = helper.make_graph(
            b.nodes, type(model).__name__,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in ins],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outs],
            initializer=b.initializers)
        opsets = [helper.make_opsetid("", opset)]
        proto = helper.make_model(graph, opset_imports=opsets, producer_name="nncompress",
                                  producer_version=__version__,
                                  ir_version=helper.find_min_ir_version_for(opsets))
        data = checked_bytes(proto)
        max_diff = tol = None
        batches: list[int] = []
        if check:
            sess = ort_session(data, CHECK_THREADS)
            max_diff, scale = 0.0, 0.0
            runs = [(inputs, ref)]
            if batch > 1:
                one = tuple(t[:1] for t in inputs)
                with torch.no_grad():
                    runs.append((one, _flatten_outputs(model(*one))))
            for xs, ys in runs:
                got = sess.run(None, {n: t.numpy() for n, t in zip(input_names, xs)})
                d, s = _max_diff(got, ys)
                max_diff, scale = max(max_diff, d), max(scale, s)
                batches.append(int(xs[0].shape[0]))
                tol = tolerance * max(1.0, scale)
                if not d <= tol:
                    where = _diagnose(proto, gm, xs, value_of_node, layer_of_value, input_names, tolerance)
                    raise ExportError(f"the ONNX graph differs from the torch model on a batch of "
                                      f"{xs[0].shape[0]}: max |ort - torch| = {d:.3g} > tolerance {tol:.3g}; "
                                      f"{where}")
        quality: dict[str, Any] = {}
        if runtime == "int8":
            summary = quantize_graph(proto, [x for x, _ in calib_batches], input_names, int8)
            data = checked_bytes(proto)
            quality = {**int8_quality(model, data, input_names[0], check_batches, int8), **summary.to_dict()}
            max_diff, tol = quality["max_abs_diff"], None
            log.info("int8 export: %s", quality)
    finally:
        model.train(was_training)
    from nncompress.train.checkpoint import atomic_write_bytes

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_path, data)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    return ExportReport(str(out_path), len(data), opset, storage, max_diff, tol, batches, source_bytes,
                        [list(s) for _, s in ins], [list(s) for _, s in outs], dict(sorted(ops.items())),
                        runtime, quality)
