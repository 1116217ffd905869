"""ONNX export of transformers encoders (BERT-like models that ``nncompress.load``
returns for files saved from Hugging Face models), keeping the compression on disk.

The graph comes from ``torch.onnx.export`` (TorchScript exporter, eager attention) with
inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, dynamic batch and
sequence axes) and output ``last_hidden_state``. Each float weight initializer is then
matched, by value, to the model parameter it holds (as stored, or transposed: the
exporter writes ``Linear`` weights as ``W.T`` for ``MatMul``) and replaced by the smallest
exact storage of that parameter: a codebook + packed indices + ``Gather`` (k-means shared
layers and embedding tables), one codebook per block of rows (``kmeans_rows``), codes +
fp16 scales per group (``gptq``), int8 + ``DequantizeLinear``, fp16, or dense (see
:mod:`nncompress.deploy.storage` and :mod:`nncompress.deploy.blocks`). A ``Transpose``
restores the exporter's layout. The decoding subgraphs are constant, so onnxruntime
folds them into the float weights once, when the session is created.

``runtime="int8"`` additionally rewrites every ``MatMul`` with a constant weight into
onnxruntime's dynamic-quantization pattern (``DynamicQuantizeLinear`` on the activation,
``MatMulInteger`` with int8 weights per output channel, ``Cast`` and a ``Mul`` by the two
scales): the int8 weights are computed *in the graph* from the decoded float weight
(``Round(W / s)``, folded at load), so the file keeps the compressed storage.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nncompress.deploy.blocks import block_candidates
from nncompress.deploy.graph import GraphBuilder
from nncompress.deploy.report import ExportError, ExportReport, TensorStorage
from nncompress.deploy.runtime import checked_bytes, ort_session
from nncompress.deploy.storage import FORMS, candidates
from nncompress.errors import ConfigError

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
RUNTIMES = ("float", "int8")
"""``float``: weights decoded to float32 at load; ``int8``: + dynamic int8 MatMuls."""
INT8_MIN_COSINE = 0.98
"""An ``int8`` export is accepted when the mean cosine of its token hidden states to the
torch model's is >= this, on the check's random tokens (integer activations cannot match
to a float tolerance)."""
EXPORT_OPSET = 17
"""Opset of the TorchScript exporter's graph (``LayerNormalization`` needs 17)."""


def _hints(path: str | os.PathLike | None, verify_key=None) -> dict[str, dict[str, Any]]:
    """Per-tensor block hints from the ``.nnc`` header: ``rows`` (kmeans_rows block size)
    and ``group`` (gptq group size)."""
    if path is None:
        return {}
    from nncompress.format.model_io import read_info

    out: dict[str, dict[str, Any]] = {}
    for t in read_info(path, verify_key=verify_key).tensors:
        meta = t.meta or {}
        if t.codec == "kmeans_rows" and isinstance(meta.get("rows_per_codebook"), int):
            out[t.name] = {"rows": meta["rows_per_codebook"]}
        elif t.codec == "gptq" and isinstance(meta.get("group"), int):
            out[t.name] = {"group": meta["group"]}
    return out


def example_text_inputs(model: nn.Module, batch: int = 2, seq: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Seeded ``(input_ids, attention_mask, token_type_ids)`` for ``model``'s vocabulary; the
    last sample is padded (its mask ends in zeros) when ``batch > 1``.

    Example:
        >>> ids, mask, types = example_text_inputs(model, 2, 8)  # doctest: +SKIP
        >>> ids.shape, mask[1].tolist()  # doctest: +SKIP
        (torch.Size([2, 8]), [1, 1, 1, 1, 1, 0, 0, 0])
    """
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, int(cfg.vocab_size), (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    if batch > 1 and seq > 2:
        mask[-1, seq // 2 + 1:] = 0
    types = torch.zeros(batch, seq, dtype=torch.int64)
    if int(getattr(cfg, "type_vocab_size", 1) or 1) > 1 and seq > 2:
        types[:, seq // 2:] = 1
    return ids, mask, types


class _Encoder(nn.Module):
    """The three-input, one-output forward the ONNX graph has."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state


def _torch_graph(model: nn.Module, inputs: tuple[torch.Tensor, ...]):
    """The dense graph from ``torch.onnx.export`` (eager attention), as an ONNX proto."""
    import inspect
    import io

    import onnx

    wrapper = _Encoder(model).eval()
    impl = getattr(model.config, "_attn_implementation", None)
    setter = getattr(model, "set_attn_implementation", None)
    buf = io.BytesIO()
    dims = {0: "batch", 1: "sequence"}
    try:
        if setter is not None and impl != "eager":
            setter("eager")
        import warnings

        # the TorchScript exporter: torch >= 2.9 defaults to dynamo=True, torch < 2.5 has no
        # such argument (and only that exporter)
        legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, inputs, buf, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                              opset_version=EXPORT_OPSET, do_constant_folding=True, **legacy,
                              dynamic_axes={n: dims for n in (*INPUT_NAMES, OUTPUT_NAME)})
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
        raise ExportError(f"torch.onnx.export cannot trace {type(model).__name__}: {exc!r}"[:600]) from None
    finally:
        if setter is not None and impl not in (None, "eager"):
            setter(impl)
        wrapper.eval()
    return onnx.load_from_string(buf.getvalue())


def _digest(a: np.ndarray) -> tuple:
    return a.shape, hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()


def _param_index(model: nn.Module) -> dict[tuple, tuple[str, bool]]:
    """Digest of each float parameter (and of its transpose, for 2-D ones) -> (name, transposed)."""
    index: dict[tuple, tuple[str, bool]] = {}
    for name, p in model.named_parameters():
        a = p.detach().cpu().float().numpy()
        index.setdefault(_digest(a), (name, False))
        if a.ndim == 2:
            index.setdefault(_digest(a.T), (name, True))
    return index


def encode_weight(b: GraphBuilder, name: str, w: np.ndarray, forms: Iterable[str] = FORMS,
                  rows_per_block: Iterable[int] = (), groups: Iterable[int] = ()):
    """Add the smallest exact storage of ``w`` among ``forms`` and the block forms (for the
    block and group sizes given) to ``b``; return ``(value name, form, bytes, detail)``.

    Example:
        >>> b = GraphBuilder(17)
        >>> w = np.repeat(np.array([[0.5, -1.3]], np.float32), 32, axis=0)
        >>> encode_weight(b, "w", w)[1]
        'shared'
    """
    w = np.ascontiguousarray(w, dtype=np.float32)
    cands = list(candidates(b, name, w, forms)) + list(block_candidates(b, name, w, rows_per_block, groups))
    cands.sort(key=lambda c: c.bytes)
    for c in cands:
        got = c.decode()
        if got.shape == w.shape and np.array_equal(got, w):
            b.absorb(c.builder)
            return c.output, c.form, c.bytes, c.detail
        log.warning("storage %s of %s does not decode to the tensor; trying the next", c.form, name)
    raise AssertionError(f"no storage of {name} decodes to it")  # dense always does


def _compress(proto, model: nn.Module, hints: Mapping[str, Mapping[str, Any]], forms) -> tuple[list[TensorStorage], dict[str, np.ndarray]]:
    """Replace the proto's float initializers that hold model parameters by their compressed
    storage (in place); return the storage table and the dense value of each weight name."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    b = GraphBuilder(EXPORT_OPSET)
    for n in graph.node:
        for v in (*n.input, *n.output):
            b.reserve(v)
    for v in (*graph.input, *graph.output):
        b.reserve(v.name)
    for init in graph.initializer:
        b.reserve(init.name)
    index = _param_index(model)
    params = dict(model.named_parameters())
    keep, storage, values = [], [], {}
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < 16:
            keep.append(init)
            continue
        arr = numpy_helper.to_array(init)
        hit = index.get(_digest(arr))
        if hit is None:
            keep.append(init)
            continue
        pname, transposed = hit
        w = params[pname].detach().cpu().float().numpy()
        h = hints.get(pname, {})
        rows = [h["rows"]] if "rows" in h else []
        groups = [h["group"]] if "group" in h else ([w.size // w.shape[0]] if w.ndim == 2 else [])
        kid = b.child()
        out, form, nbytes, detail = encode_weight(kid, pname, w, forms, rows, groups)
        values[init.name] = arr
        if form == "dense":  # the exporter's initializer as it is (no Transpose / Identity)
            keep.append(init)
            nbytes, detail = init.ByteSize(), "float32" + (" (transposed)" if transposed else "")
        else:
            b.absorb(kid)
            if transposed:
                out = b.node("Transpose", [out], perm=[1, 0])
                detail += " + Transpose"
            b.nodes.append(helper.make_node("Identity", [out], [init.name]))
        storage.append(TensorStorage(pname, pname.rsplit(".", 1)[0], form, tuple(w.shape), int(w.size),
                                     int(np.count_nonzero(w)), int(np.unique(w).size), int(nbytes), 4 * int(w.size), detail))
    nodes = list(b.nodes) + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep + list(b.initializers))
    return storage, values


def _int8_matmuls(proto, values: Mapping[str, np.ndarray]) -> int:
    """Rewrite each ``MatMul(x, W)`` with a constant 2-D weight into dynamic int8: weights
    per output column, ``q = Round(W / s)`` computed in the graph (folded at load)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    names = {v for n in graph.node for v in (*n.input, *n.output)} | {i.name for i in graph.initializer}
    counter = [0]

    def fresh(base: str) -> str:
        while True:
            counter[0] += 1
            name = f"{base}_q{counter[0]}"
            if name not in names:
                names.add(name)
                return name

    new_nodes, new_inits, count = [], [], 0
    for n in graph.node:
        w = values.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) == 2 else None
        if w is None or w.ndim != 2:
            new_nodes.append(n)
            continue
        count += 1
        scale = (np.abs(w).max(axis=0) / 127.0).astype(np.float32)
        scale[scale == 0] = 1.0
        s_name, z_name = fresh("w_scale"), fresh("w_zero")
        new_inits += [numpy_helper.from_array(scale, s_name), numpy_helper.from_array(np.zeros(w.shape[1], np.int8), z_name)]
        ratio, rnd, wq = fresh("w_div"), fresh("w_round"), fresh("w_int8")
        xq, xs, xz = fresh("x_uint8"), fresh("x_scale"), fresh("x_zero")
        acc, accf, sc = fresh("acc"), fresh("acc_f"), fresh("scale")
        new_nodes += [
            helper.make_node("Div", [n.input[1], s_name], [ratio]),
            helper.make_node("Round", [ratio], [rnd]),
            helper.make_node("Cast", [rnd], [wq], to=TensorProto.INT8),
            helper.make_node("DynamicQuantizeLinear", [n.input[0]], [xq, xs, xz]),
            helper.make_node("MatMulInteger", [xq, wq, xz, z_name], [acc]),
            helper.make_node("Cast", [acc], [accf], to=TensorProto.FLOAT),
            helper.make_node("Mul", [xs, s_name], [sc]),
            helper.make_node("Mul", [accf, sc], list(n.output)),
        ]
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    return count


def _run(sess, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    return sess.run(None, {k: t.numpy() for k, t in zip(INPUT_NAMES, inputs)})[0]


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a2, b2 = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    num = (a2 * b2).sum(1)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1) + 1e-12
    return float((num / den).mean())


def export_transformers_onnx(model_or_nnc_path: nn.Module | str | os.PathLike, out_path: str | os.PathLike, *,
                             runtime: str = "float", check: bool = True, tolerance: float = 1e-4,
                             forms: Iterable[str] = FORMS, verify_key=None,
                             source: str | os.PathLike | None = None) -> ExportReport:
    """Export a transformers encoder (or a ``.nnc`` file holding one) to ONNX, keeping each
    weight in its smallest exact compressed form (see the module docstring).

    Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, ``[batch,
    sequence]``, both axes dynamic); output ``last_hidden_state`` (float32).

    With ``check`` the graph runs in onnxruntime on a seeded batch of 2 x 16 tokens (one
    padded) and on 1 x 9 tokens; ``runtime="float"`` must match the torch model within
    ``tolerance * max(1, max |output|)``, ``runtime="int8"`` needs a mean token cosine
    >= ``INT8_MIN_COSINE``; else :class:`ExportError` and nothing is written.

    Raises:
        ConfigError: not a transformers model, an unknown runtime or form.
        ExportError: the exporter fails, or the check does.

    Example:
        >>> r = export_transformers_onnx("minilm-4bit.nnc", "minilm.onnx")  # doctest: +SKIP
        >>> r.onnx_bytes / r.source_bytes  # doctest: +SKIP
        0.98

    Args:
        source: the ``.nnc`` file a given model was loaded from (its header gives the
            block and group sizes of ``kmeans_rows`` / ``gptq`` tensors, and its bytes).
    """
    from onnx import helper

    from nncompress.models.hf_arch import is_transformers_model

    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime={runtime!r} is not allowed; use one of {', '.join(RUNTIMES)}")
    forms = (forms,) if isinstance(forms, str) else tuple(forms)
    bad = [f for f in forms if f not in FORMS]
    if bad:
        raise ConfigError(f"forms {bad} are not allowed; allowed: {', '.join(FORMS)}")
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
        raise ConfigError(f"tolerance={tolerance!r} is not allowed; use a float in (0, 1)")
    source_bytes, path = None, None
    if isinstance(model_or_nnc_path, (str, os.PathLike)):
        from nncompress.format import load

        path = model_or_nnc_path
        source_bytes = Path(path).stat().st_size if Path(path).is_file() else None
        model = load(path, verify_key=verify_key)
    else:
        model = model_or_nnc_path
        if source is not None:
            path = source
            source_bytes = Path(source).stat().st_size
    if not is_transformers_model(model):
        raise ConfigError(f"export_transformers_onnx needs a transformers model, got {type(model).__name__}")
    hints = _hints(path, verify_key)
    was_training = model.training
    model.eval()
    try:
        inputs = example_text_inputs(model, 2, 16)
        proto = _torch_graph(model, inputs)
        storage, values = _compress(proto, model, hints, forms)
        if runtime == "int8":
            n = _int8_matmuls(proto, values)
            log.info("int8 runtime: %d MatMuls use MatMulInteger", n)
        del proto.opset_import[:]
        proto.opset_import.extend([helper.make_opsetid("", EXPORT_OPSET)])
        proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import))
        proto.producer_name = "nncompress"
        data = checked_bytes(proto)
        max_diff = tol = None
        batches: list[int] = []
        if check:
            sess = ort_session(data)
            max_diff, min_cos = 0.0, 1.0
            for xs in (inputs, example_text_inputs(model, 1, 9, seed=1)):
                with torch.no_grad():
                    ref = _Encoder(model).eval()(*xs).float().numpy()
                got = _run(sess, xs)
                if got.shape != ref.shape:
                    raise ExportError(f"ONNX output shape {got.shape} != torch {ref.shape}")
                d = float(np.abs(got.astype(np.float64) - ref).max())
                max_diff, min_cos = max(max_diff, d), min(min_cos, _mean_cosine(got, ref))
                batches.append(int(xs[0].shape[0]))
                tol = tolerance * max(1.0, float(np.abs(ref).max()))
                if runtime == "float" and not d <= tol:
                    raise ExportError(f"the ONNX graph differs from the torch model on {tuple(xs[0].shape)} "
                                      f"tokens: max |ort - torch| = {d:.3g} > tolerance {tol:.3g}")
                if runtime == "int8" and not min_cos >= INT8_MIN_COSINE:
                    raise ExportError(f"the int8 ONNX graph is too far from the torch model on "
                                      f"{tuple(xs[0].shape)} tokens: mean token cosine {min_cos:.4f} < "
                                      f"{INT8_MIN_COSINE}")
            if runtime == "int8":
                tol = None
                log.info("int8 export: mean token cosine %.5f, max |diff| %.3g", min_cos, max_diff)
    finally:
        model.train(was_training)
    from nncompress.train.checkpoint import atomic_write_bytes

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_path, data)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    dyn = [["batch", "sequence"]] * 3
    return ExportReport(str(out_path), len(data), EXPORT_OPSET, storage, max_diff, tol, batches, source_bytes,
                        dyn, [["batch", "sequence", int(model.config.hidden_size)]], dict(sorted(ops.items())))
