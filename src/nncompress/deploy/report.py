"""What an ONNX export returns: per-tensor storage forms, bytes, and the parity check."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from nncompress.errors import ConfigError


class ExportError(ConfigError):
    """The model (or one of its layers) cannot be exported, or the exported graph does not
    reproduce the model within the tolerance. The message names the layer."""


@dataclass
class TensorStorage:
    """How one parameter or buffer is stored in the ONNX file.

    ``form`` is one of ``dense`` (float32 initializer), ``fp16`` (float16 + Cast), ``int8``
    (int8/uint8 codes + DequantizeLinear), ``shared`` (uint8 or packed 4-bit codebook
    indices + float codebook + Gather), ``pruned`` (gap-coded positions + float values,
    scattered into zeros) or ``pruned-shared`` (gap-coded positions + codebook indices).
    ``bytes`` counts the initializers and the decoding nodes in the serialized file;
    ``dense_bytes`` is ``4 * numel``.
    """

    name: str
    layer: str
    form: str
    shape: tuple[int, ...]
    numel: int
    nonzero: int
    distinct: int
    bytes: int
    dense_bytes: int
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class ExportReport:
    """Result of :func:`nncompress.deploy.export_onnx`.

    ``max_abs_diff`` is the largest ``|onnxruntime - torch|`` over the checked outputs and
    batches (None when ``check=False``); ``tolerance`` is the bound it was held to.
    """

    path: str
    onnx_bytes: int
    opset: int
    tensors: list[TensorStorage]
    max_abs_diff: float | None = None
    tolerance: float | None = None
    checked_batches: list[int] = field(default_factory=list)
    source_bytes: int | None = None
    input_shapes: list[list[Any]] = field(default_factory=list)
    output_shapes: list[list[Any]] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)
    runtime: str = "float"
    """``float`` or ``int8`` (integer kernels in onnxruntime)."""
    quality: dict[str, Any] = field(default_factory=dict)
    """``runtime="int8"``: the check's figures (``metric`` accuracy / agreement / sqnr,
    ``torch``, ``onnx``, ``drop_pt``, ``samples``, ``sqnr_db``, ...) and the rewrite's summary."""

    @property
    def layers(self) -> dict[str, str]:
        """Layer name -> storage form of its weight (its first tensor when no ``weight``)."""
        out: dict[str, str] = {}
        for t in self.tensors:
            if t.name.endswith(".weight") or t.layer not in out:
                out[t.layer] = t.form
        return out

    @property
    def weight_bytes(self) -> int:
        """Bytes of all stored tensors (initializers + their decoding nodes)."""
        return sum(t.bytes for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tensors"] = [t.to_dict() for t in self.tensors]
        d["layers"] = self.layers
        d["weight_bytes"] = self.weight_bytes
        return d

    def table(self) -> str:
        """Markdown table of the tensors' storage forms."""
        rows = ["| tensor | shape | form | nonzero | distinct | bytes | dense bytes | detail |",
                "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for t in self.tensors:
            shape = "x".join(str(s) for s in t.shape)
            rows.append(f"| {t.name} | {shape} | {t.form} | {t.nonzero:,} | {t.distinct:,} | "
                        f"{t.bytes:,} | {t.dense_bytes:,} | {t.detail} |")
        return "\n".join(rows) + "\n"

    def __str__(self) -> str:
        forms: dict[str, int] = {}
        for t in self.tensors:
            forms[t.form] = forms.get(t.form, 0) + 1
        check = ("not checked" if self.max_abs_diff is None else
                 f"max |ort - torch| = {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g}, "
                 f"batches {self.checked_batches})" if self.tolerance is not None else
                 f"max |ort - torch| = {self.max_abs_diff:.3g}")
        q = self.quality
        if self.runtime == "int8" and q.get("drop_pt") is not None:
            check += (f"; int8 {q['metric']} {q['onnx']:.2f} vs torch {q['torch']:.2f} "
                      f"(drop {q['drop_pt']:.2f} pt <= {q['max_drop_pt']}) on {q['samples']:,} samples")
        src = f" from {self.source_bytes:,} .nnc bytes" if self.source_bytes else ""
        return (f"{self.path}: {self.onnx_bytes:,} bytes{src}, opset {self.opset}, "
                f"tensors {forms}, {check}")
