"""Quantization: k-means weight sharing (Q1), the low-bit quantizers (Q3-Q12), HashedNets
and BWNH (Q13), block floating point (Q15); every one a config for ``quantize_model(model,
config, run)`` (``nncompress.quantize.registry``)."""

from nncompress.quantize.kmeans1d import KMeansResult, init_centroids, kmeans_1d
from nncompress.quantize.sharing import (
    CentroidFineTuner,
    LayerSharing,
    SharedWeights,
    SharingConfig,
    centroid_gradient,
    share_layer,
    share_weights,
    sharing_ratio,
)

__all__ = [
    "CentroidFineTuner", "KMeansResult", "LayerSharing", "SharedWeights", "SharingConfig",
    "centroid_gradient", "init_centroids", "kmeans_1d", "share_layer", "share_weights",
    "sharing_ratio",
]

# --- low-bit quantizers (Q3-Q12): quantize_ / calibrate / finalize, the METHODS table
from nncompress.quantize import bfp_codec as _bfp_codec  # noqa: F401  (registers bfp)
from nncompress.quantize import codecs as _lowbit_codecs  # noqa: F401  (registers binary/lut/int/pow2/shift)
from nncompress.quantize import gptq_codec as _gptq_codec  # noqa: F401  (registers gptq)
from nncompress.quantize.api import (
    activation_spec,
    apply_activation_spec,
    calibrate,
    finalize,
    quant_summary,
    quantize_,
)
from nncompress.quantize.methods import METHODS, QuantConfig, make_config
from nncompress.quantize.registry import (
    QUANTIZERS,
    QuantizerConfig,
    QuantizeResult,
    QuantizeRun,
    quantize_model,
    register_quantizer,
)

__all__ += [
    "METHODS", "QuantConfig", "activation_spec", "apply_activation_spec", "calibrate", "finalize",
    "make_config", "quant_summary", "quantize_", "quantize_model",
]

# --- block floating point (Q15) and HashedNets (Q13)
from nncompress.quantize.bfp import (  # noqa: E402
    bfp_bits_per_value,
    bfp_dequantize,
    bfp_max_relative_error,
    bfp_quantize,
    bfp_round,
    bfp_storage_bits,
)
from nncompress.quantize.hashed import (  # noqa: E402
    HashedConv2d,
    HashedLinear,
    hash_index,
    hash_sign,
    hashed_from_linear,
)
from nncompress.quantize.hashed_arch import hash_model  # noqa: E402

__all__ += [
    "HashedConv2d", "HashedLinear", "bfp_bits_per_value", "bfp_dequantize", "bfp_max_relative_error",
    "bfp_quantize", "bfp_round", "bfp_storage_bits", "hash_index", "hash_model", "hash_sign",
    "hashed_from_linear",
]

# --- BWNH: binary weights via hashing (Q13)
from nncompress.quantize.bwnh import BWNHQuantizer, bwnh_binarize, bwnh_stats  # noqa: E402
from nncompress.quantize.bwnh_codes import (  # noqa: E402
    BWNHResult,
    bwn_objective,
    bwnh_alpha,
    bwnh_codes,
    bwnh_objective,
    bwnh_solve_gram,
)

__all__ += [
    "BWNHQuantizer", "BWNHResult", "bwn_objective", "bwnh_alpha", "bwnh_binarize", "bwnh_codes",
    "bwnh_objective", "bwnh_solve_gram", "bwnh_stats",
]

# --- the built-in quantizers, registered in this order (that of the recipe's "allowed" list)
# isort: off
from nncompress.quantize.kmeans_method import KMeansConfig  # noqa: E402
from nncompress.quantize.bfp_method import BFPConfig  # noqa: E402
from nncompress.quantize.bwnh_method import BWNHConfig  # noqa: E402
from nncompress.quantize.hashed_method import HashedConfig  # noqa: E402
from nncompress.quantize import lowbit_method as _lowbit_method  # noqa: E402, F401  (registers METHODS)
from nncompress.quantize.pq_method import PQMethodConfig  # noqa: E402  (Q17 product quantization, method: pq)
from nncompress.quantize.tnn_method import TNNConfig  # noqa: E402  (Q16 ternary activations, method: tnn)
from nncompress.quantize.gptq_method import GPTQConfig  # noqa: E402  (one-shot OBS/GPTQ, method: gptq)
# isort: on

__all__ += [
    "QUANTIZERS", "BFPConfig", "BWNHConfig", "HashedConfig", "KMeansConfig", "QuantizeResult", "QuantizeRun",
    "GPTQConfig", "PQMethodConfig", "QuantizerConfig", "TNNConfig", "register_quantizer",
]
