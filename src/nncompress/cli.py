"""The ``nncompress`` command: run recipes, inspect, evaluate and export compressed files.

The CLI owns the terminal (progress bars, tables); the library only logs. Every command
checks its arguments and paths before it loads a model or data; bad input ends with one
line ``nncompress: error: ...`` naming the value and what is allowed, and exit status 2
(a traceback only with ``-v``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import stat
import sys
from pathlib import Path
from typing import Any, NoReturn

DEFAULT_RECIPE = "deep-compression-lenet300"
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
MAX_INPUT_ELEMENTS = 2**24  # --input-shape: 64 MiB of fp32 zeros at most
MAX_INPUT_DIMS = 4
DEFAULT_INPUT_SHAPE = (1, 28, 28)


# --------------------------------------------------------------------------- validation


def _bad(message: str) -> NoReturn:
    from nncompress.errors import ConfigError

    raise ConfigError(message)


def _path_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        _bad(f"{what} must be a path, got {value!r}")
    if "\0" in value:
        _bad(f"{what} {value!r} is not a valid path (NUL byte)")
    return value


def _input_file(value: str, what: str) -> Path:
    """An existing, readable regular file."""
    _path_text(value, what)
    path = Path(value)
    try:
        st = path.stat()
    except FileNotFoundError:
        _bad(f"{what} {value!r} does not exist; expected an existing file")
    except NotADirectoryError:
        _bad(f"{what} {value!r} does not exist (a folder in the path is a file); expected an existing file")
    except OSError as exc:
        _bad(f"{what} {value!r} cannot be read: {exc.strerror or exc}")
    if stat.S_ISDIR(st.st_mode):
        _bad(f"{what} {value!r} is a directory; expected a file")
    if not stat.S_ISREG(st.st_mode):
        _bad(f"{what} {value!r} is not a regular file; expected a file")
    if not os.access(path, os.R_OK):
        _bad(f"{what} {value!r} is not readable (permission denied)")
    return path


def _creatable_folder(folder: Path, what: str, value: str) -> None:
    """``folder`` exists as a writable directory, or can be created: its nearest existing
    ancestor is a writable directory (not a file)."""
    d = folder if str(folder) else Path(".")
    while True:
        try:
            if d.is_symlink() and not d.exists():
                _bad(f"{what} {value!r}: {str(d)!r} is a broken symbolic link")
            if d.exists():
                if not d.is_dir():
                    _bad(f"{what} {value!r}: {str(d)!r} is a file, not a folder; choose a path in a folder")
                if not os.access(d, os.W_OK | os.X_OK):
                    _bad(f"{what} {value!r}: folder {str(d)!r} is not writable")
                return
        except OSError as exc:
            _bad(f"{what} {value!r} is not a usable path: {exc.strerror or exc}")
        if d.parent == d:
            return
        d = d.parent


def _output_file(value: str, what: str, *, not_same_as: tuple[Path, ...] = ()) -> Path:
    """A file path to write: not a directory or special file, in a folder that exists or
    can be created, and not one of the inputs."""
    _path_text(value, what)
    path = Path(value)
    try:
        if path.is_dir():
            _bad(f"{what} {value!r} is a directory; expected a file path (e.g. {str(path / 'model.nnc')!r})")
        if path.exists() and not path.is_file():
            _bad(f"{what} {value!r} exists and is not a regular file; expected a file path")
    except OSError as exc:
        _bad(f"{what} {value!r} is not a usable path: {exc.strerror or exc}")
    if value.endswith(("/", os.sep)):
        _bad(f"{what} {value!r} ends with a path separator; expected a file path, not a folder")
    _creatable_folder(path.parent, what, value)
    for other in not_same_as:
        if path.exists() and other.exists() and os.path.samefile(path, other):
            _bad(f"{what} {value!r} is the input file itself; choose another path")
    return path


def _output_dir(value: str, what: str) -> Path:
    """A folder to write into: an existing directory, or a path that can be created."""
    _path_text(value, what)
    path = Path(value)
    try:
        if path.exists() and not path.is_dir():
            _bad(f"{what} {value!r} is a file; expected a folder (existing or to be created)")
    except OSError as exc:
        _bad(f"{what} {value!r} is not a usable path: {exc.strerror or exc}")
    _creatable_folder(path, what, value)
    return path


def _positive_int(value: int | None, what: str) -> None:
    if value is not None and value < 1:
        _bad(f"{what} must be a positive integer, got {value}")


def _fraction(value: float, what: str, *, low_open: bool, allowed: str) -> None:
    ok = (0.0 < value < 1.0) if low_open else (0.0 <= value < 1.0)
    if not ok or math.isnan(value):
        _bad(f"{what} must be {allowed}, got {value:g}")


def _check_data(args: argparse.Namespace) -> None:
    """--data one of the built-in sets, --root an existing folder, and the set present."""
    from nncompress.data.datasets import DEBIAN_ROOTS, check_data_args, find_idx_root

    check_data_args(args.data, args.root, name_key="--data", root_key="--root")
    if args.data in DEBIAN_ROOTS:
        find_idx_root(args.data, args.root)  # DataNotFoundError says how to get it


def _check_format_options(args: argparse.Namespace) -> None:
    """--max-params and --verify-key of the commands that read a .nnc file."""
    _positive_int(args.max_params, "--max-params")
    args.key_bytes = None
    if args.verify_key is not None:
        key_path = _input_file(args.verify_key, "--verify-key file")
        args.key_bytes = _read_key(key_path)


def _read_key(path: Path) -> bytes:
    from nncompress.format.signing import read_key

    return read_key(path)  # ConfigError naming the file for a missing, empty or odd-sized key


def _read_nnc(fn: Any, args: argparse.Namespace, *fargs: Any) -> Any:
    """Read the .nnc file ``args.file`` with ``fn``; a file that breaks the reader in any
    other way than ``FormatError`` is still bad input, reported as such."""
    from nncompress.errors import FormatError, NNCompressError
    from nncompress.format import load as format_load

    if fn is format_load:  # a model built by the user's factory: --model names it (never the file)
        import functools

        from nncompress.factory import load as factory_load

        fn = functools.partial(factory_load, factory=getattr(args, "model", None))
    try:
        return fn(args.file, *fargs, max_params=args.max_params, verify_key=args.key_bytes)
    except FormatError as exc:
        if args.max_params is not None and "max_params" not in str(exc) and "max-params" not in str(exc):
            raise FormatError(f"{exc} (read with --max-params {args.max_params})") from exc
        raise
    except (NNCompressError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged or hostile file, whatever it broke
        logging.getLogger(__name__).debug("reading %s failed", args.file, exc_info=True)
        raise FormatError(f"{args.file}: not a readable .nnc file ({type(exc).__name__}: {exc})") from exc


def _check_model_fits(model: Any, x: Any, file: str, data: str) -> None:
    """Run one image through the model before the real work."""
    import torch

    try:
        model.eval()
        with torch.no_grad():
            model(x[:1])
    except Exception as exc:  # noqa: BLE001 - the file's model and the data do not match
        _bad(f"the model in {file!r} does not accept {data!r} images of shape {list(x.shape[1:])}: "
             f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- commands


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
    report = run_recipe(recipe, out, report_dir, progress=not args.quiet, command=command, device=device,
                        checkpoint_dir=out.parent / f".{out.name}.resume", resume=args.resume)
    if world()[0] != 0:
        return 0  # rank 0 prints and writes
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
    print(f"report        {report_dir / 'report.md'}")
    return 0


def _original_fp32_bytes(arch: dict | None) -> int | None:
    """fp32 bytes of the built-in model a file's architecture record names, as built (before
    neuron or channel removal, hashing or decomposition); None for a user-defined model.
    Built on the meta device: a hostile record cannot make it allocate anything."""
    import torch

    from nncompress.models import build_model

    if not isinstance(arch, dict):
        return None
    if arch.get("name") == "hashed":
        arch = (arch.get("kwargs") or {}).get("base") or {}
    try:
        with torch.device("meta"):
            model = build_model(str(arch["name"]), **dict(arch.get("kwargs", {})))
        return sum(4 * t.numel() for t in model.state_dict().values() if t.is_floating_point())
    except Exception:  # noqa: BLE001 - unknown or damaged record: no original figure
        return None


def _cmd_info(args: argparse.Namespace) -> int:
    from nncompress.analysis.accounting import layer_stats, totals
    from nncompress.analysis.file_table import compression_table, table_markdown
    from nncompress.format import load, read_info

    _input_file(args.file, ".nnc file")
    shape = args.input_shape if args.input_shape is not None else DEFAULT_INPUT_SHAPE
    if not 1 <= len(shape) <= MAX_INPUT_DIMS or any(d < 1 for d in shape):
        _bad(f"--input-shape {' '.join(map(str, shape))}: expected 1 to {MAX_INPUT_DIMS} positive sizes "
             "of one input without the batch dimension, e.g. 1 28 28")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        _bad(f"--input-shape {' '.join(map(str, shape))} has {math.prod(shape):,} elements; at most "
             f"{MAX_INPUT_ELEMENTS:,} allowed")
    _check_format_options(args)
    info = _read_nnc(read_info, args)
    try:
        table = compression_table(info)
    except Exception as exc:  # noqa: BLE001 - a header that parsed but does not add up
        _bad(f"{args.file}: the tensor table cannot be summarised ({type(exc).__name__}: {exc})")
    original = _original_fp32_bytes(info.arch)
    if original is not None:  # the model before pruning / hashing / decomposition
        table["total"].update(original_fp32_bytes=original, ratio_vs_original=original / max(info.file_bytes, 1))
    out = {"file": args.file, "file_bytes": info.file_bytes, "arch": info.arch,
           "metadata": info.metadata, "table": table}
    import torch

    from nncompress.factory import recorded_factory

    spec, _ = recorded_factory(info.metadata)
    if not info.arch and not args.model:  # a user-defined model cannot be rebuilt without its class
        out["layers_error"] = (f"{args.file} holds a user-defined model (no architecture record); "
                               + (f"pass --model {spec} for the per-layer table" if spec else
                                  "the per-layer table needs nncompress.load(path, model=MyNet())"))
    else:
        model = _read_nnc(load, args)  # a damaged file: FormatError, exit 2
        try:
            example = torch.zeros(1, *shape)
            if (info.arch or {}).get("name") == "huggingface" and args.input_shape is None:
                tokens = torch.zeros(1, 128, dtype=torch.long)  # one sequence of 128 tokens
                example = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}
            rows = layer_stats(model, example)
            out["layers"] = [r.to_dict() for r in rows]
            out["totals"] = totals(rows)
        except Exception as exc:  # noqa: BLE001 - the model does not take this input shape
            if args.input_shape is not None:
                _bad(f"--input-shape {' '.join(map(str, shape))}: the model in {args.file!r} does not accept "
                     f"an input of this shape ({type(exc).__name__}: {exc})")
            out["layers_error"] = f"{type(exc).__name__}: {exc} (set --input-shape to the model's input)"
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
    elif "layers_error" in out:
        print(f"\n(no per-layer table: {out['layers_error']})")
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
    import torch

    from nncompress.data import load_dataset
    from nncompress.format import load, read_info
    from nncompress.train import evaluate

    if args.text is not None or args.reference is not None:
        return _eval_text(args)
    _input_file(args.file, ".nnc file")
    _check_format_options(args)
    from nncompress.train.device import resolve_device

    device = resolve_device(args.device)
    recorded = _read_nnc(read_info, args).metadata.get("data")
    recorded = recorded if isinstance(recorded, str) else None
    if args.data is None:
        if recorded is not None and ":" in recorded:
            _bad(f"{args.file} was made with the data factory {recorded!r}; nncompress does not import code a "
                 f"file names: pass --data {recorded}")
        args.data = recorded or "fashion-mnist"
    elif recorded is not None and args.data != recorded:
        print(f"nncompress: warning: {args.file} was evaluated on {recorded!r} when saved; --data "
              f"{args.data!r} is another dataset", file=sys.stderr)
    if ":" in args.data:
        test = _factory_test_data(args.data, args)
    else:
        _check_data(args)
        test = load_dataset(args.data, "test", args.root)
    model = _read_nnc(load, args).to(device)
    from nncompress.recipes.build import first_sample
    from nncompress.train.batches import call_model, to_device

    example = to_device(first_sample(test), device)
    try:
        model.eval()
        with torch.no_grad():
            call_model(model, example)
    except Exception as exc:  # noqa: BLE001 - the file's model and the data do not match
        _bad(f"the model in {args.file!r} does not accept {args.data!r} inputs: {type(exc).__name__}: {exc}")
    result = evaluate(model, test)
    result.update(file=args.file, data=args.data, device=str(device))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.file} on {args.data} test: accuracy {100 * result['accuracy']:.2f}%, "
              f"loss {result['loss']:.4f}")
    return 0


def _factory_test_data(spec: str, args: argparse.Namespace):
    """The test split of the data factory ``spec`` (``--data pkg.mod:fn``), called with the
    kwargs the file recorded for that same factory."""
    from nncompress.format import read_info
    from nncompress.recipes.build import build_recipe_data
    from nncompress.recipes.schema import DataSpec

    meta = _read_nnc(read_info, args).metadata
    rec = meta.get("factory") if isinstance(meta.get("factory"), dict) else {}
    kwargs = rec.get("data_kwargs") if rec.get("data") == spec and isinstance(rec.get("data_kwargs"), dict) else {}
    return build_recipe_data(DataSpec(factory=spec, kwargs=kwargs)).test


def _eval_text(args: argparse.Namespace) -> int:
    """``eval FILE --text EVAL.txt --reference FOLDER_OR_FILE``: cosine of the file's
    sentence embeddings to the reference model's, and top-10 neighbour overlap."""
    from nncompress.data.text import read_lines
    from nncompress.models.huggingface import (
        Pretrained,
        embed_sentences,
        embedding_agreement,
        load_pretrained,
        tokenizer_of,
    )

    _input_file(args.file, ".nnc file")
    if args.text is None or args.reference is None:
        _bad("--text EVAL.txt and --reference FOLDER_OR_FILE go together (sentence embeddings of the file "
             "compared with the reference model's)")
    _input_file(args.text, "--text file")
    if not Path(_path_text(args.reference, "--reference")).exists():
        _bad(f"--reference {args.reference!r} does not exist; expected a Hugging Face model folder or a .nnc file")
    _positive_int(args.limit, "--limit")
    _positive_int(args.batch_size, "--batch-size")
    if args.max_length < 2:
        _bad(f"--max-length must be >= 2 tokens, got {args.max_length}")
    _check_format_options(args)
    sentences = read_lines(args.text, limit=args.limit)
    ref = load_pretrained(args.reference)
    from nncompress.format import load
    from nncompress.models.hf_arch import is_transformers_model
    from nncompress.state import read_state

    model = _read_nnc(load, args)
    if not is_transformers_model(model):
        _bad(f"{args.file!r} holds a {type(model).__name__}, not a Hugging Face model; --text needs one")
    extra = read_state(model).huggingface
    pre = Pretrained(model, tokenizer_of(model) or ref.tokenizer, extra.get("pooling") or ref.pooling,
                     bool(extra.get("normalize", ref.normalize)), args.file)
    import torch

    with torch.no_grad():
        emb = embed_sentences(pre, sentences, args.batch_size, args.max_length)
        ref_emb = embed_sentences(ref, sentences, args.batch_size, args.max_length)
    result = embedding_agreement(emb, ref_emb, k=10)
    result.update(file=args.file, text=args.text, reference=args.reference, pooling=pre.pooling or "mean")
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.file} vs {args.reference} on {result['sentences']} sentences of {args.text}: mean cosine "
              f"{result['mean_cosine']:.4f}, min {result['min_cosine']:.4f}, top-{result['k']} overlap "
              f"{result['topk_overlap']:.3f}")
    return 0


def _export_huggingface(args: argparse.Namespace) -> int:
    """``export FILE.nnc OUTDIR --huggingface``: a folder that AutoModel.from_pretrained and
    SentenceTransformer load (config, dense safetensors, tokenizer, pooling)."""
    source = _input_file(args.file, ".nnc file")
    out = _output_dir(args.out, "export output folder")
    if out.exists() and (out / source.name).exists() and os.path.samefile(out / source.name, source):
        _bad(f"export output folder {args.out!r} holds the input file; choose another folder")
    if args.opset is not None or args.format is not None:
        _bad("--huggingface writes a Hugging Face folder; --format and --opset do not apply")
    _check_format_options(args)
    from nncompress.format import load
    from nncompress.models.hf_arch import is_transformers_model

    model = _read_nnc(load, args)
    if not is_transformers_model(model):
        _bad(f"{args.file!r} holds a {type(model).__name__}, not a Hugging Face model; --huggingface needs one")
    from nncompress.deploy.huggingface import export_huggingface

    report = export_huggingface(model, out, dtype=args.dtype)
    print(f"wrote {args.out}: {', '.join(report.files)} (weights {report.weight_bytes:,} bytes, {args.dtype})")
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


def _cmd_export(args: argparse.Namespace) -> int:
    from safetensors.torch import save as safetensors_bytes

    from nncompress.format import load_state
    from nncompress.train.checkpoint import atomic_write_bytes

    if args.huggingface:
        return _export_huggingface(args)
    source = _input_file(args.file, ".nnc file")
    out = _output_file(args.out, "export output", not_same_as=(source,))
    _check_format_options(args)
    fmt = args.format or ("onnx" if str(args.out).lower().endswith(".onnx") else "safetensors")
    if fmt == "onnx":
        return _export_onnx(args, out)
    if args.opset is not None:
        _bad(f"--opset {args.opset} applies to ONNX export only (OUT ending in .onnx or --format onnx)")
    state, info = _read_nnc(load_state, args)
    try:
        blob = safetensors_bytes({k: v.contiguous() for k, v in state.items()},
                                 metadata={"source": args.file, "arch": json.dumps(info.arch)})
    except Exception as exc:  # noqa: BLE001 - tensors safetensors cannot hold: the file's fault
        _bad(f"{args.file}: its tensors cannot be written as safetensors ({type(exc).__name__}: {exc})")
    atomic_write_bytes(out, blob)  # through a temp file that is never left behind
    print(f"wrote {args.out} ({len(blob):,} bytes, dense safetensors)")
    return 0


def _export_onnx(args: argparse.Namespace, out: Path) -> int:
    """``export FILE OUT.onnx``: the compressed model as ONNX (``nncompress.deploy``), checked
    in onnxruntime against the loaded model before anything is written."""
    try:
        from nncompress.deploy import OPSETS, export_onnx
        from nncompress.deploy.onnx_export import DEFAULT_OPSET
    except ImportError as exc:  # pragma: no cover - the package itself is always there
        _bad(f"ONNX export is unavailable ({exc})")
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    if opset not in OPSETS:
        _bad(f"--opset {opset} is not supported; allowed: {min(OPSETS)}..{max(OPSETS)}")
    from nncompress.format import load

    model = _read_nnc(load, args)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        _bad("ONNX export needs the deploy extra: pip install 'nncompress[deploy]' (onnx, onnxruntime)")
    from nncompress.models.hf_arch import is_transformers_model

    if is_transformers_model(model):
        import collections

        from nncompress.deploy.transformers_onnx import export_transformers_onnx

        report = export_transformers_onnx(model, out, runtime=args.runtime, source=args.file)
        forms = collections.Counter(t.form for t in report.tensors)
        check = (f"max |diff| vs the .nnc model {report.max_abs_diff:.2e}" if args.runtime == "float"
                 else f"int8 activations, max |diff| vs the .nnc model {report.max_abs_diff:.2e}")
        print(f"wrote {args.out} ({report.onnx_bytes:,} bytes = {report.onnx_bytes / report.source_bytes:.2f}x "
              f"the .nnc; ONNX opset {report.opset}, inputs input_ids/attention_mask/token_type_ids "
              f"[batch, sequence]; {check} in onnxruntime)\nweights: "
              + ", ".join(f"{k} {v}" for k, v in sorted(forms.items())))
        return 0
    if args.runtime != "float":
        _bad(f"--runtime {args.runtime} is built for transformers models only")
    report = export_onnx(model, out, _recorded_example(args), opset=opset)
    forms = ", ".join(f"{k}: {v}" for k, v in report.layers.items())
    print(f"wrote {args.out} ({report.onnx_bytes:,} bytes, ONNX opset {opset}; max |diff| vs the .nnc "
          f"model {report.max_abs_diff:.2e} in onnxruntime)\nlayers: {forms}")
    return 0


def _recorded_example(args: argparse.Namespace) -> Any:
    """Zeros of the input shape a recipe recorded for a user model (metadata
    ``input_shape``), or None (built-in models know theirs)."""
    import torch

    from nncompress.format import read_info

    shape = _read_nnc(read_info, args).metadata.get("input_shape")
    if (isinstance(shape, list) and 1 <= len(shape) <= MAX_INPUT_DIMS
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
            and math.prod(shape) <= MAX_INPUT_ELEMENTS):
        return torch.zeros(1, *shape)
    return None


def _cmd_bench(args: argparse.Namespace) -> int:
    """``bench FILE [--onnx OUT.onnx] [--text EVAL.txt]``: latency of torch, onnxruntime fp32
    and the compressed ONNX file (``nncompress.deploy.bench``), bytes, cosine."""
    source = _input_file(args.file, ".nnc file")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        _bad("bench needs the deploy extra: pip install 'nncompress[deploy]' (onnx, onnxruntime)")
    from nncompress.deploy.bench import bench_file

    report = bench_file(str(source), args.onnx, args.text, threads=args.threads, rounds=args.rounds,
                        batches=tuple(args.batch), seq=args.seq, limit=args.limit, runtime=args.runtime,
                        device=args.device)
    if args.json:
        print(json.dumps({"file": report.file, "threads": report.threads, "rounds": report.rounds,
                          "seq": report.seq, "quality": report.quality, "load_average": report.load_average,
                          "rows": [r.to_dict() for r in report.rows]}, indent=2))
        return 0
    seq = f", {report.seq} tokens per sequence" if report.seq else ""
    print(f"{report.file}: median of {report.rounds} interleaved rounds (batch >= 16: "
          f"{max(3, report.rounds // 3)}), {report.threads} thread(s){seq}; load average "
          f"{report.load_average[0]:.2f} -> {report.load_average[1]:.2f}")
    print(report.table())
    if report.quality == "cosine":
        print("cosine: mean over the passages of the cosine of mean-pooled embeddings to the loaded model's in torch")
    return 0


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    import torch

    from nncompress.data import load_dataset
    from nncompress.format import load
    from nncompress.prune.structured import CRITERIA, sensitivity_analysis
    from nncompress.report.writer import write_json

    _input_file(args.file, ".nnc file")
    _check_data(args)
    if args.criterion not in CRITERIA:
        _bad(f"--criterion {args.criterion!r} is not known; allowed: {', '.join(CRITERIA)}")
    if not args.ratios:
        _bad("--ratios needs at least one fraction in (0, 1)")
    for r in args.ratios:
        _fraction(r, "--ratios", low_open=True, allowed="fractions in (0, 1) (channels removed per layer)")
    _fraction(args.mac_target, "--mac-target", low_open=False, allowed="a fraction in [0, 1) (MACs removed)")
    _positive_int(args.samples, "--samples")
    out = _output_dir(args.out, "--out")
    _check_format_options(args)
    model = _read_nnc(load, args)
    test = load_dataset(args.data, "test", args.root)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(test), generator=g)[: args.samples]
    x, y = test.tensors[0][idx], test.tensors[1][idx]
    _check_model_fits(model, x, args.file, args.data)
    res = sensitivity_analysis(model, (x, y), args.ratios, criterion=args.criterion)
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


def _cmd_sign(args: argparse.Namespace) -> int:
    source = _input_file(args.file, ".nnc file")
    key_path = _input_file(args.key, "--key file")
    out = _output_file(args.out, "--out") if args.out is not None else source
    if os.path.samefile(source, key_path):
        _bad(f"the .nnc file {args.file!r} and the --key file {args.key!r} are the same file")
    if out.exists() and os.path.samefile(out, key_path):
        _bad(f"--out {args.out!r} is the key file; choose another path")
    key = _read_key(key_path)
    from nncompress.format.signing import sign_file

    written = sign_file(source, key, out=None if args.out is None else out)
    print(f"signed {args.file} -> {written}")
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


def _add_format_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-params", type=int, metavar="N",
                   help="refuse a file that would decode to more than N parameters")
    p.add_argument("--verify-key", metavar="KEYFILE",
                   help="refuse a file not signed with this key (see 'nncompress sign')")


def _add_model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PKG.MOD:FN",
                   help="the factory that builds the file's user-defined model (nncompress never imports "
                        "code a file names)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``nncompress`` command."""
    p = argparse.ArgumentParser(prog="nncompress", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more logging (-vv for debug) and a traceback on errors")
    from nncompress._version import __version__

    p.add_argument("--version", action="version", version=f"nncompress {__version__}")
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="run a YAML recipe (default: the Deep Compression LeNet-300-100 job)")
    r.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE, help="YAML path or built-in name")
    r.add_argument("--out", help="output .nnc file (default runs/<recipe>/model.nnc)")
    r.add_argument("--report", help="report folder (default: next to --out)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default cpu)")
    r.add_argument("--resume", action="store_true",
                   help="continue a killed run from its last finished stage (or train epoch)")
    r.set_defaults(fn=_cmd_run)
    i = sub.add_parser("info", help="per-layer table of a .nnc file")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.add_argument("--input-shape", type=int, nargs="+",
                   help=f"one input without the batch dimension (1-{MAX_INPUT_DIMS} positive sizes; "
                        "default 1 28 28)")
    _add_format_options(i)
    _add_model_option(i)
    i.set_defaults(fn=_cmd_info)
    e = sub.add_parser("eval", help="accuracy of a .nnc file on a dataset's test split")
    e.add_argument("file")
    e.add_argument("--data", help="fashion-mnist, mnist, digits or a data factory package.module:function "
                                   "(default: the dataset the file records, else fashion-mnist)")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default cpu)")
    e.add_argument("--root", help="folder with the IDX files")
    e.add_argument("--json", action="store_true")
    e.add_argument("--text", metavar="EVAL.txt",
                   help="Hugging Face model: sentences (one per line) to embed; needs --reference")
    e.add_argument("--reference", metavar="FOLDER_OR_FILE",
                   help="model folder or .nnc file whose sentence embeddings are the reference")
    e.add_argument("--limit", type=int, help="use the first N sentences of --text")
    e.add_argument("--batch-size", type=int, default=64, help="sentences per batch (--text)")
    e.add_argument("--max-length", type=int, default=256, help="tokens per sentence at most (--text)")
    _add_format_options(e)
    _add_model_option(e)
    e.set_defaults(fn=_cmd_eval)
    x = sub.add_parser("export", help="write the model as ONNX (OUT.onnx: compression kept, checked in "
                                      "onnxruntime) or its dense weights as safetensors")
    x.add_argument("file")
    x.add_argument("out", help="output file; a name ending in .onnx selects ONNX")
    x.add_argument("--format", choices=["onnx", "safetensors"],
                   help="output format (default: from OUT's suffix, else safetensors)")
    x.add_argument("--opset", type=int, help="ONNX opset (13..21; default 17)")
    x.add_argument("--runtime", choices=["float", "int8"], default="float",
                   help="ONNX: int8 = dynamic int8 MatMuls (transformers models)")
    x.add_argument("--huggingface", action="store_true",
                   help="write OUT as a Hugging Face folder (config, safetensors, tokenizer, pooling)")
    x.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="weights of the --huggingface folder")
    _add_format_options(x)
    _add_model_option(x)
    x.set_defaults(fn=_cmd_export)
    bn = sub.add_parser("bench", help="latency of a .nnc model in torch and onnxruntime (fp32 and its "
                                      "compressed ONNX file), bytes, cosine on --text")
    bn.add_argument("file")
    bn.add_argument("--onnx", metavar="OUT.onnx", help="compressed ONNX file (exported there when missing)")
    bn.add_argument("--text", metavar="EVAL.txt", help="text model: passages (one a line) for timing and cosine")
    bn.add_argument("--limit", type=int, default=256, help="first N passages of --text")
    bn.add_argument("--threads", type=int, default=1)
    bn.add_argument("--device", default="cpu", help="where the torch row runs: cpu, cuda, cuda:N, mps or auto")
    bn.add_argument("--rounds", type=int, default=11)
    bn.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    bn.add_argument("--seq", type=int, default=128, help="text: tokens per sequence")
    bn.add_argument("--runtime", choices=["float", "int8"], default="int8",
                    help="text model: runtime of the ONNX file exported when --onnx is missing")
    bn.add_argument("--json", action="store_true")
    bn.set_defaults(fn=_cmd_bench)
    sv = sub.add_parser("sensitivity", help="per-layer channel-pruning sensitivity curves of a .nnc model")
    sv.add_argument("file")
    sv.add_argument("--data", default="fashion-mnist", help="fashion-mnist, mnist or digits")
    sv.add_argument("--root", help="folder with the IDX files")
    sv.add_argument("--criterion", default="l1")
    sv.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75],
                    help="fractions of channels removed, each in (0, 1)")
    sv.add_argument("--samples", type=int, default=2000, help="test images to evaluate on (>= 1)")
    sv.add_argument("--mac-target", type=float, default=0.5, help="fraction of MACs to remove, in [0, 1)")
    sv.add_argument("--out", default="sensitivity", help="output folder")
    _add_format_options(sv)
    _add_model_option(sv)
    sv.set_defaults(fn=_cmd_sensitivity)
    sg = sub.add_parser("sign", help="sign a .nnc file with a key (then check it with --verify-key)",
                        description="Sign a .nnc file with a secret key. Make a key with "
                                    "`head -c 32 /dev/urandom > key` and keep it private; "
                                    "info/eval/export/sensitivity --verify-key key then refuse "
                                    "files not signed with it.")
    sg.add_argument("file")
    sg.add_argument("--key", required=True, metavar="KEYFILE",
                    help="secret key file (make one with: head -c 32 /dev/urandom > key)")
    sg.add_argument("--out", help="write the signed copy here (default: sign FILE in place)")
    sg.set_defaults(fn=_cmd_sign)
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
    return p


def _error_line(exc: BaseException) -> str:
    """One line for an error caused by the input."""
    if isinstance(exc, OSError) and exc.filename is not None:
        names = repr(str(exc.filename)) + (f" -> {str(exc.filename2)!r}" if exc.filename2 is not None else "")
        return f"{names}: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, MemoryError):
        return f"not enough memory for this input ({exc or 'MemoryError'})"
    if isinstance(exc, RecursionError):
        return f"input nested too deeply ({exc})"
    text = str(exc).strip()
    from nncompress.errors import NNCompressError

    if not isinstance(exc, NNCompressError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return " ".join(text.split("\n")) if len(text) < 2000 else text[:2000] + "..."


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: 0 on success, 2 for bad input (one line on
    stderr naming the value), 1 for an internal error, 130 when interrupted. ``-v`` adds
    the traceback."""
    import traceback

    from nncompress.errors import NNCompressError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:  # bare `nncompress`: help, not a job
        parser.print_help()
        return 0
    bad_input: tuple[type[BaseException], ...] = (NNCompressError, OSError, ValueError, MemoryError,
                                                  RecursionError, OverflowError)
    try:
        import yaml

        bad_input += (yaml.YAMLError,)
    except ImportError:  # pragma: no cover
        pass
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        print("nncompress: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except bad_input as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"nncompress: error: {_error_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback with -v
        if args.verbose:
            traceback.print_exc()
            print(f"nncompress: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        else:
            print(f"nncompress: internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)",
                  file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
