"""Static int8 calibration for ONNX Runtime's integer kernels: the configuration, the
calibration batches a user gives, activation ranges observed on them, and the affine
(scale, zero point) parameters derived from a range.

Activations are unsigned 8-bit with a zero point (``x ~ (q - z) * s``, ``q`` in 0..255),
weights signed 8-bit, symmetric (zero point 0, ``q`` in -127..127), one scale per output
channel. A range ``[lo, hi]`` is first widened to contain 0, so that zero (padding, ReLU
outputs) is exact:

    s = (hi - lo) / 255,   z = round(-lo / s)

``minmax`` takes the smallest and largest value seen over all calibration batches;
``percentile`` takes the ``percentile``-th and ``100 - percentile``-th percentiles of a
sample of the values (at most ``SAMPLE`` per tensor, spread evenly over the batches),
which clips rare outliers for a finer step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nncompress.checks import check_choice, check_float, check_int
from nncompress.errors import ConfigError

METHODS = ("minmax", "percentile")
SAMPLE = 1 << 18
"""Values kept per tensor for the ``percentile`` method."""


@dataclass
class StaticInt8Config:
    """How ``export_onnx(..., runtime="int8")`` quantizes a CNN/MLP for ONNX Runtime.

    Example:
        >>> StaticInt8Config(method="percentile", percentile=99.9).max_drop
        0.5
    """

    method: str = "minmax"
    """Activation range from the calibration batches: ``minmax`` or ``percentile``."""
    percentile: float = 99.99
    """Upper percentile kept by ``method: percentile`` (the lower one is ``100 - p``)."""
    max_drop: float = 0.5
    """Largest accuracy drop (points) of the int8 graph against the torch model on the check
    data (or, without labels, the largest share of predictions, in points, that differ
    from the torch model's) before the export is refused."""
    min_sqnr_db: float = 20.0
    """For models whose output is not a class score vector: the smallest signal-to-noise
    ratio (dB) of the int8 outputs against the torch model's."""
    batch_size: int = 64
    """Batch size calibration tensors are split into (when given as one tensor)."""

    def __post_init__(self) -> None:
        check_choice(self.method, METHODS, "method")
        check_float(self.percentile, "percentile", 50, 100, lo_open=True)
        check_float(self.max_drop, "max_drop", 0, 100)
        check_float(self.min_sqnr_db, "min_sqnr_db", 0)
        check_int(self.batch_size, "batch_size", 1)


def calibration_arrays(calib: Any, input_shape: tuple[int, ...], batch_size: int = 64,
                       name: str = "calib") -> list[tuple[np.ndarray, np.ndarray | None]]:
    """``(inputs, labels or None)`` float32 numpy batches of ``calib``: a tensor (N, ...)
    (split into ``batch_size``), a ``Dataset`` / ``DataLoader`` of ``(x, y)``, or an
    iterable of batches (tensors or ``(x, y)`` tuples). Every sample must have the shape
    ``input_shape`` (without the batch dimension) and finite values.

    Raises:
        ConfigError: naming ``name`` and what is wrong (empty, shape, dtype, non-finite).

    Example:
        >>> [x.shape for x, _ in calibration_arrays(torch.zeros(5, 3), (3,), batch_size=2)]
        [(2, 3), (2, 3), (1, 3)]
    """
    out: list[tuple[np.ndarray, np.ndarray | None]] = []
    for i, batch in enumerate(_batches(calib, batch_size, name)):
        if isinstance(batch, torch.Tensor):
            x, y = batch, None
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            x, y = batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            raise ConfigError(f"{name}: batch {i} is a {type(batch).__name__}; give tensors or (inputs, labels) "
                              "tuples of tensors")
        if not x.is_floating_point():
            raise ConfigError(f"{name}: batch {i} has dtype {x.dtype}; the model's input is float")
        if tuple(x.shape[1:]) != tuple(input_shape) or x.dim() != len(input_shape) + 1:
            raise ConfigError(f"{name}: batch {i} has shape {tuple(x.shape)}; the model takes "
                              f"(batch, {', '.join(str(s) for s in input_shape)})")
        if x.shape[0] == 0:
            continue
        if not torch.isfinite(x).all():
            raise ConfigError(f"{name}: batch {i} holds NaN or infinite values")
        labels = None
        if isinstance(y, torch.Tensor) and y.dim() == 1 and len(y) == len(x) and not y.is_floating_point():
            labels = y.detach().cpu().numpy().astype(np.int64)
        out.append((x.detach().to(torch.float32).cpu().numpy(), labels))
    if not out:
        raise ConfigError(f"{name} holds no samples; give at least one batch of inputs")
    return out


def _batches(calib: Any, batch_size: int, name: str) -> Iterator[Any]:
    if calib is None:
        raise ConfigError(f"{name}=None: runtime='int8' needs calibration inputs (a tensor, a Dataset, "
                          "a DataLoader or a list of batches)")
    if isinstance(calib, torch.Tensor):
        if calib.dim() == 0:
            raise ConfigError(f"{name} is a 0-d tensor; give a batch (dim 0 is the batch)")
        for i in range(0, len(calib), batch_size):
            yield calib[i:i + batch_size]
        return
    if isinstance(calib, torch.utils.data.Dataset) and not isinstance(calib, torch.utils.data.IterableDataset):
        yield from torch.utils.data.DataLoader(calib, batch_size=batch_size)
        return
    if isinstance(calib, (str, bytes)) or not isinstance(calib, Iterable):
        raise ConfigError(f"{name} is a {type(calib).__name__}; give a tensor, a Dataset, a DataLoader or a "
                          "list of batches")
    yield from calib


class RangeObserver:
    """Running activation ranges of named tensors over calibration batches.

    Example:
        >>> obs = RangeObserver("minmax")
        >>> obs.update("a", np.array([-1.0, 2.0])); obs.update("a", np.array([3.0]))
        >>> obs.range("a")
        (-1.0, 3.0)
    """

    def __init__(self, method: str = "minmax", percentile: float = 99.99, batches: int = 1):
        check_choice(method, METHODS, "method")
        self.method, self.percentile = method, float(percentile)
        self.per_batch = max(1, SAMPLE // max(1, batches))
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}
        self.samples: dict[str, list[np.ndarray]] = {}

    def update(self, name: str, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float32).ravel()
        if not v.size:
            return
        self.lo[name] = min(self.lo.get(name, np.inf), float(v.min()))
        self.hi[name] = max(self.hi.get(name, -np.inf), float(v.max()))
        if self.method == "percentile":
            step = max(1, v.size // self.per_batch)
            self.samples.setdefault(name, []).append(v[::step])

    def range(self, name: str) -> tuple[float, float]:
        if name not in self.lo:
            raise KeyError(name)
        if self.method == "minmax":
            return self.lo[name], self.hi[name]
        v = np.concatenate(self.samples[name])
        lo, hi = np.percentile(v, [100.0 - self.percentile, self.percentile])
        return float(lo), float(hi)


def activation_qparams(lo: float, hi: float) -> tuple[np.float32, np.uint8]:
    """uint8 affine ``(scale, zero_point)`` of the range ``[lo, hi]`` widened to contain 0.

    Example:
        >>> s, z = activation_qparams(0.0, 2.55)
        >>> round(float(s), 6), int(z)
        (0.01, 0)
        >>> int(activation_qparams(-1.0, 3.0)[1])  # round(1 / (4 / 255))
        64
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0 or not np.isfinite(hi - lo):
        return np.float32(1.0), np.uint8(0)
    scale = np.float32((hi - lo) / 255.0)
    zero = int(np.clip(np.round(-lo / float(scale)), 0, 255))
    return scale, np.uint8(zero)


def weight_scales(w: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric int8 scale per slice of ``w`` along ``axis`` (``max |w| / 127``; 1 for an
    all-zero slice), float32.

    Example:
        >>> weight_scales(np.array([[1.27, -0.5], [0.0, 0.0]], np.float32), 0).tolist()
        [0.009999999776482582, 1.0]
    """
    axes = tuple(i for i in range(w.ndim) if i != axis)
    m = np.abs(w).max(axis=axes) if axes else np.abs(w)
    s = (m / 127.0).astype(np.float32)
    s[s == 0] = 1.0
    return s
