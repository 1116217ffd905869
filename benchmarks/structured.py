"""Benchmark (issue 3): structured pruning criteria at one MAC target on Fashion-MNIST.

For each model (LeNet-5, the ResNet-20-style net) a dense baseline is trained once and cached
under runs/structured_cache/ (outside git). Every criterion then prunes a copy to the same
MAC target (default 0.5 removed = 2x fewer MACs, global ranking with per-layer normalised
scores), gets the same short fine-tuning budget, and is measured: test accuracy, params,
MACs (H1 ``layer_stats``), CPU latency at batch 1 and 64 (2 threads, all models interleaved,
medians of repeats), H2 energy estimate. Torch-Pruning's own MagnitudePruner (L1, uniform
ratio bisected to reach the same MAC target) runs in the same process as the peer.

    python benchmarks/structured.py [--models lenet5,resnet20] [--quick]

Writes benchmarks/results/structured.<model>.json and .md (atomically) and prints the paths.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import resource
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from nncompress.analysis.accounting import layer_stats, totals
from nncompress.analysis.energy import model_energy, total_pj
from nncompress.data import load_dataset
from nncompress.distill import distillation_loss_fn, frozen_teacher
from nncompress.format import load as nnc_load
from nncompress.format import save as nnc_save
from nncompress.models import build_model
from nncompress.prune.structured import CRITERIA, ScoreData, sensitivity_analysis, structured_prune
from nncompress.prune.structured.blocks import FITS, block_damage, least_damaging_blocks
from nncompress.train import TrainConfig, evaluate, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_text_atomic  # noqa: E402

log = logging.getLogger("bench.structured")
CACHE = Path("runs/structured_cache")
RESULTS = Path("benchmarks/results")
BASELINE_CFG = {
    "resnet20": TrainConfig(epochs=10, lr=0.1, batch_size=128, weight_decay=5e-4, hflip=True, seed=0),
    "lenet5": TrainConfig(epochs=4, lr=0.05, batch_size=64, weight_decay=5e-4, seed=0),
}
FINETUNE_CFG = {
    "resnet20": TrainConfig(epochs=2, lr=0.01, batch_size=128, weight_decay=5e-4, hflip=True, seed=1),
    "lenet5": TrainConfig(epochs=1, max_steps=200, lr=0.01, batch_size=64, weight_decay=5e-4, seed=1),
}
SCORE_N = {"resnet20": (512, 64), "lenet5": (512, 256)}  # (scoring sample, held-out sample)
BLOCK_HELD_OUT = 2000  # training images (the last of the shuffled order) that rank residual blocks
BEFORE_FT_N = {"resnet20": 2000, "lenet5": 10000}  # test images for the accuracy before fine-tuning


def dense_baseline(name: str, train, test) -> nn.Module:
    """Train (or load from the cache) the dense model ``name``."""
    CACHE.mkdir(parents=True, exist_ok=True)
    cfg = BASELINE_CFG[name]
    defaults = TrainConfig().__dict__  # only the settings that differ from the defaults name the file
    tag = hashlib.sha1(json.dumps({k: v for k, v in cfg.__dict__.items() if v != defaults[k]},
                                  sort_keys=True).encode()).hexdigest()[:8]
    path = CACHE / f"{name}_dense_{tag}.pt"  # keyed by the training config
    model = build_model(name)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model
    t0 = time.perf_counter()
    fit(model, train, cfg, checkpoint=CACHE / f"{name}_dense_{tag}.ckpt")
    torch.save(model.state_dict(), path)
    log.info("dense %s trained in %.0fs", name, time.perf_counter() - t0)
    return model


def macs_of(model: nn.Module, x: torch.Tensor) -> int:
    return totals(layer_stats(model, x))["macs"]


def round_to_arg(value: str) -> int | str:
    """``--round-to``: an integer or ``latency`` (measured staircases)."""
    return int(value) if value.isdigit() else value


def tp_magnitude(model: nn.Module, x: torch.Tensor, target: float, round_to: int = 1) -> nn.Module:
    """Torch-Pruning's MagnitudePruner (L1, uniform ratio, its own ``round_to`` when > 1)
    bisected to reach the MAC target."""
    dense = macs_of(model, x)

    def pruned(r: float) -> nn.Module:
        m = copy.deepcopy(model)
        output_layer = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1]
        pr = tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=r, ignored_layers=[output_layer],
                                       round_to=round_to if round_to > 1 else None)
        pr.step()
        return m

    lo, hi = 0.0, 0.95
    for _ in range(12):
        mid = (lo + hi) / 2
        if macs_of(pruned(mid), x) <= (1 - target) * dense:
            hi = mid
        else:
            lo = mid
    return pruned(hi)


def latency(models: dict[str, nn.Module], batch: int, repeats: int, inner: int,
            clock=time.perf_counter) -> dict[str, dict[str, float]]:
    """Seconds per forward (median and minimum over ``repeats``), models interleaved
    round-robin so a burst of load from other processes hits all of them alike.

    ``clock=time.thread_time`` (with one torch thread) measures the CPU time the forward
    itself consumed, which time slices lost to other processes do not inflate."""
    x = torch.randn(batch, 1, 28, 28)
    times: dict[str, list[float]] = {k: [] for k in models}
    faults: dict[str, int] = dict.fromkeys(models, 0)
    with torch.inference_mode():
        for m in models.values():
            m.eval()
            for _ in range(3):
                m(x)
        for _ in range(repeats):
            for k, m in models.items():
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t0 = clock()
                for _ in range(inner):
                    m(x)
                times[k].append((clock() - t0) / inner)
                faults[k] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    return {k: {"median": statistics.median(v), "min": min(v), "faults": faults[k] / (repeats * inner)}
            for k, v in times.items()}


def frozen(model: nn.Module) -> torch.jit.ScriptModule:
    """The model as a CPU server would deploy it: TorchScript, frozen, ``optimize_for_inference``
    (BatchNorm folded into the convs, conv+ReLU fused, oneDNN layout kept between layers)."""
    with torch.no_grad():
        return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(model.eval())))


def run_model(name: str, args, train, test) -> dict:
    torch.set_num_threads(1)
    dense = dense_baseline(name, train, test)
    x1 = torch.zeros(1, 1, 28, 28)
    n_score, n_held = SCORE_N[name]
    g = torch.Generator().manual_seed(123)
    perm = torch.randperm(len(train), generator=g)
    xs, ys = train.tensors
    data = ScoreData(xs[perm[:n_score]], ys[perm[:n_score]],
                     held_out_x=xs[perm[n_score:n_score + n_held]],
                     held_out_y=ys[perm[n_score:n_score + n_held]],
                     batch_size=128, candidates=8, trials=1)
    ft = FINETUNE_CFG[name]
    before_ft_test = torch.utils.data.Subset(test, range(BEFORE_FT_N[name]))
    if args.finetune_epochs:
        ft = replace(ft, epochs=args.finetune_epochs)
    if args.finetune_seed is not None:  # another fine-tuning run of the same pruned shapes
        ft = replace(ft, seed=args.finetune_seed)
    if args.quick:
        ft = replace(ft, max_steps=5)
    steps = args.steps
    if ft.epochs % steps:
        raise SystemExit(f"--steps {steps} must divide the {ft.epochs} fine-tuning epochs (same budget per step)")
    ft_step = replace(ft, epochs=ft.epochs // steps)
    models: dict[str, nn.Module] = {"dense": dense}
    rows: dict[str, dict] = {"dense": {"method": "dense", "prune_seconds": 0.0, "finetune_seconds": 0.0}}
    methods = [] if args.peer_only else [c for c in args.criteria.split(",") if c] or list(CRITERIA)
    loss_fn = teacher_loss(dense, args)  # one frozen teacher for every fine-tuning of the run
    tag = tag_of(name, args)
    ft_info = {**ft.__dict__, "distill_alpha": args.distill, "distill_temperature": 4.0 if args.distill else None}
    if steps > 1:  # the same epochs, split over the pruning steps
        ft_info["steps"] = steps
    if args.fade:
        if steps > 1 or {"l1-sensitivity", "energy-aware"} & set(methods):
            raise SystemExit("--fade works with one step and the CRITERIA of structured_prune")
        ft_info["fade_epochs"] = args.fade  # the peer is pruned one shot, then fine-tuned the same epochs
    depth, damage = depth_pruning(dense, args, xs[perm[-BLOCK_HELD_OUT:]], ys[perm[-BLOCK_HELD_OUT:]])
    if depth["blocks"] and {"l1-sensitivity", "energy-aware"} & set(methods):
        raise SystemExit("--blocks works with the CRITERIA of structured_prune")
    command = " ".join([sys.executable.split("/")[-1], *sys.argv])
    done = resumable(tag, ft_info) if args.resume else {}
    if args.peer_from and not args.no_peer and "torch-pruning-magnitude" not in done:
        done.update(peer_from(args.peer_from, tag, ft_info))
    peer_done = done.get("torch-pruning-magnitude", {})
    if peer_done.get("round_to", peer_round_to(args)) != peer_round_to(args):  # another peer variant: retrain
        done.pop("torch-pruning-magnitude")
    for crit in methods + ([] if args.no_peer else ["torch-pruning-magnitude"]):
        if crit in done:  # --resume: trained by an earlier run of this variant with the same budget
            models[crit], rows[crit] = nnc_load(saved_path(tag, crit)), done[crit]
            log.info("%s %s: reused from %s", name, crit, saved_path(tag, crit))
            continue
        m = copy.deepcopy(dense)
        t0 = time.perf_counter()
        acc_before_ft = None
        if crit == "torch-pruning-magnitude":
            for step in range(1, steps + 1):  # one shot, or the same schedule as ours
                budget = (1 - args.target) ** (step / steps) * macs_of(dense, x1)
                m = tp_magnitude(m, x1, 1 - budget / macs_of(m, x1), peer_round_to(args))
                if steps > 1:
                    if step == 1:
                        acc_before_ft = evaluate(m, before_ft_test)["accuracy"]
                    fit(m, train, ft_step, loss_fn=loss_fn)
        elif steps > 1 and crit in ("l1-sensitivity", "energy-aware"):
            raise SystemExit(f"--steps > 1 is not supported for {crit}")
        elif steps > 1:  # iterative: prune a step, fine-tune ft/steps epochs, ...
            first = {}

            def probe(step: int, model: nn.Module) -> None:
                if step == 1:
                    first["acc"] = evaluate(model, before_ft_test)["accuracy"]

            structured_prune(m, crit, args.target, args.target_kind, data, example_inputs=x1, mode=args.mode,
                             round_to=round_to_arg(args.round_to), steps=steps, finetune=ft_step,
                             train_data=train, loss_fn=loss_fn, on_removed=probe, **depth)
            acc_before_ft = first["acc"]
        elif crit == "l1-sensitivity":  # S1 + H3: per-layer ratios from the sensitivity curves
            xe, ye = xs[perm[-512:]], ys[perm[-512:]]
            sens = sensitivity_analysis(m, (xe, ye), (0.2, 0.4, 0.6, 0.8))
            sens.plot(RESULTS / f"structured.{name}.sensitivity.png")
            write_text_atomic(RESULTS / f"structured.{name}.sensitivity.json", sens.to_json())
            ratios = sens.suggest_ratios(args.target)
            structured_prune(m, "l1", args.target, "macs", example_inputs=x1, ratios=ratios)
        elif crit == "energy-aware":
            from nncompress.prune.structured.energy_aware import energy_aware_prune
            energy_aware_prune(m, args.target, data, example_inputs=x1)
        elif args.fade:  # fine-tune the unpruned model while the selected channels fade out, then remove
            structured_prune(m, crit, args.target, args.target_kind, data, example_inputs=x1, mode=args.mode,
                             round_to=round_to_arg(args.round_to), finetune=ft, train_data=train,
                             loss_fn=loss_fn, fade_epochs=args.fade, **depth)
        else:
            structured_prune(m, crit, args.target, args.target_kind, data, example_inputs=x1, mode=args.mode,
                             round_to=round_to_arg(args.round_to), **depth)
        t1 = time.perf_counter()
        faded = args.fade and crit != "torch-pruning-magnitude"  # fine-tuned inside structured_prune
        if steps == 1 and not faded:
            acc_before_ft = evaluate(m, before_ft_test)["accuracy"]
            fit(m, train, ft, loss_fn=loss_fn)
        t2 = time.perf_counter()
        models[crit] = m
        rows[crit] = {"method": crit, "prune_seconds": t1 - t0, "finetune_seconds": t2 - t1,
                      "accuracy_before_finetune": acc_before_ft, "trained_by": command}
        if depth["blocks"] and crit != "torch-pruning-magnitude":
            rows[crit]["removed_blocks"] = {b: damage[b] for b in depth["blocks"]}
            rows[crit]["block_fit"] = depth["block_fit"]
        if crit == "torch-pruning-magnitude":
            rows[crit]["round_to"] = peer_round_to(args)
        log.info("%s %s: pruned in %.0fs, fine-tuned in %.0fs", name, crit, t1 - t0, t2 - t1)
    for k in done.keys() - rows.keys() - {"dense"}:  # methods of the earlier run not asked for now stay
        models[k], rows[k] = nnc_load(saved_path(tag, k)), done[k]
    if "dense" in done:
        rows["dense"] = done["dense"]
    elif not args.no_dense_control:  # the dense model gets the same fine-tuning budget, so gains from it are not credited to pruning
        rows["dense"]["accuracy_with_same_finetune"] = dense_finetuned_accuracy(name, dense, train, test, ft, ft_info,
                                                                                loss_fn)
    # every model goes through the .nnc format (new shapes, no pickle); the measured model is
    # the one loaded back, so the table describes what a user would ship
    for k, m in models.items():
        if k not in done:
            nnc_save(m, saved_path(tag, k), codecs=dict.fromkeys(m.state_dict(), "raw"))
    info = {"rows": rows, "baseline_train": BASELINE_CFG[name].__dict__, "finetune": ft_info,
            "score_sample": n_score, "held_out_sample": n_held, "trained_by": command}
    write_text_atomic(CACHE / f"{tag}.trained.json", json.dumps(info, indent=1))
    return measure(name, args, test)


def dense_finetuned_accuracy(name: str, dense: nn.Module, train, test, ft: TrainConfig, ft_info: dict,
                             loss_fn) -> float:
    """Test accuracy of the dense model after the methods' fine-tuning budget; cached by that
    budget, which alone decides it (variants differing only in channel rounding share it)."""
    ft_info = {k: v for k, v in ft_info.items() if k not in ("steps", "fade_epochs")}  # the dense model is not pruned
    key = hashlib.sha1(json.dumps(ft_info, sort_keys=True).encode()).hexdigest()[:8]
    path = CACHE / f"{name}_dense_finetuned_{key}.json"
    if path.exists():
        return json.loads(path.read_text())["accuracy"]
    dense_ft = copy.deepcopy(dense)
    fit(dense_ft, train, ft, loss_fn=loss_fn)
    acc = evaluate(dense_ft, test)["accuracy"]
    write_text_atomic(path, json.dumps({"finetune": ft_info, "accuracy": acc}))
    return acc


FIT_WORDS = {"mean": "branch replaced by its mean output",
             "affine": "block output fitted from its shortcut by least squares, per-channel scale and shift"}


def depth_pruning(dense: nn.Module, args, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, dict[str, float]]:
    """``structured_prune`` arguments for ``--blocks N`` / ``--keep-coupled``: the N residual
    blocks whose removal raises the dense model's loss least on ``x, y`` (held-out training
    images), chosen once so that every criterion removes the same blocks; and every block's
    damage."""
    if not args.blocks:
        return {"blocks": [], "keep_coupled": args.keep_coupled}, {}
    damage = block_damage(dense, x, y, fit=args.block_fit)
    log.info("block damage (loss increase on %d held-out images): %s", len(x), damage)
    chosen = least_damaging_blocks(damage, int(args.blocks)) if args.blocks.isdigit() else args.blocks.split(",")
    return {"blocks": chosen, "keep_coupled": args.keep_coupled, "block_fit": args.block_fit}, damage


def peer_from(source: str, tag: str, ft_info: dict) -> dict[str, dict]:
    """``--peer-from TAG``: the Torch-Pruning model of variant TAG (same model, MAC target and
    fine-tuning budget), copied to this variant so that both are measured in one run."""
    rows = resumable(source, ft_info)
    if "torch-pruning-magnitude" not in rows:
        raise SystemExit(f"--peer-from {source}: no Torch-Pruning model with this fine-tuning budget in {CACHE}")
    shutil.copyfile(saved_path(source, "torch-pruning-magnitude"), saved_path(tag, "torch-pruning-magnitude"))
    return {"torch-pruning-magnitude": rows["torch-pruning-magnitude"]}


def teacher_loss(dense: nn.Module, args):
    """With ``--distill ALPHA``: fine-tuning distils (K1) from a frozen copy of the dense model."""
    if not args.distill:
        return None
    return distillation_loss_fn(frozen_teacher(dense), alpha=args.distill, temperature=4.0)


def peer_round_to(args) -> int:
    """Torch-Pruning's channel rounding: ``--peer-round-to``, else ``--round-to`` when it is a
    number, else 1 (Torch-Pruning has no measured staircase)."""
    if args.peer_round_to:
        return args.peer_round_to
    return int(args.round_to) if args.round_to.isdigit() else 1


def resumable(tag: str, finetune: dict) -> dict[str, dict]:
    """Rows of an earlier run of variant ``tag`` whose model file exists, when that run had the
    same fine-tuning budget (``--resume``: add methods to a table without retraining the others)."""
    path = CACHE / f"{tag}.trained.json"
    if not path.exists():
        return {}
    info = json.loads(path.read_text())
    if info["finetune"] != json.loads(json.dumps(finetune)):
        raise SystemExit(f"--resume: {path} was fine-tuned with {info['finetune']}, this run asks {finetune}")
    rows = {k: {"trained_by": info.get("trained_by", ""), **r} for k, r in info["rows"].items()}
    return {k: r for k, r in rows.items() if saved_path(tag, k).exists()}


def tag_of(name: str, args) -> str:
    """``name`` plus the run's variant suffix (mode, channel rounding, quick): result and
    cache files of different variants never overwrite each other."""
    rt = "" if args.round_to in ("1", 1) else f".rt{args.round_to}"
    kind = "" if args.target_kind == "macs" else f".{args.target_kind}-target"
    kd = (f".kd{args.distill:g}" if args.distill else "") + (f".ft{args.finetune_epochs}" if args.finetune_epochs else "")
    kd += f".s{args.steps}" if args.steps > 1 else ""
    kd += f".fade{args.fade:g}" if args.fade else ""
    kd += f".fs{args.finetune_seed}" if args.finetune_seed is not None else ""
    kd = (f".b{args.blocks.replace('.', '').replace(',', '-')}" if args.blocks else "") + (".kc" if args.keep_coupled else "") \
        + (f".bf{args.block_fit}" if args.blocks and args.block_fit != "mean" else "") + kd
    return name + ("" if args.mode == "global" else f".{args.mode}") + rt + kind + kd + (".quick" if args.quick else "")


def saved_path(tag: str, method: str) -> Path:
    return CACHE / f"{tag}.{method}.nnc"


def measure(name: str, args, test) -> dict:
    """Load every model of the last training run back from its ``.nnc`` file and measure
    accuracy, size, MACs, energy and latency (run alone with ``--measure-only`` on a quiet
    machine: latency needs the cores to itself)."""
    tag = tag_of(name, args)
    info = json.loads((CACHE / f"{tag}.trained.json").read_text())
    rows = info["rows"]
    x1 = torch.zeros(1, 1, 28, 28)
    models = {k: nnc_load(saved_path(tag, k)) for k in rows}
    for k, m in models.items():
        rows[k]["accuracy"] = evaluate(m, test)["accuracy"]
        rows[k]["params"] = sum(p.numel() for p in m.parameters())
        rows[k]["macs"] = macs_of(m, x1)
        rows[k]["energy_uj"] = total_pj(model_energy(m, x1)) / 1e6
        rows[k]["file_bytes"] = saved_path(tag, k).stat().st_size
    torch.set_num_threads(args.threads)
    lat1 = latency(models, 1, args.repeats, 10)
    lat64 = latency(models, 64, max(5, args.repeats // 3), 1)
    jit64 = latency({k: frozen(m) for k, m in models.items()}, 64, max(5, args.repeats // 3), 1)
    torch.set_num_threads(1)
    cpu1 = latency(models, 1, args.repeats, 10, clock=time.thread_time)
    cpu64 = latency(models, 64, max(5, args.repeats // 3), 1, clock=time.thread_time)
    d = rows["dense"]
    for k, r in rows.items():
        r["cpu_time_b1_ms"] = cpu1[k]["median"] * 1e3
        r["cpu_time_b64_ms"] = cpu64[k]["median"] * 1e3
        r["cpu_speedup_b1"] = cpu1["dense"]["median"] / cpu1[k]["median"]
        r["cpu_speedup_b64"] = cpu64["dense"]["median"] / cpu64[k]["median"]
        r["latency_b1_ms"] = lat1[k]["median"] * 1e3
        r["latency_b64_ms"] = lat64[k]["median"] * 1e3
        r["latency_b1_min_ms"] = lat1[k]["min"] * 1e3
        r["latency_b64_min_ms"] = lat64[k]["min"] * 1e3
        r["mac_reduction"] = d["macs"] / r["macs"]
        r["speedup_b1"] = lat1["dense"]["median"] / lat1[k]["median"]
        r["speedup_b64"] = lat64["dense"]["median"] / lat64[k]["median"]
        r["speedup_b1_min"] = lat1["dense"]["min"] / lat1[k]["min"]
        r["speedup_b64_min"] = lat64["dense"]["min"] / lat64[k]["min"]
        r["speedup_share_b64"] = r["speedup_b64"] / r["mac_reduction"]
        r["speedup_share_b64_min"] = r["speedup_b64_min"] / r["mac_reduction"]
        r["page_faults_per_forward_b64"] = lat64[k]["faults"]
        r["jit_latency_b64_ms"] = jit64[k]["median"] * 1e3
        r["jit_speedup_b64"] = jit64["dense"]["median"] / jit64[k]["median"]
        r["jit_speedup_share_b64"] = r["jit_speedup_b64"] / r["mac_reduction"]
        r["cpu_speedup_share_b64"] = r["cpu_speedup_b64"] / r["mac_reduction"]
        r["accuracy_drop_pt"] = 100 * (d["accuracy"] - r["accuracy"])
    return {"model": name, "rows": list(rows.values()),
            "baseline_train": info["baseline_train"], "finetune": info["finetune"],
            "score_sample": info["score_sample"], "held_out_sample": info["held_out_sample"],
            "accuracy_before_finetune_test_images": BEFORE_FT_N[name],
            "trained_by": info.get("trained_by", "")}


def trained_by_lines(res: dict) -> list[str]:
    """Which command trained which rows (``--resume`` adds rows trained by a later command)."""
    by: dict[str, list[str]] = {}
    for r in res["rows"]:
        by.setdefault(r.get("trained_by") or res.get("trained_by", ""), []).append(r["method"])
    by.pop("", None)
    if len(by) == 1:
        return [f"Models trained and pruned by: `{next(iter(by))}`  "]
    return [f"Models {', '.join(ms)} trained and pruned by: `{cmd}`  " for cmd, ms in by.items()]


def peer_rounding(res: dict) -> str:
    peer = [r for r in res["rows"] if r["method"] == "torch-pruning-magnitude" and "round_to" in r]
    return f" (Torch-Pruning: round_to={peer[0]['round_to']})" if peer else ""


def _or_nan(x: float | None) -> float:
    return float("nan") if x is None else x


def to_markdown(res: dict, meta: dict) -> str:
    lines = [f"# Structured pruning on Fashion-MNIST: {res['model']}", "",
             f"Command: `{meta['command']}`  ",
             *trained_by_lines(res),
             f"torch {meta['torch']}, {meta['threads']} threads for"
             f" latency (training single-threaded), target {meta['target']} of {meta.get('target_kind', 'macs')} removed, mode"
             f" {meta['mode']}, kept channels rounded to multiples of {meta.get('round_to', 1)}"
             f"{peer_rounding(res)}.  ",
             f"Dense baseline: {res['baseline_train']}; fine-tuning for every method: {res['finetune']}.  ",
             f"Scoring sample {res['score_sample']} training images, held-out sample (oracle, AOFP, random"
             f" search) {res['held_out_sample']}; 'acc before FT' on the first"
             f" {res.get('accuracy_before_finetune_test_images', 10000)} test images, 'acc' on all 10,000.", "",
             "Latency: median (min) of interleaved repeats; speedups vs dense from medians (mins);"
             " the machine is shared, so the min is the less disturbed figure. Every model is loaded"
             " back from its `.nnc` file and has run the 10,000 test images before it is timed (warm"
             " allocator, as in a serving process; a cold process pays page faults that scale with"
             " activation size and flatter the pruned models)."
             f" Allocator: {meta.get('allocator', 'glibc defaults')}; 'faults' = minor page faults"
             " per batch-64 forward.", "",
             "| method | acc | drop (pt) | acc before FT | params | MACs | MAC red. | lat b1 ms | "
             "lat b64 ms | speedup b1 | speedup b64 | speedup b64 / MAC red. | faults | energy (uJ) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if r.get("removed_blocks"):
            damage = ", ".join(f"{b} ({d:+.3f})" for b, d in r["removed_blocks"].items())
            lines[-2:-2] = [f"Depth pruning ({r['method']}): residual blocks {damage} removed first"
                            f" ({FIT_WORDS[r.get('block_fit', 'mean')]}; in brackets the held-out loss increase of"
                            " removing each alone), then channels to the same MAC target.", ""]
    wanted = 1 / (1 - meta["target"])
    for r in res["rows"]:
        if r["method"] != "dense" and meta.get("target_kind", "macs") == "macs" and r["mac_reduction"] < 0.95 * wanted:  # e.g. a peer that could not prune
            r = {**r, "method": f"{r['method']} (MAC target not reached)"}
        lines.append(
            f"| {r['method']} | {r['accuracy']:.4f} | {r['accuracy_drop_pt']:.2f} | "
            f"{_or_nan(r.get('accuracy_before_finetune')):.4f} | {r['params']} | {r['macs']} | "
            f"{r['mac_reduction']:.2f} | {r['latency_b1_ms']:.3f} ({r['latency_b1_min_ms']:.3f}) | "
            f"{r['latency_b64_ms']:.2f} ({r['latency_b64_min_ms']:.2f}) | "
            f"{r['speedup_b1']:.2f} ({r['speedup_b1_min']:.2f}) | "
            f"{r['speedup_b64']:.2f} ({r['speedup_b64_min']:.2f}) | "
            f"{r['speedup_share_b64']:.2f} ({r['speedup_share_b64_min']:.2f}) | "
            f"{r.get('page_faults_per_forward_b64', float('nan')):.0f} | {r['energy_uj']:.1f} |")
    lines += ["", "CPU time per forward (1 thread, `time.thread_time`, median of interleaved repeats):"
              " insensitive to time slices lost to other processes on the shared machine.", "",
              "| method | MAC red. | CPU ms b1 | CPU ms b64 | CPU speedup b1 | CPU speedup b64 |"
              " CPU speedup b64 / MAC red. |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['method']} | {r['mac_reduction']:.2f} | {r['cpu_time_b1_ms']:.3f} | "
                     f"{r['cpu_time_b64_ms']:.2f} | {r['cpu_speedup_b1']:.2f} | {r['cpu_speedup_b64']:.2f} | "
                     f"{r['cpu_speedup_share_b64']:.2f} |")
    lines += ["", "Deployed as a CPU server would run it (TorchScript, frozen, `optimize_for_inference`:"
              f" BatchNorm folded, conv+ReLU fused, oneDNN layout between layers), batch 64,"
              f" {meta['threads']} threads, median of interleaved repeats:", "",
              "| method | MAC red. | lat b64 ms | speedup b64 | speedup b64 / MAC red. |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        if "jit_latency_b64_ms" in r:
            lines.append(f"| {r['method']} | {r['mac_reduction']:.2f} | {r['jit_latency_b64_ms']:.2f} | "
                         f"{r['jit_speedup_b64']:.2f} | {r['jit_speedup_share_b64']:.2f} |")
    dense = res["rows"][0]
    control = dense.get("accuracy_with_same_finetune")
    lines += ["", "Dense model with the same fine-tuning budget: " +
              (f"accuracy {control:.4f}." if control is not None else "not run (--no-dense-control).")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="lenet5,resnet20")
    ap.add_argument("--criteria", default=",".join([*CRITERIA, "l1-sensitivity", "energy-aware"]))
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--mode", default="global", choices=["global", "layer"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="5 fine-tuning steps (smoke test)")
    ap.add_argument("--measure-only", action="store_true",
                    help="re-measure the models saved by the last run (accuracy, size, latency)")
    ap.add_argument("--round-to", default="1",
                    help="keep channel counts multiples of this, or 'latency' (measured staircases)")
    ap.add_argument("--target-kind", default="macs", choices=["macs", "latency"],
                    help="what --target removes a share of (latency: the measured conv/linear time)")
    ap.add_argument("--no-peer", action="store_true",
                    help="leave out Torch-Pruning (for variants it cannot reach, e.g. --round-to 16)")
    ap.add_argument("--peer-round-to", type=int, default=0,
                    help="Torch-Pruning's round_to (default: --round-to when a number, else 1)")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the models an earlier run of this variant saved (same fine-tuning budget);"
                         " train only the methods it lacks")
    ap.add_argument("--finetune-epochs", type=int, default=0,
                    help="fine-tuning epochs for every method (default: the model's FINETUNE_CFG)")
    ap.add_argument("--steps", type=int, default=1,
                    help="iterative pruning: reach the target in N steps, each followed by 1/N of the"
                         " fine-tuning epochs (Torch-Pruning gets the same schedule)")
    ap.add_argument("--fade", type=float, default=0.0,
                    help="fade the selected channels to zero over the first FADE fine-tuning epochs, on the"
                         " unpruned model, then remove them (the peer: one shot, then the same fine-tuning)")
    ap.add_argument("--blocks", default="",
                    help="depth pruning first: remove the N residual blocks of least held-out damage, or"
                         " the named ones (layers.1,layers.5); every criterion removes the same blocks and"
                         " the MAC target counts them")
    ap.add_argument("--block-fit", choices=FITS, default="mean",
                    help="how a removed block's shortcut affine is set: the branch's mean output (this"
                         " script's default, the fit of its earlier result files), or the least-squares"
                         " per-channel scale and shift of the block output (the library's default)")
    ap.add_argument("--keep-coupled", action="store_true",
                    help="leave whole every channel group written by several layers (residual adds)")
    ap.add_argument("--peer-from", default="",
                    help="reuse the Torch-Pruning model of variant TAG (e.g. resnet20.rt16.kd0.5.ft8)"
                         " when its fine-tuning budget is this run's")
    ap.add_argument("--finetune-seed", type=int, default=None,
                    help="seed of every fine-tuning (default: the model's FINETUNE_CFG seed); a second seed"
                         " repeats a comparison")
    ap.add_argument("--peer-only", action="store_true",
                    help="train only Torch-Pruning's model (to pair with --peer-from in another variant)")
    ap.add_argument("--no-dense-control", action="store_true",
                    help="skip fine-tuning the dense model with the same budget (the control row)")
    ap.add_argument("--distill", type=float, default=0.0,
                    help="fine-tune every model with knowledge distillation from the dense one (alpha)")
    ap.add_argument("--default-allocator", action="store_true",
                    help="time with glibc malloc's defaults (page faults on every large activation)")
    args = ap.parse_args(argv)
    if not args.default_allocator and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # glibc returns freed activations over its mmap threshold to the kernel, so every forward
        # faults them back in (~17k page faults per batch-64 dense ResNet forward, measured): a
        # serving process keeps them, as jemalloc/tcmalloc or these settings do. Re-run with them.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        res = measure(name, args, test) if args.measure_only else run_model(name, args, train, test)
        meta = {"command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
                "torch": torch.__version__, "threads": args.threads, "target": args.target,
                "mode": args.mode, "round_to": args.round_to, "target_kind": args.target_kind,
                "allocator": "glibc defaults" if args.default_allocator else
                "glibc with MALLOC_MMAP_THRESHOLD_=32 MiB, MALLOC_TRIM_THRESHOLD_=1 GiB (freed memory kept)"}
        res["meta"] = meta
        alloc = ".default-allocator" if args.default_allocator else ""  # same models, other timing
        jpath, mpath = (RESULTS / f"structured.{tag_of(name, args)}{alloc}.{ext}" for ext in ("json", "md"))
        write_text_atomic(jpath, json.dumps(res, indent=2))
        write_text_atomic(mpath, to_markdown(res, meta))
        print(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
