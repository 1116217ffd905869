"""Decomposition: low rank (L1-L5: SVD, spatially separable, Tucker-2, CP, block term),
Tensor-Train (L6), Toeplitz/circulant (L7), ternary factors (L8); ``DECOMPOSE_METHODS``
names them for the ``decompose`` recipe stage."""

from nncompress.decompose import ternary, toeplitz, tt  # noqa: F401  (L6-L8: register records, methods)
from nncompress.decompose.api import (
    METHODS,
    DecomposeConfig,
    DecomposeReport,
    LayerReport,
    LowRankConfig,
    apply_lowrank_spec,
    decompose,
    lowrank_spec,
)
from nncompress.decompose.btd import btd_factors
from nncompress.decompose.cp import cp_als, cp_reconstruct
from nncompress.decompose.registry import (
    DECOMPOSE_METHODS,
    DecomposeMethod,
    apply_method,
    method_config,
    register_method,
)
from nncompress.decompose.separable import separable_factors
from nncompress.decompose.svd import svd_factors
from nncompress.decompose.tucker import tucker2_factors, tucker2_reconstruct

__all__ = [
    "DECOMPOSE_METHODS", "METHODS", "DecomposeConfig", "DecomposeMethod", "DecomposeReport", "LayerReport",
    "LowRankConfig", "apply_lowrank_spec", "apply_method", "btd_factors", "cp_als", "cp_reconstruct", "decompose",
    "lowrank_spec", "method_config", "register_method", "separable_factors", "svd_factors", "tucker2_factors",
    "tucker2_reconstruct",
]
