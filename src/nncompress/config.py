"""Typed config dataclasses: built from plain mappings (YAML) with key and type checks, and
documented by their fields.

A technique's config is a dataclass whose fields each carry a docstring (a string literal
right below the field, as in PEP 257's attribute docstrings) or ``metadata={"doc": ...}``;
``field_docs`` reads them, so ``nncompress recipes --describe`` documents every option from
the one place it is defined. ``from_dict`` rejects unknown keys and wrong types with
messages that name the key, the value and what is allowed; range checks are the
dataclass's own (``__post_init__``, with ``nncompress.checks``).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from nncompress.errors import ConfigError

T = TypeVar("T")


def _check_value(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) == 1:  # one real candidate (X | None): its own message names the key
            raise ConfigError(errors[0])
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple, typing.get_origin(typing.Sequence[int])):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return [_check_value(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping, typing.get_origin(typing.Mapping[str, int])):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        args = typing.get_args(tp)
        inner = args[1] if len(args) == 2 else Any
        return {str(k): _check_value(v, inner, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Instantiate dataclass ``cls`` from ``data`` with key and type checks. A class with a
    ``from_options(data, where)`` classmethod builds itself (its keys depend on a choice,
    such as the quantize stage's ``method``).

    Example:
        >>> from nncompress.train import TrainConfig
        >>> from_dict(TrainConfig, {"epochs": 2}).epochs
        2.0
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of options, got {data!r}")
    if hasattr(cls, "from_options"):  # a config that maps its options itself
        return cls.from_options(dict(data), where)
    return fields_from_dict(cls, data, where)


def fields_from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """``from_dict`` for a plain dataclass: every key a field of ``cls``, checked by type."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _check_value(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


@functools.cache
def _attribute_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of the string literals right below annotated fields in the
    source of ``cls`` itself (not its bases); {} when the source is not available."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    node = tree.body[0]
    if not isinstance(node, ast.ClassDef):
        return {}
    docs = {}
    for a, b in zip(node.body, node.body[1:]):
        if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
            docs[a.target.id] = inspect.cleandoc(b.value.value)
    return docs


def field_docs(config: Any) -> dict[str, str]:
    """The documentation of every init field of a config dataclass (or of an object that
    lists its fields as a dataclass does), inherited fields included: ``metadata["doc"]``
    if set, else the field's attribute docstring, else "".

    Example:
        >>> from nncompress.train import TrainConfig
        >>> sorted(field_docs(TrainConfig))[:2]
        ['average_last', 'batch_size']
    """
    docs: dict[str, str] = {}
    for klass in reversed(config.__mro__ if isinstance(config, type) else type(config).__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_attribute_docs(klass))
    return {f.name: f.metadata.get("doc", docs.get(f.name, "")) for f in dataclasses.fields(config) if f.init}


def type_name(tp: Any) -> str:
    """A short readable name of a field type (``float | dict[str, float] | None``).

    Example:
        >>> type_name(int | None)
        'int | None'
    """
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = typing.get_args(tp)
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{', '.join(type_name(a) for a in args)}]" if args else base
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))
