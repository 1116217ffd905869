"""``nncompress info``, ``eval`` and ``sensitivity``: look into a .nnc file."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from nncompress.cli._common import (
    DEFAULT_INPUT_SHAPE,
    MAX_INPUT_DIMS,
    MAX_INPUT_ELEMENTS,
    _add_format_options,
    _add_model_option,
    _bad,
    _check_data,
    _check_format_options,
    _check_model_fits,
    _factory_data,
    _fraction,
    _input_file,
    _output_dir,
    _path_text,
    _positive_int,
    _read_nnc,
)


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
        test = _factory_data(args.data, args).test
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add the 'info', 'eval', 'sensitivity' subcommands."""
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
