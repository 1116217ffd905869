"""nncompress: make trained PyTorch networks small and fast, and prove it in bytes."""

__version__ = "0.1.0"

from nncompress.errors import ConfigError, DataNotFoundError, FormatError, NNCompressError
from nncompress.format import load, read_info, register_codec, save, set_codec_hints

__all__ = [
    "ConfigError",
    "DataNotFoundError",
    "FormatError",
    "NNCompressError",
    "__version__",
    "load",
    "read_info",
    "register_codec",
    "save",
    "set_codec_hints",
]
