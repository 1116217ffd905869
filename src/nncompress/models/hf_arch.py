"""The ``.nnc`` records of a Hugging Face transformers model: its architecture (the model's
config, rebuilt without any code a file names) and its tokenizer files.

Architecture record (header field ``arch``)::

    {"name": "huggingface",
     "kwargs": {"config": {...config.to_dict() without auto_map and private keys...},
                "model_class": "BertModel", "pooling": "mean", "normalize": true}}

It is rebuilt by ``AutoConfig.for_model(model_type, **config)`` and the model class that
transformers' own auto mappings name for that ``model_type`` (``AutoModel`` by default),
never with ``trust_remote_code``. A file is untrusted: ``model_type`` must be one that
transformers ships, the class one of its auto mappings for that type, the config values
JSON scalars, lists or small dicts, no ``auto_map`` / ``quantization_config`` / private
keys, and layer counts bounded; the loader then builds the model on the meta device and
compares its parameter count with the file's budget before allocating anything.

Building skips weight initialisation (transformers' ``no_init_weights``): the stored
tensors are copied in right after, so random init of millions of weights would be wasted.
Buffers that are not stored (``position_ids``) are computed by the constructor as usual.

Tokenizer record (header field ``tokenizer``): ``{"files": {name: text}}``, the tokenizer
files of the source folder (``vocab.txt``, ``tokenizer_config.json``...; binary files such
as a sentencepiece model as ``{"base64": ...}``). They are JSON data in the header: the
header is deflated, so MiniLM's 231 KB ``vocab.txt`` costs about 110 KB of file; sections
are reserved for tensors (the schema requires every section to belong to one tensor).
Names come from a fixed list, so an export can never write outside its folder, and a
``tokenizer.json`` is data for the ``tokenizers`` library, never executed.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import sys
from collections.abc import Mapping
from typing import Any

from torch import nn

from nncompress.errors import ConfigError, FormatError
from nncompress.state import model_state, read_state

HF_ARCH = "huggingface"
"""Architecture name of a transformers model in a ``.nnc`` header."""
POOLINGS = ("mean", "cls", "max")
"""Sentence-transformers pooling modes nncompress can apply."""
FORBIDDEN_CONFIG_KEYS = ("auto_map", "quantization_config", "trust_remote_code", "custom_pipelines",
                         "attn_implementation", "experts_implementation", "name_or_path")
"""Config keys a stored record may not carry, at any depth (remote code, external
quantizers, attention or expert kernels that transformers may fetch from the Hub)."""
MAX_LAYERS = 1024
"""Most layers (``num_hidden_layers``, ``n_layer``...) a stored config may declare."""
MAX_CONFIG_LEAVES = 20_000
"""Most scalar values in a stored config (id2label of a large classifier included)."""
TOKENIZER_TEXT_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                        "vocab.txt", "vocab.json", "merges.txt", "tokenizer.json",
                        "sentence_bert_config.json")
TOKENIZER_BINARY_FILES = ("spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
TOKENIZER_FILES = TOKENIZER_TEXT_FILES + TOKENIZER_BINARY_FILES
"""The only file names a tokenizer record may hold (no paths); ``sentence_bert_config.json``
keeps the sentence-transformers ``max_seq_length``."""
MAX_TOKENIZER_BYTES = 8 * 2**20
"""Most bytes all tokenizer files together may hold."""


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("Hugging Face models need transformers: pip install 'nncompress[huggingface]'") from None
    return check_transformers_torch(transformers)


def check_transformers_torch(transformers: Any) -> Any:
    """``transformers`` itself, or ``ConfigError`` when it runs without PyTorch because the
    installed torch is older than it supports (transformers 5 needs torch >= 2.6; the
    package accepts torch >= 2.3, where transformers 4.x works).

    Example:
        >>> import types
        >>> check_transformers_torch(types.SimpleNamespace(is_torch_available=lambda: True)).is_torch_available()
        True
    """
    available = getattr(transformers, "is_torch_available", None)
    if available is not None and not available():
        import torch

        raise ConfigError(f"transformers {getattr(transformers, '__version__', '?')} does not work with "
                          f"torch {torch.__version__} (it disabled PyTorch); install a transformers "
                          "release that supports this torch (pip install 'transformers<5' for "
                          "torch < 2.6) or a newer torch")
    return transformers


def is_transformers_model(model: nn.Module) -> bool:
    """True for a ``transformers.PreTrainedModel`` (False, without importing transformers,
    when it was never imported: then no model can be one)."""
    tf = sys.modules.get("transformers")
    if tf is None:
        return False
    try:
        return isinstance(model, tf.PreTrainedModel)
    except Exception:  # noqa: BLE001 - a partially imported transformers
        return False


def clean_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict as stored: private top-level keys (``_name_or_path``...) and the
    forbidden keys (``auto_map``..., at any depth) removed.

    Example:
        >>> clean_config({"model_type": "bert", "_name_or_path": "/x", "auto_map": {}})
        {'model_type': 'bert'}
    """
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in FORBIDDEN_CONFIG_KEYS}
        return [strip(v) for v in value] if isinstance(value, list) else value

    return {k: strip(v) for k, v in config.items() if not k.startswith("_") and k not in FORBIDDEN_CONFIG_KEYS}


def capture_huggingface(model: nn.Module) -> dict[str, Any] | None:
    """The architecture record of a transformers model, or None for any other module.

    Example:
        >>> capture_huggingface(nn.Linear(2, 2)) is None
        True
    """
    if not is_transformers_model(model):
        return None
    extra = read_state(model).huggingface
    kwargs: dict[str, Any] = {"config": clean_config(model.config.to_dict()),
                              "model_class": type(model).__name__}
    if extra.get("pooling") is not None:
        kwargs["pooling"] = extra["pooling"]
        kwargs["normalize"] = bool(extra.get("normalize", False))
    return {"name": HF_ARCH, "kwargs": kwargs}


def _check_value(value: Any, where: str, depth: int, count: list[int]) -> None:
    count[0] += 1
    if count[0] > MAX_CONFIG_LEAVES:
        raise FormatError(f"{where}: the config holds more than {MAX_CONFIG_LEAVES:,} values")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if abs(value) >= 2**53:
            raise FormatError(f"{where} = {value} is out of range (|value| < 2**53)")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FormatError(f"{where} = {value} is not finite")
        return
    if depth >= 4:
        raise FormatError(f"{where} is nested more than 4 levels deep")
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_value(v, f"{where}[{i}]", depth + 1, count)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if k in FORBIDDEN_CONFIG_KEYS:
                raise FormatError(f"{where}.{k} is not allowed (a stored config may not name code: "
                                  f"{', '.join(FORBIDDEN_CONFIG_KEYS)})")
            _check_value(v, f"{where}.{k}", depth + 1, count)
        return
    raise FormatError(f"{where} has type {type(value).__name__}; allowed: JSON scalars, lists, dicts")


def _is_layer_count(key: str) -> bool:
    k = key.lower()
    return "layers" in k or k in ("n_layer", "num_hidden_groups", "n_head", "num_attention_heads")


def check_record(config: Any, model_class: Any = None, pooling: Any = None, normalize: Any = False) -> None:
    """Validate the kwargs of a ``huggingface`` architecture record (they come from a
    file): raises ``FormatError`` naming the field and what is allowed.

    Example:
        >>> check_record({"model_type": "bert", "auto_map": {"AutoModel": "x.Y"}})
        Traceback (most recent call last):
        ...
        nncompress.errors.FormatError: huggingface config key 'auto_map' is not allowed (...)
    """
    if not isinstance(config, dict):
        raise FormatError(f"huggingface config must be a dict, got {type(config).__name__}")
    for key in config:
        if key in FORBIDDEN_CONFIG_KEYS or key.startswith("_"):
            raise FormatError(f"huggingface config key {key!r} is not allowed (a stored config may not "
                              f"name code or private fields: {', '.join(FORBIDDEN_CONFIG_KEYS)}, _*)")
    count = [0]
    for key, value in config.items():
        _check_value(value, f"huggingface config {key!r}", 0, count)
        if isinstance(value, int) and not isinstance(value, bool) and _is_layer_count(key) \
                and not 0 <= value <= MAX_LAYERS:
            raise FormatError(f"huggingface config {key!r} = {value} is out of range (0..{MAX_LAYERS})")
    model_type = config.get("model_type")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING_NAMES:
        raise FormatError(f"huggingface config model_type {str(model_type)[:60]!r} is not a model type "
                          "this transformers ships (a record never names remote code)")
    if model_class is not None:
        _model_class(model_type, model_class)
    if pooling is not None and pooling not in POOLINGS:
        raise FormatError(f"huggingface pooling {str(pooling)[:40]!r} not allowed; use one of {POOLINGS}")
    if not isinstance(normalize, bool):
        raise FormatError(f"huggingface normalize must be true or false, got {str(normalize)[:40]!r}")


def _model_class(model_type: str, name: Any) -> type:
    """The transformers class ``name`` when one of transformers' auto mappings names it
    for ``model_type`` (``BertModel``, ``BertForSequenceClassification``...)."""
    from transformers.models.auto import modeling_auto

    allowed = set()
    for attr in dir(modeling_auto):
        if attr.startswith("MODEL") and attr.endswith("_MAPPING_NAMES"):
            entry = getattr(modeling_auto, attr).get(model_type)
            allowed.update([entry] if isinstance(entry, str) else list(entry or ()))
    if not isinstance(name, str) or name not in allowed:
        raise FormatError(f"huggingface model_class {str(name)[:60]!r} is not a transformers class for "
                          f"model_type {model_type!r}; allowed: {', '.join(sorted(allowed)) or 'none'}")
    return getattr(_transformers(), name)


def build_huggingface(config: dict[str, Any], model_class: str | None = None, pooling: str | None = None,
                      normalize: bool = False) -> nn.Module:
    """Rebuild a transformers model from a (validated) architecture record, without weight
    initialisation; on the meta device when that is torch's default device.

    Example:
        >>> m = build_huggingface({"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
        ...                        "num_attention_heads": 2, "intermediate_size": 64,
        ...                        "vocab_size": 50})  # doctest: +SKIP
    """
    tf = _transformers()
    check_record(config, model_class, pooling, normalize)
    try:
        from transformers.initialization import no_init_weights  # transformers >= 5
    except ImportError:  # pragma: no cover - transformers 4.x
        from transformers.modeling_utils import no_init_weights

    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    cfg = tf.AutoConfig.for_model(config["model_type"], **kwargs)
    with no_init_weights():
        if model_class is None:
            model = tf.AutoModel.from_config(cfg)
        else:
            model = _model_class(config["model_type"], model_class)._from_config(cfg)
    model.tie_weights()
    model.eval()
    if pooling is not None:
        model_state(model, create=True).huggingface.update(pooling=pooling, normalize=normalize)
    return model


# --------------------------------------------------------------------------- tokenizer record


def capture_tokenizer(model: nn.Module) -> dict[str, Any] | None:
    """The tokenizer record of a model loaded by ``load_pretrained`` (None otherwise)."""
    files = read_state(model).huggingface.get("files")
    return {"files": dict(files)} if files else None


def check_tokenizer_files(files: Any) -> dict[str, Any]:
    """Validate tokenizer files from a record: names from ``TOKENIZER_FILES``, text files as
    strings, binary files as ``{"base64": ...}``, JSON files parse to objects without
    ``auto_map``, at most ``MAX_TOKENIZER_BYTES`` in all. Returns ``files``."""
    if not isinstance(files, dict) or not files:
        raise FormatError("tokenizer files must be a non-empty dict of file name -> content")
    total = 0
    for name, content in files.items():
        if name not in TOKENIZER_FILES:
            raise FormatError(f"tokenizer file name {str(name)[:60]!r} not allowed; "
                              f"allowed: {', '.join(TOKENIZER_FILES)}")
        if name in TOKENIZER_BINARY_FILES:
            if not isinstance(content, dict) or set(content) != {"base64"} or not isinstance(content["base64"], str):
                raise FormatError(f"tokenizer file {name!r} must be {{\"base64\": text}}")
            try:
                total += len(base64.b64decode(content["base64"], validate=True))
            except (binascii.Error, ValueError):
                raise FormatError(f"tokenizer file {name!r} is not valid base64") from None
        else:
            if not isinstance(content, str):
                raise FormatError(f"tokenizer file {name!r} must be text, got {type(content).__name__}")
            total += len(content.encode("utf-8", "surrogatepass"))
            if name.endswith(".json"):
                try:
                    parsed = json.loads(content)
                except ValueError:
                    raise FormatError(f"tokenizer file {name!r} is not valid JSON") from None
                if not isinstance(parsed, dict):
                    raise FormatError(f"tokenizer file {name!r} must hold a JSON object")
                if "auto_map" in parsed:
                    raise FormatError(f"tokenizer file {name!r} names remote code (auto_map); not allowed")
        if total > MAX_TOKENIZER_BYTES:
            raise FormatError(f"tokenizer files hold more than {MAX_TOKENIZER_BYTES:,} bytes")
    return files


def file_bytes(files: Mapping[str, Any]) -> dict[str, bytes]:
    """Tokenizer file name -> bytes to write (``files`` validated)."""
    return {name: base64.b64decode(c["base64"]) if isinstance(c, dict) else c.encode("utf-8")
            for name, c in files.items()}


def restore_tokenizer(model: nn.Module, value: Any, ctx: Any) -> None:
    """Validate a tokenizer record and keep its files on the model's state."""
    if not isinstance(value, dict) or set(value) != {"files"}:
        raise FormatError("tokenizer record must be {\"files\": {...}}")
    files = check_tokenizer_files(value["files"])
    model_state(model, create=True).huggingface["files"] = dict(files)


def _register() -> None:
    from nncompress.format.records import ModelRecord, register_record

    register_record(ModelRecord("tokenizer", capture=capture_tokenizer, restore=restore_tokenizer,
                                phase="behaviour", order=50))


_register()
