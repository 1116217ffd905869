"""``nncompress export`` and ``bench``: ONNX / safetensors / Hugging Face output and latency."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from nncompress.cli._common import (
    MAX_INPUT_DIMS,
    MAX_INPUT_ELEMENTS,
    _add_format_options,
    _add_model_option,
    _bad,
    _check_data,
    _check_format_options,
    _factory_data,
    _input_file,
    _output_dir,
    _output_file,
    _read_nnc,
)


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

        if args.calib is not None or args.data is not None or args.max_drop is not None:
            _bad("--calib, --data and --max-drop apply to non-text models (text models: dynamic int8, no calibration)")
        report = export_transformers_onnx(model, out, runtime=args.runtime, source=args.file)
        forms = collections.Counter(t.form for t in report.tensors)
        check = (f"max |diff| vs the .nnc model {report.max_abs_diff:.2e}" if args.runtime == "float"
                 else f"int8 activations, max |diff| vs the .nnc model {report.max_abs_diff:.2e}")
        print(f"wrote {args.out} ({report.onnx_bytes:,} bytes = {report.onnx_bytes / report.source_bytes:.2f}x "
              f"the .nnc; ONNX opset {report.opset}, inputs input_ids/attention_mask/token_type_ids "
              f"[batch, sequence]; {check} in onnxruntime)\nweights: "
              + ", ".join(f"{k} {v}" for k, v in sorted(forms.items())))
        return 0
    if args.runtime == "int8":
        from nncompress.deploy import StaticInt8Config

        calib, test, name = _int8_data(args, model)
        config = StaticInt8Config(method=args.calib_method, max_drop=args.max_drop)
        report = export_onnx(model, out, calib[:4], opset=opset, runtime="int8", calib=calib, check_data=test,
                             int8=config)
        q = report.quality
        forms = ", ".join(f"{k}: {v}" for k, v in report.layers.items())
        print(f"wrote {args.out} ({report.onnx_bytes:,} bytes, ONNX opset {opset}, static int8: "
              f"{q['method']} ranges from {q['calibration_samples']:,} {name} train samples; {name} test accuracy "
              f"{q['onnx']:.2f}% in onnxruntime vs {q['torch']:.2f}% for the .nnc model, drop {q['drop_pt']:.2f} pt "
              f"<= {q['max_drop_pt']} on {q['samples']:,} samples)\nlayers: {forms}")
        return 0
    if args.calib is not None or args.max_drop is not None:
        _bad("--calib and --max-drop apply to --runtime int8")
    report = export_onnx(model, out, _recorded_example(args), opset=opset)
    forms = ", ".join(f"{k}: {v}" for k, v in report.layers.items())
    print(f"wrote {args.out} ({report.onnx_bytes:,} bytes, ONNX opset {opset}; max |diff| vs the .nnc "
          f"model {report.max_abs_diff:.2e} in onnxruntime)\nlayers: {forms}")
    return 0


def _int8_data(args: argparse.Namespace, model: Any) -> tuple[Any, Any, str]:
    """``--runtime int8`` of an image/vector model: the first ``--calib`` (512) samples of
    the train split of ``--data`` (default: the dataset the file records, else
    fashion-mnist) and the whole test split as ``(inputs, labels)``, inputs reshaped to the
    model's input shape; and the dataset's name."""
    import torch

    from nncompress.data import load_dataset
    from nncompress.format import read_info
    from nncompress.modules import calibration_batches

    n = 512 if args.calib is None else args.calib
    if isinstance(n, bool) or n < 1:
        _bad(f"--calib must be a number of samples >= 1, got {n}")
    if args.max_drop is None:
        args.max_drop = 0.5
    if not (0 <= args.max_drop <= 100):
        _bad(f"--max-drop must be in [0, 100] accuracy points, got {args.max_drop}")
    meta = _read_nnc(read_info, args).metadata
    recorded = meta.get("data") if isinstance(meta.get("data"), str) else None
    name = args.data or recorded or "fashion-mnist"
    if ":" in name:
        data = _factory_data(name, args)
        train, test = data.train, data.test
    else:
        args.data = name
        _check_data(args)
        train, test = load_dataset(name, "train", args.root), load_dataset(name, "test", args.root)
    example = _recorded_example(args)
    if example is None:
        from nncompress.models.registry import arch_of, default_input_shape

        shape = default_input_shape(arch_of(model))
        if shape is None:
            _bad(f"{args.file}: the model's input shape is unknown (not a built-in architecture, none recorded)")
    else:
        shape = tuple(example.shape[1:])

    def fit(x: torch.Tensor) -> torch.Tensor:
        if x[0].numel() != math.prod(shape):
            _bad(f"{name} samples of shape {tuple(x.shape[1:])} do not fit the model's input {tuple(shape)}")
        return x.reshape(len(x), *shape).float()

    calib = torch.cat([fit(x) for x, _ in calibration_batches(train, 256, n)])
    tests = [(fit(x), y) for x, y in calibration_batches(test, 256, None)]
    return calib, tests, name


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

    calib = test = None
    args.max_params, args.key_bytes = None, None  # bench reads files as bench_file does (no format options)
    if args.runtime == "int8" or args.data is not None:
        from nncompress.format import load
        from nncompress.models.hf_arch import is_transformers_model

        model = _read_nnc(load, args)
        if not is_transformers_model(model):
            args.max_drop = None
            calib, test, _ = _int8_data(args, model)
            calib = calib if args.runtime == "int8" else None
        elif args.data is not None:
            _bad("--data applies to image/vector models; text models take --text")
    elif args.calib is not None:
        _bad("--calib applies to --runtime int8")
    report = bench_file(str(source), args.onnx, args.text, threads=args.threads, rounds=args.rounds,
                        batches=tuple(args.batch), seq=args.seq, limit=args.limit, runtime=args.runtime,
                        device=args.device, calib=calib, check_data=test)
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
    if report.quality == "accuracy":
        print(f"accuracy: % of the {args.data} test split")
    return 0


def _add_int8_options(x: argparse.ArgumentParser) -> None:
    x.add_argument("--calib", type=int, help="--runtime int8 (non-text models): calibration samples from the "
                                             "train split of --data (default 512)")
    x.add_argument("--data", help="--runtime int8: fashion-mnist, mnist, digits or a data factory "
                                  "package.module:function (default: the dataset the file records, else fashion-mnist)")
    x.add_argument("--root", help="folder with the IDX files")
    x.add_argument("--calib-method", choices=["minmax", "percentile"], default="minmax",
                   help="--runtime int8: activation ranges from the calibration batches")
    x.add_argument("--max-drop", type=float, help="--runtime int8: largest test accuracy drop (points) allowed "
                                                  "against the .nnc model (default 0.5)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the 'export', 'bench' subcommands."""
    x = sub.add_parser("export", help="write the model as ONNX (OUT.onnx: compression kept, checked in "
                                      "onnxruntime) or its dense weights as safetensors")
    x.add_argument("file")
    x.add_argument("out", help="output file; a name ending in .onnx selects ONNX")
    x.add_argument("--format", choices=["onnx", "safetensors"],
                   help="output format (default: from OUT's suffix, else safetensors)")
    x.add_argument("--opset", type=int, help="ONNX opset (13..21; default 17)")
    x.add_argument("--runtime", choices=["float", "int8"], default="float",
                   help="ONNX: int8 = integer kernels in onnxruntime: dynamic int8 MatMuls (transformers "
                        "models), static int8 calibrated on --data's train split (other models; checked on "
                        "its test split)")
    _add_int8_options(x)
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
    bn.add_argument("--runtime", choices=["float", "int8"], default=None,
                    help="runtime of the ONNX file exported when --onnx is missing (default: int8 for text "
                         "models, float for others; int8 calibrates on --data)")
    bn.add_argument("--data", help="image/vector model: dataset for --runtime int8 calibration and the accuracy "
                                   "column (fashion-mnist, mnist, digits or package.module:function; default: "
                                   "the file's)")
    bn.add_argument("--root", help="folder with the IDX files")
    bn.add_argument("--calib", type=int, help="--runtime int8: calibration samples from the train split (512)")
    bn.add_argument("--json", action="store_true")
    bn.set_defaults(fn=_cmd_bench)
