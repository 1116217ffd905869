"""The ``gptq`` tensor codec: a weight on a uniform grid per (output row, group of input
columns), as one-shot second-order quantization (``nncompress.quantize.oneshot``) leaves it.

Stored: the b-bit codes (2..8 bits, row-major over the weight reshaped to (rows, d)),
fixed-width or Huffman-coded, whichever is smaller (``coding.streams``); one float16
scale and one uint8 zero point per (row, group). Decoding is ``(code - zero) * scale`` in
float32 -- the very expression the solver used with the same fp16-valued scales -- so a
file reproduces the simulated weights bit for bit. ``encode`` refuses a tensor that is not
exactly on the given grid.

Example:
    >>> w = torch.tensor([[0.5, -0.5, 0.0, 1.0]])
    >>> enc = GPTQCodec().encode(w, bits=2, group_size=None, scales=torch.tensor([[0.5]]),
    ...                          zeros=torch.tensor([[1]]))
    >>> torch.equal(GPTQCodec().decode(enc), w)
    True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from nncompress.coding import bitpack
from nncompress.coding.streams import pack_stream, unpack_stream
from nncompress.errors import ConfigError, FormatError
from nncompress.format.codecs import EncodedTensor, TensorCodec, register_codec
from nncompress.format.schema import need_choice, need_int, need_length, need_sections

NAME = "gptq"


def _rows_cols(shape: list[int]) -> tuple[int, int]:
    if len(shape) < 2:
        return 1, math.prod(shape)
    return shape[0], math.prod(shape[1:])


class GPTQCodec(TensorCodec):
    """b-bit codes + fp16 scales + uint8 zero points per (row, group); exact."""

    name = NAME
    lossless = True

    def encode(self, tensor: torch.Tensor, bits: int = 4, group_size: int | None = None,
               scales: torch.Tensor | None = None, zeros: torch.Tensor | None = None,
               huffman: str = "auto", **params: Any) -> EncodedTensor:
        if params:
            raise ConfigError(f"codec 'gptq': unknown parameters {sorted(params)}")
        if scales is None or zeros is None:
            raise ConfigError("codec 'gptq' needs the grid's scales and zeros (set by one-shot compression)")
        if tensor.dtype != torch.float32:
            raise ConfigError(f"codec 'gptq' stores float32 weights, got {tensor.dtype}")
        bits = int(bits)
        if not 2 <= bits <= 8:
            raise ConfigError(f"codec 'gptq': bits must be in 2..8, got {bits}")
        rows, d = _rows_cols(list(tensor.shape))
        g = int(group_size) if group_size else d
        if g < 1 or d % g:
            raise ConfigError(f"codec 'gptq': group_size={group_size} must divide the {d} inputs")
        n_groups = d // g
        s = torch.as_tensor(scales).detach().cpu().float().reshape(rows, n_groups)
        z = torch.as_tensor(zeros).detach().cpu().to(torch.int64).reshape(rows, n_groups)
        if not torch.equal(s.half().float(), s) or not bool((s > 0).all()):
            raise ConfigError("codec 'gptq': scales must be positive float16 values")
        maxq = 2 ** bits - 1
        if bool((z < 0).any() or (z > maxq).any()):
            raise ConfigError(f"codec 'gptq': zero points must be in 0..{maxq}")
        w = tensor.detach().cpu().reshape(rows, n_groups, g)
        codes = (torch.round(w / s.unsqueeze(-1)) + z.unsqueeze(-1)).clamp(0, maxq).to(torch.int64)
        back = (codes - z.unsqueeze(-1)).float() * s.unsqueeze(-1)
        if not torch.equal(back, w):
            bad = int((back != w).sum())
            raise ConfigError(f"codec 'gptq': {bad} weights are not on the given grid")
        data, kind = pack_stream(codes.reshape(-1).numpy(), 2 ** bits, bits, huffman)
        scale_bytes = s.reshape(-1).half().numpy().astype("<f2").tobytes()
        zero_bytes = z.reshape(-1).numpy().astype(np.uint8).tobytes()
        meta = {"width": bits, "group": g, "stream": kind,
                "bits": {"weights": 8 * len(data), "other": 8 * (len(scale_bytes) + len(zero_bytes))}}
        return EncodedTensor(NAME, list(tensor.shape), "float32", meta,
                             {"codes": data, "scales": scale_bytes, "zeros": zero_bytes})

    def check(self, enc: EncodedTensor) -> None:
        where = "codec 'gptq'"
        if enc.dtype != "float32":
            raise FormatError(f"{where}: dtype {enc.dtype!r}; it stores float32 only")
        need_sections(enc.sections, ["codes", "scales", "zeros"], where)
        rows, d = _rows_cols(list(enc.shape))
        width = need_int(enc.meta, "width", 2, 8, where)
        g = need_int(enc.meta, "group", 1, max(d, 1), where)
        if d % g:
            raise FormatError(f"{where}: field 'group' = {g} does not divide the {d} inputs")
        need_choice(enc.meta, "stream", ("fixed", "huffman"), where)
        n_params = rows * (d // g)
        need_length(enc.sections["scales"], 2 * n_params, f"{where}: section 'scales'")
        need_length(enc.sections["zeros"], n_params, f"{where}: section 'zeros'")
        if enc.meta["stream"] == "fixed":
            need_length(enc.sections["codes"], bitpack.packed_size(rows * d, width), f"{where}: section 'codes'")
        scales = np.frombuffer(enc.sections["scales"], dtype="<f2")
        if not (np.isfinite(scales).all() and (scales > 0).all()):
            raise FormatError(f"{where}: section 'scales' holds a value that is not a positive finite number")
        if int(np.frombuffer(enc.sections["zeros"], dtype=np.uint8).max(initial=0)) > 2 ** width - 1:
            raise FormatError(f"{where}: section 'zeros' holds a zero point above {2 ** width - 1}")

    def decode(self, enc: EncodedTensor) -> torch.Tensor:
        rows, d = _rows_cols(list(enc.shape))
        g = enc.meta["group"]
        s = torch.from_numpy(np.frombuffer(enc.sections["scales"], dtype="<f2").astype(np.float32))
        z = torch.from_numpy(np.frombuffer(enc.sections["zeros"], dtype=np.uint8).astype(np.int64))
        codes = torch.from_numpy(unpack_stream(enc.sections["codes"], enc.meta["stream"], enc.meta["width"],
                                               rows * d))
        if bool((codes > 2 ** enc.meta["width"] - 1).any()):
            raise FormatError("codec 'gptq': a code is above the grid")
        codes = codes.reshape(rows, d // g, g)
        out = (codes - z.reshape(rows, -1, 1)).float() * s.reshape(rows, -1, 1)
        return out.reshape(enc.shape)


GPTQ_CODEC = register_codec(GPTQCodec())
