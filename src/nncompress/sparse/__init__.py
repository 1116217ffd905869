"""P7 sparse execution: CSR Linear/Conv2d modules and a measured dense-or-sparse planner."""

from nncompress.sparse.execution import (
    SparseLayerReport,
    SparseReport,
    load_sparse,
    to_sparse_inference,
)
from nncompress.sparse.kernels import csr_conv2d, csr_linear, to_csr
from nncompress.sparse.modules import SparseConv2d, SparseLinear
from nncompress.sparse.threads import num_threads
from nncompress.sparse.timing import interleaved_medians

__all__ = [
    "SparseConv2d", "SparseLayerReport", "SparseLinear", "SparseReport", "csr_conv2d",
    "csr_linear", "interleaved_medians", "load_sparse", "num_threads", "to_csr", "to_sparse_inference",
]
