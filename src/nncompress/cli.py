"""The ``nncompress`` command: run recipes, inspect, evaluate and export compressed files.

The CLI owns the terminal (progress bars, tables); the library only logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

DEFAULT_RECIPE = "deep-compression-lenet300"


def _cmd_run(args: argparse.Namespace) -> int:
    from nncompress.recipes import load_recipe
    from nncompress.recipes.runner import run_recipe

    recipe = load_recipe(args.recipe)
    out = Path(args.out or f"runs/{recipe.name}/model.nnc")
    report_dir = Path(args.report or out.parent / "report")
    command = "nncompress " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report = run_recipe(recipe, out, report_dir, progress=not args.quiet, command=command)
    s = report["summary"]
    print(f"recipe        {recipe.name}")
    print(f"dense         accuracy {100 * s['dense_accuracy']:.2f}%  {s['dense_fp32_bytes']:,} bytes (fp32)"
          if s["dense_accuracy"] is not None else "dense         (no train stage)")
    print(f"compressed    accuracy {100 * s['compressed_accuracy']:.2f}%  {s['file_bytes']:,} bytes  "
          f"-> {s['ratio']:.1f}x smaller")
    print(f"file          {out}")
    print(f"report        {report_dir / 'report.md'}")
    return 0


def _original_fp32_bytes(arch: dict | None) -> int | None:
    """fp32 bytes of the built-in model a file's architecture record names, as built (before
    neuron or channel removal, hashing or decomposition); None for a user-defined model."""
    from nncompress.analysis.accounting import count_parameters
    from nncompress.models import build_model

    if not arch:
        return None
    if arch.get("name") == "hashed":
        arch = arch.get("kwargs", {}).get("base", {})
    try:
        return count_parameters(build_model(str(arch["name"]), **dict(arch.get("kwargs", {}))))["dense_fp32_bytes"]
    except Exception:  # noqa: BLE001 - unknown or damaged record: no original figure
        return None


def _cmd_info(args: argparse.Namespace) -> int:
    from nncompress.analysis.accounting import layer_stats, totals
    from nncompress.analysis.file_table import compression_table, table_markdown
    from nncompress.format import load, read_info

    info = read_info(args.file)
    table = compression_table(info)
    original = _original_fp32_bytes(info.arch)
    if original is not None:  # the model before pruning / hashing / decomposition
        table["total"].update(original_fp32_bytes=original, ratio_vs_original=original / max(info.file_bytes, 1))
    out = {"file": args.file, "file_bytes": info.file_bytes, "arch": info.arch,
           "metadata": info.metadata, "table": table}
    try:
        import torch

        model = load(args.file)
        rows = layer_stats(model, torch.zeros(1, *args.input_shape))
        out["layers"] = [r.to_dict() for r in rows]
        out["totals"] = totals(rows)
    except Exception as exc:  # a user model cannot be rebuilt without its class
        out["layers_error"] = str(exc)
    energy = _energy_rows(out.get("layers"))
    if energy is not None:
        out["energy"] = energy
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"{args.file}: {info.file_bytes:,} bytes, arch {info.arch}, metadata {info.metadata}\n")
    print(table_markdown(table))
    if "layers" in out:
        print("| layer | kind | params | nonzeros | MACs | nonzero MACs |\n|---|---|---:|---:|---:|---:|")
        for r in out["layers"]:
            print(f"| {r['name']} | {r['kind']} | {r['weights']:,} | {r['nonzeros']:,} | {r['macs']:,} | "
                  f"{r['sparse_macs']:,} |")
        t = out["totals"]
        print(f"| **total** | | {t['weights']:,} | {t['nonzeros']:,} | {t['macs']:,} | {t['sparse_macs']:,} |")
    if energy is not None:
        print("\nEnergy estimate (45 nm, Horowitz 2014), per inference:")
        for r in energy["rows"]:
            print(f"  {r['name']}: {r['total_pj'] / 1e6:.3f} uJ")
        print(f"  total: {energy['total_pj'] / 1e6:.3f} uJ (dense model: {energy['dense_total_pj'] / 1e6:.3f} uJ)")
    return 0


def _energy_rows(layers):
    """H2 energy per layer, counting only nonzero weights and the MACs they take part in
    (what an engine that skips zeros would spend), beside the dense figure."""
    if not layers:
        return None
    import math

    from nncompress.analysis.energy import energy_table, total_pj

    def acts(r):
        return math.prod(r["in_shape"]) + math.prod(r["out_shape"])

    sparse = energy_table([(r["name"], r["sparse_macs"], r["nonzeros"] + r["biases"], acts(r)) for r in layers])
    dense = energy_table([(r["name"], r["macs"], r["weights"] + r["biases"], acts(r)) for r in layers])
    return {"rows": [e.to_dict() for e in sparse], "total_pj": total_pj(sparse),
            "dense_total_pj": total_pj(dense)}


def _cmd_eval(args: argparse.Namespace) -> int:
    from nncompress.data import load_dataset
    from nncompress.format import load
    from nncompress.train import evaluate

    model = load(args.file)
    result = evaluate(model, load_dataset(args.data, "test", args.root))
    result.update(file=args.file, data=args.data)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.file} on {args.data} test: accuracy {100 * result['accuracy']:.2f}%, "
              f"loss {result['loss']:.4f}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from nncompress.format import load_state
    from nncompress.train.checkpoint import atomic_write_bytes

    state, info = load_state(args.file)
    tmp = Path(args.out).with_suffix(".tmp-export")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
              metadata={"source": args.file, "arch": json.dumps(info.arch)})
    atomic_write_bytes(args.out, tmp.read_bytes())
    tmp.unlink()
    print(f"wrote {args.out} ({Path(args.out).stat().st_size:,} bytes, dense safetensors)")
    return 0


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    import torch

    from nncompress.data import load_dataset
    from nncompress.format import load
    from nncompress.prune.structured import sensitivity_analysis
    from nncompress.report.writer import write_json

    model = load(args.file)
    test = load_dataset(args.data, "test", args.root)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(test), generator=g)[: args.samples]
    x, y = test.tensors[0][idx], test.tensors[1][idx]
    res = sensitivity_analysis(model, (x, y), args.ratios, criterion=args.criterion)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res.plot(out / "sensitivity.png")
    suggested = res.suggest_ratios(args.mac_target)
    write_json(out / "sensitivity.json", {**json.loads(res.to_json()), "mac_target": args.mac_target,
                                          "suggested_ratios": suggested})
    print(f"dense accuracy on {len(y)} test images: {100 * res.dense_accuracy:.2f}%")
    print("| layer | " + " | ".join(f"{r:.0%} removed" for r in res.ratios) + " |")
    print("|---|" + "---:|" * len(res.ratios))
    for name, accs in res.curves.items():
        print(f"| {name} | " + " | ".join(f"{100 * a:.2f}%" for a in accs) + " |")
    print(f"\nsuggested ratios for {args.mac_target:.0%} fewer MACs: {suggested}")
    print(f"wrote {out / 'sensitivity.png'} and {out / 'sensitivity.json'}")
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from nncompress.recipes import STAGES, builtin_recipes

    print("built-in recipes: " + ", ".join(builtin_recipes()))
    print("stages: " + ", ".join(STAGES.names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``nncompress`` command."""
    p = argparse.ArgumentParser(prog="nncompress", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="run a YAML recipe (default: the Deep Compression LeNet-300-100 job)")
    r.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE, help="YAML path or built-in name")
    r.add_argument("--out", help="output .nnc file (default runs/<recipe>/model.nnc)")
    r.add_argument("--report", help="report folder (default: next to --out)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.set_defaults(fn=_cmd_run)
    i = sub.add_parser("info", help="per-layer table of a .nnc file")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.add_argument("--input-shape", type=int, nargs="+", default=[1, 28, 28])
    i.set_defaults(fn=_cmd_info)
    e = sub.add_parser("eval", help="accuracy of a .nnc file on a dataset's test split")
    e.add_argument("file")
    e.add_argument("--data", default="fashion-mnist", help="fashion-mnist, mnist or digits")
    e.add_argument("--root", help="folder with the IDX files")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=_cmd_eval)
    x = sub.add_parser("export", help="write the dense weights as safetensors")
    x.add_argument("file")
    x.add_argument("out")
    x.set_defaults(fn=_cmd_export)
    sv = sub.add_parser("sensitivity", help="per-layer channel-pruning sensitivity curves of a .nnc model")
    sv.add_argument("file")
    sv.add_argument("--data", default="fashion-mnist")
    sv.add_argument("--root")
    sv.add_argument("--criterion", default="l1")
    sv.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    sv.add_argument("--samples", type=int, default=2000, help="test images to evaluate on")
    sv.add_argument("--mac-target", type=float, default=0.5, help="fraction of MACs to remove")
    sv.add_argument("--out", default="sensitivity", help="output folder")
    sv.set_defaults(fn=_cmd_sensitivity)
    ls = sub.add_parser("recipes", help="list built-in recipes and stages")
    ls.set_defaults(fn=_cmd_recipes)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    from nncompress.errors import NNCompressError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        args = build_parser().parse_args(["run", *(argv or [])])
    try:
        return args.fn(args)
    except NNCompressError as exc:
        print(f"nncompress: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
