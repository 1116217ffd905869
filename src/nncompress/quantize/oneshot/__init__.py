"""One-shot second-order compression (OBQ / GPTQ / SparseGPT; catalogue S10 at scale):
calibration capture of per-layer input Hessians for any ``nn.Module``, the column-wise
OBS solver with lazy block updates, and ``oneshot_compress(model, config, batches)``.
The quantizer ``method: gptq`` (``nncompress.quantize.gptq_method``) runs it from recipes."""

from nncompress.quantize.oneshot.api import (
    OneShotConfig,
    OneShotResult,
    oneshot_compress,
    parse_nm,
    select_oneshot_layers,
)
from nncompress.quantize.oneshot.calibration import (
    capture_hessians,
    input_groups,
    limit_batches,
    run_batch,
)
from nncompress.quantize.oneshot.solver import (
    CodebookGrid,
    SolveResult,
    UniformGrid,
    refit_codebook,
    relative_error,
    rtn_layer,
    solve_layer,
)

__all__ = [
    "CodebookGrid", "OneShotConfig", "OneShotResult", "SolveResult", "UniformGrid",
    "capture_hessians", "input_groups", "limit_batches", "oneshot_compress", "parse_nm", "refit_codebook",
    "relative_error", "rtn_layer", "run_batch", "select_oneshot_layers", "solve_layer",
]
