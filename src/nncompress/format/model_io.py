"""``save`` / ``load`` of whole models in the ``.nnc`` format.

The file holds the architecture (for built-in models: registry name and kwargs), every
tensor of the state dict through its tensor codec, and free-form JSON metadata (e.g. the
accuracy measured before saving). ``load`` rebuilds a model whose tensors are
bit-identical to those that were saved; ``save`` verifies that before it writes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nncompress._version import __version__
from nncompress.errors import ConfigError, FormatError, NNCompressError
from nncompress.format import builtin_codecs  # noqa: F401  (register the built-in codecs)
from nncompress.format.codecs import (
    CodecChoice,
    EncodedTensor,
    codec_hints,
    get_codec,
    normalise_choice,
)
from nncompress.format.container import pack_container, unpack_container
from nncompress.format.records import RestoreContext, architectures, load_plugins, records
from nncompress.format.resize import resize_to_state
from nncompress.format.schema import check_header, param_budget
from nncompress.train.checkpoint import atomic_write_bytes

WEIGHTED_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Layers whose ``weight`` gets the ``auto`` codec by default."""

log = logging.getLogger(__name__)


@dataclass
class TensorEntry:
    """What the file says about one tensor."""

    name: str
    codec: str
    shape: list[int]
    dtype: str
    nbytes: int
    meta: dict[str, Any]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class FileInfo:
    """Parsed header of a ``.nnc`` file (no model is built)."""

    path: str
    file_bytes: int
    arch: dict[str, Any] | None
    metadata: dict[str, Any]
    tensors: list[TensorEntry] = field(default_factory=list)
    version: str = ""
    records: dict[str, Any] = field(default_factory=dict)
    """Technique records in the header (``activations``, ``lowrank``, ``removed_blocks``...)."""

    @property
    def activations(self) -> dict[str, Any]:
        return self.records.get("activations") or {}

    @property
    def lowrank(self) -> dict[str, Any]:
        return self.records.get("lowrank") or {}

    @property
    def removed_blocks(self) -> list[str]:
        return [str(n) for n in self.records.get("removed_blocks") or []]


def _weight_names(model: nn.Module) -> set[str]:
    return {f"{n}.weight" for n, m in model.named_modules()
            if isinstance(m, WEIGHTED_TYPES) and getattr(m, "weight", None) is not None}


def plan_codecs(model: nn.Module, codecs: Mapping[str, CodecChoice] | None = None,
                default_weight: CodecChoice = "auto", default_other: CodecChoice = "raw"
                ) -> dict[str, tuple[str, dict[str, Any]]]:
    """Codec per state-dict tensor: explicit ``codecs`` > model hints > defaults
    (``auto`` for Linear/Conv weights, ``raw`` for everything else)."""
    state = model.state_dict()
    explicit = dict(codecs or {})
    unknown = set(explicit) - set(state)
    if unknown:
        raise ConfigError(f"codecs name unknown tensors {sorted(unknown)}; the model has {sorted(state)}")
    hints = codec_hints(model)
    weights = _weight_names(model)
    plan = {}
    for name in state:
        choice = explicit.get(name) or hints.get(name) or (default_weight if name in weights else default_other)
        plan[name] = normalise_choice(choice)
    return plan


def encode_state(model: nn.Module, plan: Mapping[str, tuple[str, dict[str, Any]]],
                 verify: bool = True) -> dict[str, EncodedTensor]:
    """Encode every tensor by its planned codec; with ``verify``, decode it again and
    require equality for lossless codecs."""
    out = {}
    for name, tensor in model.state_dict().items():
        codec_name, params = plan[name]
        enc = get_codec(codec_name).encode(tensor.detach().cpu(), **params)
        if verify:
            back = get_codec(enc.codec).decode(enc)
            if get_codec(enc.codec).lossless and not torch.equal(back, tensor.detach().cpu()):
                raise FormatError(f"codec {enc.codec!r} did not reproduce tensor {name!r} exactly")
        out[name] = enc
    return out


def save(model: nn.Module, path: str | Path, *, codecs: Mapping[str, CodecChoice] | None = None,
         metadata: Mapping[str, Any] | None = None, verify: bool = True,
         input_shape: list[int] | None = None) -> FileInfo:
    """Write ``model`` to ``path`` in the ``.nnc`` format (atomically: temp file + rename).

    Args:
        codecs: per-tensor codec choices, e.g. ``{"fc1.weight": ("deep", {"index_bits": 5})}``;
            tensors not named use the model's hints, else ``auto`` (weights) / ``raw``.
        metadata: JSON-able extras stored in the header (accuracy, recipe, ...).
        verify: decode every tensor again before writing and fail on a mismatch.
        input_shape: one sample's input shape (no batch dimension), recorded so that
            ``load`` can check the loaded model runs; default: the built-in
            architecture's, when the model runs on it.

    Example:
        >>> import tempfile; from pathlib import Path
        >>> from nncompress.models import build_model
        >>> path = Path(tempfile.mkdtemp()) / "lenet.nnc"
        >>> info = save(build_model("lenet300"), path, metadata={"accuracy": 0.98})
        >>> info.file_bytes == path.stat().st_size
        True
    """
    encoded = encode_state(model, plan_codecs(model, codecs), verify)
    tensors, sections = [], {}
    for i, (name, enc) in enumerate(encoded.items()):
        keys = {}
        for sec_name, payload in enc.sections.items():
            key = f"t{i}.{sec_name}"
            sections[key] = payload
            keys[sec_name] = key
        tensors.append({"name": name, "codec": enc.codec, "shape": enc.shape, "dtype": enc.dtype,
                        "meta": enc.meta, "sections": keys})
    load_plugins()
    arch = architectures()
    meta = {"nncompress": __version__, "arch": arch.capture(model), "metadata": dict(metadata or {}),
            "tensors": tensors}
    for record in records():
        value = record.capture(model)
        if value:
            meta[record.key] = value
    shape = _input_shape(model, input_shape)
    if shape is not None:
        meta["input_shape"] = shape
    blob = pack_container(meta, sections)
    atomic_write_bytes(path, blob)
    log.info("saved %s (%d bytes, %d tensors)", path, len(blob), len(tensors))
    return _file_info(str(path), len(blob), meta, sections)


def _input_shape(model: nn.Module, given: list[int] | None) -> list[int] | None:
    """The input shape to record: ``given`` (validated), else the built-in architecture's
    when the model runs on it and gives finite outputs, else None."""
    if given is not None:
        shape = list(given) if isinstance(given, (list, tuple, torch.Size)) else None
        if not shape or len(shape) > 5 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
                                              for d in shape):
            raise ConfigError(f"input_shape={given!r} is not allowed; use 1..5 positive ints "
                              "(one sample, no batch dimension)")
        return shape
    arch = architectures()
    shape = arch.input_shape(arch.capture(model))
    if shape is None:
        return None
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters(), None)
            out = model(torch.zeros(1, *shape, device=p.device if p is not None else "cpu"))
        ok = isinstance(out, torch.Tensor) and bool(torch.isfinite(out).all())
    except Exception:  # noqa: BLE001 - the model does not take that shape: record none
        ok = False
    finally:
        model.train(was_training)
    return shape if ok else None


def _file_info(path: str, size: int, meta: dict[str, Any], sections: Mapping[str, bytes]) -> FileInfo:
    entries = []
    try:
        for t in meta["tensors"]:
            nbytes = sum(len(sections[k]) for k in t["sections"].values())
            entries.append(TensorEntry(t["name"], t["codec"], [int(d) for d in t["shape"]],
                                       t["dtype"], nbytes, t["meta"]))
        return FileInfo(path, size, meta.get("arch"), meta.get("metadata", {}), entries,
                        meta.get("nncompress", ""), {r.key: meta[r.key] for r in records() if r.key in meta})
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: tensor table is damaged ({exc!r})") from exc


DECODE_ERRORS = (KeyError, TypeError, ValueError, IndexError, OverflowError, RuntimeError,
                 AttributeError, ZeroDivisionError, RecursionError, MemoryError)
"""What decoding or rebuilding from a damaged record may raise besides ``FormatError``;
``load`` reports each as ``FormatError`` naming the tensor or record."""


def _read(path: str | Path, verify_key=None, max_params: int | None = None):
    """Container, validated header and ``FileInfo`` of ``path``; with ``verify_key`` the
    signature is checked before anything else is looked at."""
    path = Path(path)
    param_budget(0, max_params)  # a bad max_params is refused before any reading
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    key = None
    if verify_key is not None:
        from nncompress.format.signing import read_key

        key = read_key(verify_key)
    blob = path.read_bytes()
    container = unpack_container(blob, str(path))
    if key is not None:
        from nncompress.format.signing import verify_container

        verify_container(container, key, str(path))
    budget = param_budget(len(blob), max_params)
    load_plugins()
    check_header(container.meta, container.sections, str(path), budget,
                 {r.key: r.kind for r in records()})
    return container, _file_info(str(path), len(blob), container.meta, container.sections), budget


def read_info(path: str | Path, *, verify_key=None, max_params: int | None = None) -> FileInfo:
    """Parse and verify a ``.nnc`` file's header and checksums without building a model.

    Args:
        verify_key: key bytes or a key file: reject the file unless it is signed with it
            (see ``nncompress.format.signing``).
        max_params: most tensor elements the file may declare (default: from its size,
            see ``nncompress.format.schema.param_budget``).
    """
    return _read(path, verify_key, max_params)[1]


def _decode_tensor(t: Mapping[str, Any], container, where: str) -> torch.Tensor:
    """Decode one validated tensor entry: the codec checks its own metadata and sections,
    and the result must have the declared shape and dtype and finite values."""
    from nncompress.format.builtin_codecs import dtype_from_name

    try:
        codec = get_codec(t["codec"])
    except ConfigError as exc:
        raise FormatError(f"{where}: {exc}") from None
    if t["codec"] == "auto":
        raise FormatError(f"{where}: codec 'auto' is not a stored codec")
    enc = EncodedTensor(t["codec"], list(t["shape"]), t["dtype"], t["meta"],
                        {k: container.sections[v] for k, v in t["sections"].items()})
    try:
        codec.check(enc)
        tensor = codec.decode(enc)
    except FormatError as exc:
        raise FormatError(f"{where}: {exc}") from None
    except (*DECODE_ERRORS, NNCompressError) as exc:
        raise FormatError(f"{where}: codec {t['codec']!r} cannot decode it "
                          f"({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(tensor, torch.Tensor) or list(tensor.shape) != enc.shape:
        raise FormatError(f"{where}: decoded to shape {list(getattr(tensor, 'shape', []))}, "
                          f"header says {enc.shape}")
    if tensor.dtype != dtype_from_name(enc.dtype):
        raise FormatError(f"{where}: decoded to dtype {tensor.dtype}, header says {enc.dtype}")
    if tensor.is_floating_point() and not _all_finite(tensor):
        raise FormatError(f"{where}: decoded values are not all finite")
    return tensor


def _all_finite(tensor: torch.Tensor) -> bool:
    """True when no value is NaN or infinite: one reduction pass (``aminmax`` propagates
    NaN and keeps the infinities), about 10x faster than ``isfinite(t).all()``."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def load_state(path: str | Path, *, verify_key=None, max_params: int | None = None
               ) -> tuple[dict[str, torch.Tensor], FileInfo]:
    """Decode every tensor of a ``.nnc`` file into a state dict (``verify_key`` and
    ``max_params`` as in :func:`read_info`)."""
    container, info, _ = _read(path, verify_key, max_params)
    return _decode_state(container, str(path)), info


def _decode_state(container, source: str) -> dict[str, torch.Tensor]:
    """Every tensor of a validated container, by name."""
    return {t["name"]: _decode_tensor(t, container, f"{source}: tensor {t['name']!r}")
            for t in container.meta["tensors"]}


def _build_arch(arch: Mapping[str, Any], budget: int, source: str) -> nn.Module:
    """Build the architecture a file names, after checking on torch's meta device (no
    memory) that its parameters and buffers fit ``budget``."""
    name, kwargs = arch["name"], dict(arch.get("kwargs", {}))
    where = f"{source}: architecture {name!r}"
    try:
        build = architectures().build
        with torch.device("meta"):
            skeleton = build(name, **kwargs)
        declared = sum(t.numel() for t in (*skeleton.parameters(), *skeleton.buffers()))
        del skeleton
        if declared > budget:
            raise FormatError(f"{where} with arguments {str(kwargs)[:120]} has {declared:,} parameters "
                              f"and buffers, more than the {budget:,} this file may declare "
                              "(pass max_params= / --max-params to load a larger model)")
        return build(name, **kwargs)
    except FormatError:
        raise
    except NNCompressError as exc:
        raise FormatError(f"{where} cannot be built from its record: {str(exc)[:300]}") from None
    except DECODE_ERRORS as exc:
        raise FormatError(f"{where} cannot be built from its record "
                          f"({type(exc).__name__}: {str(exc)[:200]})") from None


def _check_forward(model: nn.Module, input_shape: list[int], source: str) -> None:
    """One forward pass on zeros of the recorded input shape (batch 1): a loaded model
    must run and give finite outputs."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    except (*DECODE_ERRORS, NNCompressError) as exc:
        raise FormatError(f"{source}: the model fails on its recorded input shape {input_shape} "
                          f"({type(exc).__name__}: {str(exc)[:200]})") from None
    outs = out if isinstance(out, (tuple, list)) else [out]
    for o in outs:
        if isinstance(o, torch.Tensor) and o.is_floating_point() and not bool(torch.isfinite(o).all()):
            raise FormatError(f"{source}: the model gives non-finite outputs on its recorded "
                              f"input shape {input_shape}")


def load(path: str | Path, model: nn.Module | None = None, *, verify_key=None,
         max_params: int | None = None) -> nn.Module:
    """Rebuild the model stored in ``path``.

    Built-in architectures are rebuilt from the file; for any other model pass a skeleton
    (``model=MyNet()``), whose tensors are replaced (and Linear/Conv/BatchNorm resized to
    the stored shapes, so structurally pruned models load), and activation quantizers
    stored by a low-bit method are re-attached; layers replaced by ``decompose`` are
    rebuilt from the file's low-rank record. Never unpickles anything.

    The file is untrusted input: its header is validated against the schema, what it
    declares must fit ``max_params`` (default: from the file's size), every tensor must
    decode to its declared shape and dtype with finite values, and a model whose file
    records its input shape must run on it. Anything wrong raises ``FormatError``.

    Args:
        verify_key: key bytes or a key file; reject the file unless it is signed with it.
        max_params: most elements the file may declare (tensors, and the parameters and
            buffers of the model it builds).

    Example:
        >>> import tempfile; from pathlib import Path
        >>> from nncompress.models import build_model
        >>> path, model = Path(tempfile.mkdtemp()) / "lenet.nnc", build_model("lenet300").eval()
        >>> _ = save(model, path)
        >>> x = torch.randn(2, 1, 28, 28)
        >>> torch.equal(load(path)(x), model(x))
        True
    """
    source = str(path)
    container, info, budget = _read(path, verify_key, max_params)
    if model is None and not info.arch:
        raise FormatError(f"{path} holds a user-defined model (no architecture record); pass a "
                          "skeleton: load(path, model=MyNet())")
    if model is None:
        model = _build_arch(info.arch, budget, source)
    state = _decode_state(container, source)
    try:
        _restore_records(model, info, state, budget)
    except (*DECODE_ERRORS, NNCompressError) as exc:
        if isinstance(exc, FormatError):
            raise
        raise FormatError(f"{source}: {type(exc).__name__}: {str(exc)[:300]}") from None
    model.eval()
    if "input_shape" in container.meta:
        _check_forward(model, container.meta["input_shape"], source)
    return model


def _restore_records(model: nn.Module, info: FileInfo, state: dict[str, torch.Tensor], budget: int) -> None:
    """Apply the file's records and its tensors to ``model``: the ``structure`` records
    (removed blocks, low rank...), then the tensors, then the ``behaviour`` records
    (activation quantizers); a damaged record raises ``FormatError`` naming it."""
    path = info.path
    ctx = RestoreContext(path, budget, {k: v.shape for k, v in state.items()})

    def apply(phase: str) -> None:
        for record in records(phase):
            if info.records.get(record.key):
                try:
                    record.restore(model, info.records[record.key], ctx)
                except FormatError as exc:
                    raise FormatError(f"{path}: {record.key} record: {exc}") from None
                except (*DECODE_ERRORS, NNCompressError) as exc:
                    raise FormatError(f"{path}: {record.key} record: {str(exc)[:300]}") from None

    apply("structure")
    expected = model.state_dict()
    if set(expected) != set(state):  # checked before resizing, which assumes the same tensors
        raise FormatError(f"{path} does not match the model: missing {sorted(set(expected) - set(state))[:10]},"
                          f" unexpected {sorted(set(state) - set(expected))[:10]} (a model whose layers were "
                          "replaced, e.g. by hash_model, loads into a skeleton of the same kind: "
                          "load(path, model=...))")
    wrong = [k for k, v in state.items() if v.dtype != expected[k].dtype]
    if wrong:
        k = wrong[0]
        raise FormatError(f"{path}: tensor {k!r} is stored as {state[k].dtype}, the model holds "
                          f"{expected[k].dtype} there")
    resize_to_state(model, {k: v.shape for k, v in state.items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FormatError(f"{path} does not match the model: missing {missing}, unexpected {unexpected}")
    apply("behaviour")
