import numpy as np
import pytest

from nncompress.errors import ConfigError
from nncompress.quantize import init_centroids, kmeans_1d


def naive_lloyd(x, init, max_iter=300, tol=1e-4, empty="keep"):
    """O(n k) reference: scikit-learn's loop, argmin assignment, centroids kept sorted."""
    c = np.sort(np.asarray(init, dtype=np.float64))
    k = c.size
    tol_abs = np.var(x) * tol
    labels_old = np.full(x.size, -1)
    strict = False
    for it in range(1, max_iter + 1):
        labels = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)  # (n,) ties -> lower
        cnt = np.bincount(labels, minlength=k).astype(float)
        s1 = np.bincount(labels, weights=x, minlength=k)
        new = c.copy()
        was_empty = cnt == 0
        if empty == "relocate" and was_empty.any():
            d = (x - c[labels]) ** 2
            far = np.argsort(-d, kind="stable")[: int(was_empty.sum())]
            for i in far:
                s1[labels[i]] -= x[i]
                cnt[labels[i]] -= 1
            new[was_empty] = x[far]
        full = cnt > 0
        new[full] = s1[full] / cnt[full]
        new = np.sort(new)
        shift = ((new - c) ** 2).sum()
        c = new
        if np.array_equal(labels, labels_old):
            strict = True
            break
        if shift <= tol_abs:
            break
        labels_old = labels
    if not strict:
        labels = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
    return c, labels, float(((x - c[labels]) ** 2).sum()), it


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 8, 32])
@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_matches_naive_lloyd(seed, k, init):
    x = np.random.default_rng(seed).laplace(0.0, 0.1, 700)
    c0 = init_centroids(x, k, init, seed=seed)
    for empty in ("keep", "relocate"):
        ref_c, ref_l, ref_inertia, ref_it = naive_lloyd(x, c0, empty=empty)
        r = kmeans_1d(x, k, init=init, seed=seed, empty=empty)
        np.testing.assert_allclose(r.centroids, ref_c, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(r.labels, ref_l)
        assert r.inertia == pytest.approx(ref_inertia, rel=1e-9)
        assert r.n_iter == ref_it


@pytest.mark.parametrize("k", [4, 16, 64])
def test_matches_scikit_learn_lloyd(k):
    sk = pytest.importorskip("sklearn.cluster")
    x = np.random.default_rng(k).laplace(0.0, 0.05, 3000)
    c0 = init_centroids(x, k, "linear")
    km = sk.KMeans(n_clusters=k, init=c0.reshape(-1, 1), n_init=1, algorithm="lloyd",
                   max_iter=300, tol=1e-4).fit(x.reshape(-1, 1))
    r = kmeans_1d(x, k, init="linear", max_iter=300, tol=1e-4)
    sk_c = km.cluster_centers_.ravel()
    order = np.argsort(sk_c, kind="stable")
    rank = np.empty(k, dtype=int)
    rank[order] = np.arange(k)
    np.testing.assert_allclose(r.centroids, sk_c[order], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(r.labels, rank[km.labels_])
    assert r.inertia == pytest.approx(km.inertia_, rel=1e-9)
    assert r.n_iter == km.n_iter_


@pytest.mark.parametrize("empty", ["keep", "relocate"])
def test_inertia_monotone_and_equals_direct_sum(empty):
    x = np.random.default_rng(5).standard_t(3, 2000)  # heavy tails: empty clusters happen
    prev = np.inf
    for m in range(1, 25):
        r = kmeans_1d(x, 16, max_iter=m, tol=0.0, empty=empty)
        direct = float(((x - r.centroids[r.labels]) ** 2).sum())
        assert r.inertia == pytest.approx(direct, rel=1e-9)
        assert r.inertia <= prev * (1 + 1e-12)
        prev = r.inertia
    assert np.all(np.diff(r.centroids) >= 0)


def test_labels_are_nearest_centroid_at_convergence():
    x = np.random.default_rng(3).normal(size=5000)
    r = kmeans_1d(x, 8, tol=0.0)
    nearest = np.abs(x[:, None] - r.centroids[None, :]).min(1)
    np.testing.assert_allclose(np.abs(x - r.centroids[r.labels]), nearest, rtol=0, atol=1e-15)
    for j in range(8):  # each centroid is the mean of its members
        assert r.centroids[j] == pytest.approx(x[r.labels == j].mean(), abs=1e-12)


def test_ties_go_to_lower_centroid():
    r = kmeans_1d([-1.0, 0.0, 1.0], 2, init=np.array([-1.0, 1.0]))
    assert r.centroids.tolist() == [-0.5, 1.0]  # 0 is equidistant; argmin picks -1's cluster
    assert r.labels.tolist() == [0, 0, 1]


def test_duplicate_init_centroid_gets_no_points():
    x = np.array([0.0, 1.0, 4.0, 5.0, 6.0])
    r = kmeans_1d(x, 3, init=np.array([0.0, 0.0, 5.0]), max_iter=1, empty="keep")
    # E-step: {0, 1} -> first 0, nothing -> second 0 (kept), {4, 5, 6} -> 5.
    assert r.centroids.tolist() == [0.0, 0.5, 5.0]


def test_init_methods_by_hand():
    x = np.arange(1.0, 11.0)  # 1..10
    assert init_centroids(x, 4, "linear").tolist() == [1.0, 4.0, 7.0, 10.0]
    # CDF levels 0.25, 0.75 -> inverted CDF: 3rd and 8th smallest values.
    assert init_centroids(x[::-1], 2, "density").tolist() == [3.0, 8.0]
    a = init_centroids(x, 5, "random", seed=7)
    assert a.tolist() == init_centroids(x, 5, "random", seed=7).tolist()
    assert len(set(a.tolist())) == 5 and set(a.tolist()) <= set(x.tolist())
    assert np.all(np.diff(a) > 0)


def test_degenerate_inputs():
    x = np.random.default_rng(0).normal(size=100)
    r = kmeans_1d(x, 1)
    assert r.centroids[0] == pytest.approx(x.mean(), abs=1e-12)
    assert r.inertia == pytest.approx(((x - x.mean()) ** 2).sum(), rel=1e-9)
    assert set(r.labels.tolist()) == {0}
    r = kmeans_1d(np.full(10, 0.25), 4)  # constant input
    assert r.centroids.tolist() == [0.25] and r.inertia == 0.0 and r.labels.tolist() == [0] * 10
    r = kmeans_1d([3.0, 1.0, 3.0, 2.0], 8)  # k > distinct values: exact answer
    assert r.centroids.tolist() == [1.0, 2.0, 3.0]
    assert r.labels.tolist() == [2, 0, 2, 1] and r.inertia == 0.0 and r.n_iter == 0


@pytest.mark.parametrize("kw", [dict(k=0), dict(k=-3), dict(k=2.5), dict(k=True),
                                dict(k=2, init="kmeans++"), dict(k=2, max_iter=0),
                                dict(k=2, tol=-1.0), dict(k=2, empty="drop"),
                                dict(k=3, init=np.array([0.0, 1.0]))])
def test_bad_arguments(kw):
    with pytest.raises(ConfigError):
        kmeans_1d(np.arange(10.0), **kw)


def test_bad_values():
    with pytest.raises(ConfigError):
        kmeans_1d([], 2)
    with pytest.raises(ConfigError):
        kmeans_1d([0.0, np.nan, 1.0], 2)
