"""Weight distributions per layer and per stage, as JSON-able histograms (the report keeps
these numbers, not the weights, so a page can be drawn again from ``report.json``).

Exact zeros are left out of every series (a pruned layer's zeros would be one spike
hiding everything else); each series states how many nonzeros it has. A series with few
distinct nonzero values (weights on a codebook after k-means sharing) also keeps them
exactly: ``values`` (the centroids) and ``value_counts`` (weights per centroid).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

MAX_CENTROIDS = 256
"""A series with at most this many distinct nonzeros is drawn as a codebook (one stem per
centroid) instead of a binned histogram."""


def distinct_series(snapshots: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Mapping[str, np.ndarray]]:
    """The snapshots in order, dropping one equal to the series kept before it (the model
    before pruning is the trained model: drawn twice, one line would hide the other).

    Example:
        >>> w = {"fc1.weight": np.ones(3)}
        >>> list(distinct_series({"trained": w, "before_pruning": w}))
        ['trained']
    """
    out: dict[str, Mapping[str, np.ndarray]] = {}
    last: Mapping[str, np.ndarray] | None = None
    for label, layers in snapshots.items():
        if last is not None and set(last) == set(layers) and all(
                last[k].shape == layers[k].shape and np.array_equal(last[k], layers[k]) for k in layers):
            continue
        out[label] = layers
        last = layers
    return out


def layer_distribution(series: Mapping[str, np.ndarray], bins: int = 80) -> dict[str, Any]:
    """Histograms of one layer's nonzero weights for every labelled series, on shared bin
    edges spanning all of them.

    Example:
        >>> d = layer_distribution({"trained": np.array([-1.0, 0.5, 1.0]), "shared": np.array([0.0, 1.0, 1.0])})
        >>> d["series"][1]["values"], d["series"][1]["value_counts"], d["series"][1]["nonzero"]
        ([1.0], [2], 2)
    """
    nonzero = {label: np.asarray(w, dtype=np.float64).ravel() for label, w in series.items()}
    nonzero = {label: w[(w != 0) & np.isfinite(w)] for label, w in nonzero.items()}
    everything = np.concatenate([w for w in nonzero.values()] + [np.zeros(0)])
    lo, hi = (float(everything.min()), float(everything.max())) if everything.size else (-1.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    out = []
    for label, w in nonzero.items():
        counts, _ = np.histogram(w, bins=edges)
        item: dict[str, Any] = {"label": label, "nonzero": int(w.size), "total": int(np.asarray(series[label]).size),
                                "counts": counts.astype(int).tolist()}
        few = np.unique(w[:: max(1, w.size // 20000)]).size <= MAX_CENTROIDS  # a cheap look first
        values, value_counts = np.unique(w, return_counts=True) if few else (np.zeros(0), np.zeros(0))
        if 0 < values.size <= MAX_CENTROIDS:
            item["values"] = values.tolist()
            item["value_counts"] = value_counts.astype(int).tolist()
        out.append(item)
    return {"edges": edges.tolist(), "series": out}


def weight_distributions(snapshots: Mapping[str, Mapping[str, np.ndarray]],
                         stored: Mapping[str, np.ndarray] | None = None, bins: int = 80,
                         stored_label: str = "stored in the file") -> dict[str, dict[str, Any]]:
    """``{layer: layer_distribution(...)}`` for every weight matrix of the snapshots (in
    the order of the first snapshot), plus ``stored`` (the weights decoded from the file)
    as a last series when it differs from the last snapshot.

    Example:
        >>> d = weight_distributions({"trained": {"fc1.weight": np.array([0.1, -0.2, 0.3])}}, bins=4)
        >>> [s["label"] for s in d["fc1.weight"]["series"]], len(d["fc1.weight"]["edges"])
        (['trained'], 5)
    """
    kept = dict(distinct_series(snapshots))
    if stored is not None:
        last = list(kept.values())[-1] if kept else None
        same = last is not None and all(k in last and last[k].size == np.asarray(v).size
                                        and np.array_equal(last[k].ravel(), np.asarray(v).ravel())
                                        for k, v in stored.items() if k in last)
        if not same:
            kept[stored_label] = {k: np.asarray(v).ravel() for k, v in stored.items()}
    layers: list[str] = []
    for layer_map in kept.values():
        layers += [k for k in layer_map if k not in layers]
    return {layer: layer_distribution({label: m[layer] for label, m in kept.items() if layer in m}, bins)
            for layer in layers}
