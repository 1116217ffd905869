"""The check of a static int8 ONNX export against the torch model it came from: integer
activations cannot match to a float tolerance, so the export is held to a task-level bound,
the accuracy drop (points) on labelled check data, or, without labels, the share of
predictions that differ from the torch model's; models whose output is not a class score
vector are held to a signal-to-noise ratio."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from nncompress.deploy.calibrate import StaticInt8Config
from nncompress.deploy.report import ExportError
from nncompress.deploy.runtime import ort_session

CHUNK = 256
"""Samples per forward pass of the check (a large batch at once is slower in torch)."""


def _first(out: Any) -> torch.Tensor:
    return (out[0] if isinstance(out, (tuple, list)) else out).detach().float()


def int8_quality(model: nn.Module, data: bytes, input_name: str,
                 batches: Sequence[tuple[np.ndarray, np.ndarray | None]], config: StaticInt8Config) -> dict[str, Any]:
    """Run the serialised int8 graph ``data`` in onnxruntime and ``model`` in torch on
    ``batches`` (``(inputs, labels or None)``) and compare the first outputs.

    Returns a dict: ``metric`` (``accuracy`` with labels, ``agreement`` without, ``sqnr``
    for non-classifier outputs), ``torch`` and ``onnx`` (%, for the first two), ``drop_pt``,
    ``max_drop_pt``, ``agreement`` (% of equal predictions), ``sqnr_db``, ``max_abs_diff``,
    ``samples``.

    Raises:
        ExportError: the drop exceeds ``config.max_drop`` (or the SNR is below
            ``config.min_sqnr_db``), with the figures.

    Example:
        >>> q = int8_quality(model, onnx_bytes, "input", [(x, y)], StaticInt8Config())  # doctest: +SKIP
        >>> q["metric"], q["drop_pt"]  # doctest: +SKIP
        ('accuracy', 0.1)
    """
    sess = ort_session(data, 1)
    refs, gots, labels = [], [], []
    with torch.no_grad():
        for xb, yb in batches:
            for i in range(0, len(xb), CHUNK):
                x = xb[i:i + CHUNK]
                refs.append(_first(model(torch.from_numpy(x))).numpy())
                gots.append(np.asarray(sess.run(None, {input_name: x})[0], np.float32))
                labels.append(None if yb is None else yb[i:i + CHUNK])
    ref, got = np.concatenate(refs), np.concatenate(gots)
    if ref.shape != got.shape:
        raise ExportError(f"the int8 ONNX graph's output shape {got.shape} differs from the torch model's {ref.shape}")
    noise = float(((ref.astype(np.float64) - got) ** 2).sum())
    signal = float((ref.astype(np.float64) ** 2).sum())
    sqnr = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)
    out: dict[str, Any] = {"samples": int(len(ref)), "sqnr_db": sqnr, "max_abs_diff": float(np.abs(ref - got).max()),
                           "max_drop_pt": config.max_drop}
    if ref.ndim >= 2 and ref.shape[1] >= 2:
        p_ref, p_got = ref.argmax(1), got.argmax(1)
        agree = 100.0 * float((p_ref == p_got).mean())
        out["agreement"] = agree
        if all(y is not None for y in labels):
            y = np.concatenate(labels)
            t, o = 100.0 * float((p_ref == y).mean()), 100.0 * float((p_got == y).mean())
            out.update(metric="accuracy", torch=t, onnx=o, drop_pt=t - o)
        else:
            out.update(metric="agreement", torch=100.0, onnx=agree, drop_pt=100.0 - agree)
        if out["drop_pt"] > config.max_drop:
            what = ("accuracy" if out["metric"] == "accuracy" else "agreement with the torch model's predictions")
            raise ExportError(f"the int8 ONNX graph is too far from the torch model: {what} {out['onnx']:.2f}% vs "
                              f"{out['torch']:.2f}% on {len(ref):,} samples, a drop of {out['drop_pt']:.2f} points > "
                              f"max_drop {config.max_drop}; try more or more typical calibration data, "
                              "method='percentile', or runtime='float'")
    else:
        out.update(metric="sqnr", torch=None, onnx=None, drop_pt=None)
        if sqnr < config.min_sqnr_db:
            raise ExportError(f"the int8 ONNX graph is too far from the torch model: output SNR {sqnr:.1f} dB < "
                              f"min_sqnr_db {config.min_sqnr_db} on {len(ref):,} samples")
    return out
