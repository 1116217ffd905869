"""Quantization: k-means weight sharing (Q1) and the low-bit quantizers."""

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
