"""Fuzz harness for the ``.nnc`` loader: hostile files with valid checksums.

An attacker edits a ``.nnc`` file and recomputes its CRCs (``pack_container`` rebuilds a
file with every CRC right). This script builds a corpus of small valid seed files covering
every tensor codec (raw, fp16, bf16, int8, sparse, deep, bfp, binary, lut, int, pow2,
shift) and every record of the header (architecture with kwargs, activation quantizers,
low-rank layers, removed residual blocks, hashed layers), applies seeded mutators to them
(JSON leaves replaced by hostile values, shape / dtype / codec edits, section-table edits,
payload edits, raw-byte edits with the CRCs recomputed by hand, record edits) and loads
every mutated file with ``nncompress.format.read_info``, ``load_state`` and
``nncompress.load`` in worker subprocesses, each file under a 10 s wall-clock limit
enforced by the parent and a memory guard (``RLIMIT_AS`` at the worker's baseline + 1.5 GB,
and a peak RSS more than 1 GB above the baseline, measured per file through
``/proc/self/clear_refs`` + ``VmHWM``, counts as a memory failure).

Outcome of one file (``CATEGORIES``):
  rejected_formaterror    ``FormatError`` (or a subclass) raised: the wanted outcome for damage
  other_exception         any other exception (type, message and raise site recorded)
  crash / timeout / memory   the worker died / ran past 10 s / allocated too much
  accepted_nonfinite      loaded, but a float parameter/buffer or the output on zeros is not finite
  accepted_forward_fails  loaded, but the forward pass raised
  accepted_same           loaded, same output as the seed on a fixed input
  accepted_different      loaded, a different output (should come from value edits only)

Run from the repository root::

    python benchmarks/fuzz.py --files 10000 --seed 0 --workers 2 [--sign] [--out benchmarks/results/fuzz]
    python benchmarks/fuzz.py --seed 0 --emit 123 --emit-to bad.nnc   # rebuild mutated file #123

``--sign`` (needs ``nncompress.format.signing`` with ``sign_file(path, key, out=None)`` and a
``load(path, verify_key=key)``; skipped when the module is missing) signs the seeds, mutates
the signed files and counts how many are rejected when loaded with the key (target: all).

Importable: ``run_campaign(n_files, seed, workers, ...)`` returns the counts (and the
failure records); ``tests/test_fuzz.py`` runs a small sample.
"""

from __future__ import annotations

import argparse
import base64
import collections
import copy
import importlib.util
import json
import math
import os
import platform
import random
import re
import resource
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
RESULTS = HERE.parent / "results"

FILE_TIMEOUT_S = 10.0
"""Wall-clock limit per file (parent kills the worker past it)."""
MEM_FAIL_BYTES = 1 << 30
"""Peak RSS above the worker's baseline that counts as a memory failure."""
AS_HEADROOM_BYTES = 1536 << 20
"""RLIMIT_AS of a worker: its virtual size after start-up plus this."""
RSS_KILL_BYTES = 3 << 30
"""The parent kills a worker whose RSS grows this far above its baseline (a safety net)."""
WORKER_START_S = 180.0

CATEGORIES = (
    "rejected_formaterror", "other_exception", "crash", "timeout", "memory",
    "accepted_nonfinite", "accepted_forward_fails", "accepted_same", "accepted_different",
)
FAILURES = ("other_exception", "crash", "timeout", "memory", "accepted_nonfinite",
            "accepted_forward_fails")
"""Outcomes that must never happen (the test asserts zero of each)."""

CORPUS_VERSION = 4
FIXED_INPUT_SEED = 12345
SIGN_KEY = b"nncompress-fuzz-signing-key-0123456789"

_FIXED = struct.Struct("<4sHHQI")  # as in nncompress.format.container
_MAGIC = b"NNC1"


# ---- corpus -----------------------------------------------------------------------------


@dataclass
class Seed:
    """One valid seed file: where it is, its input shape and reference output."""

    name: str
    path: str
    shape: list[int]
    ref: list[float]
    ref_shape: list[int]
    codecs: list[str]
    records: list[str]
    nbytes: int = 0


def fixed_input(shape: list[int]):
    """The fixed input of the same/different comparison (seeded normal)."""
    import torch

    return torch.randn(shape, generator=torch.Generator().manual_seed(FIXED_INPUT_SEED))


def _digits(size: int, n: int = 256):
    from torch.utils.data import TensorDataset

    from nncompress.data.datasets import load_digits_dataset

    x, y = load_digits_dataset("train", size=size).tensors
    return TensorDataset(x[:n], y[:n])


def _train_cfg():
    from nncompress.train import TrainConfig

    return TrainConfig(epochs=1, max_steps=2, batch_size=32, lr=1e-3, optimizer="adam")


def _seed_builders() -> dict[str, tuple[list[int], Callable[[Path], None]]]:
    """Seed name -> (input shape, function writing the seed file to a path)."""
    import torch

    import nncompress
    from nncompress.models import build_model
    from nncompress.quantize import QuantizeRun, quantize_model

    def lenet300(**kw):
        return build_model("lenet300", in_features=64, **kw)

    def raw(p):
        m = lenet300(num_classes=10, dropout=0.1, input_dropout=0.0)
        nncompress.save(m, p, codecs={k: "raw" for k in m.state_dict()}, metadata={"accuracy": 0.5})

    def casts(p):
        m = lenet300()
        nncompress.save(m, p, codecs={"fc1.weight": "fp16", "fc2.weight": "bf16", "fc3.weight": "int8",
                                      "fc1.bias": "int8", "fc2.bias": "fp16", "fc3.bias": "bf16"})

    def sparse_deep_bfp(p):
        m = lenet300()
        with torch.no_grad():
            w1 = m.fc1.weight
            w1[w1.abs() < w1.abs().flatten().kthvalue(int(0.9 * w1.numel())).values] = 0
            w2 = m.fc2.weight
            w2.copy_(torch.round(w2 * 64).clamp(-8, 8) / 64)  # 17 levels, exact in fp16
        nncompress.save(m, p, codecs={
            "fc1.weight": ("sparse", {"index_bits": 4, "huffman": "no"}),
            "fc2.weight": ("deep", {"index_bits": 5, "huffman": "yes"}),
            "fc3.weight": ("bfp", {"mantissa_bits": 6, "block": 16}),
            "fc3.bias": ("bfp", {"mantissa_bits": 8, "block": None})})

    def deep32_sparse_huff(p):
        m = lenet300()
        with torch.no_grad():
            levels = torch.linspace(-0.1, 0.1, 20) + 1e-5  # not exact in fp16
            idx = torch.randint(0, 20, m.fc1.weight.shape)
            keep = torch.rand(m.fc1.weight.shape) < 0.2
            m.fc1.weight.copy_(torch.where(keep, levels[idx], torch.zeros(())))
            m.fc2.weight[torch.rand(m.fc2.weight.shape) < 0.85] = 0
        nncompress.save(m, p, codecs={
            "fc1.weight": ("deep", {"index_bits": 6, "huffman": "no"}),
            "fc2.weight": ("sparse", {"index_bits": "auto", "huffman": "yes"}),
            "fc1.bias": ("bfp", {"mantissa_bits": 4, "block": 8})})

    def int8_ptq(p):
        m = quantize_model(lenet300(), "int8", calib_data=_digits(8), calib_batches=2)
        nncompress.save(m, p)

    def xnor(p):
        m = quantize_model(lenet300(), "xnor", train_data=_digits(8), train_cfg=_train_cfg())
        nncompress.save(m, p, codecs={"fc1.weight": "fp16", "fc3.weight": "fp16"})

    def bnn(p):
        m = quantize_model(lenet300(), "bnn", train_data=_digits(8), train_cfg=_train_cfg())
        nncompress.save(m, p)

    def dorefa_lenet5(p):
        m = quantize_model(build_model("lenet5"), "dorefa", train_data=_digits(28), train_cfg=_train_cfg())
        nncompress.save(m, p)

    def shiftcnn(p):
        m = quantize_model(lenet300(), "shiftcnn")
        nncompress.save(m, p)

    def inq(p):
        m = quantize_model(lenet300(), "inq", {"schedule": [1.0]}, train_data=_digits(8),
                           train_cfg=_train_cfg())
        nncompress.save(m, p)

    def act_linear(p):
        m = quantize_model(lenet300(), "act-linear", calib_data=_digits(8), calib_batches=2)
        nncompress.save(m, p, codecs={f"fc{i}.weight": "fp16" for i in (1, 2, 3)})

    def act_log(p):
        m = quantize_model(lenet300(), "act-log", calib_data=_digits(8), calib_batches=2)
        nncompress.save(m, p, codecs={f"fc{i}.weight": "bf16" for i in (1, 2, 3)})

    def lowrank_lenet5(p):
        from nncompress.decompose import decompose

        m, _ = decompose(build_model("lenet5"), {"fc1": {"method": "svd", "rank": 4},
                                                  "conv2": {"method": "btd", "rank": (4, 3), "groups": 2},
                                                  "conv1": {"method": "separable", "rank": 3}})
        nncompress.save(m.eval(), p, codecs={"fc2.weight": "fp16"})

    def _resnet(blocks):
        m = build_model("resnet20", in_channels=3, widths=[4, 8, 8], blocks=blocks)
        with torch.no_grad():  # non-trivial BatchNorm statistics
            m.train()(torch.randn(16, 3, 32, 32))
        return m.eval()

    def lowrank_resnet(p):
        from nncompress.decompose import decompose

        m, _ = decompose(_resnet(1), {"layers.1.conv1": {"method": "tucker2", "rank": (2, 2)},
                                      "layers.2.conv2": {"method": "cp", "rank": 3},
                                      "fc": {"method": "svd", "rank": 2}})
        nncompress.save(m.eval(), p)

    def depth_resnet(p):
        from nncompress.prune.structured.blocks import remove_blocks

        m = remove_blocks(_resnet(2), ["layers.1", "layers.3"], torch.randn(32, 3, 32, 32))
        nncompress.save(m.eval(), p)

    def hashed(p):
        from nncompress.quantize.hashed_arch import hash_model

        nncompress.save(hash_model(lenet300(), ratio=1 / 16, seed=3).eval(), p)

    # issue 22: layer records (pq, tt, structured, ternary_factors, lbconv) with the symbols
    # codec, and TNN's ternary activation quantizers
    def pq(p):
        from nncompress.quantize.pq import PQConfig, product_quantize

        m = lenet300()
        product_quantize(m, PQConfig(sub_dim=4, centroids=8, include=["fc1", "fc2"]))
        nncompress.save(m.eval(), p)

    def tt_structured(p):
        from nncompress.decompose.toeplitz import StructuredConfig, structure_layers
        from nncompress.decompose.tt import TTConfig, tt_decompose

        m = lenet300()
        tt_decompose(m, TTConfig(cores=2, rank=4, include=["fc1"]))
        structure_layers(m, StructuredConfig("toeplitz", include=["fc2"]))
        structure_layers(m, StructuredConfig("circulant", include=["fc3"]))
        nncompress.save(m.eval(), p)

    def ternary_factors(p):
        from nncompress.decompose.ternary import TernaryDecompConfig, ternary_decompose

        m = lenet300()
        ternary_decompose(m, TernaryDecompConfig(rank_ratio=0.1, iters=1, include=["fc2", "fc3"]))
        nncompress.save(m.eval(), p)

    def lbcnn(p):
        m = build_model("lbcnn-lenet5", mid_channels=6, seed=5).eval()
        with torch.no_grad():  # fc1 (400,000 weights) 99% zero: a small seed file
            m.fc1.weight[torch.rand(m.fc1.weight.shape) < 0.99] = 0
        nncompress.save(m, p, codecs={"fc1.weight": ("sparse", {"index_bits": 8, "huffman": "no"})})

    def tnn(p):
        from nncompress.quantize.tnn_method import TNNConfig

        m = quantize_model(lenet300(), TNNConfig(ternary_input=True),
                           QuantizeRun(train_data=_digits(8), finetune=_train_cfg())).model
        nncompress.save(m.eval(), p)

    s8, s28, s32 = [1, 1, 8, 8], [1, 1, 28, 28], [1, 3, 32, 32]
    return {
        "lenet300_raw_kwargs": (s8, raw),
        "lenet300_casts": (s8, casts),
        "lenet300_sparse_deep_bfp": (s8, sparse_deep_bfp),
        "lenet300_deep32_sparse_huffman": (s8, deep32_sparse_huff),
        "lenet300_int8_affine_act": (s8, int8_ptq),
        "lenet300_xnor": (s8, xnor),
        "lenet300_bnn_sign_act": (s8, bnn),
        "lenet5_dorefa_lut": (s28, dorefa_lenet5),
        "lenet300_shiftcnn": (s8, shiftcnn),
        "lenet300_inq_pow2": (s8, inq),
        "lenet300_act_linear": (s8, act_linear),
        "lenet300_act_log": (s8, act_log),
        "lenet5_lowrank": (s28, lowrank_lenet5),
        "resnet20_lowrank": (s32, lowrank_resnet),
        "resnet20_removed_blocks": (s32, depth_resnet),
        "lenet300_hashed": (s8, hashed),
        "lenet300_pq_symbols": (s8, pq),
        "lenet300_tt_toeplitz_circulant": (s8, tt_structured),
        "lenet300_ternary_factors": (s8, ternary_factors),
        "lbcnn_lenet5": (s28, lbcnn),
        "lenet300_tnn_ternary_act": (s8, tnn),
    }


def reference_output(path: str | Path, shape: list[int]):
    """What the worker computes for an accepted file: the model's output on the fixed input."""
    import torch

    import nncompress

    model = nncompress.load(path).eval()
    with torch.no_grad():
        return model(fixed_input(shape)).float()


def _describe_file(path: Path) -> tuple[list[str], list[str]]:
    import nncompress

    info = nncompress.read_info(path)
    codecs = sorted({t.codec for t in info.tensors})
    records = []
    if info.arch:
        records.append(f"arch:{info.arch.get('name')}" + ("+kwargs" if info.arch.get("kwargs") else ""))
    if info.activations:
        records.append("activations:" + ",".join(sorted({s.get("kind", "?") for s in info.activations.values()})))
    if info.lowrank:
        records.append("lowrank:" + ",".join(sorted({s.get("method", "?") for s in info.lowrank.values()})))
    if info.removed_blocks:
        records.append(f"removed_blocks:{len(info.removed_blocks)}")
    records += sorted(k for k in info.records if k not in ("activations", "lowrank", "removed_blocks"))
    return codecs, records


def build_corpus(directory: str | Path, log: Callable[[str], None] = print) -> list[Seed]:
    """Write the seed files to ``directory`` (reused when its manifest matches) and return
    them with their reference outputs (computed at 1 thread, as the workers run)."""
    import torch

    import nncompress

    directory = Path(directory)
    manifest = directory / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        if data.get("version") == CORPUS_VERSION and data.get("torch") == torch.__version__:
            seeds = [Seed(**s) for s in data["seeds"]]
            if all(Path(s.path).is_file() for s in seeds):
                return seeds
    directory.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng_state = torch.get_rng_state()
    t0 = time.perf_counter()
    seeds = []
    try:
        for i, (name, (shape, build)) in enumerate(_seed_builders().items()):
            torch.manual_seed(i)
            path = directory / f"{name}.nnc"
            build(path)
            out = reference_output(path, shape)
            codecs, records = _describe_file(path)
            seeds.append(Seed(name, str(path), shape, [float(v) for v in out.reshape(-1)],
                              list(out.shape), codecs, records, path.stat().st_size))
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng_state)
    covered = set().union(*(s.codecs for s in seeds))
    missing = {"raw", "fp16", "bf16", "int8", "sparse", "deep", "bfp", "binary", "lut", "int",
               "pow2", "shift", "symbols"} - covered
    if missing:
        raise RuntimeError(f"fuzz corpus misses codecs {sorted(missing)}")
    manifest.write_text(json.dumps({"version": CORPUS_VERSION, "torch": torch.__version__,
                                    "nncompress": nncompress.__version__,
                                    "seeds": [asdict(s) for s in seeds]}, indent=1))
    log(f"corpus: {len(seeds)} seed files in {directory} ({time.perf_counter() - t0:.1f} s)")
    return seeds


# ---- container helpers (raw bytes, CRCs recomputed by hand) -----------------------------


def assemble(header_json: bytes, data: bytes, *, version: int = 1, reserved: int = 0,
             compress: bool = True, trailing: bytes = b"", hlen_delta: int = 0) -> bytes:
    """A container from header JSON text and the section bytes, every CRC recomputed.
    ``trailing``: bytes after the last section; ``hlen_delta``: a lying header length
    (its CRC is then computed over the slice the lie designates)."""
    header = zlib.compress(header_json, 9) if compress else header_json
    hlen = max(0, len(header) + hlen_delta)
    rest = header + data + trailing
    body = _FIXED.pack(_MAGIC, version, reserved, hlen, zlib.crc32(rest[:hlen])) + rest
    return body + struct.pack("<I", zlib.crc32(body))


def section_table(sections: dict[str, bytes]) -> list[dict[str, Any]]:
    table, off = [], 0
    for name, payload in sections.items():
        table.append({"name": name, "offset": off, "length": len(payload), "crc32": zlib.crc32(payload)})
        off += len(payload)
    return table


def fix_crcs(blob: bytes) -> bytes:
    """Recompute every CRC of a (damaged) container as an attacker would: each section
    CRC in the header table over the bytes the table designates (when the header still
    parses), then the header CRC and the file CRC."""
    if len(blob) < _FIXED.size + 4:
        return blob
    magic, version, reserved, hlen, _ = _FIXED.unpack_from(blob, 0)
    body = blob[:-4]
    header = body[_FIXED.size:_FIXED.size + hlen]
    data = body[_FIXED.size + hlen:]
    try:
        parsed = json.loads(zlib.decompress(header))
        for entry in parsed["sections"]:
            off, length = int(entry["offset"]), int(entry["length"])
            if 0 <= off and off + length <= len(data):
                entry["crc32"] = zlib.crc32(data[off:off + length])
        header = zlib.compress(json.dumps(parsed, separators=(",", ":")).encode(), 9)
        hlen = len(header)
    except Exception:  # header no longer parses: only the header and file CRCs
        pass
    body = _FIXED.pack(magic, version, reserved, hlen, zlib.crc32(header)) + header + data
    return body + struct.pack("<I", zlib.crc32(body))


# ---- mutators ---------------------------------------------------------------------------


class NotApplicable(Exception):
    """The mutator has nothing to act on in this seed."""


@dataclass(frozen=True)
class Mutator:
    name: str
    fn: Callable[[Ctx], tuple[bytes, str]]
    value_edit: bool  # changes values only (a different output is then legitimate)
    group: str


MUTATORS: dict[str, Mutator] = {}


def mutator(name: str, group: str, value_edit: bool = False):
    def deco(fn):
        MUTATORS[name] = Mutator(name, fn, value_edit, group)
        return fn
    return deco


_SENTINEL = "\x01fuzz-sentinel\x01"
_DEFAULT = object()
_UNINTERESTING = ("bits", "stats", "metadata", "nncompress")


class Ctx:
    """A seed's container, editable: ``meta`` and ``sections`` are fresh copies."""

    def __init__(self, rng: random.Random, blob: bytes, meta: dict | None,
                 sections: dict[str, bytes] | None):
        self.rng, self.blob = rng, blob
        self._meta, self._sections = meta, sections

    @property
    def meta(self) -> dict:
        if self._meta is None:
            raise NotApplicable("file does not parse as a container")
        return self._meta

    @property
    def sections(self) -> dict[str, bytes]:
        if self._sections is None:
            raise NotApplicable("file does not parse as a container")
        return self._sections

    # packing
    def pack(self, meta: Any = None, sections: dict[str, bytes] | None = None) -> bytes:
        from nncompress.format.container import pack_container

        meta = self.meta if meta is None else meta
        sections = self.sections if sections is None else sections
        try:
            return pack_container(meta, sections)
        except ValueError:  # NaN / inf in the meta: pack_container refuses, an attacker does not
            text = json.dumps({"meta": meta, "sections": section_table(sections)}, separators=(",", ":"))
            return assemble(text.encode(), b"".join(sections.values()))

    def pack_text(self, meta_text: str, *, table: Any = _DEFAULT, sections: dict[str, bytes] | None = None,
                  top_extra: str = "", **kw: Any) -> bytes:
        """A file whose header is ``{"meta": <meta_text>, "sections": <table>}`` as raw text
        (``table`` defaults to the one describing ``sections``)."""
        secs = self.sections if sections is None else sections
        table = section_table(secs) if table is _DEFAULT else table
        text = '{"meta":' + meta_text + ',"sections":' + json.dumps(table, separators=(",", ":")) + top_extra + "}"
        return assemble(text.encode("utf-8"), b"".join(secs.values()), **kw)

    def meta_text_with(self, path: tuple, raw: str) -> str:
        """The meta as JSON text with the value at ``path`` replaced by raw JSON text."""
        m = copy.deepcopy(self.meta)
        set_path(m, path, _SENTINEL)
        text = json.dumps(m, separators=(",", ":"))
        token = json.dumps(_SENTINEL)
        assert text.count(token) == 1
        return text.replace(token, raw)

    # choosing
    def leaf(self) -> tuple:
        """A random leaf of the meta (half the time one that loading reads)."""
        paths = list(leaf_paths(self.meta))
        interesting = [p for p in paths if not any(k in _UNINTERESTING for k in p if isinstance(k, str))]
        pool = interesting if interesting and self.rng.random() < 0.5 else paths
        if not pool:
            raise NotApplicable("no leaves")
        return self.rng.choice(pool)

    def container_path(self) -> tuple:
        """A random dict or list of the meta (the root too)."""
        paths = [p for p, v in node_paths(self.meta) if isinstance(v, (dict, list))]
        return self.rng.choice(paths)

    def dict_path(self, nonempty: bool = False) -> tuple:
        paths = [p for p, v in node_paths(self.meta) if isinstance(v, dict) and (v or not nonempty)]
        if not paths:
            raise NotApplicable("no dict")
        return self.rng.choice(paths)

    def tensor(self, codec: str | None = None, pred: Callable[[dict], bool] | None = None) -> dict:
        ts = [t for t in self.meta.get("tensors", []) if isinstance(t, dict)
              and (codec is None or t.get("codec") == codec) and (pred is None or pred(t))]
        if not ts:
            raise NotApplicable(f"no tensor with codec {codec}")
        return self.rng.choice(ts)

    def record(self, key: str) -> Any:
        rec = self.meta.get(key)
        if not rec:
            raise NotApplicable(f"no {key} record")
        return rec

    def arch_kwargs(self) -> dict:
        arch = self.meta.get("arch")
        if not isinstance(arch, dict):
            raise NotApplicable("no arch")
        if arch.get("name") == "hashed":
            return arch["kwargs"]["base"].setdefault("kwargs", {})
        return arch.setdefault("kwargs", {})

    def section_name(self) -> str:
        if not self.sections:
            raise NotApplicable("no sections")
        return self.rng.choice(list(self.sections))


def node_paths(obj: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from node_paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from node_paths(v, path + (i,))


def leaf_paths(obj: Any) -> Iterator[tuple]:
    for p, v in node_paths(obj):
        if p and not isinstance(v, (dict, list)):
            yield p


def get_path(obj: Any, path: tuple) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def set_path(obj: Any, path: tuple, value: Any) -> None:
    if not path:
        raise NotApplicable("cannot set the root")
    get_path(obj, path[:-1])[path[-1]] = value


def _fmt_path(path: tuple) -> str:
    return "meta" + "".join(f"[{k!r}]" for k in path)


def _short(v: Any, n: int = 60) -> str:
    s = v if isinstance(v, str) else repr(v)
    return s if len(s) <= n else s[:n] + f"...({len(s)} chars)"


# JSON leaf replaced by a hostile value (structured: pack_container; raw: JSON text)
def _leaf_value(name: str, values: Callable[[random.Random], Any]):
    def fn(ctx: Ctx):
        path = ctx.leaf()
        v = values(ctx.rng)
        set_path(ctx.meta, path, v)
        return ctx.pack(), f"{_fmt_path(path)} = {_short(v)}"
    mutator(name, "json_leaf")(fn)


def _leaf_raw(name: str, texts: Callable[[random.Random], str]):
    def fn(ctx: Ctx):
        path = ctx.leaf()
        raw = texts(ctx.rng)
        return ctx.pack_text(ctx.meta_text_with(path, raw)), f"{_fmt_path(path)} = {_short(raw)} (raw JSON)"
    mutator(name, "json_leaf")(fn)


_leaf_value("leaf_int_2**40", lambda r: 2**40)
_leaf_value("leaf_int_2**63", lambda r: r.choice([2**63, 2**64 + 1, -(2**63) - 1]))
_leaf_value("leaf_int_-1", lambda r: -1)
_leaf_value("leaf_int_0", lambda r: 0)
_leaf_raw("leaf_int_5000_digits", lambda r: r.choice(["", "-"]) + "9" * 5000)
_leaf_raw("leaf_float_1e400", lambda r: r.choice(["1e400", "-1e400"]))
_leaf_raw("leaf_nan_infinity", lambda r: r.choice(["NaN", "Infinity", "-Infinity"]))
_leaf_value("leaf_float_1.5", lambda r: 1.5)
_leaf_value("leaf_float_-0.0", lambda r: -0.0)
_leaf_value("leaf_float_tiny", lambda r: r.choice([5e-324, 1e-300]))
_leaf_value("leaf_string", lambda r: r.choice(["", "x", "1e9", "NaN", "float32", "../../etc/passwd", "\u00e9\u2603"]))
_leaf_value("leaf_list", lambda r: r.choice([[], [1, 2, 3], [[]], ["a"]]))
_leaf_value("leaf_dict", lambda r: r.choice([{}, {"a": 1}, {"__class__": "os.system"}]))
_leaf_value("leaf_null", lambda r: None)
_leaf_value("leaf_bool", lambda r: r.choice([True, False]))


@mutator("deep_nesting", "json_structure")
def _deep_nesting(ctx: Ctx):
    path = ctx.leaf()
    n = ctx.rng.choice([2000, 5000, 100_000])
    raw = "[" * n + "]" * n if ctx.rng.random() < 0.5 else '{"a":' * n + "0" + "}" * n
    return ctx.pack_text(ctx.meta_text_with(path, raw)), f"{_fmt_path(path)} = {n} nested levels (raw)"


_HOSTILE_POOL = [2**40, -1, 0, 2**63, "x", None, [], {}, True, 1.5, 10**9]


@mutator("duplicate_key", "json_structure")
def _duplicate_key(ctx: Ctx):
    if ctx.rng.random() < 0.2:  # duplicate at the top level of the header
        key = ctx.rng.choice(["meta", "sections"])
        value = {} if key == "meta" else []
        return (ctx.pack_text(json.dumps(ctx.meta, separators=(",", ":")),
                              top_extra=f',"{key}":{json.dumps(value)}'),
                f"header key {key!r} duplicated with {value!r} (raw)")
    path = ctx.dict_path(nonempty=True)
    d = get_path(ctx.meta, path)
    key = ctx.rng.choice(list(d))
    value = ctx.rng.choice(_HOSTILE_POOL)
    items = [f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'))}" for k, v in d.items()]
    dup = f"{json.dumps(key)}:{json.dumps(value)}"
    items = items + [dup] if ctx.rng.random() < 0.5 else [dup] + items
    raw = "{" + ",".join(items) + "}"
    if not path:
        return ctx.pack_text(raw), f"meta key {key!r} duplicated with {value!r} (raw)"
    return ctx.pack_text(ctx.meta_text_with(path, raw)), f"{_fmt_path(path)}: key {key!r} duplicated with {value!r} (raw)"


@mutator("delete_key", "json_structure")
def _delete_key(ctx: Ctx):
    paths = [p for p, v in node_paths(ctx.meta) if isinstance(v, dict) and v]
    interesting = [p for p in paths if not any(k in _UNINTERESTING for k in p if isinstance(k, str))]
    path = ctx.rng.choice(interesting if interesting and ctx.rng.random() < 0.7 else paths)
    d = get_path(ctx.meta, path)
    key = ctx.rng.choice(list(d))
    del d[key]
    return ctx.pack(), f"deleted {_fmt_path(path + (key,))}"


@mutator("add_unknown_key", "json_structure")
def _add_unknown_key(ctx: Ctx):
    path = ctx.dict_path()
    key = ctx.rng.choice(["fuzz_unknown", "__class__", "__reduce__", "kwargs", "groups", ""])
    value = ctx.rng.choice(_HOSTILE_POOL)
    d = get_path(ctx.meta, path)
    if key in d:
        raise NotApplicable("key exists")
    d[key] = value
    return ctx.pack(), f"added {_fmt_path(path + (key,))} = {value!r}"


# header / meta shape
@mutator("header_meta_not_object", "json_structure")
def _meta_not_object(ctx: Ctx):
    v = ctx.rng.choice([[], "meta", None, 1, [ctx.meta]])
    return ctx.pack(meta=v), f"meta = {_short(v, 30)}"


@mutator("header_sections_not_list", "json_structure")
def _sections_not_list(ctx: Ctx):
    v = ctx.rng.choice(["{}", "null", '"x"', "1", '{"name":"x"}', "[1]", "[null]", '[[]]'])
    return ctx.pack_text(json.dumps(ctx.meta), table=json.loads(v)), f"sections table = {v}"


@mutator("header_top_level", "json_structure")
def _header_top_level(ctx: Ctx):
    v = ctx.rng.choice(["[]", '"x"', "null", '{"sections":[]}', '{"meta":{}}', "{}"])
    return assemble(v.encode(), b"".join(ctx.sections.values())), f"header JSON = {v}"


@mutator("tensors_not_list", "json_structure")
def _tensors_not_list(ctx: Ctx):
    v = ctx.rng.choice([{}, None, "x", 1, [None], [[]], ["fc1.weight"]])
    ctx.meta["tensors"] = v
    return ctx.pack(), f"meta['tensors'] = {v!r}"


@mutator("tensor_entry_fields", "json_structure")
def _tensor_entry_fields(ctx: Ctx):
    t = ctx.tensor()
    key = ctx.rng.choice(["name", "codec", "shape", "dtype", "meta", "sections"])
    v = ctx.rng.choice(_HOSTILE_POOL + ["fc1.weight", [1, "x"], {"data": "nosuch"}])
    t[key] = v
    return ctx.pack(), f"tensor {t.get('name')!r}: {key} = {v!r}"


# shapes, dtypes, codecs
def _shape_mutator(name: str, edit: Callable[[random.Random, list], list | None], value_edit: bool = False):
    def fn(ctx: Ctx):
        t = ctx.tensor(pred=lambda t: isinstance(t.get("shape"), list) and len(t["shape"]) >= 1)
        old = list(t["shape"])
        new = edit(ctx.rng, list(old))
        if new is None or new == old:
            raise NotApplicable("shape unchanged")
        t["shape"] = new
        return ctx.pack(), f"tensor {t['name']!r} ({t['codec']}) shape {old} -> {_short(new)}"
    mutator(name, "shape", value_edit)(fn)


def _mul_dim(r, s):
    i = r.randrange(len(s))
    s[i] *= 50000
    return s


def _neg2(r, s):
    if len(s) < 2:
        return None
    s[0], s[1] = -s[0], -s[1]  # same product
    return s


_shape_mutator("shape_transpose", lambda r, s: s[::-1] if len(s) >= 2 else None)
_shape_mutator("shape_dim_x50000", _mul_dim)
_shape_mutator("shape_50000x50000", lambda r, s: r.choice([[50000, 50000], [50000, 50000, 1, 1], [2**31, 2**31]]))
_shape_mutator("shape_negative", lambda r, s: _neg2(r, s) if r.random() < 0.5 else [-1] + s[1:])
_shape_mutator("shape_zero_dim", lambda r, s: [0] + s[1:])
_shape_mutator("shape_scalar", lambda r, s: [] if len(s) > 0 else None)
_shape_mutator("shape_extra_dims", lambda r, s: s + [1] * r.choice([1, 2, 60]))
_shape_mutator("shape_flatten", lambda r, s: [math.prod(s)] if len(s) >= 2 else None)
_shape_mutator("shape_float_dims", lambda r, s: [d + 0.5 for d in s])
_shape_mutator("shape_string_dims", lambda r, s: [str(d) for d in s])


@mutator("shape_swap_tensors", "shape")
def _shape_swap(ctx: Ctx):
    ts = [t for t in ctx.meta["tensors"] if isinstance(t, dict)]
    a, b = ctx.rng.sample(ts, 2)
    if a["shape"] == b["shape"]:
        raise NotApplicable("same shapes")
    a["shape"], b["shape"] = b["shape"], a["shape"]
    return ctx.pack(), f"shapes of {a['name']!r} and {b['name']!r} swapped"


_DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
           "bool", "complex64", "float8_e4m3fn", "object", "str", ""]


@mutator("dtype_relabel", "dtype")
def _dtype_relabel(ctx: Ctx):
    t = ctx.tensor()
    new = ctx.rng.choice([d for d in _DTYPES if d != t.get("dtype")])
    old, t["dtype"] = t.get("dtype"), new
    return ctx.pack(), f"tensor {t['name']!r} ({t['codec']}) dtype {old} -> {new}"


_CODEC_NAMES = ["raw", "fp16", "bf16", "int8", "sparse", "deep", "bfp", "binary", "lut", "int",
                "pow2", "shift", "auto", "pickle", "", "RAW"]


@mutator("codec_swap", "codec")
def _codec_swap(ctx: Ctx):
    t = ctx.tensor()
    new = ctx.rng.choice([c for c in _CODEC_NAMES if c != t.get("codec")])
    old, t["codec"] = t.get("codec"), new
    return ctx.pack(), f"tensor {t['name']!r} codec {old} -> {new}"


# codec metadata
_META_SKIP = ("bits", "stats")


def _codec_meta_mutator(name: str, values: Callable[[random.Random], Any], value_edit_default: bool = False):
    def fn(ctx: Ctx):
        t = ctx.tensor(pred=lambda t: isinstance(t.get("meta"), dict)
                       and any(k not in _META_SKIP for k in t["meta"]))
        key = ctx.rng.choice([k for k in t["meta"] if k not in _META_SKIP])
        v = values(ctx.rng)
        old, t["meta"][key] = t["meta"][key], v
        value_edit = key in _SCALE_KEYS and isinstance(v, int) and not isinstance(v, bool) and abs(v) <= 100
        return (ctx.pack(), f"tensor {t['name']!r} ({t['codec']}) meta[{key!r}] {_short(old, 20)} -> {_short(v)}",
                value_edit or value_edit_default)
    mutator(name, "codec_meta", value_edit_default)(fn)


_codec_meta_mutator("codec_meta_huge_int", lambda r: r.choice([2**40, 2**31, 10**8, 2**63, 10**30]))
_codec_meta_mutator("codec_meta_small_int", lambda r: r.choice([0, -1, 1, 33, 64, 65, -(2**40)]))
_SCALE_KEYS = ("exponent", "n_max", "n_min")
"""Codec metadata that only scales values: a small edit of it is a value edit."""
_codec_meta_mutator("codec_meta_wrong_type", lambda r: r.choice(["x", None, [], {}, True, 1.5, "huffman", "fixed"]))


@mutator("codec_meta_delete", "codec_meta")
def _codec_meta_delete(ctx: Ctx):
    t = ctx.tensor(pred=lambda t: isinstance(t.get("meta"), dict) and any(k not in _META_SKIP for k in t["meta"]))
    key = ctx.rng.choice([k for k in t["meta"] if k not in _META_SKIP])
    del t["meta"][key]
    return ctx.pack(), f"tensor {t['name']!r} ({t['codec']}) meta[{key!r}] deleted"


@mutator("codec_meta_stream_kind", "codec_meta")
def _stream_kind(ctx: Ctx):
    t = ctx.tensor(pred=lambda t: any(t["meta"].get(k) in ("fixed", "huffman") for k in ("stream", "gaps", "values")))
    key = ctx.rng.choice([k for k in ("stream", "gaps", "values") if t["meta"].get(k) in ("fixed", "huffman")])
    new = {"fixed": "huffman", "huffman": "fixed"}[t["meta"][key]]
    t["meta"][key] = new
    return ctx.pack(), f"tensor {t['name']!r} ({t['codec']}) meta[{key!r}] -> {new}"


@mutator("codec_meta_flag_flip", "codec_meta")
def _flag_flip(ctx: Ctx):
    t = ctx.tensor(pred=lambda t: any(isinstance(v, bool) for v in t["meta"].values()))
    key = ctx.rng.choice([k for k, v in t["meta"].items() if isinstance(v, bool)])
    t["meta"][key] = not t["meta"][key]
    return ctx.pack(), f"tensor {t['name']!r} ({t['codec']}) meta[{key!r}] flipped"


@mutator("int8_exponent", "codec_meta")
def _int8_exponent(ctx: Ctx):
    t = ctx.tensor("int8")
    if ctx.rng.random() < 0.2:
        raw = ctx.rng.choice(["1e400", "NaN", "9" * 5000])
        path = ("tensors", ctx.meta["tensors"].index(t), "meta", "exponent")
        return ctx.pack_text(ctx.meta_text_with(path, raw)), f"tensor {t['name']!r} int8 exponent = {_short(raw)} (raw)"
    v = ctx.rng.choice([130, 129, 128, 127, -160, -161, 2**63, 10**6, 1.5, "7", True])
    t["meta"]["exponent"] = v
    in_range = isinstance(v, int) and not isinstance(v, bool) and -160 <= v <= 130  # the codec's range
    return ctx.pack(), f"tensor {t['name']!r} int8 exponent = {v!r}", in_range


@mutator("bfp_params", "codec_meta")
def _bfp_params(ctx: Ctx):
    t = ctx.tensor("bfp")
    key = ctx.rng.choice(["mantissa_bits", "block", "exp_shape"])
    v = {"mantissa_bits": ctx.rng.choice([1, 25, 64, 0, -3, 2**40]),
         "block": ctx.rng.choice([0, -1, 2**40, 1, 7, "x", 1.5]),
         "exp_shape": ctx.rng.choice([[], [2**31], [-1, -1], [10**6, 10**6], [1], ["a"]])}[key]
    t["meta"][key] = v
    return ctx.pack(), f"tensor {t['name']!r} bfp meta[{key!r}] = {v!r}"


@mutator("sparse_entries", "codec_meta")
def _sparse_entries(ctx: Ctx):
    t = ctx.tensor(pred=lambda t: t.get("codec") in ("sparse", "deep"))
    key = ctx.rng.choice(["entries", "nnz", "index_bits", "codebook_size", "value_bits", "alphabet"])
    v = ctx.rng.choice([2**40, 10**9, 0, -1, 63, 64, 17])
    t["meta"][key] = v
    return ctx.pack(), f"tensor {t['name']!r} ({t['codec']}) meta[{key!r}] = {v}"


@mutator("lowbit_width", "codec_meta")
def _lowbit_width(ctx: Ctx):
    t = ctx.tensor(pred=lambda t: t.get("codec") in ("lut", "int", "pow2", "shift"))
    key = ctx.rng.choice([k for k in ("width", "k", "n", "n_max", "n_min", "range") if k in t["meta"]])
    v = ctx.rng.choice([2**40, 10**6, 0, -1, 63, 64, 200, -200])
    t["meta"][key] = v
    return ctx.pack(), f"tensor {t['name']!r} ({t['codec']}) meta[{key!r}] = {v}"


# section table (header written as raw JSON, CRCs of the designated bytes recomputed)
def _table_mutator(name: str, edit: Callable[[Ctx, list, bytes], Any], value_edit_default: bool = False):
    def fn(ctx: Ctx):
        table = section_table(ctx.sections)
        data = b"".join(ctx.sections.values())
        out = edit(ctx, table, data)
        desc, value_edit = out if isinstance(out, tuple) else (out, value_edit_default)
        for e in table:  # the attacker recomputes the CRC of what each entry designates
            try:
                off, ln = int(e["offset"]), int(e["length"])
                if 0 <= off and ln >= 0 and off + ln <= len(data):
                    e["crc32"] = zlib.crc32(data[off:off + ln])
            except (TypeError, ValueError, KeyError):
                pass
        return ctx.pack_text(json.dumps(ctx.meta, separators=(",", ":")), table=table), desc, value_edit
    mutator(name, "section_table", value_edit_default)(fn)


def _pick2(ctx: Ctx, table: list) -> tuple[dict, dict]:
    if len(table) < 2:
        raise NotApplicable("one section")
    return tuple(ctx.rng.sample(table, 2))


def _t_overlap(ctx, table, data):
    a, b = _pick2(ctx, table)
    b["offset"] = a["offset"] + ctx.rng.randrange(max(1, a["length"]))
    b["length"] = min(b["length"], len(data) - b["offset"])
    return f"section {b['name']!r} moved to offset {b['offset']} inside {a['name']!r}"


def _t_len_odd(ctx, table, data):
    e = ctx.rng.choice(table)
    d = ctx.rng.choice([-3, -2, -1, 1, 2, 3])
    e["length"] = max(0, e["length"] + d)
    return f"section {e['name']!r} length {d:+d}"


def _t_swap_names(ctx, table, data):
    a, b = _pick2(ctx, table)
    a["name"], b["name"] = b["name"], a["name"]
    # bytes moved between sections of one size cannot be told from a value edit
    return f"sections {a['name']!r} and {b['name']!r} swapped in the table", a["length"] == b["length"]


def _t_drop(ctx, table, data):
    e = ctx.rng.choice(table)
    table.remove(e)
    return f"section {e['name']!r} dropped from the table (bytes kept)"


def _t_dup_name(ctx, table, data):
    a, b = _pick2(ctx, table)
    table.append({**b, "name": a["name"]})
    return f"second table entry named {a['name']!r} pointing at {b['name']!r}'s bytes"


def _t_huge(ctx, table, data):
    e = ctx.rng.choice(table)
    key = ctx.rng.choice(["offset", "length", "crc32"])
    v = ctx.rng.choice([2**63, 2**64, -1, -(2**63), 2**40, 2**200])
    e[key] = v
    return f"section {e['name']!r} {key} = {v}"


def _t_types(ctx, table, data):
    i = ctx.rng.randrange(len(table))
    choice = ctx.rng.randrange(4)
    if choice == 0:
        table[i]["name"] = ctx.rng.choice([1, None, ["a"], {"a": 1}])
        return f"section #{i} name = {table[i]['name']!r}"
    if choice == 1:
        table[i]["offset"] = str(table[i]["offset"]) + ctx.rng.choice(["", ".0", "e0"])
        return f"section #{i} offset = {table[i]['offset']!r}"
    if choice == 2:
        table[i]["length"] = float(table[i]["length"]) + ctx.rng.choice([0.0, 0.5])
        return f"section #{i} length = {table[i]['length']!r}"
    table[i] = ctx.rng.choice([[], "x", None, 5])
    return f"section entry #{i} = {table[i]!r}"


_table_mutator("table_overlap", _t_overlap)
_table_mutator("table_length_not_mult4", _t_len_odd)
_table_mutator("table_swap_names", _t_swap_names)
_table_mutator("table_drop_entry", _t_drop)
_table_mutator("table_duplicate_name", _t_dup_name)
_table_mutator("table_huge_values", _t_huge)
_table_mutator("table_wrong_types", _t_types)


@mutator("table_gap_and_reorder", "section_table")
def _table_gap(ctx: Ctx):
    """Valid but unusual layout: garbage before and between sections, reversed order."""
    items = list(ctx.sections.items())[::-1]
    data, table = bytearray(), []
    for name, payload in items:
        data += bytes(ctx.rng.randrange(256) for _ in range(ctx.rng.randrange(8)))
        table.append({"name": name, "offset": len(data), "length": len(payload), "crc32": zlib.crc32(payload)})
        data += payload
    text = json.dumps({"meta": ctx.meta, "sections": table}, separators=(",", ":"))
    return assemble(text.encode(), bytes(data)), "sections reversed with gaps of garbage between them"


# sections themselves (re-packed: table and CRCs consistent)
@mutator("section_drop", "section")
def _section_drop(ctx: Ctx):
    name = ctx.section_name()
    del ctx.sections[name]
    return ctx.pack(), f"section {name!r} removed"


@mutator("section_rename", "section")
def _section_rename(ctx: Ctx):
    name = ctx.section_name()
    new = ctx.rng.choice(["x", "", name + ".x", "t0.data"])
    if new in ctx.sections:
        raise NotApplicable("exists")
    ctx._sections = {new if k == name else k: v for k, v in ctx.sections.items()}
    return ctx.pack(), f"section {name!r} renamed {new!r}"


@mutator("section_redirect", "section")
def _section_redirect(ctx: Ctx):
    t = ctx.tensor(pred=lambda t: isinstance(t.get("sections"), dict) and t["sections"])
    key = ctx.rng.choice(list(t["sections"]))
    other = ctx.section_name()
    if t["sections"][key] == other:
        raise NotApplicable("same")
    t["sections"][key] = other
    return ctx.pack(), f"tensor {t['name']!r} ({t['codec']}) section {key!r} -> {other!r}"


def _payload_mutator(name: str, edit: Callable[[random.Random, bytes], bytes], value_edit: bool = False):
    def fn(ctx: Ctx):
        sec = ctx.section_name()
        old = ctx.sections[sec]
        new = edit(ctx.rng, old)
        if new == old:
            raise NotApplicable("unchanged")
        ctx.sections[sec] = new
        owner = next((f"{t['name']} ({t['codec']})" for t in ctx.meta.get("tensors", [])
                      if isinstance(t, dict) and sec in (t.get("sections") or {}).values()), "?")
        return ctx.pack(), f"section {sec!r} of {owner}: {len(old)} -> {len(new)} bytes"
    mutator(name, "payload", value_edit)(fn)


def _flip(r: random.Random, b: bytes) -> bytes:
    if not b:
        return b
    out = bytearray(b)
    for _ in range(r.choice([1, 1, 2, 8])):
        i = r.randrange(len(out))
        out[i] ^= 1 << r.randrange(8)
    return bytes(out)


_payload_mutator("payload_bitflip", _flip, value_edit=True)
_payload_mutator("payload_random_bytes", lambda r, b: bytes(r.randrange(256) for _ in b), value_edit=True)
_payload_mutator("payload_fill_ff", lambda r, b: b"\xff" * len(b), value_edit=True)
_payload_mutator("payload_fill_zero", lambda r, b: b"\x00" * len(b), value_edit=True)
_payload_mutator("payload_truncate", lambda r, b: b[:r.randrange(len(b))] if b else b)
_payload_mutator("payload_extend", lambda r, b: b + bytes(r.randrange(256) for _ in range(r.choice([1, 3, 4, 64]))))
_payload_mutator("payload_double", lambda r, b: b + b)
_payload_mutator("payload_empty", lambda r, b: b"")


@mutator("payload_float_special", "payload", value_edit=True)
def _float_special(ctx: Ctx):
    """NaN / inf / huge values written into float32 storage (raw/fp16/bf16/scales/codebooks)."""
    cands = []
    for t in ctx.meta.get("tensors", []):
        for key, sec in (t.get("sections") or {}).items():
            if t["codec"] == "raw" and t["dtype"] in ("float32", "float16", "bfloat16") or key in ("scale", "codebook") \
                    or t["codec"] in ("fp16", "bf16", "sparse") and key in ("data", "values"):
                cands.append((t, key, sec))
    if not cands:
        raise NotApplicable("no float section")
    t, key, sec = ctx.rng.choice(cands)
    data = bytearray(ctx.sections[sec])
    width = 2 if t["codec"] in ("fp16", "bf16") or (t["codec"] == "raw" and t["dtype"] != "float32") \
        or (key == "codebook" and t["meta"].get("codebook_dtype") == "float16") else 4
    if len(data) < width:
        raise NotApplicable("empty")
    special = ctx.rng.choice(["nan", "inf", "-inf", "huge"])
    if width == 4:
        val = struct.pack("<f", {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": 3e38}[special])
    elif t["codec"] == "bf16" or t["dtype"] == "bfloat16":
        val = struct.pack("<f", {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": 3e38}[special])[2:]
    else:
        val = struct.pack("<e", {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": 65504.0}[special])
    i = ctx.rng.randrange(len(data) // width) * width
    data[i:i + width] = val
    ctx.sections[sec] = bytes(data)
    return ctx.pack(), f"tensor {t['name']!r} ({t['codec']}) section {key!r}: value #{i // width} = {special}"


@mutator("hash_seed_payload", "record_hashed", value_edit=True)
def _hash_seed_payload(ctx: Ctx):
    t = ctx.tensor(pred=lambda t: str(t.get("name", "")).endswith("hash_seed"))
    v = ctx.rng.choice([2**62, -1, -(2**63), 2**63 - 1, 2**40])
    sec = t["sections"]["data"]
    ctx.sections[sec] = struct.pack("<q", v)
    return ctx.pack(), f"{t['name']} stored value = {v}"


# raw bytes with the CRCs recomputed by hand
@mutator("raw_reserved_nonzero", "raw_bytes")
def _reserved(ctx: Ctx):
    v = ctx.rng.choice([1, 0x8000, 0xFFFF])
    blob = bytearray(ctx.blob)
    struct.pack_into("<H", blob, 6, v)
    return fix_crcs(bytes(blob)), f"reserved header field = {v:#x}"


@mutator("raw_version", "raw_bytes")
def _version(ctx: Ctx):
    v = ctx.rng.choice([0, 2, 0xFFFF])
    blob = bytearray(ctx.blob)
    struct.pack_into("<H", blob, 4, v)
    return fix_crcs(bytes(blob)), f"format version = {v}"


@mutator("raw_trailing_bytes", "raw_bytes")
def _trailing(ctx: Ctx):
    n = ctx.rng.choice([1, 4, 1000, 100_000])
    extra = bytes(ctx.rng.randrange(256) for _ in range(min(n, 1000))) * max(1, n // 1000)
    return fix_crcs(ctx.blob[:-4] + extra + b"\0\0\0\0"), f"{len(extra)} bytes appended after the last section"


@mutator("raw_header_length_lie", "raw_bytes")
def _hlen_lie(ctx: Ctx):
    magic, version, reserved, hlen, _ = _FIXED.unpack_from(ctx.blob, 0)
    d = ctx.rng.choice([-1, 1, 7, -hlen, 2**32])
    new = max(0, hlen + d)
    rest = ctx.blob[_FIXED.size:-4]
    body = _FIXED.pack(magic, version, reserved, new, zlib.crc32(rest[:new])) + rest
    return body + struct.pack("<I", zlib.crc32(body)), f"header length {hlen} -> {new} (CRCs recomputed)"


@mutator("raw_bitflip_fix_crcs", "raw_bytes", value_edit=True)
def _raw_flip(ctx: Ctx):
    blob = bytearray(ctx.blob)
    lo = _FIXED.size + _FIXED.unpack_from(ctx.blob, 0)[3]
    if ctx.rng.random() < 0.3:
        lo = _FIXED.size  # the compressed header too
    if len(blob) - 4 <= lo:
        raise NotApplicable("no data")
    i = ctx.rng.randrange(lo, len(blob) - 4)
    blob[i] ^= 1 << ctx.rng.randrange(8)
    return fix_crcs(bytes(blob)), f"bit flipped at byte {i} (all CRCs recomputed)"


@mutator("raw_truncate_fix_crc", "raw_bytes")
def _raw_trunc(ctx: Ctx):
    n = len(ctx.blob) - 4
    cut = ctx.rng.choice([ctx.rng.randrange(n), n - 1, _FIXED.size, 3])
    body = ctx.blob[:cut]
    return body + struct.pack("<I", zlib.crc32(body)), f"truncated to {cut} bytes (+ file CRC)"


@mutator("header_not_zlib", "raw_bytes")
def _header_not_zlib(ctx: Ctx):
    text = json.dumps({"meta": ctx.meta, "sections": section_table(ctx.sections)}).encode()
    data = b"".join(ctx.sections.values())
    kind = ctx.rng.choice(["plain", "random", "zlib_trailing", "zlib_truncated"])
    if kind == "plain":
        return assemble(text, data, compress=False), "header stored as plain JSON (not deflated)"
    if kind == "random":
        junk = bytes(ctx.rng.randrange(256) for _ in range(200))
        return assemble(junk, data, compress=False), "header = 200 random bytes"
    z = zlib.compress(text, 9)
    if kind == "zlib_trailing":
        return assemble(z + b"garbage" * 10, data, compress=False), "junk after the deflated header"
    return assemble(z[:len(z) // 2], data, compress=False), "deflated header cut in half"


@mutator("header_bad_utf8", "raw_bytes")
def _bad_utf8(ctx: Ctx):
    path = ctx.leaf()
    text = ctx.meta_text_with(path, '"\x00SPLIT\x00"').encode()
    text = text.replace(b"\x00SPLIT\x00", ctx.rng.choice([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"]))
    table = json.dumps(section_table(ctx.sections)).encode()
    return (assemble(b'{"meta":' + text + b',"sections":' + table + b"}", b"".join(ctx.sections.values())),
            f"{_fmt_path(path)} holds invalid UTF-8")


@mutator("header_large_90kb", "header_size")
def _header_large(ctx: Ctx):
    filler = base64.b64encode(bytes(ctx.rng.randrange(256) for _ in range(68_000))).decode()
    md = ctx.meta.setdefault("metadata", {})
    if not isinstance(md, dict):
        raise NotApplicable("metadata not a dict")
    md["fuzz_filler"] = filler
    return ctx.pack(), f"metadata filler of {len(filler)} incompressible chars"


@mutator("header_inflate_bomb", "header_size")
def _inflate_bomb(ctx: Ctx):
    n = ctx.rng.choice([63, 65, 200]) << 20
    text = json.dumps({"meta": ctx.meta, "sections": section_table(ctx.sections)}).encode()
    key = (zlib.crc32(text), n)
    if key not in _BOMBS:  # the same seed gives the same bomb: deflate it once
        z = zlib.compressobj(1)
        parts = [z.compress(text[:-1])]
        chunk = b" " * (1 << 20)
        parts += [z.compress(chunk) for _ in range(n >> 20)]
        _BOMBS[key] = b"".join(parts) + z.compress(b"}") + z.flush()
    return assemble(_BOMBS[key], b"".join(ctx.sections.values()), compress=False), \
        f"header inflates to {(len(text) + n) >> 20} MiB (whitespace)"


_BOMBS: dict[tuple[int, int], bytes] = {}


@mutator("header_many_items", "header_size")
def _many_items(ctx: Ctx):
    n = ctx.rng.choice([10**5, 10**6, 2 * 10**6])
    ctx.meta.setdefault("metadata", {})["fuzz_list"] = [0] * n if isinstance(ctx.meta.get("metadata"), dict) else None
    return ctx.pack(), f"metadata list of {n} zeros"


# tensor table
@mutator("tensor_drop", "tensor_table")
def _tensor_drop(ctx: Ctx):
    t = ctx.tensor()
    ctx.meta["tensors"].remove(t)
    return ctx.pack(), f"tensor entry {t['name']!r} removed"


@mutator("tensor_duplicate", "tensor_table")
def _tensor_dup(ctx: Ctx):
    t = ctx.tensor()
    n = ctx.rng.choice([1, 1, 5000])
    ctx.meta["tensors"].extend(copy.deepcopy(t) for _ in range(n))
    return ctx.pack(), f"tensor entry {t['name']!r} repeated {n} more times"


@mutator("tensor_rename", "tensor_table")
def _tensor_rename(ctx: Ctx):
    t = ctx.tensor()
    others = [u["name"] for u in ctx.meta["tensors"] if isinstance(u, dict) and u is not t]
    new = ctx.rng.choice(["fc9.weight", "", "__class__", t["name"] + ".x", "weight", *others[:3]])
    old, t["name"] = t["name"], new
    return ctx.pack(), f"tensor {old!r} renamed {new!r}"


@mutator("tensor_swap_names", "tensor_table")
def _tensor_swap(ctx: Ctx):
    ts = [t for t in ctx.meta["tensors"] if isinstance(t, dict)]
    a, b = ctx.rng.sample(ts, 2)
    a["name"], b["name"] = b["name"], a["name"]
    same = all(a.get(k) == b.get(k) for k in ("codec", "shape", "dtype"))  # then only values move
    return ctx.pack(), f"tensor names {a['name']!r} and {b['name']!r} swapped (shapes follow the data)", same


@mutator("tensor_clone_other", "tensor_table")
def _tensor_clone(ctx: Ctx):
    """One tensor's entry takes another's codec/shape/dtype/meta/sections (name kept)."""
    ts = [t for t in ctx.meta["tensors"] if isinstance(t, dict)]
    a, b = ctx.rng.sample(ts, 2)
    for k in ("codec", "shape", "dtype", "meta", "sections"):
        a[k] = copy.deepcopy(b[k])
    return ctx.pack(), f"tensor {a['name']!r} given the data of {b['name']!r}"


# records: activations
def _act_mutator(name: str, edit: Callable[[random.Random, dict, str], Any], value_edit_default: bool = False):
    def fn(ctx: Ctx):
        acts = ctx.record("activations")
        if not isinstance(acts, dict):
            raise NotApplicable("not a dict")
        layer = ctx.rng.choice(list(acts))
        kind = acts[layer].get("kind") if isinstance(acts[layer], dict) else None
        out = edit(ctx.rng, acts, layer)
        desc, value_edit = out if isinstance(out, tuple) else (out, value_edit_default)
        return ctx.pack(), f"activations[{layer!r}] ({kind}): {desc}", value_edit
    mutator(name, "record_activations", value_edit_default)(fn)


def _set_act(key: str, values: list):
    def edit(r, acts, layer):
        v = r.choice(values)
        acts[layer][key] = v
        finite = isinstance(v, float) and math.isfinite(v) and abs(v) < 1e30  # a plausible range
        return f"{key} = {_short(v)}", finite and key in ("lo", "hi")
    return edit


def _act_rename(r, acts, layer):
    new = r.choice(["fc9", "", "fc1.weight", "layers.99.conv1", "drop0", "pool", "fc1.0"])
    acts[new] = acts.pop(layer)
    return f"moved to layer {new!r}"


def _act_kind(r, acts, layer):
    new = r.choice(["sign", "xnor", "dorefa", "affine", "linear", "log", "none", "pickle", None, 3])
    acts[layer]["kind"] = new
    return f"kind = {new!r}"


def _act_extra(r, acts, layer):
    k = r.choice(["foo", "calibrating", "training", "lo"])
    acts[layer][k] = r.choice([1, True, "x"])
    return f"extra param {k!r}"


def _act_not_dict(r, acts, layer):
    acts[layer] = r.choice([[], "xnor", None, 4])
    return f"spec = {acts[layer]!r}"


_act_mutator("act_bits_2**40", _set_act("bits", [2**40, 10**6, 2**63]))
_act_mutator("act_bits_-1", _set_act("bits", [-1, 0, -(2**40)]))
_act_mutator("act_bits_type", _set_act("bits", [2.5, "8", None, [], True, 64, 1024]))
_act_mutator("act_range", _set_act("lo", [math.inf, -math.inf, math.nan, 1e308, -1e308, 0.0, 5.0, "x", None]))
_act_mutator("act_range_hi", _set_act("hi", [math.inf, math.nan, 1e308, -1e308, 0.0, -5.0, 1e-45]))
_act_mutator("act_kind_swap", _act_kind)
_act_mutator("act_layer_unknown", _act_rename)
_act_mutator("act_extra_param", _act_extra)
_act_mutator("act_spec_not_dict", _act_not_dict)


@mutator("act_ternary_levels", "record_activations")
def _act_ternary_levels(ctx: Ctx):
    """A TNN ternary activation's level beyond any calibrated input (2^32), or levels off the
    two shapes its fit writes (c = 0 with delta <= a; c = a, delta = a/2): all implausible."""
    acts = ctx.record("activations")
    layers = [n for n, s in acts.items() if isinstance(s, dict) and s.get("kind") == "ternary"]
    if not layers:
        raise NotApplicable("no ternary activation")
    layer = ctx.rng.choice(layers)
    spec = acts[layer]
    if ctx.rng.random() < 0.5:
        key = ctx.rng.choice(["alpha", "center", "delta"])
        spec[key] = ctx.rng.choice([2.0**40, 1e20, -(2.0**33), 1.5 * 2.0**32, 2**40])
        return ctx.pack(), f"activations[{layer!r}] (ternary): {key} = {_short(spec[key])}"
    a = float(spec.get("alpha", 1.0)) if isinstance(spec.get("alpha"), (int, float)) else 1.0
    if spec.get("center") == 0:  # centred codes: a threshold above the level, or a centre moved
        spec.update(ctx.rng.choice([{"delta": 3 * a}, {"center": 0.5 * a}]))
    else:  # levels {0, a, 2a}: centre or threshold moved off c = a, delta = a/2
        spec.update(ctx.rng.choice([{"center": 5 * a}, {"delta": 3 * a, "center": 0.0}, {"delta": 0.1 * a}]))
    return ctx.pack(), f"activations[{layer!r}] (ternary): levels {_short(spec)}"


@mutator("act_range_raw_inf", "record_activations")
def _act_range_raw(ctx: Ctx):
    acts = ctx.record("activations")
    layers = [n for n, s in acts.items() if isinstance(s, dict) and "lo" in s]
    if not layers:
        raise NotApplicable("no range")
    layer = ctx.rng.choice(layers)
    key = ctx.rng.choice(["lo", "hi"])
    raw = ctx.rng.choice(["1e400", "-1e400", "NaN"])
    return (ctx.pack_text(ctx.meta_text_with(("activations", layer, key), raw)),
            f"activations[{layer!r}].{key} = {raw} (raw)")


@mutator("act_on_every_module", "record_activations")
def _act_everywhere(ctx: Ctx):
    arch = ctx.meta.get("arch") or {}
    names = ["", "fc1", "fc2", "fc3", "conv1", "conv2", "layers", "layers.0", "bn1", "fc", "drop0"]
    spec = ctx.rng.choice([{"kind": "xnor"}, {"kind": "dorefa", "bits": 2}, {"kind": "sign"},
                           {"kind": "affine", "bits": 8, "lo": -1.0, "hi": 1.0}])
    ctx.meta["activations"] = {n: dict(spec) for n in names}
    return ctx.pack(), f"activation {spec} on modules {names} of {arch.get('name')}"


# records: hashed
def _hashed_layers(ctx: Ctx) -> dict:
    arch = ctx.meta.get("arch")
    if not isinstance(arch, dict) or arch.get("name") != "hashed":
        raise NotApplicable("not hashed")
    return arch["kwargs"]["layers"]


@mutator("hash_seed_2**70", "record_hashed")
def _hash_seed(ctx: Ctx):
    layers = _hashed_layers(ctx)
    name = ctx.rng.choice(list(layers))
    v = ctx.rng.choice([2**70, -(2**70), 2**63, -1, 1.5, "3"])
    layers[name]["seed"] = v
    return ctx.pack(), f"hashed layer {name!r} seed = {v!r}"


@mutator("hash_in_out_1e9", "record_hashed")
def _hash_inout(ctx: Ctx):
    layers = _hashed_layers(ctx)
    name = ctx.rng.choice(list(layers))
    key = ctx.rng.choice(["in", "out"])
    v = ctx.rng.choice([10**9, 2**31, 46341, 2**16, 0, -1])
    layers[name][key] = v
    return ctx.pack(), f"hashed layer {name!r} {key} = {v}"


@mutator("hash_buckets", "record_hashed")
def _hash_buckets(ctx: Ctx):
    layers = _hashed_layers(ctx)
    name = ctx.rng.choice(list(layers))
    v = ctx.rng.choice([0, -1, 10**9, 2**40, 1, 1.5, "10"])
    layers[name]["buckets"] = v
    return ctx.pack(), f"hashed layer {name!r} buckets = {v!r}"


@mutator("hash_record_structure", "record_hashed")
def _hash_structure(ctx: Ctx):
    kw = ctx.meta["arch"]["kwargs"] if _hashed_layers(ctx) is not None else None
    choice = ctx.rng.randrange(5)
    if choice == 0:
        kw["base"] = {"name": "hashed", "kwargs": copy.deepcopy(kw)}
        return ctx.pack(), "hashed base = another hashed record"
    if choice == 1:
        new = ctx.rng.choice(["fc9", "", "fc1.weight", "drop0", "fc1.bias"])
        kw["layers"][new] = kw["layers"].pop(next(iter(kw["layers"])))
        return ctx.pack(), f"hashed layer renamed {new!r}"
    if choice == 2:
        kw["layers"][next(iter(kw["layers"]))]["sign_hash"] = ctx.rng.choice(["no", None, [], 2])
        return ctx.pack(), "hashed sign_hash of a wrong type"
    if choice == 3:
        kw["layers"] = ctx.rng.choice([[], "fc1", None, {"fc1": None}])
        return ctx.pack(), f"hashed layers = {kw['layers']!r}"
    kw["base"]["kwargs"] = {"in_features": 10**8}
    return ctx.pack(), "hashed base kwargs in_features = 10**8"


# records: low rank
def _lowrank_mutator(name: str, edit: Callable[[random.Random, dict, str], str]):
    def fn(ctx: Ctx):
        rec = ctx.record("lowrank")
        layer = ctx.rng.choice(list(rec))
        desc = f"lowrank[{layer!r}] ({rec[layer].get('method')}): " + edit(ctx.rng, rec, layer)
        return ctx.pack(), desc
    mutator(name, "record_lowrank")(fn)


def _lr_rank_huge(r, rec, layer):
    ranks = rec[layer]["ranks"]
    i = r.randrange(len(ranks))
    ranks[i] = r.choice([10**9, 2**40, 2**63, 5000, 4096])
    return f"ranks = {ranks}"


def _lr_rank_small(r, rec, layer):
    ranks = rec[layer]["ranks"]
    ranks[r.randrange(len(ranks))] = r.choice([0, -1, 1.5, "2", None])
    return f"ranks = {ranks}"


def _lr_method(r, rec, layer):
    new = r.choice(["svd", "separable", "tucker2", "cp", "btd", "qr", None])
    rec[layer]["method"] = new
    return f"method = {new!r}"


def _lr_geometry(r, rec, layer):
    g = rec[layer]["geometry"]
    key = r.choice([k for k in ("in", "out", "kernel", "stride", "padding", "dilation", "type", "bias") if k in g])
    v = {"in": r.choice([10**9, 0, -1, 5000]), "out": r.choice([10**9, 0, -1, 5000]),
         "kernel": r.choice([[10**5, 10**5], [0, 0], [3], [-1, -1], [5000, 1]]),
         "stride": r.choice([[0, 0], [-1, -1], [10**9, 1]]), "padding": r.choice([[-5, -5], [10**6, 10**6]]),
         "dilation": r.choice([[0, 0], [10**6, 1]]), "type": r.choice(["linear", "conv2d", "lstm"]),
         "bias": r.choice([False, True, "x"])}[key]
    g[key] = v
    return f"geometry[{key!r}] = {v!r}"


def _lr_groups(r, rec, layer):
    v = r.choice([10**9, 0, -1, 2, 3, 1.5])
    rec[layer]["groups"] = v
    return f"groups = {v!r}"


def _lr_layer(r, rec, layer):
    new = r.choice(["fc9", "", "pool", "fc1.0", "layers.99", "conv1.weight"])
    rec[new] = rec.pop(layer)
    return f"moved to layer {new!r}"


def _lr_shape(r, rec, layer):
    v = r.choice([None, [], "svd", {"method": "svd"}])
    rec[layer] = v
    return f"record = {v!r}"


_lowrank_mutator("lowrank_rank_huge", _lr_rank_huge)
_lowrank_mutator("lowrank_rank_small", _lr_rank_small)
_lowrank_mutator("lowrank_method_swap", _lr_method)
_lowrank_mutator("lowrank_geometry", _lr_geometry)
_lowrank_mutator("lowrank_groups", _lr_groups)
_lowrank_mutator("lowrank_layer_unknown", _lr_layer)
_lowrank_mutator("lowrank_record_type", _lr_shape)


# records: removed blocks
@mutator("removed_blocks_edit", "record_blocks")
def _blocks(ctx: Ctx):
    blocks = ctx.record("removed_blocks")
    choice = ctx.rng.randrange(6)
    if choice == 0:
        v = blocks + [ctx.rng.choice(["layers.99", "fc", "conv1", "", "layers", "layers.0.conv1", "layers.0.shortcut"])]
    elif choice == 1:
        v = blocks + blocks[:1]
    elif choice == 2:
        v = blocks[0]  # a string: iterated by character
    elif choice == 3:
        v = ["layers.0"] * 100_000
    elif choice == 4:
        v = [ctx.rng.choice([1, None, ["layers.1"], {"a": 1}])]
    else:
        v = []
    ctx.meta["removed_blocks"] = v
    return ctx.pack(), f"removed_blocks {blocks} -> {_short(v)}"


@mutator("removed_blocks_swap", "record_blocks")
def _blocks_swap(ctx: Ctx):
    blocks = ctx.record("removed_blocks")
    others = [f"layers.{i}" for i in range(6) if f"layers.{i}" not in blocks]
    v = [ctx.rng.choice(others)] + blocks[1:]
    ctx.meta["removed_blocks"] = v
    return ctx.pack(), f"removed_blocks {blocks} -> {v} (another real block)"


# records: architecture
@mutator("arch_kwargs_huge", "record_arch")
def _arch_huge(ctx: Ctx):
    kw = ctx.arch_kwargs()
    name = (ctx.meta["arch"].get("kwargs", {}).get("base") or ctx.meta["arch"]).get("name")
    key = ctx.rng.choice({"lenet300": ["in_features", "num_classes"], "lenet5": ["in_channels", "num_classes"],
                          "resnet20": ["widths", "blocks", "num_classes", "in_channels"]}.get(name, ["num_classes"]))
    v = 10**8 if key != "widths" else ctx.rng.choice([[10**8, 8, 8], [4, 10**5, 8], [10**4] * 3])
    if key == "blocks":
        v = ctx.rng.choice([10**6, 10**4])
    kw[key] = v
    return ctx.pack(), f"arch {name} kwargs[{key!r}] = {v!r}"


@mutator("arch_kwargs_small", "record_arch")
def _arch_small(ctx: Ctx):
    kw = ctx.arch_kwargs()
    key = ctx.rng.choice(list(kw) or ["num_classes"])
    v = ctx.rng.choice([0, -1, -(10**9), 1.5, -0.5])
    kw[key] = v if key != "widths" else [v, 8, 8]
    return ctx.pack(), f"arch kwargs[{key!r}] = {kw[key]!r}"


@mutator("arch_kwargs_type", "record_arch")
def _arch_type(ctx: Ctx):
    kw = ctx.arch_kwargs()
    key = ctx.rng.choice([*kw, "__init__", "self", "evil"])
    v = ctx.rng.choice(["x", None, [], {}, [1, 2], {"a": 1}, True, float("1e300")])
    kw[key] = v
    return ctx.pack(), f"arch kwargs[{key!r}] = {v!r}"


@mutator("arch_dropout_value", "record_arch")
def _arch_dropout(ctx: Ctx):
    kw = ctx.arch_kwargs()
    if "dropout" not in kw:
        raise NotApplicable("no dropout")
    v = ctx.rng.choice([0.0, 0.5, 1.0, 2.0, -1.0, 1e300])
    kw["dropout"] = v
    return ctx.pack(), f"arch dropout = {v}", 0.0 <= v <= 1.0


@mutator("arch_name_swap", "record_arch")
def _arch_name(ctx: Ctx):
    arch = ctx.meta.get("arch")
    if not isinstance(arch, dict):
        raise NotApplicable("no arch")
    new = ctx.rng.choice(["lenet300", "lenet5", "resnet20", "vgg-small", "mobilenet-small", "hashed", "",
                          "os.system", None, 5])
    old, arch["name"] = arch.get("name"), new
    return ctx.pack(), f"arch name {old!r} -> {new!r}"


@mutator("arch_record_type", "record_arch")
def _arch_record(ctx: Ctx):
    v = ctx.rng.choice([None, [], "lenet300", {"name": "lenet300", "kwargs": None}, {"kwargs": {}},
                        {"name": "lenet300", "kwargs": [1]}, {"name": "lenet300", "kwargs": "abc"}])
    ctx.meta["arch"] = v
    return ctx.pack(), f"arch = {v!r}"


# ---- mutation driver --------------------------------------------------------------------


@dataclass
class Job:
    index: int
    seed: str
    mutator: str
    desc: str
    value_edit: bool = False
    path: str = ""


def _parse(blob: bytes) -> tuple[dict | None, dict | None]:
    from nncompress.format.container import unpack_container

    try:
        c = unpack_container(blob)
    except Exception:
        return None, None
    if not isinstance(c.meta, dict):
        return None, dict(c.sections)
    return c.meta, dict(c.sections)


class Mutations:
    """Deterministic mutated file number ``i`` for a campaign seed (same corpus -> same bytes)."""

    def __init__(self, seeds: list[Seed], seed: int, blobs: dict[str, bytes] | None = None,
                 mutators: list[str] | None = None):
        self.seeds, self.seed = seeds, seed
        self.blobs = blobs or {s.name: Path(s.path).read_bytes() for s in seeds}
        self.parsed = {name: _parse(b) for name, b in self.blobs.items()}
        self.names = sorted(mutators or MUTATORS)

    def make(self, i: int) -> tuple[bytes, Job]:
        rng = random.Random(f"nnc-fuzz/{self.seed}/{i}")
        for _ in range(50):  # a mutator kind, then the first seed (in random order) it applies to
            kind = rng.choice(self.names)
            for seed in rng.sample(self.seeds, len(self.seeds)):
                made = self._try(rng, kind, seed)
                if made is not None:
                    value_edit = made[2] if len(made) > 2 else MUTATORS[kind].value_edit
                    return made[0], Job(i, seed.name, kind, made[1], bool(value_edit))
        raise RuntimeError(f"no applicable mutation for file {i}")

    def _try(self, rng: random.Random, kind: str, seed: Seed) -> tuple | None:
        for _ in range(3):
            blob = self.blobs[seed.name]
            meta, sections = self.parsed[seed.name]
            ctx = Ctx(rng, blob, copy.deepcopy(meta), dict(sections) if sections is not None else None)
            try:
                made = MUTATORS[kind].fn(ctx)
            except NotApplicable:
                return None
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                # the seed lacks the structure the mutator edits (e.g. no 'kwargs')
                if isinstance(exc, ValueError) and "sample larger" not in str(exc):
                    raise
                return None
            if made[0] != blob:
                return made
        return None


# ---- worker (subprocess) ---------------------------------------------------------------


def _proc_status(pid: int | str = "self") -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "VmRSS", "VmSize", "VmPeak"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def _frame(fs: traceback.FrameSummary) -> str:
    fn = fs.filename
    for marker in ("/site-packages/", "/src/", "/lib/python"):
        if marker in fn:
            fn = fn.split(marker, 1)[1]
            break
    return f"{fn}:{fs.lineno} ({fs.name})"


_MEMORY_RE = re.compile(r"not enough memory|bad_alloc|Cannot allocate|out of memory|DefaultCPUAllocator"
                        r"|Unable to allocate|allocate memory", re.I)


def _exc_record(exc: BaseException) -> dict[str, Any]:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/nncompress/" in f.filename and "benchmarks/fuzz.py" not in f.filename]
    return {"exc_type": f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
            "message": str(exc)[:400],
            "site": _frame(ours[-1]) if ours else "",
            "origin": _frame(frames[-1]) if frames else "",
            "stack": [_frame(f) for f in (ours or frames)[-6:]]}


def _is_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and bool(_MEMORY_RE.search(str(exc))))


def _check_file(job: dict[str, Any], loader: Callable[[str], Any], format_error: type) -> dict[str, Any]:
    import torch

    import nncompress
    from nncompress.format import load_state, read_info

    path, stage = job["path"], "read_info"
    try:
        if job.get("key"):
            stage = "load(verify_key)"
            model = loader(path)
        else:
            read_info(path)
            stage = "load_state"
            load_state(path)
            stage = "load"
            model = nncompress.load(path)
    except Exception as exc:
        rec = {"stage": stage, **_exc_record(exc)}
        if _is_memory(exc):
            return {"outcome": "memory", **rec}
        return {"outcome": "rejected_formaterror" if isinstance(exc, format_error) else "other_exception", **rec}
    stage = "checks"
    try:
        model.eval()
        tensors = list(model.named_parameters()) + list(model.named_buffers())
        bad = [n for n, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            return {"outcome": "accepted_nonfinite", "stage": stage, "detail": f"non-finite tensors {bad[:5]}"}
        stage = "forward"
        shape = job["shape"]
        with torch.no_grad():
            zero_out = model(torch.zeros(shape))
            out = model(fixed_input(shape))
    except Exception as exc:
        rec = {"stage": stage, **_exc_record(exc)}
        return {"outcome": "memory" if _is_memory(exc) else "accepted_forward_fails", **rec}
    if not isinstance(zero_out, torch.Tensor) or not bool(torch.isfinite(zero_out).all()):
        return {"outcome": "accepted_nonfinite", "stage": stage, "detail": "non-finite output on zeros"}
    ref = torch.tensor(job["ref"], dtype=torch.float32).reshape(job["ref_shape"])
    if isinstance(out, torch.Tensor) and list(out.shape) == list(ref.shape) and torch.equal(out.float(), ref):
        return {"outcome": "accepted_same"}
    detail = f"output shape {list(out.shape)}"
    if isinstance(out, torch.Tensor) and list(out.shape) == list(ref.shape):
        diff = (out.float() - ref).abs()
        detail = f"max |diff| {float(diff.max()):.3g}" + ("" if bool(torch.isfinite(out).all())
                                                           else " (non-finite output on the fixed input)")
    return {"outcome": "accepted_different", "detail": detail}


def worker_main() -> None:
    """Loop of a worker process: one JSON job per stdin line, one JSON result per line on
    the protocol pipe (the original stdout; library output goes to stderr)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import faulthandler

    import torch

    torch.set_num_threads(1)
    import nncompress
    from nncompress.errors import FormatError

    faulthandler.enable(file=sys.stderr)  # a crash prints its Python stack to the worker log
    loader = None
    key_hex = os.environ.get("NNC_FUZZ_KEY")
    if key_hex:
        from nncompress.format import signing

        key = bytes.fromhex(key_hex)
        if hasattr(signing, "load"):
            loader = lambda p: signing.load(p, verify_key=key)  # noqa: E731
        else:
            loader = lambda p: nncompress.load(p, verify_key=key)  # noqa: E731
    base = _proc_status()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = base.get("VmSize", 0) + AS_HEADROOM_BYTES
    if hard == resource.RLIM_INFINITY or limit < hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    proto.write(json.dumps({"ready": True, "base_rss": base.get("VmRSS", 0), "as_limit": limit}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM: the peak of this file alone
        except OSError:
            pass
        # a file about to time out prints its Python stack to the worker log (see _stack_from_log)
        faulthandler.dump_traceback_later(job.get("timeout", FILE_TIMEOUT_S) * 0.8, file=sys.stderr)
        res = _check_file(job, loader, FormatError)
        faulthandler.cancel_dump_traceback_later()
        st = _proc_status()
        res["peak_rss"] = st.get("VmHWM", 0)
        res["peak_over_base"] = st.get("VmHWM", 0) - base.get("VmRSS", 0)
        if res["peak_over_base"] > MEM_FAIL_BYTES and res["outcome"] not in ("memory",):
            res["detail"] = f"peak RSS {res['peak_over_base'] >> 20} MiB over the baseline; was {res['outcome']}"
            res["outcome"] = "memory"
        res["index"] = job["index"]
        proto.write(json.dumps(res) + "\n")


# ---- parent: worker pool ----------------------------------------------------------------


class Worker:
    def __init__(self, wid: int, logdir: Path, env: dict[str, str]):
        self.wid, self.logdir, self.env = wid, logdir, env
        self.proc: subprocess.Popen | None = None
        self.buf = b""
        self.state = "dead"
        self.job: dict[str, Any] | None = None
        self.started = 0.0
        self.base_rss = 0
        self.spawns = 0

    def spawn(self) -> None:
        self.spawns += 1
        self.stderr_path = self.logdir / f"worker{self.wid}.{self.spawns}.log"
        self.stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, str(HERE), "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, env=self.env,
                                     cwd=str(HERE.parent.parent))
        self.buf, self.state, self.started = b"", "starting", time.monotonic()

    def fileno(self) -> int:
        return self.proc.stdout.fileno()

    def send(self, job: dict[str, Any]) -> None:
        self.job, self.state, self.started = job, "busy", time.monotonic()
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()

    def read_lines(self) -> list[str] | None:
        """Complete lines available now; None at EOF (the worker died)."""
        data = os.read(self.fileno(), 1 << 16)
        if not data:
            return None
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return [ln.decode() for ln in lines]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
        if getattr(self, "stderr", None):
            self.stderr.close()
        self.proc, self.state, self.job = None, "dead", None

    def stderr_tail(self, n: int = 600) -> str:
        try:
            self.stderr.flush()
            return self.stderr_path.read_bytes()[-n:].decode(errors="replace")
        except (OSError, ValueError):
            return ""


_TB_LINE = re.compile(r'File "([^"]+)", line (\d+) in (\S+)')


def _stack_from_log(text: str) -> dict[str, Any]:
    """Innermost frames of the last faulthandler dump in a worker log (timeouts, crashes)."""
    starts = [text.rfind(m) for m in ("Timeout (", "Fatal Python error", "Current thread", "Thread 0x")]
    start = max(starts)
    if start < 0:
        return {}
    frames = []
    for path, line, func in _TB_LINE.findall(text[start:]):  # most recent call first
        for marker in ("/site-packages/", "/src/", "/lib/python"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        frames.append(f"{path}:{line} ({func})")
    ours = [f for f in frames if f.startswith("nncompress/")]
    return {"site": ours[0] if ours else "", "origin": frames[0] if frames else "",
            "stack": (ours or frames)[:6][::-1]} if frames else {}


def run_jobs(jobs: Iterator[dict[str, Any]], workers: int, *, timeout: float = FILE_TIMEOUT_S,
             env: dict[str, str] | None = None, on_result: Callable[[dict, dict], None],
             logdir: Path) -> None:
    """Feed jobs to ``workers`` worker processes; ``on_result(job, result)`` per file."""
    env = {**os.environ, **(env or {}), "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    pool = [Worker(i, logdir, env) for i in range(workers)]
    pending = iter(jobs)
    exhausted = False

    def finish(w: Worker, res: dict[str, Any], restart: bool) -> None:
        job = w.job
        if restart:
            w.kill()
        else:
            w.state, w.job = "idle", None
        on_result(job, res)

    try:
        while True:
            for w in pool:
                if w.state == "dead" and not exhausted:
                    w.spawn()
                if w.state == "idle" and not exhausted:
                    job = next(pending, None)
                    if job is None:
                        exhausted = True
                    else:
                        w.send(job)
            active = [w for w in pool if w.state in ("starting", "busy")]
            if exhausted and not any(w.state == "busy" for w in pool):
                break
            if not active:
                continue
            now = time.monotonic()
            wait = min((w.started + (timeout if w.state == "busy" else WORKER_START_S)) - now for w in active)
            ready, _, _ = select.select(active, [], [], max(0.0, min(wait, 0.05)))
            for w in ready:
                lines = w.read_lines()
                if lines is None:  # died
                    if w.state == "busy":
                        rc = w.proc.wait()
                        sig = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
                        tail = w.stderr_tail(6000)
                        finish(w, {"outcome": "crash", "detail": f"worker died ({sig})",
                                   **_stack_from_log(tail), "stderr_tail": tail[-600:]}, restart=True)
                    else:
                        tail = w.stderr_tail(3000)
                        w.kill()
                        raise RuntimeError(f"fuzz worker failed to start:\n{tail}")
                    continue
                for line in lines:
                    msg = json.loads(line)
                    if msg.get("ready"):
                        w.state, w.base_rss = "idle", msg["base_rss"]
                    elif w.state == "busy":
                        finish(w, msg, restart=msg["outcome"] == "memory")
            now = time.monotonic()
            for w in pool:
                if w.state == "busy" and now - w.started > timeout:
                    stack = _stack_from_log(w.stderr_tail(6000))
                    finish(w, {"outcome": "timeout", "detail": f"no result after {timeout:.0f} s", **stack},
                           restart=True)
                elif w.state == "busy":
                    rss = _proc_status(w.proc.pid).get("VmRSS", 0)
                    if rss - w.base_rss > RSS_KILL_BYTES:
                        finish(w, {"outcome": "memory", "detail": f"RSS {rss >> 20} MiB: killed by the parent"},
                               restart=True)
                elif w.state == "starting" and now - w.started > WORKER_START_S:
                    w.kill()
                    raise RuntimeError("fuzz worker did not start in time")
    finally:
        for w in pool:
            if w.proc is not None:
                try:
                    w.proc.stdin.close()
                except OSError:
                    pass
            w.kill()


# ---- campaign ---------------------------------------------------------------------------


def signing_available() -> bool:
    try:
        return importlib.util.find_spec("nncompress.format.signing") is not None
    except (ImportError, ValueError):
        return False


def _signature(rec: dict[str, Any]) -> str:
    msg = re.sub(r"0x[0-9a-f]+|\d+", "N", rec.get("message", rec.get("detail", "")))
    msg = re.sub(r"'[^']*\.nnc'|/\S+\.nnc|\S*/\d+\.nnc", "<file>", msg)
    site = rec.get("site", "")
    if rec["outcome"] in ("timeout", "crash") and len(rec.get("stack") or []) >= 2:
        site = rec["stack"][-2]  # where it was stuck, one frame above the innermost (which varies)
    return " | ".join(x for x in (rec["outcome"], rec.get("exc_type", ""), site, msg[:90]) if x)


def run_campaign(n_files: int, seed: int = 0, workers: int = 2, *, corpus_dir: str | Path | None = None,
                 sign: bool = False, timeout: float = FILE_TIMEOUT_S, mutators: list[str] | None = None,
                 keep_failures: str | Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build (or reuse) the corpus, check that every seed loads as itself, then load
    ``n_files`` mutated files in ``workers`` processes. Returns ``counts`` (category ->
    files), ``by_mutator``, ``by_seed``, ``failures`` (every file that was not
    rejected with FormatError nor accepted with the same output), ``signatures`` and,
    with ``sign``, the same for signed files (``signing``; ``{"skipped": ...}`` when
    ``nncompress.format.signing`` is missing)."""
    import torch

    import nncompress

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="nnc-fuzz-"))
    try:
        seeds = build_corpus(corpus_dir or (work / "corpus"), log=log)
        by_name = {s.name: s for s in seeds}
        key_env: dict[str, str] = {}
        signing_info: dict[str, Any] | None = None
        blobs = None
        if sign:
            if not signing_available():
                signing_info = {"skipped": "nncompress.format.signing is not available"}
                log("signing mode skipped: nncompress.format.signing is missing")
                sign = False
            else:
                from nncompress.format import signing

                signed_dir = work / "signed"
                signed_dir.mkdir()
                blobs = {}
                for s in seeds:
                    out = signed_dir / f"{s.name}.nnc"
                    signing.sign_file(s.path, SIGN_KEY, out=out)
                    blobs[s.name] = out.read_bytes()
                key_env = {"NNC_FUZZ_KEY": SIGN_KEY.hex()}
                signing_info = {"key_bytes": len(SIGN_KEY)}
        mut = Mutations(seeds, seed, blobs, mutators)
        files_dir = work / "files"
        files_dir.mkdir()
        keep = Path(keep_failures) if keep_failures else None
        if keep:
            keep.mkdir(parents=True, exist_ok=True)

        def job_dict(index: int, s: Seed, path: Path) -> dict[str, Any]:
            return {"index": index, "path": str(path), "shape": s.shape, "ref": s.ref,
                    "ref_shape": s.ref_shape, "key": bool(sign), "timeout": timeout}

        # 1. every seed as it is must load and give its reference output
        seed_results: dict[str, dict] = {}
        seed_jobs = []
        for i, s in enumerate(seeds):
            path = files_dir / f"seed{i}.nnc"
            path.write_bytes(blobs[s.name] if blobs else Path(s.path).read_bytes())
            seed_jobs.append(job_dict(-1 - i, s, path))
        run_jobs(iter(seed_jobs), workers, timeout=max(timeout, 30.0), env=key_env, logdir=work,
                 on_result=lambda j, r: seed_results.__setitem__(seeds[-1 - j["index"]].name, r))
        bad = {n: r for n, r in seed_results.items() if r["outcome"] != "accepted_same"}
        if bad:
            raise RuntimeError(f"fuzz harness: seed files do not load as themselves: {json.dumps(bad)[:2000]}")

        # 2. the campaign
        counts = collections.Counter({c: 0 for c in CATEGORIES})
        by_mutator: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        by_seed: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        failures: list[dict[str, Any]] = []
        rejections: collections.Counter = collections.Counter()
        jobs_meta: dict[int, Job] = {}
        progress = {"done": 0, "t": time.monotonic()}

        def jobs() -> Iterator[dict[str, Any]]:
            for i in range(n_files):
                blob, job = mut.make(i)
                path = files_dir / f"{i}.nnc"
                path.write_bytes(blob)
                job.path = str(path)
                jobs_meta[i] = job
                yield job_dict(i, by_name[job.seed], path)

        def on_result(jd: dict[str, Any], res: dict[str, Any]) -> None:
            job = jobs_meta.pop(jd["index"])
            outcome = res["outcome"]
            counts[outcome] += 1
            by_mutator[job.mutator][outcome] += 1
            by_seed[job.seed][outcome] += 1
            if outcome == "rejected_formaterror":
                rejections[_signature(res)] += 1
            if outcome != "rejected_formaterror" and (sign or outcome != "accepted_same"):  # signed: any accept
                rec = {"index": job.index, "seed_file": job.seed, "mutator": job.mutator,
                       "value_edit": job.value_edit, "mutation": job.desc, **res}
                rec["signature"] = _signature(rec)
                failures.append(rec)
                if keep and outcome != "accepted_different":
                    shutil.copy(job.path, keep / f"{job.index}_{outcome}.nnc")
            Path(job.path).unlink(missing_ok=True)
            progress["done"] += 1
            if time.monotonic() - progress["t"] > 30:
                progress["t"] = time.monotonic()
                log(f"  {progress['done']}/{n_files} files, {dict((k, v) for k, v in counts.items() if v)}")

        run_jobs(jobs(), workers, timeout=timeout, env=key_env, logdir=work, on_result=on_result)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    sigs: dict[str, dict[str, Any]] = {}
    for rec in failures:
        if rec["outcome"] == "accepted_different" and rec["value_edit"] and not sign:
            continue  # legitimate without a signature
        g = sigs.setdefault(rec["signature"], {"signature": rec["signature"], "count": 0,
                                                "outcome": rec["outcome"], "exc_type": rec.get("exc_type", ""),
                                                "site": rec.get("site", ""), "origin": rec.get("origin", ""),
                                                "mutators": collections.Counter(), "seeds": collections.Counter(),
                                                "example": rec})
        g["count"] += 1
        g["mutators"][rec["mutator"]] += 1
        g["seeds"][rec["seed_file"]] += 1
    signatures = sorted(sigs.values(), key=lambda g: -g["count"])
    for g in signatures:
        g["mutators"], g["seeds"] = dict(g["mutators"].most_common()), dict(g["seeds"].most_common())
    result = {
        "n_files": n_files, "seed": seed, "workers": workers, "timeout_s": timeout,
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__, "nncompress": nncompress.__version__,
        "nncompress_path": str(Path(nncompress.__file__).resolve().parent),
        "counts": dict(counts),
        "by_mutator": {k: dict(v) for k, v in sorted(by_mutator.items())},
        "by_seed": {k: dict(v) for k, v in sorted(by_seed.items())},
        "corpus": [{k: v for k, v in asdict(s).items() if k not in ("ref", "path")} for s in seeds],
        "signatures": signatures,
        "failures": failures,
        "rejections": dict(rejections.most_common()),
        "signed": bool(sign),
    }
    if signing_info is not None:
        result["signing"] = signing_info
        if sign:
            total = sum(counts.values())
            signing_info.update(total=total, rejected=counts["rejected_formaterror"],
                                rejected_fraction=counts["rejected_formaterror"] / max(1, total))
    return result


# ---- reporting --------------------------------------------------------------------------


_MIXED = ("codec_meta_small_int", "act_range", "act_range_hi", "arch_dropout_value", "int8_exponent",
          "table_swap_names", "tensor_swap_names")
"""Mutators whose value-edit status depends on the value drawn."""
_ABBR = {"rejected_formaterror": "rejected", "other_exception": "other_exc", "accepted_nonfinite": "nonfinite",
         "accepted_forward_fails": "fwd_fails", "accepted_same": "same", "accepted_different": "different"}


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render_markdown(res: dict[str, Any], command: str) -> str:
    n = max(1, sum(res["counts"].values()))
    lines = [f"# .nnc loader fuzz campaign{' (signed files)' if res.get('signed') else ''}", "",
             f"Command: `{command}`  ", f"torch {res['torch']}, nncompress {res['nncompress']}, "
             f"Python {platform.python_version()} (nncompress imported from `{res.get('nncompress_path', '?')}`); "
             f"{res['n_files']} files, seed {res['seed']}, "
             f"{res['workers']} workers, {res['timeout_s']:.0f} s per file, {res['elapsed_s']:.0f} s in all.", ""]
    if res.get("load_avg"):
        lo = res["load_avg"]
        lines += [f"Load average (1/5/15 min) before {lo['before']}, after {lo['after']} (the wall time depends "
                  "on it; the outcomes do not, unless files hit the per-file limit).", ""]
    if res.get("signing"):
        lines += [f"Signing: {res['signing']}", ""]
    lines += ["## Outcomes", "", "| category | files | % |", "|---|---:|---:|"]
    for c in CATEGORIES:
        lines.append(f"| {c} | {res['counts'].get(c, 0)} | {100 * res['counts'].get(c, 0) / n:.1f} |")
    cols = list(CATEGORIES)
    lines += ["", "## Per mutator", "", "value edit: the mutation changes values only (a different output is "
              "legitimate); `different` of other mutators should be 0.", "",
              "| mutator | value edit | files | " + " | ".join(_ABBR.get(c, c) for c in cols) + " |",
              "|---|---|---:|" + "---:|" * len(cols)]
    for kind, cnt in res["by_mutator"].items():
        lines.append(f"| {kind} | {'yes' if MUTATORS[kind].value_edit else 'some' if kind in _MIXED else ''} | "
                     f"{sum(cnt.values())} | "
                     + " | ".join(str(cnt.get(c, 0) or "") for c in cols) + " |")
    lines += ["", "## Per seed file", "", "| seed | files | " + " | ".join(_ABBR.get(c, c) for c in cols) + " |",
              "|---|---:|" + "---:|" * len(cols)]
    for name, cnt in res["by_seed"].items():
        lines.append(f"| {name} | {sum(cnt.values())} | " + " | ".join(str(cnt.get(c, 0) or "") for c in cols) + " |")
    lines += ["", f"## Distinct failure signatures ({len(res['signatures'])})", "",
              "Every outcome that is not a FormatError rejection nor an accepted file of value edits, grouped by "
              "outcome + exception type + innermost nncompress frame + message; most frequent first.", "",
              "| # | files | outcome | exception | raised at (nncompress) / origin | mutators | example |",
              "|---:|---:|---|---|---|---|---|"]
    for i, g in enumerate(res["signatures"], 1):
        ex = g["example"]
        msg = ex.get("message") or ex.get("detail") or ""
        muts = ", ".join(f"{k} ({v})" for k, v in list(g["mutators"].items())[:6])
        where = g["site"] + (f" / {g['origin']}" if g["origin"] and g["origin"] != g["site"] else "")
        lines.append(f"| {i} | {g['count']} | {g['outcome']} | {_md_escape(g['exc_type'])} | {_md_escape(where)} | "
                     f"{_md_escape(muts)} | #{ex['index']} {ex['seed_file']}: {_md_escape(ex['mutation'])} -> "
                     f"`{_md_escape(msg[:160])}` |")
    diff: dict[str, list] = collections.defaultdict(lambda: [0, 0, None])
    for f in res["failures"]:
        if f["outcome"] == "accepted_different":
            row = diff[f["mutator"]]
            row[0 if f["value_edit"] else 1] += 1
            if not f["value_edit"] and row[2] is None:
                row[2] = f
    if diff:
        lines += ["", "## accepted_different by mutator", "",
                  "Value edits may legitimately load as a different model; other edits should not.", "",
                  "| mutator | value edits | other edits | example of another edit |", "|---|---:|---:|---|"]
        for kind, (v, o, ex) in sorted(diff.items(), key=lambda kv: (-kv[1][1], -kv[1][0])):
            e = f"#{ex['index']} {ex['seed_file']}: {_md_escape(ex['mutation'])} ({ex.get('detail', '')})" if ex else ""
            lines.append(f"| {kind} | {v} | {'**' + str(o) + '**' if o else 0} | {e} |")
    if res.get("rejections"):
        lines += ["", "## Most frequent FormatError rejections", "", "| files | rejection |", "|---:|---|"]
        for sig, c in list(res["rejections"].items())[:40]:
            lines.append(f"| {c} | {_md_escape(sig)} |")
    lines += ["", "## Corpus", "", "| seed | bytes | input | codecs | records |", "|---|---:|---|---|---|"]
    for s in res["corpus"]:
        lines.append(f"| {s['name']} | {s['nbytes']} | {s['shape']} | {', '.join(s['codecs'])} | "
                     f"{'; '.join(s['records'])} |")
    lines += ["", f"Mutators ({len(MUTATORS)}): " + ", ".join(sorted(MUTATORS)), "",
              "Rebuild one mutated file: `python benchmarks/fuzz.py --seed SEED --emit INDEX --emit-to x.nnc`.", ""]
    return "\n".join(lines)


def write_results(res: dict[str, Any], out: str | Path, command: str) -> tuple[Path, Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out.with_suffix(".json"), out.with_suffix(".md")
    data = {"command": command, "python": platform.python_version(), **res}
    jpath.write_text(json.dumps(data, indent=1, default=str) + "\n")
    mpath.write_text(render_markdown(res, command))
    return jpath, mpath


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=FILE_TIMEOUT_S, help="seconds per file")
    p.add_argument("--sign", action="store_true", help="mutate signed files, load them with the key")
    p.add_argument("--out", default=str(RESULTS / "fuzz"), help="results prefix (.json and .md are added)")
    p.add_argument("--corpus", default=None, help="directory caching the seed files (default: a temp dir)")
    p.add_argument("--mutators", default=None, help="comma-separated mutator kinds (default: all)")
    p.add_argument("--keep-failures", default=None, help="copy failing files (not 'different') here")
    p.add_argument("--emit", type=int, default=None, help="only write mutated file INDEX (see --emit-to)")
    p.add_argument("--emit-to", default="fuzz-emit.nnc")
    p.add_argument("--list-mutators", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker_main()
        return 0
    if a.list_mutators:
        for name, m in sorted(MUTATORS.items()):
            print(f"{name:28s} {m.group:20s} {'value edit' if m.value_edit else ''}")
        return 0
    mutators = a.mutators.split(",") if a.mutators else None
    if a.emit is not None:
        tmp = None
        corpus = a.corpus or (tmp := tempfile.mkdtemp(prefix="nnc-fuzz-corpus-"))
        seeds = build_corpus(corpus)
        blobs = None
        if a.sign and signing_available():
            from nncompress.format import signing

            blobs = {}
            for s in seeds:
                signing.sign_file(s.path, SIGN_KEY, out=Path(corpus) / f"{s.name}.signed.nnc")
                blobs[s.name] = (Path(corpus) / f"{s.name}.signed.nnc").read_bytes()
        blob, job = Mutations(seeds, a.seed, blobs, mutators).make(a.emit)
        Path(a.emit_to).write_bytes(blob)
        print(f"wrote {a.emit_to}: file #{job.index} = {job.mutator} on {job.seed}: {job.desc}")
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        return 0
    command = "python " + " ".join(shlex.quote(x) for x in [os.path.relpath(HERE), *(argv or sys.argv[1:])])
    if os.environ.get("PYTHONPATH"):
        command = f"PYTHONPATH={shlex.quote(os.environ['PYTHONPATH'])} {command}"
    load_before = os.getloadavg()
    res = run_campaign(a.files, a.seed, a.workers, corpus_dir=a.corpus, sign=a.sign, timeout=a.timeout,
                       mutators=mutators, keep_failures=a.keep_failures)
    res["load_avg"] = {"before": [round(v, 2) for v in load_before],
                       "after": [round(v, 2) for v in os.getloadavg()]}
    jpath, mpath = write_results(res, a.out, command)
    print(render_markdown(res, command).split("## Per mutator")[0])
    print(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
