"""Coding-layer benchmarks: nncompress's codecs side by side with reference libraries.

Run from the repository root::

    python benchmarks/codec.py            # all benchmarks in BENCHES
    python benchmarks/codec.py --n 200000 # smaller inputs

Writes ``benchmarks/results/codec.json`` and ``benchmarks/results/codec.md`` (each
written to a temporary file, then renamed) with the command line and machine info.

Contract for a benchmark: a module-level function ``bench_<name>(n: int, seed: int) ->
dict`` appended to ``BENCHES``; ``main`` passes ``--seed`` and, when given, ``--n`` (else
the function's own default). The returned dict is JSON-serialisable; nested dicts are
flattened into ``a.b`` rows of the Markdown table.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from nncompress.coding.huffman import HuffmanTable, decode, encode, to_bytes

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# acceptance targets of the project (Huffman vs dahuffman, same frequencies)
HUFFMAN_DECODE_SPEEDUP = 20.0
HUFFMAN_ENCODE_SPEEDUP = 10.0
HUFFMAN_BITS_TOLERANCE = 0.005


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Best wall time and best CPU time (seconds) of ``repeats`` calls, and the last result.

    Both coders are single-threaded, so the process CPU time is the work done; it is not
    inflated when other jobs share the cores, which wall time is.
    """
    wall, cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        cpu = min(cpu, time.process_time() - start_cpu)
        wall = min(wall, time.perf_counter() - start)
    return wall, cpu, result


def bench_huffman(n: int = 1_000_000, seed: int = 0) -> dict:
    """Canonical Huffman (``nncompress.coding.huffman``) vs ``dahuffman.HuffmanCodec``.

    Symbols: a Gaussian quantized to 32 levels (sigma = 4 levels, clipped), like k-means
    weight indices. Both coders are built from the same frequencies; dahuffman is given a
    Python list (its native input; the conversion is not timed). Times are the best of
    several runs; speedups are ratios of CPU times (wall-time ratios are reported too).
    """
    from dahuffman import HuffmanCodec

    rng = np.random.default_rng(seed)
    x = np.clip(np.round(rng.normal(0.0, 4.0, n)) + 16, 0, 31).astype(np.int64)  # (n,)
    freqs = np.bincount(x, minlength=32)
    p = freqs[freqs > 0] / n
    entropy_bits = float(-(p * np.log2(p)).sum() * n)

    w_table, t_table, table = best_time(lambda: HuffmanTable.from_frequencies(freqs), 5)
    w_enc, t_enc, stream = best_time(lambda: encode(x, table), 15)
    w_dec, t_dec, out = best_time(lambda: decode(stream, table), 15)
    assert np.array_equal(out, x), "nncompress round trip failed"

    codec = HuffmanCodec.from_frequencies({int(s): int(f) for s, f in enumerate(freqs) if f})
    sym_list = x.tolist()
    w_ref_enc, t_ref_enc, ref_data = best_time(lambda: codec.encode(sym_list), 3)
    w_ref_dec, t_ref_dec, ref_out = best_time(lambda: codec.decode(ref_data), 3)
    assert ref_out == sym_list, "dahuffman round trip failed"
    ref_table = codec.get_code_table()
    ref_bits = sum(int(f) * ref_table[s][0] for s, f in enumerate(freqs) if f)

    bits_diff = stream.nbits / ref_bits - 1.0
    enc_speedup, dec_speedup = t_ref_enc / t_enc, t_ref_dec / t_dec
    return {
        "n": n,
        "seed": seed,
        "alphabet": 32,
        "max_code_length": table.max_length,
        "sync_every": stream.sync_every,
        "entropy_bits": round(entropy_bits),
        "payload_bits": stream.nbits,
        "dahuffman_payload_bits": ref_bits,
        "dahuffman_bytes_with_eof": len(ref_data),
        "payload_bits_vs_dahuffman": round(bits_diff, 6),
        "overhead_bits": {
            "stream": stream.overhead_bits,
            "table": table.overhead_bits,
            "total_serialized_bytes": len(to_bytes(stream, table)),
        },
        "cpu_seconds": {
            "table_build": round(t_table, 6),
            "encode": round(t_enc, 6),
            "decode": round(t_dec, 6),
            "dahuffman_encode": round(t_ref_enc, 6),
            "dahuffman_decode": round(t_ref_dec, 6),
        },
        "wall_seconds": {
            "table_build": round(w_table, 6),
            "encode": round(w_enc, 6),
            "decode": round(w_dec, 6),
            "dahuffman_encode": round(w_ref_enc, 6),
            "dahuffman_decode": round(w_ref_dec, 6),
        },
        "msymbols_per_s": {
            "encode": round(n / t_enc / 1e6, 2),
            "decode": round(n / t_dec / 1e6, 2),
        },
        "encode_speedup": round(enc_speedup, 2),
        "decode_speedup": round(dec_speedup, 2),
        "wall_encode_speedup": round(w_ref_enc / w_enc, 2),
        "wall_decode_speedup": round(w_ref_dec / w_dec, 2),
        "targets": {
            "encode_speedup_min": HUFFMAN_ENCODE_SPEEDUP,
            "decode_speedup_min": HUFFMAN_DECODE_SPEEDUP,
            "bits_tolerance": HUFFMAN_BITS_TOLERANCE,
            "met": bool(enc_speedup >= HUFFMAN_ENCODE_SPEEDUP
                        and dec_speedup >= HUFFMAN_DECODE_SPEEDUP
                        and abs(bits_diff) <= HUFFMAN_BITS_TOLERANCE),
        },
    }


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_text_atomic  # noqa: E402
from kmeans_bench import bench_kmeans  # noqa: E402

BENCHES: list[Callable[..., dict]] = [bench_huffman, bench_kmeans]


def machine_info() -> dict:
    """Versions and hardware the numbers were taken on."""
    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "torch": version("torch"),
        "dahuffman": version("dahuffman"),
        "nncompress": version("nncompress"),
        "load_average_1_5_15min": load,
    }


def flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """``{"a": {"b": 1}}`` -> ``[("a.b", 1)]``."""
    rows = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(flatten(value, name + "."))
        else:
            rows.append((name, value))
    return rows


def to_markdown(report: dict) -> str:
    lines = [
        "# Coding-layer benchmarks",
        "",
        f"Produced by `{report['command']}` at {report['utc']}.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()),
        "",
    ]
    for name, result in report["benchmarks"].items():
        lines += [f"## {name}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in flatten(result)]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=None, help="input size (default: per bench)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    results = {}
    for bench in BENCHES:
        kwargs = {"seed": args.seed} | ({} if args.n is None else {"n": args.n})
        name = bench.__name__.removeprefix("bench_")
        print(f"running {name} ...", flush=True)
        results[name] = bench(**kwargs)
    report = {
        "command": "python " + shlex.join(sys.argv if argv is None else [sys.argv[0], *argv]),
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "benchmarks": results,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out_dir / "codec.json", args.out_dir / "codec.md"
    write_text_atomic(json_path, json.dumps(report, indent=2) + "\n")
    write_text_atomic(md_path, to_markdown(report))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
