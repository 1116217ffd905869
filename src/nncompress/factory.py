"""User code named in recipes and on the command line: ``"package.module:function"``.

A factory is imported only where the user names it (a recipe, ``--model``, or
``load(path, factory=...)``); a ``.nnc`` file records the factory spec as metadata but
loading a file never imports what it names: without the factory the error says which one
to pass.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from nncompress.errors import ConfigError, FormatError

_SPEC = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")
FACTORY_KEY = "factory"  # .nnc metadata: {"model": "pkg.mod:fn", "kwargs": {...}}


def check_spec(spec: Any, what: str = "factory") -> str:
    """``spec`` is a ``"package.module:function"`` string (syntax only; nothing imported).

    Example:
        >>> check_spec("mypkg.nets:make_cnn")
        'mypkg.nets:make_cnn'
    """
    if not isinstance(spec, str) or not _SPEC.fullmatch(spec):
        raise ConfigError(f"{what} {spec!r} is not of the form 'package.module:function' "
                          "(a dotted module path, a colon, a callable in it)")
    return spec


def import_factory(spec: str, what: str = "factory") -> Callable[..., Any]:
    """The callable named by ``spec`` (``"package.module:function"``, attributes may be
    dotted: ``"pkg.mod:Class.build"``). ``ConfigError`` names the spec when the module does
    not import, the attribute is missing or is not callable.

    Example:
        >>> import_factory("collections:OrderedDict")()
        OrderedDict()
    """
    check_spec(spec, what)
    module_name, attr = spec.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {spec!r}: module {module_name!r} does not import ({type(exc).__name__}: "
                          f"{exc}); is its folder on PYTHONPATH?") from exc
    except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
        raise ConfigError(f"{what} {spec!r}: importing {module_name!r} failed ({type(exc).__name__}: {exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{what} {spec!r} names a {type(obj).__name__}, not a callable")
    return obj


def build_model_from_factory(spec: str, kwargs: Mapping[str, Any] | None = None,
                             checkpoint: str | Path | None = None) -> nn.Module:
    """Call the model factory ``spec`` with ``kwargs``; optionally load a state dict from
    ``checkpoint`` (``torch.load(..., weights_only=True)``, no pickle). ``ConfigError`` when
    the factory fails or returns something that is not an ``nn.Module``.

    Example:
        >>> build_model_from_factory("torch.nn:Linear", {"in_features": 2, "out_features": 3}).weight.shape
        torch.Size([3, 2])
    """
    fn = import_factory(spec, "model factory")
    try:
        model = fn(**dict(kwargs or {}))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory refused its arguments
        raise ConfigError(f"model factory {spec!r} with kwargs {dict(kwargs or {})!r} failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    if checkpoint is not None:
        import torch

        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - missing, damaged or pickled-object checkpoint
            raise ConfigError(f"model checkpoint {str(checkpoint)!r} cannot be read with weights_only=True: "
                              f"{type(exc).__name__}: {exc}") from exc
        if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise ConfigError(f"model checkpoint {str(checkpoint)!r} holds a {type(state).__name__}, not a state dict")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(f"model checkpoint {str(checkpoint)!r} does not fit {spec!r}: {exc}") from exc
    return model


def factory_record(spec: str, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metadata a ``.nnc`` file keeps about the factory that built its model.

    Example:
        >>> factory_record("pkg.nets:cnn", {"width": 8})
        {'model': 'pkg.nets:cnn', 'kwargs': {'width': 8}}
    """
    return {"model": spec, "kwargs": dict(kwargs or {})}


def recorded_factory(metadata: Mapping[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
    """``(spec, kwargs)`` recorded in a file's metadata (validated: it is untrusted), or
    ``(None, {})``. Nothing is imported."""
    rec = (metadata or {}).get(FACTORY_KEY)
    if not isinstance(rec, Mapping):
        return None, {}
    spec, kwargs = rec.get("model"), rec.get("kwargs", {})
    if not isinstance(spec, str) or not _SPEC.fullmatch(spec) or len(spec) > 300:
        return None, {}
    return spec, dict(kwargs) if isinstance(kwargs, Mapping) else {}


def load(path: str | Path, model: nn.Module | None = None, *, factory: str | None = None,
         factory_kwargs: Mapping[str, Any] | None = None, **load_options: Any) -> nn.Module:
    """``nncompress.format.load`` that can rebuild a user model from its factory:
    ``load(path, factory="pkg.mod:fn")`` calls the factory (with the kwargs the file
    recorded for that same factory, or ``factory_kwargs``) and loads the tensors into it.
    Without ``model`` or ``factory``, a file whose model was built by a factory raises
    ``FormatError`` naming the factory to pass; the named module is never imported on the
    file's say-so.

    Example:
        >>> model = load("runs/mycnn/model.nnc", factory="mynets:small_cnn")  # doctest: +SKIP
    """
    from nncompress.format import load as format_load
    from nncompress.format import read_info

    info_options = {k: v for k, v in load_options.items() if k in ("verify_key", "max_params")}
    if model is None and factory is not None:
        spec, kwargs = recorded_factory(read_info(path, **info_options).metadata)
        kw = dict(factory_kwargs) if factory_kwargs is not None else (kwargs if factory == spec else {})
        model = build_model_from_factory(factory, kw)
    try:
        return format_load(path, model, **load_options)
    except FormatError:
        if model is not None:
            raise
        info = read_info(path, **info_options)  # only to say which factory to pass
        spec, _ = recorded_factory(info.metadata)
        if info.arch or spec is None:
            raise
        raise FormatError(f"{path} holds a model built by the factory {spec!r}; nncompress does not import "
                          f"code a file names: pass it, load(path, factory={spec!r}) or --model {spec}") from None
