"""Activation quantizers applied to a layer's input: BNN sign, XNOR-Net scaled sign,
DoReFa k-bit, uniform int (calibrated), QNN linear and log (Q12).

They hold no tensors (calibrated ranges are plain floats), so a finalized model keeps a
plain state dict; ``spec()`` is JSON and ``make_activation(spec)`` rebuilds one, which is
how a loaded model gets its activation quantization back.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.quantize.affine import fake_quant_affine, qparams_from_range
from nncompress.quantize.binary import xnor_activation
from nncompress.quantize.dorefa import dorefa_activation, linear_activation, log_activation
from nncompress.quantize.ste import sign_ste


class ActQuantizer(nn.Module):
    """Base class. ``calibrating = True`` makes ``forward`` record the input range (and
    pass the input through unchanged)."""

    kind = "none"
    bits: float = 32.0

    def __init__(self) -> None:
        super().__init__()
        self.calibrating = False
        self.lo, self.hi = math.inf, -math.inf

    def observe(self, x: torch.Tensor) -> None:
        self.lo = min(self.lo, float(x.detach().min()))
        self.hi = max(self.hi, float(x.detach().max()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observe(x)
            return x
        return self.apply_quant(x)

    def apply_quant(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {}

    def spec(self) -> dict[str, Any]:
        """JSON description: ``{"kind": ..., **params}``."""
        return {"kind": self.kind, **self.params()}

    def _need_range(self) -> None:
        if not math.isfinite(self.lo) or not math.isfinite(self.hi):
            raise ConfigError(
                f"activation quantizer {self.kind!r} needs calibration data first "
                "(pass calib_data / run calibrate())"
            )
        check_act_value(self.kind, "lo", self.lo)
        check_act_value(self.kind, "hi", self.hi)


class SignAct(ActQuantizer):
    """BNN: ``sign(x)`` forward, gradient cancelled where ``|x| > 1``."""

    kind, bits = "sign", 1.0

    def apply_quant(self, x):
        return sign_ste(x)


class XNORAct(ActQuantizer):
    """XNOR-Net: ``beta * sign(x)`` with ``beta = mean|x|`` (per position / per sample)."""

    kind, bits = "xnor", 1.0

    def apply_quant(self, x):
        return xnor_activation(x)


class DoReFaAct(ActQuantizer):
    """DoReFa: ``quantize_k(clip(x, 0, 1))``."""

    kind = "dorefa"

    def __init__(self, bits: int = 4):
        super().__init__()
        self.bits = bits

    def apply_quant(self, x):
        return dorefa_activation(x, int(self.bits))

    def params(self):
        return {"bits": int(self.bits)}


class AffineAct(ActQuantizer):
    """Uniform b-bit activations over the calibrated ``[min, max]`` (asymmetric, zero
    exact), fake-quantized with an STE."""

    kind = "affine"

    def __init__(self, bits: int = 8, lo: float | None = None, hi: float | None = None):
        super().__init__()
        self.bits = bits
        if lo is not None and hi is not None:
            self.lo, self.hi = float(lo), float(hi)

    def apply_quant(self, x):
        self._need_range()
        s, z = qparams_from_range(
            torch.tensor(self.lo), torch.tensor(self.hi), int(self.bits), False
        )
        return fake_quant_affine(x, s.to(x.device), z.to(x.device), int(self.bits), False).to(
            x.dtype
        )

    def params(self):
        return {"bits": int(self.bits), "lo": self.lo, "hi": self.hi}


class LinearAct(ActQuantizer):
    """QNN linear quantization ``clip(round(x / s) * s)``: ``s = max|x| / (2^b - 1)`` for
    non-negative inputs (range [0, max]) or ``max|x| / (2^(b-1) - 1)`` for signed ones."""

    kind = "linear"

    def __init__(self, bits: int = 8, lo: float | None = None, hi: float | None = None):
        super().__init__()
        self.bits = bits
        if lo is not None and hi is not None:
            self.lo, self.hi = float(lo), float(hi)

    def grid(self) -> tuple[float, float, float]:
        """(step, low clip, high clip)."""
        self._need_range()
        m = max(abs(self.lo), abs(self.hi)) or 1.0
        if self.lo >= 0:
            step = m / (2 ** int(self.bits) - 1)
            return step, 0.0, m
        step = m / (2 ** (int(self.bits) - 1) - 1)
        return step, -m, m

    def apply_quant(self, x):
        step, lo, hi = self.grid()
        return linear_activation(x, step, lo, hi)

    def params(self):
        return {"bits": int(self.bits), "lo": self.lo, "hi": self.hi}


class LogAct(ActQuantizer):
    """Log quantization ``sign(x) 2^round(log2|x|)``: b bits = 1 sign bit and ``b - 1``
    bits for a zero code and ``2^(b-1) - 1`` exponents ending at ``ceil(log2 max|x|)``."""

    kind = "log"

    def __init__(self, bits: int = 5, lo: float | None = None, hi: float | None = None):
        super().__init__()
        self.bits = bits
        if lo is not None and hi is not None:
            self.lo, self.hi = float(lo), float(hi)

    def exponents(self) -> tuple[int, int]:
        """(e_min, e_max)."""
        self._need_range()
        m = max(abs(self.lo), abs(self.hi)) or 1.0
        e_max = math.ceil(math.log2(m))
        return e_max - (2 ** (int(self.bits) - 1) - 1) + 1, e_max

    def apply_quant(self, x):
        e_min, e_max = self.exponents()
        return log_activation(x, e_min, e_max)

    def params(self):
        return {"bits": int(self.bits), "lo": self.lo, "hi": self.hi}


ACTIVATIONS: dict[str, type[ActQuantizer]] = {
    cls.kind: cls for cls in (SignAct, XNORAct, DoReFaAct, AffineAct, LinearAct, LogAct)
}


MAX_ACT_VALUE = 2.0**32
"""Largest magnitude of a calibrated activation parameter (a range end ``lo``/``hi``, a
ternary level), about 4.3e9. Each is at most the largest input the layer saw in
calibration, and the inputs of a working float32 network stay many orders below 2^32
(image bytes < 2^8, raw 16/24-bit audio samples < 2^23, activations of a trained layer
O(1..1e3)). A larger value in a file is a damaged or hostile file, refused at load; a
calibration that produced one is refused before training (normalise the inputs)."""


def check_act_value(kind: str, key: str, value: float) -> None:
    """``ConfigError`` naming the value and the bound when ``|value| > MAX_ACT_VALUE``.

    Example:
        >>> check_act_value("affine", "hi", 2.0**40)
        Traceback (most recent call last):
        ...
        nncompress.errors.ConfigError: activation quantizer 'affine': hi=1099511627776.0 exceeds the bound 4294967296.0 (2^32) of a layer input; a damaged file, or a model fed unnormalised inputs
    """
    if abs(value) > MAX_ACT_VALUE:
        raise ConfigError(f"activation quantizer {kind!r}: {key}={value!r} exceeds the bound {MAX_ACT_VALUE!r} "
                          "(2^32) of a layer input; a damaged file, or a model fed unnormalised inputs")


def make_activation(spec: dict[str, Any]) -> ActQuantizer:
    """Rebuild an activation quantizer from its ``spec()``.

    Example:
        >>> make_activation({"kind": "dorefa", "bits": 2}).bits
        2
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"activation spec {str(spec)[:80]} is not an object")
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if not isinstance(kind, str) or kind not in ACTIVATIONS:
        raise ConfigError(f"unknown activation quantizer {str(kind)[:40]!r}; allowed: {sorted(ACTIVATIONS)}")
    allowed = set(_PARAMS.get(kind, ()))
    if set(spec) - allowed:
        raise ConfigError(f"activation quantizer {kind!r} takes {sorted(allowed)}, got "
                          f"{sorted(str(k)[:40] for k in spec)}")
    if "bits" in spec:
        bits = spec["bits"]
        if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_ACT_BITS <= bits <= MAX_ACT_BITS:
            raise ConfigError(f"activation quantizer {kind!r}: bits={str(bits)[:40]} is not allowed; "
                              f"use an int in {MIN_ACT_BITS}..{MAX_ACT_BITS}")
    for key in ("lo", "hi"):
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ConfigError(f"activation quantizer {kind!r}: {key}={str(value)[:40]} is not a finite number")
        if value is not None:
            check_act_value(kind, key, float(value))
    if spec.get("lo") is not None and spec.get("hi") is not None and spec["lo"] > spec["hi"]:
        raise ConfigError(f"activation quantizer {kind!r}: lo={spec['lo']} > hi={spec['hi']}")
    return ACTIVATIONS[kind](**spec)


def register_activation(cls: type[ActQuantizer], params: tuple[str, ...]) -> type[ActQuantizer]:
    """Add an activation quantizer kind that ``make_activation`` rebuilds from a spec
    (``cls.kind``; ``params``: the spec keys its constructor takes, which validates their
    values with ``ConfigError``). A method file calls it once, at import. Returns ``cls``.

    Example:
        >>> register_activation(SignAct, ()) is SignAct
        True
    """
    ACTIVATIONS[cls.kind] = cls
    _PARAMS[cls.kind] = tuple(params)
    return cls


MIN_ACT_BITS, MAX_ACT_BITS = 1, 16
"""Activation bit widths a spec may name (a 1-bit DoReFa/linear/log grid degenerates, but
is well defined)."""
_PARAMS = {"sign": (), "xnor": (), "dorefa": ("bits",), "affine": ("bits", "lo", "hi"),
           "linear": ("bits", "lo", "hi"), "log": ("bits", "lo", "hi")}
