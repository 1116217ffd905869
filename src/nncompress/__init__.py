"""nncompress: make trained PyTorch networks small and fast, and prove it in bytes."""

from nncompress.errors import ConfigError, DataNotFoundError, FormatError, NNCompressError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataNotFoundError",
    "FormatError",
    "NNCompressError",
    "__version__",
]
