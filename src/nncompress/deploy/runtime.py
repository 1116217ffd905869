"""onnxruntime and onnx plumbing shared by the exporters and ``nncompress bench``: one way
to open a CPU session and one way to validate and serialise an exported graph."""

from __future__ import annotations

from typing import Any

from nncompress.deploy.report import ExportError

NEED = "pip install 'nncompress[deploy]' (onnx>=1.16, onnxruntime>=1.18)"


def ort_session(path_or_bytes: Any, threads: int = 1):
    """An onnxruntime CPU session on a file path or serialised model, ``threads`` intra-op
    threads, 1 inter-op thread, sequential execution, all graph optimizations.

    Example:
        >>> sess = ort_session("model.onnx", threads=2)  # doctest: +SKIP
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(f"nncompress.deploy needs the 'onnxruntime' package: {NEED}") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def checked_bytes(proto: Any) -> bytes:
    """``proto`` serialised after ``onnx.checker.check_model(full_check=True)``; a graph
    that fails it raises ``ExportError`` with the checker's message."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the ONNX graph fails onnx.checker: {str(exc)[:400]}") from None
    return proto.SerializeToString()


def optimized_ops(path_or_bytes: Any) -> dict[str, int]:
    """Op counts of the graph onnxruntime actually runs (after its CPU graph optimizations,
    e.g. the QDQ fusions into ``QLinearConv``), from a session that saves its optimized model.

    Example:
        >>> optimized_ops("lenet5-int8.onnx")  # doctest: +SKIP
        {'DequantizeLinear': 1, 'MaxPool': 2, 'QGemm': 2, 'QLinearConv': 2, 'QuantizeLinear': 1, ...}
    """
    import collections
    import os
    import tempfile

    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # QDQ fusions, no layout
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        opts.optimized_model_filepath = out
        src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
        ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        proto = onnx.load(out)
    return dict(sorted(collections.Counter(n.op_type for n in proto.graph.node).items()))
