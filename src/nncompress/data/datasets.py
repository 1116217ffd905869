"""Dataset loaders: MNIST-format IDX sets (Fashion-MNIST, MNIST) and scikit-learn digits.

Images come back as float tensors of shape (N, 1, 28, 28), normalised with the training
set's mean and std, and int64 labels, wrapped in a ``TensorDataset``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from nncompress.data.idx import read_idx
from nncompress.errors import ConfigError, DataNotFoundError

DEBIAN_ROOTS = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DATASETS = ("fashion-mnist", "mnist", "digits")
_HOW_TO_GET = {
    "fashion-mnist": "On Debian: `apt-get install dataset-fashion-mnist` (files land in "
    "/usr/share/datasets/fashion-mnist), or set NNCOMPRESS_DATA to a folder holding the "
    "IDX files (train-images-idx3-ubyte[.gz], ...).",
    "mnist": "Set NNCOMPRESS_DATA (or pass root=) to a folder holding the MNIST IDX files "
    "(train-images-idx3-ubyte[.gz], ...), or a subfolder named 'mnist'.",
}


def check_data_args(name: str, root: str | Path | None = None, *, name_key: str = "name",
                    root_key: str = "root", check_name: bool = True) -> None:
    """``ConfigError`` unless ``name`` is a built-in dataset and ``root`` (when given) an
    existing folder; the message names the key (``name_key`` / ``root_key``), the value and
    what is allowed. A root that does not exist is never passed over silently."""
    if check_name and (not isinstance(name, str) or name not in DATASETS):
        raise ConfigError(f"{name_key}: unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if root is None:
        return
    if not isinstance(root, (str, os.PathLike)) or not str(root):
        raise ConfigError(f"{root_key} must be a folder path, got {root!r}")
    folder = Path(root)
    try:
        exists, is_dir = folder.exists(), folder.is_dir()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{root_key} {str(root)!r} is not a usable path ({exc})") from exc
    if not is_dir:
        what = "is not a directory" if exists else "does not exist"
        raise ConfigError(f"{root_key} {str(root)!r} {what}; give an existing folder with the dataset's IDX "
                          "files, or leave it out to use $NNCOMPRESS_DATA or the Debian location")


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def _candidate_roots(name: str, root: str | Path | None) -> list[Path]:
    roots: list[Path] = []
    if root is not None:
        roots += [Path(root), Path(root) / name]
    env = os.environ.get("NNCOMPRESS_DATA")
    if env:
        roots += [Path(env) / name, Path(env)]
    roots.append(DEBIAN_ROOTS[name])
    return roots


def find_idx_root(name: str, root: str | Path | None = None) -> Path:
    """Return the folder holding ``name``'s IDX files, searching ``root``,
    ``$NNCOMPRESS_DATA`` and the Debian location in that order."""
    tried = _candidate_roots(name, root)
    for folder in tried:
        if all(_find_file(folder, stem) for pair in _IDX_FILES.values() for stem in pair):
            return folder
    raise DataNotFoundError(
        f"dataset {name!r} not found (looked in {', '.join(map(str, tried))}). {_HOW_TO_GET[name]}"
    )


def _normalise(x: np.ndarray, mean: float, std: float) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) / 255.0
    return ((t - mean) / std).unsqueeze(1)  # (N, 1, H, W)


def load_idx_dataset(name: str, split: str, root: str | Path | None = None) -> TensorDataset:
    """Load ``split`` ('train' or 'test') of an MNIST-format dataset."""
    folder = find_idx_root(name, root)
    img_stem, lbl_stem = _IDX_FILES[split]
    images = read_idx(_find_file(folder, img_stem))  # (N, 28, 28) uint8
    labels = read_idx(_find_file(folder, lbl_stem))  # (N,)
    train_images = images if split == "train" else read_idx(_find_file(folder, _IDX_FILES["train"][0]))
    scaled = train_images.astype(np.float32) / 255.0
    mean, std = float(scaled.mean()), float(scaled.std())
    return TensorDataset(_normalise(images, mean, std), torch.from_numpy(labels.astype(np.int64)))


def load_digits_dataset(split: str, test_fraction: float = 0.25, size: int = 28) -> TensorDataset:
    """scikit-learn's bundled 8x8 digits, upsampled to ``size`` x ``size`` so that the
    28x28 models accept it; a fixed seeded split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataNotFoundError("the 'digits' set needs scikit-learn: pip install scikit-learn") from exc
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = int(len(y) * test_fraction)
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    train_x = x[perm[n_test:]]
    x = (x - train_x.mean()) / train_x.std()
    return TensorDataset(x[idx], y[idx])


def load_dataset(name: str, split: str = "train", root: str | Path | None = None) -> TensorDataset:
    """Load a built-in dataset by name.

    Args:
        name: one of ``fashion-mnist``, ``mnist``, ``digits``.
        split: ``train`` or ``test``.
        root: optional folder with the IDX files (else ``$NNCOMPRESS_DATA``, else Debian's).

    Example:
        >>> ds = load_dataset("digits", "test")
        >>> ds[0][0].shape
        torch.Size([1, 28, 28])
    """
    if split not in ("train", "test"):
        raise ConfigError(f"split {split!r} is not allowed; use 'train' or 'test'")
    check_data_args(name, root, check_name=False)
    if name == "digits":
        return load_digits_dataset(split)
    if name in DEBIAN_ROOTS:
        return load_idx_dataset(name, split, root)
    raise ConfigError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
