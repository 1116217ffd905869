"""``nncompress run``, ``recipes`` and ``corpus``: run a recipe, list recipes, write a text corpus."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from nncompress.cli._common import (
    DEFAULT_RECIPE,
    _bad,
    _output_dir,
    _output_file,
    _positive_int,
)


def _cmd_run(args: argparse.Namespace) -> int:
    from nncompress.recipes import load_recipe
    from nncompress.recipes.runner import run_recipe

    if args.out is not None:
        _output_file(args.out, "--out")
    if args.report is not None:
        _output_dir(args.report, "--report")
    recipe = load_recipe(args.recipe)  # checks keys, values, model arguments and data root
    out = _output_file(args.out or f"runs/{recipe.name}/model.nnc", "--out" if args.out else
                       f"output file (from the recipe name {recipe.name!r})")
    report_dir = _output_dir(args.report or str(out.parent / "report"), "--report")
    if out.absolute() == report_dir.absolute():
        _bad(f"--out {str(out)!r} and --report {str(report_dir)!r} are the same path; the report is a folder")
    from nncompress.data.datasets import DEBIAN_ROOTS, find_idx_root

    if recipe.data.name in DEBIAN_ROOTS:
        find_idx_root(recipe.data.name, recipe.data.root)  # before any training
    command = "nncompress " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    from nncompress.train.ddp import init_from_env, world
    from nncompress.train.device import resolve_device

    device = resolve_device(args.device)
    init_from_env(device)  # torchrun: one process group, gloo on CPU, nccl on CUDA
    from nncompress.progress import RunProgress

    # headings, bars (or plain lines off a terminal) and result lines on stderr; -q and the
    # other ranks of torchrun: none (the curves are still recorded for the report)
    progress = RunProgress(None if args.quiet or world()[0] != 0 else sys.stderr,
                           stages=[s.name for s in recipe.stages])
    report = run_recipe(recipe, out, report_dir, progress=progress, command=command, device=device,
                        checkpoint_dir=out.parent / f".{out.name}.resume", resume=args.resume,
                        stage_hook=progress.stage_hook)
    if world()[0] != 0 or args.quiet:
        return 0  # rank 0 prints and writes; -q prints nothing but errors
    s = report["summary"]
    print(f"recipe        {recipe.name}")
    metric = report.get("metric", "accuracy")

    def score(value: float) -> str:  # accuracy in %, a recipe's own metric as it is
        return f"accuracy {100 * value:.2f}%" if metric == "accuracy" else f"{metric} {value:.4g}"
    print(f"dense         {score(s['dense_accuracy'])}  {s['dense_fp32_bytes']:,} bytes (fp32)"
          if s["dense_accuracy"] is not None else "dense         (no train stage)")
    print(f"compressed    {score(s['compressed_accuracy'])}  {s['file_bytes']:,} bytes  "
          f"-> {s['ratio']:.1f}x smaller")
    print(f"file          {out}")
    print(f"report        {report_dir / 'report.html'} (and report.md, report.json)")
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from nncompress.recipes import STAGES, builtin_recipes

    if args.describe:
        from nncompress.recipes.describe import describe

        print(describe(), end="")
        return 0
    if args.show is not None:
        from importlib import resources

        from nncompress.recipes import load_recipe

        recipe = load_recipe(args.show)  # a built-in name or a YAML file; ConfigError otherwise
        path = Path(args.show)
        text = (path.read_text() if path.is_file() else
                (resources.files("nncompress.recipes") / "builtin" / f"{args.show}.yaml").read_text())
        print(f"# {recipe.name}: {recipe.description.strip() or '(no description)'}")
        print(f"# stages: {' -> '.join(s.name for s in recipe.stages)}")
        print(text, end="" if text.endswith("\n") else "\n")
        return 0
    print("built-in recipes: " + ", ".join(builtin_recipes()))
    print("stages: " + ", ".join(STAGES.names()))
    return 0


def _cmd_corpus(args: argparse.Namespace) -> int:
    from nncompress.data.corpus import debian_corpus

    for name in ("calib", "train", "eval"):
        _positive_int(getattr(args, name), f"--{name}")
    if args.seed < 0:
        _bad(f"--seed must be >= 0, got {args.seed}")
    out = _output_dir(args.out, "corpus output folder")
    report = debian_corpus(out, calib=args.calib, train=args.train, eval=args.eval, seed=args.seed)
    print(f"wrote {', '.join(f'{out / k}.txt ({v:,} passages)' for k, v in report.counts.items())} "
          f"from {report.available:,} distinct Debian package descriptions")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the 'run', 'corpus', 'recipes' subcommands."""
    r = sub.add_parser("run", help="run a YAML recipe (default: the Deep Compression LeNet-300-100 job)")
    r.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE, help="YAML path or built-in name")
    r.add_argument("--out", help="output .nnc file (default runs/<recipe>/model.nnc)")
    r.add_argument("--report", help="report folder (default: next to --out)")
    r.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (no progress, no summary)")
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default cpu)")
    r.add_argument("--resume", action="store_true",
                   help="continue a killed run from its last finished stage (or train epoch)")
    r.set_defaults(fn=_cmd_run)
    cp = sub.add_parser("corpus", help="write disjoint calib/train/eval text files from Debian's package "
                                       "descriptions (apt-cache dumpavail)")
    cp.add_argument("out", help="output folder")
    cp.add_argument("--calib", type=int, default=512, help="calibration passages")
    cp.add_argument("--train", type=int, default=8192, help="training (distillation) passages")
    cp.add_argument("--eval", type=int, default=1024, help="evaluation passages")
    cp.add_argument("--seed", type=int, default=0, help="shuffle seed")
    cp.set_defaults(fn=_cmd_corpus)
    ls = sub.add_parser("recipes", help="list built-in recipes and stages")
    ls.add_argument("--describe", action="store_true",
                    help="print the reference of every stage's keys (types, defaults, descriptions)")
    ls.add_argument("--show", metavar="NAME", help="print a recipe (built-in name or YAML file) with its description")
    ls.set_defaults(fn=_cmd_recipes)
