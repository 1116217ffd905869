"""Exact Lloyd k-means for 1-D data, fast: sort once, then O(k log n) per iteration.

In one dimension the clusters of sorted centroids are contiguous runs of the sorted data,
split at the midpoints between neighbouring centroids. So after one sort:

* assignment = ``np.searchsorted(sorted_x, midpoints)``  (k-1 binary searches),
* update     = segment means from a prefix sum of the data,
* inertia    = ``sum(x^2) - 2 c sum(x) + n c^2`` per segment from prefix sums.

No iteration touches the n points (O(k log n) each); the labels are found once at the end by
a binary search of each value among the k-1 cluster starts. The iterates are those of
Lloyd's algorithm (scikit-learn's ``KMeans(init=array, n_init=1, algorithm="lloyd")``) with
the same stopping rules: stop when the assignment no longer changes ("strict convergence")
or when the squared centre shift summed over clusters is ``<= tol * var(x)``; if stopped by
``tol`` or ``max_iter``, the labels are recomputed once for the final centroids.

Differences from scikit-learn, all deterministic and documented:

* **Empty clusters** follow scikit-learn's rule by default (``empty="relocate"``): the m
  points farthest from their own centroid (m = number of empty clusters) leave their
  cluster and become the new centroids of the empty ones; a cluster that loses all its
  points takes the centre of the biggest cluster. The set of chosen points is the same as
  scikit-learn's (up to ties in distance, broken here by sorted position). ``empty="keep"``
  instead leaves an empty cluster at its previous centroid. With linear initialisation
  empty clusters appear in the sparse tails of a weight distribution.
* **Ties go to the lower centroid** (what ``argmin`` does in scikit-learn with sorted
  centroids); a duplicated centroid therefore gets no points (it is then an empty cluster).
* Centroids are kept **sorted ascending** (re-sorted after each update; a plain mean update
  keeps the order, relocation does not). Lloyd's iterates do not depend on the order of the
  centroids, only the label numbering does.
* When the data has ``<= k`` distinct values, the exact answer (the distinct values,
  inertia 0) is returned without iterating, so ``len(centroids) == min(k, n_distinct)``.

Initialisations (Han et al., Deep Compression, arXiv 1510.00149, Sec. 3.2):

* ``linear``: ``k`` points evenly spaced over ``[min, max]`` (the paper's choice).
* ``density``: evenly spaced levels of the empirical CDF, ``F^-1((i + 0.5) / k)``
  (inverted-CDF quantiles, so every centroid is a data value).
* ``random``: ``k`` distinct positions of the data drawn with ``numpy.random.default_rng(seed)``
  (Forgy).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from nncompress.errors import ConfigError

log = logging.getLogger(__name__)
INITS = ("linear", "density", "random")
EMPTY_RULES = ("relocate", "keep")


@dataclass(frozen=True)
class KMeansResult:
    """Result of ``kmeans_1d``.

    ``centroids``: (K,) float64, sorted ascending, ``K = min(k, n_distinct)``;
    ``labels``: (n,) int64 in ``[0, K)``, in the order of the input;
    ``inertia``: sum of squared distances to the assigned centroid;
    ``n_iter``: Lloyd iterations run (0 when the exact distinct-value answer was returned).
    """

    centroids: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int


def _as_1d(values) -> np.ndarray:
    """Flatten numpy arrays, torch tensors and sequences to a float64 vector."""
    if hasattr(values, "detach"):  # torch.Tensor without importing torch here
        values = values.detach().cpu().numpy()
    x = np.asarray(values, dtype=np.float64).reshape(-1)  # (n,)
    if x.size == 0:
        raise ConfigError("k-means needs at least one value, got an empty input")
    if not np.all(np.isfinite(x)):
        raise ConfigError("k-means input contains NaN or infinite values")
    return x


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def _init_sorted(xs: np.ndarray, k: int, method: str, seed: int) -> np.ndarray:
    """Initial centroids (k,) float64, sorted, from already sorted data ``xs`` (n,)."""
    n = xs.size
    if method == "linear":
        return np.linspace(xs[0], xs[-1], k)
    if method == "density":
        levels = (np.arange(k) + 0.5) / k  # (k,) evenly spaced on the CDF axis
        idx = np.clip(np.ceil(levels * n).astype(np.int64) - 1, 0, n - 1)  # inverted CDF
        return xs[idx].copy()
    if method == "random":
        rng = np.random.default_rng(seed)
        idx = rng.choice(n, size=k, replace=k > n)
        return np.sort(xs[idx])
    raise ConfigError(f"unknown k-means init {method!r}; allowed: {', '.join(INITS)}")


def init_centroids(values, k: int, method: str = "linear", seed: int = 0) -> np.ndarray:
    """Initial centroids (k,) float64, sorted ascending, by the paper's three methods.

    Example:
        >>> init_centroids([0.0, 1.0, 4.0], 3, "linear").tolist()
        [0.0, 2.0, 4.0]
    """
    k = _check_k(k)
    xs = np.sort(_as_1d(values))
    return _init_sorted(xs, k, method, seed)


def _boundaries(xs: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Segment bounds (k+1,): cluster j owns ``xs[b[j]:b[j+1]]``; ties go to the lower centroid.

    ``c`` (k,) must be sorted. A run of equal centroids gives all its points to the first
    one of the run (its later members get empty segments), as ``argmin`` would.
    """
    n, k = xs.size, c.size
    ends = np.full(k, n, dtype=np.int64)  # ends[j] = end of cluster j (exclusive)
    if k > 1:
        mids = 0.5 * (c[:-1] + c[1:])  # (k-1,)
        cut = np.searchsorted(xs, mids, side="right")  # x <= mid -> lower cluster
        ends[:-1] = np.where(c[:-1] < c[1:], cut, n)
        ends = np.minimum.accumulate(ends[::-1])[::-1]  # duplicates take the next real cut
    return np.concatenate(([0], ends))


def _labels(x: np.ndarray, xs: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Labels (n,) of the unsorted data from the segment bounds ``b`` (k+1,) of ``xs``.

    Cluster j starts at the value ``xs[b[j]]``, strictly above every value of cluster j-1
    (cuts never split equal values), so the label of x is the number of starts ``<= x``
    among clusters 1..k-1 (an empty cluster's start equals the next one's: never chosen).
    """
    n = xs.size
    inner = b[1:-1]  # (k-1,)
    starts = np.where(inner < n, xs[np.minimum(inner, n - 1)], np.inf)  # (k-1,) non-decreasing
    return np.searchsorted(starts, x, side="right").astype(np.int64)


def _segment_stats(cs1: np.ndarray, cs2: np.ndarray, b: np.ndarray):
    """Per-segment count, sum and sum of squares from prefix sums (each (k,))."""
    cnt = np.diff(b)
    s1 = cs1[b[1:]] - cs1[b[:-1]]
    s2 = cs2[b[1:]] - cs2[b[:-1]]
    return cnt, s1, s2


def _inertia(c: np.ndarray, cnt: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> float:
    """sum_j sum_{x in j} (x - c_j)^2 = s2 - 2 c s1 + n c^2, clamped at 0 per segment."""
    per = s2 - 2.0 * c * s1 + cnt * c * c
    return float(np.maximum(per, 0.0).sum())


def _relocate(xc: np.ndarray, b: np.ndarray, c: np.ndarray, cnt: np.ndarray, s1: np.ndarray):
    """scikit-learn's empty-cluster rule: the m points farthest from their own centroid
    (m = number of empty clusters) leave their cluster and become the empty clusters'
    centroids. Returns the (m,) new centroids and edits ``cnt``/``s1`` in place.

    In 1-D the distance to the centroid is convex along a sorted segment, so the m farthest
    points of a segment are among its first m and last m points: O(k m) candidates.
    """
    m = int((cnt == 0).sum())
    k = c.size
    steps = np.arange(m)  # (m,)
    left = b[:-1, None] + steps  # (k, m)
    right = b[1:, None] - 1 - steps  # (k, m)
    seg = np.repeat(np.arange(k), m)  # (k*m,)
    cand = np.concatenate((left.ravel(), right.ravel()))
    seg = np.concatenate((seg, seg))
    ok = np.concatenate(((left < b[1:, None]).ravel(), (right >= b[:-1, None]).ravel()))
    cand, first = np.unique(cand[ok], return_index=True)  # sorted, each point once
    seg = seg[ok][first]
    d = (xc[cand] - c[seg]) ** 2
    if d.size == 0 or d.max() == 0:  # more clusters than distinct points: pointless
        return np.empty(0)
    top = np.argsort(-d, kind="stable")[:m]  # farthest first; ties -> lower data index
    np.subtract.at(s1, seg[top], xc[cand[top]])
    np.subtract.at(cnt, seg[top], 1)
    return xc[cand[top]]


def _update(
    xc: np.ndarray, cs1: np.ndarray, b: np.ndarray, c: np.ndarray, empty: str
) -> np.ndarray:
    """M-step: segment means (k,), sorted; empty clusters handled by ``empty``."""
    cnt = np.diff(b).astype(np.float64)  # (k,)
    s1 = cs1[b[1:]] - cs1[b[:-1]]  # (k,)
    was_empty = cnt == 0
    moved = _relocate(xc, b, c, cnt, s1) if empty == "relocate" and was_empty.any() else None
    c_new = c.copy()  # "keep": an empty cluster keeps its centroid
    full = cnt > 0
    c_new[full] = s1[full] / cnt[full]
    # The true mean lies in [first, last] of its points; clip away prefix-sum rounding.
    lo = xc[b[:-1][full]]
    hi = xc[np.maximum(b[1:][full] - 1, b[:-1][full])]
    c_new[full] = np.clip(c_new[full], lo, hi)
    if moved is not None and moved.size:
        c_new[was_empty] = moved
        emptied = (cnt == 0) & ~was_empty  # lost all its points to relocation
        c_new[emptied] = c_new[int(np.argmax(cnt))]  # scikit-learn: biggest cluster's centre
    return np.sort(c_new)


def kmeans_1d(
    values,
    k: int,
    init: str | np.ndarray = "linear",
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    empty: str = "relocate",
) -> KMeansResult:
    """Lloyd's k-means on scalar data (weights of one layer), exact and fast.

    ``init`` is ``"linear"``, ``"density"``, ``"random"`` or an explicit (k,) array of
    starting centroids (sorted here). ``tol`` is relative to the data variance, as in
    scikit-learn. ``empty`` is ``"relocate"`` (scikit-learn's rule, the default) or
    ``"keep"`` (an empty cluster keeps its centroid). See the module docstring for ties.

    Example:
        >>> r = kmeans_1d([0.0, 0.5, 2.0, 3.0], k=2)
        >>> r.centroids.tolist(), r.labels.tolist(), r.inertia
        ([0.25, 2.5], [0, 0, 1, 1], 0.625)
    """
    k = _check_k(k)
    if max_iter < 1:
        raise ConfigError(f"max_iter must be >= 1, got {max_iter}")
    if tol < 0:
        raise ConfigError(f"tol must be >= 0, got {tol}")
    if empty not in EMPTY_RULES:
        allowed = ", ".join(EMPTY_RULES)
        raise ConfigError(f"unknown empty-cluster rule {empty!r}; allowed: {allowed}")
    x = _as_1d(values)  # (n,)
    xs = np.sort(x)  # (n,) the only O(n log n) step

    distinct = np.concatenate(([True], xs[1:] != xs[:-1]))  # (n,) first of each value run
    n_distinct = int(distinct.sum())
    if n_distinct <= k:
        values_k = xs[distinct]  # (K,) sorted distinct values
        labels = np.searchsorted(values_k, x).astype(np.int64)
        log.debug("k-means: %d distinct values <= k=%d, exact answer", n_distinct, k)
        return KMeansResult(values_k, labels, 0.0, 0)

    if isinstance(init, str):
        c = _init_sorted(xs, k, init, seed)
    else:
        c = np.sort(np.asarray(init, dtype=np.float64).reshape(-1))
        if c.size != k:
            raise ConfigError(f"init array has {c.size} centroids, expected k={k}")

    # Centre the data (as scikit-learn does) so prefix sums lose less precision.
    shift = float(x.mean())
    xc = xs - shift  # (n,)
    c = c - shift
    cs1 = np.concatenate(([0.0], np.cumsum(xc)))  # (n+1,)
    cs2 = np.concatenate(([0.0], np.cumsum(xc * xc)))  # (n+1,)
    tol_abs = float(np.var(x)) * tol

    b_old = None
    strict = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (the count is read after the loop)
        b = _boundaries(xc, c)  # E-step
        c_new = _update(xc, cs1, b, c, empty)  # M-step
        shift_tot = float(((c_new - c) ** 2).sum())
        c = c_new
        if b_old is not None and np.array_equal(b, b_old):
            strict = True
            break
        if shift_tot <= tol_abs:
            break
        b_old = b
    if not strict:
        b = _boundaries(xc, c)
    cnt, s1, s2 = _segment_stats(cs1, cs2, b)
    inertia = _inertia(c, cnt, s1, s2)
    labels = _labels(x, xs, b)
    log.debug("k-means: k=%d n=%d iterations=%d strict=%s", k, x.size, n_iter, strict)
    return KMeansResult(c + shift, labels, inertia, n_iter)
