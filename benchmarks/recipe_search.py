"""Search around the built-in recipes (issues 2 and 4): run variants side by side, one
thread each, and tabulate accuracy and size.

* ``R*``: variants of ``deep-compression-lenet300`` (schedule rounds, retraining epochs,
  final sparsity, dense epochs), each a full ``nncompress run`` in its own process;
* ``D*``: DNS (P5) on LeNet-5 from the cached dense baseline of
  ``benchmarks/sparse_training.py`` (initial cut, weight decay, mask freeze).

    python benchmarks/recipe_search.py [NAME ...]     # default: all variants

Writes ``benchmarks/results/recipe_search.json`` and ``.md`` (rows of earlier runs are kept
and replaced by name), and prints the paths.
"""

from __future__ import annotations

import argparse
import copy
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
BASE = yaml.safe_load((ROOT / "src/nncompress/recipes/builtin/deep-compression-lenet300.yaml").read_text())
T2 = {"conv1.weight": .6, "conv2.weight": .93, "fc1.weight": .995, "fc2.weight": .92}
T3 = {"conv1.weight": .6, "conv2.weight": .95, "fc1.weight": .997, "fc2.weight": .93}
F974 = {"fc1": 0.974, "fc2": 0.948, "fc3": 0.72}
F975 = {"fc1": 0.975, "fc2": 0.95, "fc3": 0.72}


def _prune(r: dict) -> dict:
    return next(s["prune"] for s in r["stages"] if "prune" in s)


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
                   dense_epochs: float | None = None, fin_average: int | None = None) -> dict:
    r = copy.deepcopy(BASE)
    r["name"] = name
    p = _prune(r)
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
    if dense_epochs is not None:
        next(s["train"] for s in r["stages"] if "train" in s)["epochs"] = dense_epochs
    return r


RECIPES = {
    "R_B_rt8_fin40": dict(rt_epochs=8, fin_epochs=40),
    "R_H_rounds10_rt6_fin40": dict(rounds=10, rt_epochs=6, fin_epochs=40),
    "R_I_rounds10_rt6_fin40_f975": dict(final=F975, rounds=10, rt_epochs=6, fin_epochs=40),
    "R_J_rounds15_rt5_fin40_f975": dict(final=F975, rounds=15, rt_epochs=5, fin_epochs=40),
    "R_K_rounds10_rt8_fin60_f974": dict(final=F974, rounds=10, rt_epochs=8, fin_epochs=60),
    "R_L_K_dense80": dict(final=F974, rounds=10, rt_epochs=8, fin_epochs=60, dense_epochs=80),
    "R_M_I_average20": dict(final=F975, rounds=10, rt_epochs=6, fin_epochs=40, fin_average=20),
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


def run_recipe_job(name: str) -> dict:
    r = recipe_variant(name, **RECIPES[name])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "r.yaml").write_text(yaml.safe_dump(r))
        t = time.time()
        p = subprocess.run([sys.executable, "-m", "nncompress.cli", "run", str(Path(tmp) / "r.yaml"),
                            "--out", str(Path(tmp) / "m.nnc"), "--report", str(Path(tmp) / "report"), "-q"],
                           env=env, capture_output=True, text=True, cwd=ROOT)
        row = {"name": name, "kind": "lenet300 recipe", "settings": RECIPES[name], "rc": p.returncode,
               "seconds": time.time() - t}
        rep = Path(tmp) / "report" / "report.json"
        if rep.exists():
            j = json.loads(rep.read_text())
            row.update(j["summary"])
            row["after_prune"] = next(s["accuracy"] for s in j["stages"] if s["stage"] == "prune")
        else:
            row["error"] = p.stderr[-1500:]
    return row


def run_dns_job(name: str) -> dict:
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


def markdown(rows: list[dict], command: str, notes: str = "") -> str:
    lines = ["# Recipe search (issues 2 and 4)", "", f"Command(s): `{command}`; one torch thread per job, "
             "jobs side by side on the 2-core machine.", "",
             "## LeNet-300-100 Deep Compression variants (target: >= 80x at >= 89.7%)", "",
             "| variant | dense % | after pruning % | compressed % | bytes | ratio |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "lenet300 recipe" and "ratio" in r:
            lines.append(f"| {r['name']} | {100 * r['dense_accuracy']:.2f} | {100 * r['after_prune']:.2f} | "
                         f"{100 * r['compressed_accuracy']:.2f} | {r['file_bytes']:,} | {r['ratio']:.1f}x |")
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
    args = ap.parse_args()
    unknown = set(args.names) - set(RECIPES) - set(DNS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; allowed: {[*RECIPES, *DNS]}")
    jobs = [(run_dns_job, n) for n in DNS if not args.names or n in args.names] + \
           [(run_recipe_job, n) for n in RECIPES if not args.names or n in args.names]
    path = RESULTS / "recipe_search.json"
    old = json.loads(path.read_text()) if path.exists() else {"commands": [], "rows": []}
    new = []
    with ThreadPoolExecutor(len(jobs)) as ex:
        for fut in as_completed([ex.submit(f, n) for f, n in jobs]):
            new.append(fut.result())
            print(json.dumps(new[-1])[:400], flush=True)
    done = {r["name"] for r in new}
    rows = [r for r in old["rows"] if r["name"] not in done] + new
    commands = old["commands"] + [" ".join(["recipe_search.py", *args.names])]
    notes = old.get("notes", "")
    write_text_atomic(path, json.dumps({"commands": commands, "rows": rows, "notes": notes}, indent=1))
    write_text_atomic(path.with_suffix(".md"), markdown(rows, "; ".join(commands), notes))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
