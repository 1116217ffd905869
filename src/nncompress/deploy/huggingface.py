"""Export a compressed Hugging Face model as a folder that transformers and
sentence-transformers load: ``config.json``, ``model.safetensors`` (the loaded model's
dense weights, fp32 or fp16), the tokenizer files stored in the ``.nnc`` file and, when the
file records a sentence-transformers pooling, ``modules.json`` with the pooling config (and
a ``Normalize`` module), so ``AutoModel.from_pretrained(out)`` and
``SentenceTransformer(out)`` both work offline.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nncompress.checks import check_choice
from nncompress.errors import ConfigError
from nncompress.models.hf_arch import is_transformers_model
from nncompress.models.huggingface import write_tokenizer_files
from nncompress.state import read_state

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16}
"""Weight dtypes an export may write."""


@dataclass
class HuggingFaceExport:
    """What ``export_huggingface`` wrote."""

    out_dir: str
    files: list[str] = field(default_factory=list)
    weight_bytes: int = 0
    """Bytes of ``model.safetensors``."""


def export_huggingface(model: nn.Module | str | Path, out_dir: str | Path,
                       dtype: str = "float32") -> HuggingFaceExport:
    """Write ``model`` (a transformers model, or a ``.nnc`` file holding one) as a Hugging
    Face folder in ``out_dir``.

    Args:
        dtype: ``float32`` (the loaded weights exactly) or ``float16`` (half the bytes).

    Raises:
        ConfigError: not a transformers model, or an unknown dtype.

    Example:
        >>> export_huggingface("m.nnc", "m-hf")  # doctest: +SKIP
        >>> SentenceTransformer("m-hf").encode(["a cat"]).shape  # doctest: +SKIP
        (1, 384)
    """
    check_choice(dtype, DTYPES, "dtype")
    if isinstance(model, (str, Path)):
        from nncompress.format import load

        model = load(model)
    if not is_transformers_model(model):
        raise ConfigError(f"export as a Hugging Face folder needs a transformers model, got "
                          f"{type(model).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    was_dtype = next(model.parameters()).dtype
    try:
        if DTYPES[dtype] != was_dtype:
            model.to(DTYPES[dtype])
        model.save_pretrained(str(out), safe_serialization=True)
    finally:
        model.to(was_dtype)
    extra = read_state(model).huggingface
    files = ["config.json", "model.safetensors"]
    if extra.get("files"):
        files += write_tokenizer_files(extra["files"], out)
    pooling = extra.get("pooling")
    if pooling is not None:
        files += _write_sentence_transformers(out, model, pooling, bool(extra.get("normalize")))
    report = HuggingFaceExport(str(out), files, (out / "model.safetensors").stat().st_size)
    log.info("exported %s (%d files, weights %d bytes)", out, len(files), report.weight_bytes)
    return report


def _write_sentence_transformers(out: Path, model: nn.Module, pooling: str, normalize: bool) -> list[str]:
    """modules.json (Transformer, Pooling, optional Normalize), the pooling config and
    sentence_bert_config.json."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    pool = {"word_embedding_dimension": int(model.config.hidden_size),
            "pooling_mode_cls_token": pooling == "cls", "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": pooling == "max", "pooling_mode_mean_sqrt_len_tokens": False}
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pool, indent=2))
    written = ["modules.json", "1_Pooling/config.json"]
    if not (out / "sentence_bert_config.json").exists():  # none stored with the tokenizer
        max_len = min(int(getattr(model.config, "max_position_embeddings", 512) or 512), 512)
        (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_len,
                                                                   "do_lower_case": False}, indent=2))
        written.append("sentence_bert_config.json")
    return written
