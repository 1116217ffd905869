"""Dataset loaders."""

from nncompress.data.datasets import DATASETS, find_idx_root, load_dataset
from nncompress.data.idx import parse_idx, read_idx

__all__ = ["DATASETS", "find_idx_root", "load_dataset", "parse_idx", "read_idx"]
