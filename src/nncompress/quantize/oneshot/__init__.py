"""One-shot second-order compression (OBQ / GPTQ / SparseGPT; catalogue S10 at scale):
calibration capture of per-layer input Hessians for any ``nn.Module``, the column-wise
OBS solver with lazy block updates, and ``oneshot_compress(model, config, batches)``.
Importing the package registers the quantizer ``method: gptq``."""

from nncompress.oneshot.api import (
    OneShotConfig,
    OneShotResult,
    oneshot_compress,
    parse_nm,
    select_oneshot_layers,
)
from nncompress.oneshot.calibration import capture_hessians, input_groups, limit_batches, run_batch
from nncompress.oneshot.gptq_method import GPTQConfig
from nncompress.oneshot.solver import (
    CodebookGrid,
    SolveResult,
    UniformGrid,
    refit_codebook,
    relative_error,
    rtn_layer,
    solve_layer,
)

__all__ = [
    "CodebookGrid", "GPTQConfig", "OneShotConfig", "OneShotResult", "SolveResult", "UniformGrid",
    "capture_hessians", "input_groups", "limit_batches", "oneshot_compress", "parse_nm", "refit_codebook",
    "relative_error", "rtn_layer", "run_batch", "select_oneshot_layers", "solve_layer",
]
