"""Search around the built-in recipes (issues 2 and 4): run variants side by side, one
thread each, and tabulate accuracy and size.

* ``R*``: variants of ``deep-compression-lenet300`` (schedule rounds, retraining epochs,
  final sparsity, dense epochs, distillation from the dense model during pruning and
  centroid fine-tuning), each a full ``nncompress run`` in its own process;
* ``D*``: DNS (P5) on LeNet-5 from the cached dense baseline of
  ``benchmarks/sparse_training.py`` (initial cut, weight decay, mask freeze).

    python benchmarks/recipe_search.py [NAME ...] [--seeds 0 1] [--jobs 1]   # default: all variants

``--seeds``: run each recipe variant with these recipe seeds (rows of seed s != 0 are
named ``NAME_s<s>``); ``--jobs``: how many jobs run at once (one torch thread each);
``--branch``: variants that share the dense training stage train it once per seed and
branch from it (``recipe_branch.py``; same result as full runs at one thread, less time).

Writes ``benchmarks/results/recipe_search.json`` and ``.md`` (rows of earlier runs are kept
and replaced by name), and prints the paths.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_text_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
T2 = {"conv1.weight": .6, "conv2.weight": .93, "fc1.weight": .995, "fc2.weight": .92}
T3 = {"conv1.weight": .6, "conv2.weight": .95, "fc1.weight": .997, "fc2.weight": .93}
F974 = {"fc1": 0.974, "fc2": 0.948, "fc3": 0.72}
F975 = {"fc1": 0.975, "fc2": 0.95, "fc3": 0.72}
REALLOC = {"fc1": 0.975, "fc2": 0.93, "fc3": 0.65}  # final sparsities: weights moved from fc1 to fc2/fc3


def _stage(r: dict, name: str) -> dict:
    """The settings of the recipe's first ``name`` stage (edited in place by the variants)."""
    return next(s[name] for s in r["stages"] if name in s)


def _prune(r: dict) -> dict:
    return _stage(r, "prune")


def search_base() -> dict:
    """The recipe every R/K/G/A variant changes: the built-in ``deep-compression-lenet300``
    as it was before it adopted ``A_adjdrop_fin40_lr02_avg10`` (no dropout adjustment, final
    retraining 20 epochs at lr 0.01 without averaging), ``C_i8_cb16`` (fp32 centroids, fp16
    biases) and ``Z_soup4_b6_f975`` (no soup, fc1 at 5 bits cut to 0.973), so rows stay
    comparable."""
    r = yaml.safe_load((ROOT / "src/nncompress/recipes/builtin/deep-compression-lenet300.yaml").read_text())
    p = _prune(r)
    p.pop("adjust_dropout", None)
    p.pop("final_soup", None)  # no soup, fc1 cut to 0.973 and 5-bit as before Z_soup4_b6_f975
    p["schedule"][-1]["fc1"] = 0.973
    _stage(r, "quantize").pop("bits", None)
    p["final_retrain"] = {"epochs": 20, "lr": 0.01, "batch_size": 128, "weight_decay": 5.0e-5}
    _stage(r, "quantize").pop("codebook_dtype", None)  # fp32 centroids
    _stage(r, "encode")["other"] = "fp16"  # and fp16 biases, as then
    return r


BASE = search_base()


def interpolate(schedule: list[dict[str, float]], k: int) -> list[dict[str, float]]:
    """k rounds whose densities follow the schedule's log-density curve, same end points."""
    pts = [{n: math.log(1 - s[n]) for n in s} for s in schedule]
    out = []
    for i in range(k):
        t = i * (len(pts) - 1) / (k - 1)
        j = min(int(t), len(pts) - 2)
        f = t - j
        out.append({n: round(1 - math.exp((1 - f) * pts[j][n] + f * pts[j + 1][n]), 4) for n in pts[0]})
    return out


def recipe_variant(name: str, *, rounds: int | None = None, rt_epochs: float | None = None,
                   fin_epochs: float | None = None, final: dict | None = None,
                   dense_epochs: float | None = None, fin_average: int | None = None,
                   distill: dict | None = None, seed: int | None = None,
                   adjust_dropout: bool | None = None, fin_lr: float | None = None,
                   retrain_extra: dict | None = None, finetune_extra: dict | None = None,
                   quant_extra: dict | None = None, encode_extra: dict | None = None,
                   dense_extra: dict | None = None, final_extra: dict | None = None,
                   dns: dict | None = None, prune_extra: dict | None = None,
                   model_extra: dict | None = None) -> dict:
    r = copy.deepcopy(BASE)
    r["name"] = name
    if seed is not None:
        r["seed"] = seed
    quant = _stage(r, "quantize")
    quant["finetune"].update(finetune_extra or {})
    quant.update(quant_extra or {})
    _stage(r, "encode").update(encode_extra or {})
    if distill is not None:  # K1 from the dense model in every retraining and the centroid fine-tuning
        for st in r["stages"]:
            for key in ("prune", "quantize"):
                if key in st:
                    st[key]["distill"] = dict(distill)
    r["model"]["kwargs"].update(model_extra or {})
    p = _prune(r)
    p.update(prune_extra or {})
    if final is not None:
        p["schedule"][-1] = dict(final)
    if rounds is not None:
        p["schedule"] = interpolate(p["schedule"], rounds)
    if rt_epochs is not None:
        p["retrain"]["epochs"] = rt_epochs
    if fin_epochs is not None:
        p["final_retrain"]["epochs"] = fin_epochs
    if fin_average is not None:
        p["final_retrain"]["average_last"] = fin_average
    if fin_lr is not None:
        p["final_retrain"]["lr"] = fin_lr
    if adjust_dropout is not None:
        p["adjust_dropout"] = adjust_dropout
    for key in ("retrain", "final_retrain"):
        p[key].update(retrain_extra or {})
    p["final_retrain"].update(final_extra or {})
    if dns is not None:  # P5 replaces the cut-and-retrain rounds; the prune stage trims its drift to the final cut
        epochs, frac = dns["epochs"], dns.get("stop_frac", 0.6)
        steps = math.ceil(epochs * 60000 / 128)
        stage = {"sparse_train": {"method": "dns", "params": {
            "sparsity": {f"{k}.weight": v for k, v in dns.get("cut", p["schedule"][-1]).items()},
            "gamma": 1e-4, "power": 1.0, "stop_step": int(frac * steps)},
            "train": {"epochs": epochs, "lr": dns.get("lr", 0.02), "batch_size": 128,
                      "weight_decay": dns.get("weight_decay", 1e-4)}}}
        r["stages"].insert(next(i for i, st in enumerate(r["stages"]) if "prune" in st), stage)
        p["schedule"] = [p["schedule"][-1]]
    if dense_epochs is not None:
        _stage(r, "train")["epochs"] = dense_epochs
    _stage(r, "train").update(dense_extra or {})
    return r


CURRENT = dict(adjust_dropout=True, fin_epochs=40, fin_lr=0.02, fin_average=10)  # the built-in recipe
CB16 = {"codebook_dtype": "float16"}
NO_LS = {"label_smoothing": 0.0}
I8 = {"other": "int8"}  # biases as int8 codes times a power-of-two scale
RECIPES = {
    "R_0_base": {},  # the built-in recipe before this search's adoption (see search_base)
    "R_B_rt8_fin40": dict(rt_epochs=8, fin_epochs=40),
    "R_H_rounds10_rt6_fin40": dict(rounds=10, rt_epochs=6, fin_epochs=40),
    "R_I_rounds10_rt6_fin40_f975": dict(final=F975, rounds=10, rt_epochs=6, fin_epochs=40),
    "R_J_rounds15_rt5_fin40_f975": dict(final=F975, rounds=15, rt_epochs=5, fin_epochs=40),
    "R_K_rounds10_rt8_fin60_f974": dict(final=F974, rounds=10, rt_epochs=8, fin_epochs=60),
    "R_L_K_dense80": dict(final=F974, rounds=10, rt_epochs=8, fin_epochs=60, dense_epochs=80),
    "R_M_I_average20": dict(final=F975, rounds=10, rt_epochs=6, fin_epochs=40, fin_average=20),
    # Distillation (K1) from the dense model in every retraining and the centroid fine-tuning.
    "K_a07_T3": dict(distill={"alpha": 0.7, "temperature": 3.0}),
    "K_a05_T4": dict(distill={"alpha": 0.5, "temperature": 4.0}),
    "K_a09_T2": dict(distill={"alpha": 0.9, "temperature": 2.0}),
    "K_a09_T4": dict(distill={"alpha": 0.9, "temperature": 4.0}),
    "K_a03_T2": dict(distill={"alpha": 0.3, "temperature": 2.0}),
    "K_a05_T1": dict(distill={"alpha": 0.5, "temperature": 1.0}),
    "K_a05_T05": dict(distill={"alpha": 0.5, "temperature": 0.5}),
    "K_a09_T05": dict(distill={"alpha": 0.9, "temperature": 0.5}),
    # Regularisation of the retraining: flips, label smoothing, dropout (P2's adjustment), weight decay.
    "G_hflip": dict(retrain_extra={"hflip": True}, finetune_extra={"hflip": True}),
    "G_hflip_K_a05_T1": dict(retrain_extra={"hflip": True}, finetune_extra={"hflip": True},
                             distill={"alpha": 0.5, "temperature": 1.0}),
    "G_ls01": dict(retrain_extra={"label_smoothing": 0.1}),
    "A_adjdrop": dict(adjust_dropout=True),
    "A_adjdrop_wd0": dict(adjust_dropout=True, retrain_extra={"weight_decay": 0.0}),
    "A_adjdrop_rounds8": dict(adjust_dropout=True, rounds=8),
    "A_adjdrop_realloc": dict(adjust_dropout=True, final=REALLOC),
    "A_adjdrop_fin40": dict(adjust_dropout=True, fin_epochs=40),
    "A_adjdrop_fin40_realloc": dict(adjust_dropout=True, fin_epochs=40, final=REALLOC),
    "A_adjdrop_fin40_lr02": dict(adjust_dropout=True, fin_epochs=40, fin_lr=0.02),
    "A_adjdrop_fin40_rt6": dict(adjust_dropout=True, fin_epochs=40, rt_epochs=6),
    "A_adjdrop_fin40_lr02_dense80": dict(adjust_dropout=True, fin_epochs=40, fin_lr=0.02, dense_epochs=80),
    "A_adjdrop_fin40_lr02_avg10": dict(adjust_dropout=True, fin_epochs=40, fin_lr=0.02, fin_average=10),
    "A_adjdrop_fin60_lr02": dict(adjust_dropout=True, fin_epochs=60, fin_lr=0.02),
    # Bytes saved by half-precision codebooks and 4-bit sharing spent on fewer pruned weights.
    "C_cb16": dict(**CURRENT, quant_extra=CB16),
    "C_cb16_f971": dict(**CURRENT, quant_extra=CB16, final={"fc1": 0.971, "fc2": 0.945, "fc3": 0.72}),
    "C_cb16_b4_f968": dict(**CURRENT, quant_extra={**CB16, "bits": {"fc1": 4}},
                           final={"fc1": 0.968, "fc2": 0.945, "fc3": 0.72}),
    "C_cb16_b4x2_f966": dict(**CURRENT, quant_extra={**CB16, "bits": {"fc1": 4, "fc2": 4}},
                             final={"fc1": 0.966, "fc2": 0.935, "fc3": 0.72}),
    # Distillation from a teacher trained without label smoothing (a smoothed teacher's soft
    # targets carry little information; Mueller et al. 2019), against the same dense run without it.
    "N_nols": dict(**CURRENT, dense_extra=NO_LS),
    "N_nols_K_a05_T4": dict(**CURRENT, dense_extra=NO_LS, distill={"alpha": 0.5, "temperature": 4.0}),
    "N_nols_K_a07_T2": dict(**CURRENT, dense_extra=NO_LS, distill={"alpha": 0.7, "temperature": 2.0}),
    # Stochastic weight averaging (Izmailov et al. 2018): the final retraining at a constant lr,
    # averaging the weights at the ends of the last epochs (instead of cosine to 0 + last 10).
    "W_const005_avg20": dict(**{**CURRENT, "fin_lr": 0.005, "fin_average": 20}, final_extra={"lr_schedule": "constant"}),
    "W_const01_avg20": dict(**{**CURRENT, "fin_lr": 0.01, "fin_average": 20}, final_extra={"lr_schedule": "constant"}),
    "W_const002_avg30": dict(**{**CURRENT, "fin_lr": 0.002, "fin_average": 30}, final_extra={"lr_schedule": "constant"}),
    # Dynamic network surgery (P5) instead of the cut-and-retrain rounds, then the same trim,
    # final retraining, sharing and coding.
    "D_dns30": dict(**CURRENT, dns={"epochs": 30}),
    "D_dns30_deep": dict(**CURRENT, dns={"epochs": 30, "cut": {"fc1": 0.98, "fc2": 0.955, "fc3": 0.72}}),
    # Smaller retraining batches (more, noisier steps for the same epochs).
    "B_bs64": dict(**CURRENT, retrain_extra={"batch_size": 64}),
    "B_bs64_lr01": dict(**{**CURRENT, "fin_lr": 0.01}, retrain_extra={"batch_size": 64, "lr": 0.01}),
    "C_i8_cb16": dict(**CURRENT, quant_extra=CB16, encode_extra=I8),
    "C_i8_cb16_f970": dict(**CURRENT, quant_extra=CB16, encode_extra=I8,
                           final={"fc1": 0.970, "fc2": 0.945, "fc3": 0.72}),
    "C_i8_cb16_b4_f966": dict(**CURRENT, quant_extra={**CB16, "bits": {"fc1": 4}}, encode_extra=I8,
                              final={"fc1": 0.966, "fc2": 0.94, "fc3": 0.72}),
    # Learning-rate rewinding (Renda et al. 2020): every retraining restarts from the dense
    # training's lr (0.05, cosine) instead of fine-tuning at a lower lr.
    "L_rewind05": dict(**{**CURRENT, "fin_lr": 0.05}, quant_extra=CB16, encode_extra=I8, retrain_extra={"lr": 0.05}),
    "L_fin05": dict(**{**CURRENT, "fin_lr": 0.05}, quant_extra=CB16, encode_extra=I8),
    # A better dense starting point: weight averaging over its last 10 epochs, or 1-pixel shifts.
    "V_dense_avg10": dict(**CURRENT, quant_extra=CB16, encode_extra=I8, dense_extra={"average_last": 10}),
    "V_dense_shift1": dict(**CURRENT, quant_extra=CB16, encode_extra=I8, dense_extra={"shift": 1}),
    # Uniform model soup (Wortsman et al. 2022): the final retraining run k times from the same
    # pruned weights (other data orders), the mean of the k results kept.
    "S_soup2": dict(**CURRENT, quant_extra=CB16, encode_extra=I8, prune_extra={"final_soup": 2}),
    "S_soup4": dict(**CURRENT, quant_extra=CB16, encode_extra=I8, prune_extra={"final_soup": 4}),
    # What density buys (bytes aside): stop at the fourth round's sparsities (fc1 4%, fc2 8%).
    "X_dens4": dict(**CURRENT, quant_extra=CB16, encode_extra=I8, final={"fc1": 0.96, "fc2": 0.92, "fc3": 0.7}),
    # Input dropout (pixels dropped before fc1) in the dense training; scaled down by the rule in retraining.
    "X_indrop01": dict(**CURRENT, quant_extra=CB16, encode_extra=I8, model_extra={"input_dropout": 0.1}),
    "X_indrop02": dict(**CURRENT, quant_extra=CB16, encode_extra=I8, model_extra={"input_dropout": 0.2}),
    # The soup with fc1 at 6 bits (5-bit sharing lost the soup's gain; a throw-away probe, not a
    # committed benchmark, shared the same soups at 6 bits with less loss), its bytes paid by
    # cutting fc1 to 0.975 instead of 0.973. The built-in recipe since this session.
    "Z_soup4_b6_f975": dict(**CURRENT, quant_extra={**CB16, "bits": {"fc1": 6}}, encode_extra=I8,
                            prune_extra={"final_soup": 4}, final={"fc1": 0.975, "fc2": 0.945, "fc3": 0.72}),
    "Y_indrop01_soup4": dict(**CURRENT, quant_extra=CB16, encode_extra=I8, model_extra={"input_dropout": 0.1},
                             prune_extra={"final_soup": 4}),
}
DNS = {
    "D3_T2_wd1e-4": dict(t=T2, wd=1e-4),
    "D4_T3_wd1e-4": dict(t=T3, wd=1e-4),
    "D5_T2_wd5e-4": dict(t=T2, wd=5e-4),
    "D6_T2_wd1e-3": dict(t=T2, wd=1e-3),
    "D7_T3_wd1e-3": dict(t=T3, wd=1e-3),
    "D8_T2_wd2e-3": dict(t=T2, wd=2e-3),
}
DNS_EPOCHS, DNS_STOP_EPOCH = 15, 10

DNS_CODE = r'''
import json, math, sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, "benchmarks")
from sparse_training import dense_baseline, run_dns, weight_stats
from nncompress.data import load_dataset
from nncompress.train import evaluate
spec = json.loads(sys.argv[1])
train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
m, dense, _ = dense_baseline("lenet5", train, test)
torch.manual_seed(0)
t = time.time()
res = run_dns(m, train, spec["epochs"], spec["t"], {"sparsity": spec["t"], "weight_decay": spec["wd"],
              "stop_frac": spec["stop"] / spec["epochs"]})
acc = evaluate(res.model, test)["accuracy"]
print(json.dumps({"dense_accuracy": dense, "accuracy": acc, "delta_pt": 100 * (acc - dense),
                  "seconds": time.time() - t, **weight_stats(res.model, 430500)}))
'''


def row_name(name: str, seed: int | None) -> str:
    return f"{name}_s{seed}" if seed else name


def run_recipe_job(name: str, seed: int | None = None) -> dict:
    settings = RECIPES[name]
    r = recipe_variant(name, **settings, seed=seed)
    name = row_name(name, seed)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "r.yaml").write_text(yaml.safe_dump(r))
        t = time.time()
        p = subprocess.run([sys.executable, "-m", "nncompress.cli", "run", str(Path(tmp) / "r.yaml"),
                            "--out", str(Path(tmp) / "m.nnc"), "--report", str(Path(tmp) / "report"), "-q"],
                           env=env, capture_output=True, text=True, cwd=ROOT)
        row = {"name": name, "variant": r["name"], "kind": "lenet300 recipe", "settings": settings,
               "seed": r["seed"], "threads": 1, "via": "full run", "rc": p.returncode,
               "seconds": time.time() - t}
        rep = Path(tmp) / "report" / "report.json"
        if rep.exists():
            j = json.loads(rep.read_text())
            row.update(j["summary"])
            row["after_prune"] = next(s["accuracy"] for s in j["stages"] if s["stage"] == "prune")
        else:
            row["error"] = p.stderr[-1500:]
    return row


def run_branch_job(names: list[str], seed: int | None = None) -> list[dict]:
    """Variants sharing their train stage, trained once and branched (recipe_branch.py)."""
    variants = [{"name": n, "recipe": recipe_variant(n, **RECIPES[n], seed=seed)} for n in names]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "v.json").write_text(json.dumps(variants))
        p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recipe_branch.py"), str(Path(tmp) / "v.json")],
                           env=env, capture_output=True, text=True, cwd=ROOT)
    done = {}
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            j = json.loads(line)
            done[j["name"]] = j
    rows = []
    for v in variants:
        n = v["name"]
        row = {"name": row_name(n, seed), "variant": n, "kind": "lenet300 recipe", "settings": RECIPES[n],
               "seed": v["recipe"]["seed"], "threads": 1, "via": "branch", "rc": p.returncode}
        row.update({k: val for k, val in done.get(n, {}).items() if k != "name"})
        if n not in done:
            row["error"] = p.stderr[-1500:]
        rows.append(row)
    return rows


def run_dns_job(name: str, seed: int | None = None) -> dict:
    spec = {**DNS[name], "epochs": DNS_EPOCHS, "stop": DNS_STOP_EPOCH}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t = time.time()
    p = subprocess.run([sys.executable, "-c", DNS_CODE, json.dumps(spec)], env=env, capture_output=True,
                       text=True, cwd=ROOT)
    row = {"name": name, "kind": "lenet5 dns", "settings": spec, "rc": p.returncode, "seconds": time.time() - t}
    try:
        row.update(json.loads(p.stdout.strip().splitlines()[-1]))
    except (IndexError, json.JSONDecodeError):
        row["error"] = p.stderr[-1500:]
    return row


def seed_summary(rows: list[dict]) -> list[str]:
    """Mean, min and max over seeds of the variants run with more than one seed."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r.get("variant", r["name"]), []).append(r)
    groups = {k: v for k, v in groups.items() if len({r.get("seed", 0) for r in v}) > 1}
    if not groups:
        return []
    out = ["", "Over seeds (1 thread):", "", "| variant | seeds | mean % | min % | max % | min ratio |",
           "|---|---|---|---|---|---|"]
    def mean(rs: list[dict]) -> float:
        return sum(r["compressed_accuracy"] for r in rs) / len(rs)
    for name, rs in sorted(groups.items(), key=lambda kv: -mean(kv[1])):
        acc = [100 * r["compressed_accuracy"] for r in rs]
        seeds = ",".join(str(r.get("seed", 0)) for r in sorted(rs, key=lambda r: r.get("seed", 0)))
        out.append(f"| {name} | {seeds} | {sum(acc) / len(acc):.2f} | {min(acc):.2f} | {max(acc):.2f} | "
                   f"{min(r['ratio'] for r in rs):.1f}x |")
    return out


def markdown(rows: list[dict], command: str, notes: str = "") -> str:
    lines = ["# Recipe search (issues 2 and 4)", "", f"Command(s): `{command}`; one torch thread per job, "
             "jobs side by side on the 2-core machine (`--jobs 1`: one after the other).", "",
             "## LeNet-300-100 Deep Compression variants (target: >= 80x at >= 89.7%)", "",
             "Rows without a seed ran before seeds were recorded (seed 0, jobs side by side); `branch`: the "
             "dense model trained once per seed and shared by the variants (`--branch`); `no metadata`: "
             "the file lacked the runner's metadata entries (see the notes).", "",
             "| variant | seed | how | dense % | after pruning % | compressed % | bytes | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    recipe_rows = [r for r in rows if r["kind"] == "lenet300 recipe" and "ratio" in r]
    for r in recipe_rows:
        lines.append(f"| {r['name']} | {r.get('seed', '')} | {r.get('via', '')} | {100 * r['dense_accuracy']:.2f} | "
                     f"{100 * r['after_prune']:.2f} | {100 * r['compressed_accuracy']:.2f} | "
                     f"{r['file_bytes']:,} | {r['ratio']:.1f}x |")
    lines += seed_summary(recipe_rows)
    lines += ["", f"## DNS on LeNet-5, {DNS_EPOCHS} epochs, masks frozen after epoch {DNS_STOP_EPOCH} "
              "(target: >= 50x at <= 0.5 pt)", "",
              "| variant | initial cut (conv1/conv2/fc1/fc2) | weight decay | accuracy % | delta pt | nonzeros "
              "| compression |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "lenet5 dns" and "accuracy" in r:
            cut = "/".join(f"{v:g}" for v in r["settings"]["t"].values())
            lines.append(f"| {r['name']} | {cut} | {r['settings']['wd']:g} | {100 * r['accuracy']:.2f} | "
                         f"{r['delta_pt']:+.2f} | {r['nonzero_weights']} | {r['compression']:.1f}x |")
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help=f"variants (default all): {[*RECIPES, *DNS]}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="recipe seeds of the R* variants")
    ap.add_argument("--jobs", type=int, default=1, help="jobs run at once (one thread each)")
    ap.add_argument("--branch", action="store_true", help="train each seed's dense model once, branch variants")
    args = ap.parse_args()
    unknown = set(args.names) - set(RECIPES) - set(DNS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; allowed: {[*RECIPES, *DNS]}")
    jobs = [(run_dns_job, n, None) for n in DNS if not args.names or n in args.names]
    names = [n for n in RECIPES if not args.names or n in args.names]
    if args.branch:  # one job per seed and dense-training config
        for s in args.seeds:
            groups: dict[str, list[str]] = {}
            for n in names:
                r = recipe_variant(n, **RECIPES[n])
                train = json.dumps([r["model"], r["stages"][0]], sort_keys=True)
                groups.setdefault(train, []).append(n)
            jobs += [(run_branch_job, g, s) for g in groups.values()]
    else:
        jobs += [(run_recipe_job, n, s) for n in names for s in args.seeds]
    path = RESULTS / "recipe_search.json"
    extra = ([f"--seeds {' '.join(map(str, args.seeds))}"] if args.seeds != [0] else []) + \
        ([f"--jobs {args.jobs}"] if args.jobs != 1 else []) + (["--branch"] if args.branch else [])
    command = " ".join(["recipe_search.py", *args.names, *extra])
    new: list[dict] = []
    with ThreadPoolExecutor(max(1, min(args.jobs, len(jobs)))) as ex:
        for fut in as_completed([ex.submit(f, n, s) for f, n, s in jobs]):
            res = fut.result()
            for row in res if isinstance(res, list) else [res]:
                new.append(row)
                print(json.dumps(row), flush=True)
            merge_results(path, command, new)  # after every job: a long search keeps what it has
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


def merge_results(path: Path, command: str, new: list[dict]) -> None:
    """Merge ``new`` rows (replacing rows of the same name) into the results file as it is
    now, under a lock: searches running side by side each keep the others' rows."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.exists() else {"commands": [], "rows": []}
        commands = old["commands"] + ([command] if command not in old["commands"] else [])
        done = {r["name"] for r in new}
        rows = [r for r in old["rows"] if r["name"] not in done] + new
        notes = old.get("notes", "")
        write_text_atomic(path, json.dumps({"commands": commands, "rows": rows, "notes": notes}, indent=1))
        write_text_atomic(path.with_suffix(".md"), markdown(rows, "; ".join(commands), notes))


if __name__ == "__main__":
    sys.exit(main())
