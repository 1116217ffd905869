"""Latency, bytes and accuracy of a compressed model in torch and in onnxruntime
(``nncompress bench``): interleaved rounds, median per call, threads pinned.

Each round runs every candidate once, in turn, for a block of calls, so that load on a
shared machine hits all candidates alike; the figure is the median over rounds of the
per-call time. Text models are timed on ``[batch, 128]`` token batches.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from nncompress.deploy.runtime import ort_session
from nncompress.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class BenchRow:
    """One runtime of one model: ``latency_ms`` per batch size, file bytes, quality."""

    name: str
    runtime: str
    bytes: int | None = None
    latency_ms: dict[int, float] = field(default_factory=dict)
    quality: float | None = None
    """Accuracy (%) for classifiers, mean cosine to the reference embeddings for embedders."""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def interleaved_median(fns: Mapping[str, Callable[[], Any]], rounds: int = 15, calls: int = 5,
                       warmup: int = 2) -> dict[str, float]:
    """Median over ``rounds`` of the mean ms per call of each function; every round runs each
    function ``calls`` times, in turn (after ``warmup`` untimed calls each).

    Example:
        >>> t = interleaved_median({"noop": lambda: None}, rounds=3, calls=2)
        >>> t["noop"] >= 0
        True
    """
    if rounds < 1 or calls < 1:
        raise ConfigError(f"rounds={rounds}, calls={calls}: both must be >= 1")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[k].append((time.perf_counter() - t0) * 1000.0 / calls)
    return {k: statistics.median(v) for k, v in times.items()}


def tokenize(tokenizer, texts: Sequence[str], max_length: int = 128, pad_to: int | None = None) -> dict[str, np.ndarray]:
    """int64 ``input_ids``/``attention_mask``/``token_type_ids`` arrays for ``texts``
    (padded to the longest, or to ``pad_to``)."""
    enc = tokenizer(list(texts), truncation=True, max_length=pad_to or max_length,
                    padding="max_length" if pad_to else True, return_tensors="np")
    out = {k: np.asarray(enc[k], np.int64) for k in ("input_ids", "attention_mask")}
    out["token_type_ids"] = np.asarray(enc.get("token_type_ids", np.zeros_like(out["input_ids"])), np.int64)
    return out


def mean_pool(hidden: np.ndarray, mask: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Sentence embeddings: the mask-weighted mean of the token states (L2-normalised).

    Example:
        >>> mean_pool(np.ones((1, 2, 3)), np.array([[1, 0]])).round(3).tolist()
        [[0.577, 0.577, 0.577]]
    """
    m = mask[..., None].astype(np.float64)
    e = (hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    if normalize:
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return e


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine of matching rows of ``a`` and ``b``."""
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((an * bn).sum(1).mean())


def embed_ort(sess, batches: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """Mean-pooled embeddings of token batches through an onnxruntime text encoder."""
    names = {i.name for i in sess.get_inputs()}
    out = []
    for b in batches:
        h = sess.run(None, {k: v for k, v in b.items() if k in names})[0]
        out.append(mean_pool(h, b["attention_mask"]))
    return np.concatenate(out)


def embed_torch(model: nn.Module, batches: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """Mean-pooled embeddings of token batches through a transformers encoder in torch (on
    the model's device)."""
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    out = []
    with torch.no_grad():
        for b in batches:
            h = model(**{k: torch.from_numpy(v).to(dev) for k, v in b.items()}).last_hidden_state.float().cpu().numpy()
            out.append(mean_pool(h, b["attention_mask"]))
    return np.concatenate(out)


def text_batches(tokenizer, texts: Sequence[str], batch: int = 32, max_length: int = 128) -> list[dict[str, np.ndarray]]:
    """``texts`` tokenized in batches of ``batch``."""
    return [tokenize(tokenizer, texts[i:i + batch], max_length) for i in range(0, len(texts), batch)]


def token_batch(tokenizer, texts: Sequence[str], batch: int, seq: int = 128) -> dict[str, np.ndarray]:
    """A ``[batch, seq]`` timing batch: ``texts`` cycled, padded or cut to ``seq`` tokens."""
    picked = [texts[i % len(texts)] for i in range(batch)]
    return tokenize(tokenizer, picked, max_length=seq, pad_to=seq)


@dataclass
class BenchReport:
    """What :func:`bench_file` measured: one row per runtime, the settings used."""

    file: str
    rows: list[BenchRow]
    threads: int
    rounds: int
    seq: int | None
    quality: str
    """What ``BenchRow.quality`` is: ``cosine`` (text), ``accuracy`` (%, image models with
    ``check_data``), or ``none``."""
    load_average: tuple[float, float] = (0.0, 0.0)
    """1-minute load average before and after the timing."""

    def table(self) -> str:
        sizes = sorted({b for r in self.rows for b in r.latency_ms})
        head = ["runtime", "bytes"] + [f"ms batch {b}" for b in sizes] + [self.quality]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            q = "" if r.quality is None else f"{r.quality:.2f}" if self.quality == "accuracy" else f"{r.quality:.5f}"
            cells = [r.runtime, "" if r.bytes is None else f"{r.bytes:,}"]
            cells += [f"{r.latency_ms[b]:.3f}" if b in r.latency_ms else "" for b in sizes] + [q]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _image_inputs(model: nn.Module, batch: int) -> np.ndarray:
    from nncompress.models.registry import arch_of, default_input_shape

    shape = default_input_shape(arch_of(model))
    if shape is None:
        raise ConfigError("bench: the model is neither a transformers model nor a built-in architecture "
                          "with a known input shape")
    return np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)


def bench_file(path: str, onnx_path: str | None = None, text: str | None = None, *, threads: int = 1,
               rounds: int = 11, batches: Sequence[int] = (1, 64), seq: int = 128, limit: int = 256,
               runtime: str | None = None, workdir: str | None = None, device: str = "cpu",
               calib: Any = None, check_data: Any = None) -> BenchReport:
    """Latency (median of interleaved rounds, ``threads`` threads) of a ``.nnc`` model in
    torch (the loaded, decoded model), in onnxruntime as a dense fp32 export, and as the
    compressed ONNX file ``onnx_path`` (exported there, or to ``workdir``, when missing;
    ``runtime`` ``int8`` or ``float``, default ``int8`` for text models and ``float`` for
    others; ``int8`` for a non-text model needs ``calib``, see ``export_onnx``); file bytes
    of each; for text models with ``text`` (one passage a line, first ``limit``), the mean
    cosine of each runtime's mean-pooled embeddings to the torch model's; for other models
    with labelled ``check_data``, each runtime's accuracy (%) on it.

    Text models are timed on ``[batch, seq]`` tokens; image models on seeded normal inputs.
    ``device`` (cpu, cuda, cuda:N, mps, auto) is where the torch row runs (synchronised per
    call on CUDA); onnxruntime runs on the CPU provider.
    Batch 64 runs a third of the rounds (at least 3), one call each.

    Raises:
        ConfigError: bad numbers, or a model this cannot feed.

    Example:
        >>> r = bench_file("minilm-8bit.nnc", text="eval.txt")  # doctest: +SKIP
        >>> print(r.table())  # doctest: +SKIP
    """
    import os
    import tempfile
    from pathlib import Path

    from nncompress.deploy.onnx_export import export_onnx
    from nncompress.format import load
    from nncompress.models.hf_arch import is_transformers_model

    if not (isinstance(threads, int) and threads >= 1):
        raise ConfigError(f"threads={threads!r}: use an int >= 1")
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ConfigError(f"rounds={rounds!r}: use an int >= 1")
    if not batches or any(not isinstance(b, int) or b < 1 for b in batches):
        raise ConfigError(f"batches={batches!r}: use ints >= 1")
    if not (isinstance(seq, int) and 2 <= seq <= 512):
        raise ConfigError(f"seq={seq!r}: use an int in 2..512")
    if runtime not in (None, "float", "int8"):
        raise ConfigError(f"runtime={runtime!r}: use 'float' or 'int8'")
    texts = None
    if text is not None:
        if not Path(text).is_file():
            raise ConfigError(f"text={text!r}: no such file")
        texts = [ln.strip() for ln in Path(text).read_text(encoding="utf-8").splitlines() if ln.strip()][:limit]
        if not texts:
            raise ConfigError(f"text={text!r} holds no passages")
    from nncompress.train.device import resolve_device

    dev = resolve_device(device)  # a device this machine lacks: ConfigError before any work
    torch.set_num_threads(threads)
    model = load(path).eval()
    is_text = is_transformers_model(model)
    if is_text:
        seq = min(seq, int(getattr(model.config, "max_position_embeddings", seq) or seq))
    if texts is not None and not is_text:
        raise ConfigError("--text applies to transformers (text) models only")
    runtime = runtime or ("int8" if is_text else "float")
    if is_text and (calib is not None or check_data is not None):
        raise ConfigError("calib and check_data apply to image/vector models; text models use text")
    if not is_text and runtime == "int8" and calib is None:
        raise ConfigError("runtime='int8' for a non-text model needs calib (calibration inputs from its data)")
    checks = None
    if check_data is not None:
        from nncompress.deploy.calibrate import calibration_arrays

        checks = calibration_arrays(check_data, tuple(_image_inputs(model, 1).shape[1:]), 256, "check_data")
        if any(y is None for _, y in checks):
            raise ConfigError("check_data must be labelled: (inputs, labels) batches or a Dataset of (x, y)")
    tmp = tempfile.TemporaryDirectory(dir=workdir)
    try:
        dense = Path(tmp.name) / "dense.onnx"
        export_onnx(model, dense, forms=("dense",))
        if onnx_path is None or not Path(onnx_path).is_file():
            target = Path(onnx_path) if onnx_path is not None else Path(tmp.name) / "compressed.onnx"
            if is_text or runtime == "float":
                export_onnx(path, target, runtime=runtime)
            else:
                export_onnx(path, target, runtime="int8", calib=calib, check_data=check_data)
            onnx_path = str(target)
        label = f"onnxruntime {'int8' if runtime == 'int8' else 'compressed'} ({Path(onnx_path).name})"
        sessions = {"onnxruntime fp32 (dense export)": ort_session(dense, threads),
                    label: ort_session(onnx_path, threads)}
        sizes = {"torch (loaded .nnc)": os.path.getsize(path),
                 "onnxruntime fp32 (dense export)": dense.stat().st_size,
                 label: os.path.getsize(onnx_path)}
        model = model.to(dev)  # the exports above ran on the CPU
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        rows = {k: BenchRow(Path(path).name, k, v) for k, v in sizes.items()}
        tok = None
        if is_text:
            from nncompress.models.huggingface import tokenizer_of

            tok = tokenizer_of(model)
            if tok is None and texts is not None:
                raise ConfigError(f"{path} stores no tokenizer; --text needs one (save a model loaded "
                                  "with nncompress.models.huggingface.load_pretrained)")
        if checks is not None:
            for k, fn in _predictors(model, sessions).items():
                rows[k].quality = 100.0 * float(np.mean(np.concatenate([fn(x) == y for x, y in checks])))
        if texts is not None:
            tb = text_batches(tok, texts, 32)
            ref = embed_torch(model, tb)
            rows["torch (loaded .nnc)"].quality = 1.0
            for k, s in sessions.items():
                rows[k].quality = mean_cosine(embed_ort(s, tb), ref)
        load_before = os.getloadavg()[0]
        for b in batches:
            if is_text:
                if texts is not None:
                    feed = token_batch(tok, texts, b, seq)
                else:
                    g = np.random.default_rng(0)
                    ids = g.integers(1, int(model.config.vocab_size), (b, seq)).astype(np.int64)
                    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
                tfeed = {k: torch.from_numpy(v).to(dev) for k, v in feed.items()}

                def run_torch(tf=tfeed):
                    with torch.no_grad():
                        model(**tf)
                    sync()
            else:
                x = _image_inputs(model, b)
                feed = {"input": x}
                tx = torch.from_numpy(x).to(dev)

                def run_torch(tx=tx):
                    with torch.no_grad():
                        model(tx)
                    sync()
            fns = {"torch (loaded .nnc)": run_torch}
            for k, s in sessions.items():
                names = [i.name for i in s.get_inputs()]
                fd = {n: feed[n] for n in names} if is_text else {names[0]: feed["input"]}
                fns[k] = lambda s=s, fd=fd: s.run(None, fd)
            big = b >= 16
            t = interleaved_median(fns, rounds=max(3, rounds // 3) if big else rounds, calls=1 if big else 5,
                                   warmup=1)
            for k, v in t.items():
                rows[k].latency_ms[b] = v
        load_after = os.getloadavg()[0]
    finally:
        tmp.cleanup()
    quality = "cosine" if texts is not None else "accuracy" if checks is not None else "none"
    return BenchReport(path, list(rows.values()), threads, rounds, seq if is_text else None, quality,
                       (load_before, load_after))


def _predictors(model: nn.Module, sessions: Mapping[str, Any]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Argmax predictors of the torch model and each onnxruntime session (image models)."""
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")

    def torch_pred(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x).to(dev)).argmax(1).cpu().numpy()

    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {"torch (loaded .nnc)": torch_pred}
    for k, s in sessions.items():
        name = s.get_inputs()[0].name
        out[k] = lambda x, s=s, name=name: s.run(None, {name: x})[0].argmax(1)
    return out
