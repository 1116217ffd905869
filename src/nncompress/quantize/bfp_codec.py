"""The ``bfp`` tensor codec: block floating point (Q15, see ``quantize/bfp.py``).

Stores a float tensor as ``b``-bit mantissas (bit-packed, offset by ``qmax`` to be
unsigned) and one int8 shared exponent per block: ``b + 8/block`` bits per value. Lossy
(it is ``bfp_round``) but idempotent, so a model already rounded with the same parameters
is stored exactly. Parameters: ``mantissa_bits`` (2..24, default 8) and ``block`` (>= 1, or
None for the whole tensor; default 32).

Example:
    >>> import tempfile; from pathlib import Path
    >>> import nncompress
    >>> from nncompress.models import build_model
    >>> path = Path(tempfile.mkdtemp()) / "m.nnc"
    >>> info = nncompress.save(build_model("lenet300"), path, codecs={"fc1.weight": ("bfp", {"mantissa_bits": 6})})
    >>> [(t.name, t.codec) for t in info.tensors][:2]
    [('fc1.weight', 'bfp'), ('fc1.bias', 'raw')]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nncompress.coding.bitpack import pack_bits, packed_size, unpack_bits
from nncompress.errors import ConfigError, FormatError
from nncompress.format.builtin_codecs import (
    dtype_from_name,
    dtype_name,
    tensor_from_bytes,
    tensor_to_bytes,
)
from nncompress.format.codecs import EncodedTensor, TensorCodec, register_codec
from nncompress.format.schema import check_shape, need_int, need_length, need_sections
from nncompress.quantize.bfp import bfp_dequantize, bfp_quantize, check_bfp_args


class BFPCodec(TensorCodec):
    """Block floating point: packed mantissas + int8 exponents (see the module docstring)."""

    name = "bfp"
    lossless = False

    def encode(self, tensor: torch.Tensor, **params: Any) -> EncodedTensor:
        unknown = sorted(set(params) - {"mantissa_bits", "block"})
        if unknown:
            raise ConfigError(f"codec 'bfp' got unknown parameter(s) {unknown}; allowed: "
                              f"['block', 'mantissa_bits']")
        bits, block = params.get("mantissa_bits", 8), params.get("block", 32)
        if not tensor.is_floating_point():
            raise ConfigError(f"codec 'bfp' needs a float tensor, got {tensor.dtype}")
        t = tensor.detach().cpu()
        if t.dim() == 0:
            t = t.reshape(1)
        m, e = bfp_quantize(t, bits, block)
        qmax = 2 ** (bits - 1) - 1
        data = pack_bits(m.reshape(-1).to(torch.int64).numpy() + qmax, bits)
        exps = tensor_to_bytes(e)
        meta = {"mantissa_bits": bits, "block": block, "exp_shape": list(e.shape),
                "bits": {"weights": 8 * len(data), "other": 8 * len(exps)}}
        return EncodedTensor(self.name, list(tensor.shape), dtype_name(tensor.dtype), meta,
                             {"mantissas": data, "exponents": exps})

    def check(self, enc: EncodedTensor) -> None:
        where = "codec 'bfp'"
        need_sections(enc.sections, ["mantissas", "exponents"], where)
        if not dtype_from_name(enc.dtype).is_floating_point:
            raise FormatError(f"{where}: dtype {enc.dtype!r} is not a float dtype")
        bits = need_int(enc.meta, "mantissa_bits", 2, 24, where)
        count = int(np.prod(list(enc.shape) or [1]))
        last = enc.shape[-1] if enc.shape else 1
        if enc.meta.get("block") is not None:  # padding allocates rows x block values
            need_int(enc.meta, "block", 1, max(4096, last), where)
        exp_shape = check_shape(enc.meta.get("exp_shape"), f"{where}: exp_shape", count + 1)
        need_length(enc.sections["mantissas"], packed_size(count, bits), f"{where}: section 'mantissas'")
        need_length(enc.sections["exponents"], int(np.prod(exp_shape)), f"{where}: section 'exponents'")

    def decode(self, enc: EncodedTensor) -> torch.Tensor:
        self.check(enc)
        try:
            bits, block = int(enc.meta["mantissa_bits"]), enc.meta["block"]
            exp_shape = [int(s) for s in enc.meta["exp_shape"]]
            check_bfp_args(bits, block)
            mant, exps = enc.sections["mantissas"], enc.sections["exponents"]
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"codec 'bfp': bad metadata {enc.meta!r}") from exc
        shape = list(enc.shape) or [1]
        count = int(np.prod(shape))
        qmax = 2 ** (bits - 1) - 1
        m = torch.from_numpy(unpack_bits(mant, bits, count) - qmax).reshape(shape)
        if count and int(m.abs().max()) > qmax:
            raise FormatError(f"codec 'bfp': a mantissa exceeds {qmax} (damaged data)")
        e = tensor_from_bytes(exps, torch.int8, exp_shape)
        out = bfp_dequantize(m, e, bits, block, dtype=dtype_from_name(enc.dtype))
        return out.reshape(enc.shape)


BFP = register_codec(BFPCodec())
"""The registered ``bfp`` codec instance."""
