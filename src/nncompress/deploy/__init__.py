"""Deploy compressed models: ONNX export that keeps the compression on disk.

``export_onnx(model_or_nnc_path, out_path)`` writes each weight in its smallest exact form
(k-means codebook + indices + ``Gather``, gap-coded sparse positions + ``ScatterElements``,
int8 + ``DequantizeLinear``, or dense float), checks the graph against the torch model in
onnxruntime and returns an :class:`ExportReport`. ``runtime="int8"`` runs on onnxruntime's
integer kernels: dynamic int8 MatMuls for transformers, static int8 (QDQ graph calibrated on
``calib``, :mod:`nncompress.deploy.qdq`) for CNNs and MLPs. Needs the ``deploy`` extra
(``pip install 'nncompress[deploy]'``: onnx, onnxruntime); importing this package does not.
"""

from nncompress.deploy.calibrate import StaticInt8Config
from nncompress.deploy.onnx_export import DEFAULT_OPSET, DEFAULT_TOLERANCE, OPSETS, export_onnx
from nncompress.deploy.report import ExportError, ExportReport, TensorStorage
from nncompress.deploy.storage import FORMS

__all__ = ["DEFAULT_OPSET", "DEFAULT_TOLERANCE", "FORMS", "OPSETS", "ExportError", "ExportReport",
           "StaticInt8Config", "TensorStorage", "export_onnx"]
