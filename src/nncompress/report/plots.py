"""Report plots (matplotlib, Agg backend): weight histograms per stage and accuracy per
stage. Each function writes one PNG atomically and returns its path."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Render to PNG bytes in memory, then write atomically (no temp file of ours is ever
    left behind: ``atomic_write_bytes`` cleans up after killed writes too)."""
    from nncompress.train.checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def weight_histograms(snapshots: Mapping[str, Mapping[str, np.ndarray]], path: str | Path,
                      bins: int = 100) -> Path:
    """One panel per layer, one histogram per snapshot (dense, pruned, shared...).
    Exact zeros are left out so pruned layers show their surviving weights."""
    plt = _figure()
    labels = list(snapshots)
    layers = list(next(iter(snapshots.values()))) if snapshots else []
    fig, axes = plt.subplots(len(layers), 1, figsize=(7, 2.2 * max(len(layers), 1)), squeeze=False)
    for ax, layer in zip(axes[:, 0], layers):
        for label in labels:
            w = snapshots[label].get(layer)
            if w is None:
                continue
            nz = w[w != 0]
            ax.hist(nz, bins=bins, histtype="step", label=f"{label} ({nz.size:,} nonzero)")
        ax.set_title(layer, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def accuracy_per_stage(stages: Sequence[str], accuracies: Sequence[float | None], path: str | Path) -> Path:
    """Test accuracy after each stage."""
    plt = _figure()
    xs = [i for i, a in enumerate(accuracies) if a is not None]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(xs, [100 * accuracies[i] for i in xs], marker="o")
    ax.set_xticks(range(len(stages)), stages, rotation=30, fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out
