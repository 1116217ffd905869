"""nncompress: make trained PyTorch networks small and fast, and prove it in bytes."""

from nncompress._version import __version__
from nncompress.errors import ConfigError, DataNotFoundError, FormatError, NNCompressError
from nncompress.factory import load  # format.load, plus factory= for a user model's factory
from nncompress.format import read_info, register_codec, save, set_codec_hints

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
