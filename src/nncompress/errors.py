"""Exception types raised by nncompress.

Every error names the offending value and what is allowed, so a user can fix the input
without reading the source.
"""


class NNCompressError(ValueError):
    """Base class of all nncompress errors (a ``ValueError``: the input was wrong)."""


class ConfigError(NNCompressError):
    """A recipe, config or argument has an unknown key or a value out of range."""


class FormatError(NNCompressError):
    """A ``.nnc`` file is damaged, truncated, of an unknown version or otherwise invalid."""


class DataNotFoundError(NNCompressError, FileNotFoundError):
    """A dataset could not be found; the message says how to get it."""
