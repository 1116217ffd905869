"""Benchmark Q1: nncompress' 1-D Lloyd k-means against scikit-learn's KMeans (lloyd).

Both start from the same linear initialisation (the paper's), run Lloyd's algorithm with the
same ``max_iter`` and ``tol`` on the same float64 data (a Laplace sample, the usual shape of
trained weights), one thread each (scikit-learn's OpenMP/BLAS pools are limited to 1 with
threadpoolctl; numpy's sort is single-threaded). Runs are interleaved and the median wall
time of each is reported, with the inertia of each and their relative difference.

Acceptance (issue: foundation / Q1): >= 5x faster, inertia no worse than 0.1%.

    python benchmarks/kmeans_bench.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nncompress.quantize import init_centroids, kmeans_1d
from nncompress.train.checkpoint import atomic_write_bytes

RESULTS = Path(__file__).resolve().parent / "results"
LAPLACE_SCALE = 0.05  # a typical weight scale; k-means results are scale-invariant


def laplace_weights(n: int, seed: int) -> np.ndarray:
    """(n,) float64 copy of a float32 Laplace(0, 0.05) sample: "trained weights"."""
    rng = np.random.default_rng(seed)
    return rng.laplace(0.0, LAPLACE_SCALE, n).astype(np.float32).astype(np.float64)


def bench_kmeans(n: int = 1_000_000, k: int = 32, seed: int = 0, *, repeats: int = 3,
                 max_iter: int = 300, tol: float = 1e-4) -> dict:
    """Time ``kmeans_1d`` and scikit-learn's ``KMeans(algorithm="lloyd")`` on n Laplace weights.

    Returns medians (seconds), speedup, both inertias and their relative difference
    ``(ours - sklearn) / sklearn`` (negative = ours better), iteration counts and whether
    the acceptance targets (>= 5x, <= 0.1% worse inertia) are met.

    Example:
        >>> bench_kmeans(n=20_000, k=8, repeats=1)["speedup"] > 1  # doctest: +SKIP
        True
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    x = laplace_weights(n, seed)  # (n,)
    x2d = x.reshape(-1, 1)  # (n, 1) view for scikit-learn
    c0 = init_centroids(x, k, "linear")  # (k,) the shared starting point
    ours_t, sk_t = [], []
    ours = sk = None
    with threadpool_limits(limits=1):
        for _ in range(repeats):  # interleaved: the machine is shared
            t = time.perf_counter()
            ours = kmeans_1d(x, k, init="linear", max_iter=max_iter, tol=tol)
            ours_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            sk = KMeans(n_clusters=k, init=c0.reshape(-1, 1), n_init=1, algorithm="lloyd",
                        max_iter=max_iter, tol=tol).fit(x2d)
            sk_t.append(time.perf_counter() - t)
    sk_centres = np.sort(sk.cluster_centers_.ravel())
    ours_s, sk_s = statistics.median(ours_t), statistics.median(sk_t)
    rel = (ours.inertia - float(sk.inertia_)) / float(sk.inertia_)
    return {
        "n": n, "k": k, "seed": seed, "data": f"laplace(0, {LAPLACE_SCALE}) float32 -> float64",
        "init": "linear", "max_iter": max_iter, "tol": tol, "repeats": repeats, "threads": 1,
        "ours_s": ours_s, "sklearn_s": sk_s, "ours_runs_s": ours_t, "sklearn_runs_s": sk_t,
        "speedup": sk_s / ours_s,
        "inertia_ours": ours.inertia, "inertia_sklearn": float(sk.inertia_),
        "inertia_rel_diff": rel,
        "n_iter_ours": ours.n_iter, "n_iter_sklearn": int(sk.n_iter_),
        "max_centroid_abs_diff": float(np.abs(sk_centres - ours.centroids).max())
        if sk_centres.size == ours.centroids.size else None,
        "meets_speedup_5x": sk_s / ours_s >= 5.0,
        "meets_inertia_0.1pct": rel <= 1e-3,
    }


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Q1 k-means: nncompress kmeans_1d vs scikit-learn KMeans(lloyd)",
        "",
        f"Command: `{meta['command']}`  ",
        f"torch {meta['torch']}, numpy {meta['numpy']}, scikit-learn {meta['sklearn']}, "
        f"threads 1 (threadpoolctl), {meta['cpu_count']} CPUs, load average before/after "
        f"{meta['load_before']} / {meta['load_after']}",
        "",
        "Same data (Laplace float32 weights), same linear init, same max_iter/tol; wall time "
        "is the median of interleaved runs.",
        "",
        "| n | k | ours (s) | scikit-learn (s) | speedup | inertia ours | inertia sklearn "
        "| rel. diff | iters ours/sklearn | targets (>=5x, <=0.1%) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = "met" if r["meets_speedup_5x"] and r["meets_inertia_0.1pct"] else "MISSED"
        lines.append(
            f"| {r['n']:,} | {r['k']} | {r['ours_s']:.4f} | {r['sklearn_s']:.3f} | "
            f"{r['speedup']:.1f}x | {r['inertia_ours']:.6g} | {r['inertia_sklearn']:.6g} | "
            f"{r['inertia_rel_diff']:+.2e} | {r['n_iter_ours']}/{r['n_iter_sklearn']} | {ok} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import sklearn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="only the 1M x 32 row")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    configs = [dict(n=1_000_000, k=32, seed=0)]
    if not args.quick:  # the paper's conv setting (8 bits) on a smaller layer
        configs.append(dict(n=100_000, k=256, seed=1))
    rows = [bench_kmeans(**c, repeats=args.repeats) for c in configs]
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__, "numpy": np.__version__, "sklearn": sklearn.__version__,
        "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json, out_md = RESULTS / "kmeans.json", RESULTS / "kmeans.md"
    atomic_write_bytes(out_json, json.dumps({"meta": meta, "rows": rows}, indent=2).encode())
    atomic_write_bytes(out_md, _markdown(rows, meta).encode())
    print(_markdown(rows, meta))
    print(f"wrote {out_json} and {out_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
