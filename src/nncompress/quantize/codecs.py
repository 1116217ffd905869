"""``.nnc`` tensor codecs for the low-bit packings (``binary``, ``lut``, ``int``, ``pow2``,
``shift``; see ``packing.py``). Importing this module registers them; ``finalize`` sets
the hints that make ``nncompress.save`` use them. Every codec is lossless: it stores
exactly the values a quantizer's ``finalize`` produced (``meta["bits"]`` splits code bits
from scale / codebook bits for ``nncompress info``)."""

from __future__ import annotations

from typing import Any

import torch

from nncompress.errors import FormatError
from nncompress.format.codecs import EncodedTensor, TensorCodec, register_codec
from nncompress.quantize.packing import CHECKS, FORMATS, Packed


class PackingCodec(TensorCodec):
    """A tensor codec backed by one ``packing.FORMATS`` entry."""

    lossless = True

    def __init__(self, name: str):
        self.name = name
        self._encode, self._decode = FORMATS[name]

    def encode(self, tensor: torch.Tensor, **params: Any) -> EncodedTensor:
        p = self._encode(tensor.detach().cpu().contiguous(), **params)
        return EncodedTensor(self.name, list(tensor.shape), "float32", p.meta, p.sections)

    def check(self, enc: EncodedTensor) -> None:
        if enc.dtype != "float32":
            raise FormatError(f"format {self.name!r}: dtype {enc.dtype!r}; it stores float32 only")
        CHECKS[self.name](Packed(dict(enc.meta), dict(enc.sections)), list(enc.shape))

    def decode(self, enc: EncodedTensor) -> torch.Tensor:
        return self._decode(Packed(dict(enc.meta), dict(enc.sections)), list(enc.shape))


QUANT_CODECS = {name: register_codec(PackingCodec(name)) for name in FORMATS}
"""The registered codec instances, by name."""
