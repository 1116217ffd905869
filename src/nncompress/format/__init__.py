"""The ``.nnc`` file format: container, tensor codecs, save/load."""

from nncompress.format.codecs import (
    CODECS,
    EncodedTensor,
    TensorCodec,
    codec_hints,
    get_codec,
    register_codec,
    set_codec_hints,
)
from nncompress.format.container import pack_container, unpack_container
from nncompress.format.model_io import FileInfo, TensorEntry, load, load_state, read_info, save

__all__ = [
    "CODECS", "EncodedTensor", "FileInfo", "TensorCodec", "TensorEntry", "codec_hints",
    "get_codec", "load", "load_state", "pack_container", "read_info", "register_codec",
    "save", "set_codec_hints", "unpack_container",
]
