"""Low-rank decomposition (L1-L5): SVD, spatially separable, Tucker-2, CP, block term."""

from nncompress.decompose import ternary, toeplitz, tt  # noqa: E402, F401, I001  (L6-L8: register their records)
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
from nncompress.decompose.separable import separable_factors
from nncompress.decompose.svd import svd_factors
from nncompress.decompose.tucker import tucker2_factors, tucker2_reconstruct

__all__ = [
    "METHODS", "DecomposeConfig", "DecomposeReport", "LayerReport", "LowRankConfig", "apply_lowrank_spec",
    "btd_factors", "cp_als", "cp_reconstruct", "decompose", "lowrank_spec", "separable_factors",
    "svd_factors", "tucker2_factors", "tucker2_reconstruct",
]
