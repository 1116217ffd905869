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


def ort_session(path_or_bytes: Any, threads: int = 1):
    """An onnxruntime CPU session with ``threads`` intra-op threads, 1 inter-op, all graph
    optimizations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path_or_bytes) if not isinstance(path_or_bytes, bytes) else path_or_bytes,
                                opts, providers=["CPUExecutionProvider"])


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
    """Mean-pooled embeddings of token batches through a transformers encoder in torch."""
    out = []
    with torch.no_grad():
        for b in batches:
            h = model(**{k: torch.from_numpy(v) for k, v in b.items()}).last_hidden_state.numpy()
            out.append(mean_pool(h, b["attention_mask"]))
    return np.concatenate(out)


def text_batches(tokenizer, texts: Sequence[str], batch: int = 32, max_length: int = 128) -> list[dict[str, np.ndarray]]:
    """``texts`` tokenized in batches of ``batch``."""
    return [tokenize(tokenizer, texts[i:i + batch], max_length) for i in range(0, len(texts), batch)]


def token_batch(tokenizer, texts: Sequence[str], batch: int, seq: int = 128) -> dict[str, np.ndarray]:
    """A ``[batch, seq]`` timing batch: ``texts`` cycled, padded or cut to ``seq`` tokens."""
    picked = [texts[i % len(texts)] for i in range(batch)]
    return tokenize(tokenizer, picked, max_length=seq, pad_to=seq)
