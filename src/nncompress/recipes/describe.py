"""The recipe reference, generated from the stage configs: every stage's keys with their
types, defaults and the first paragraph of each field's docstring (``nncompress recipes
--describe``). Nothing is written twice: an option documented in its technique's config
is documented here.

One optional hook on a stage config: ``param_types() -> {choice: dataclass}`` when its
options depend on another key (``sparse_train``'s and ``quantize``'s ``method``), listed
after the stages.
"""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from typing import Any

from nncompress.config import field_docs, type_name
from nncompress.recipes.stages import STAGES, StageRegistry

WIDTH = 100


def summary(doc: str) -> str:
    """The first paragraph of a docstring, on one line.

    Example:
        >>> summary("Kept share.\\n\\nMore text.")
        'Kept share.'
    """
    return " ".join(doc.strip().split("\n\n")[0].split())


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return "(required)"


def _dataclasses_in(tp: Any) -> list[type]:
    """The dataclass types a field type mentions (``TrainConfig | None`` -> [TrainConfig])."""
    if dataclasses.is_dataclass(tp):
        return [tp]
    return [d for a in typing.get_args(tp) for d in _dataclasses_in(a)]


def config_keys(cls: type) -> list[tuple[str, str, str, str]]:
    """``(key, type, default, description)`` of every option of config ``cls`` (keyword-only
    fields, such as the shared ``include`` / ``exclude``, last).

    Example:
        >>> from nncompress.recipes.stages import EncodeConfig
        >>> config_keys(EncodeConfig)[0][:3]
        ('index_bits_fc', 'int | str', '5')
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    fields = sorted((f for f in dataclasses.fields(cls) if f.init), key=lambda f: f.kw_only is True)
    return [(f.name, type_name(hints[f.name]), _default(f), summary(docs.get(f.name, ""))) for f in fields]


def _block(title: str, cls: type, nested: dict[type, None]) -> list[str]:
    lines = [title]
    hints = typing.get_type_hints(cls)
    for key, tp, default, doc in config_keys(cls):
        lines.append(f"  {key}: {tp} = {default}")
        lines += textwrap.wrap(doc or "(no description)", WIDTH, initial_indent="      ",
                               subsequent_indent="      ")
        for d in _dataclasses_in(hints[key]):
            nested.setdefault(d)
    return lines


def describe(registry: StageRegistry = STAGES) -> str:
    """The recipe reference as text.

    Example:
        >>> describe().splitlines()[0]
        'Recipe reference (generated from the stage configs)'
    """
    out = ["Recipe reference (generated from the stage configs)", "",
           "A recipe is YAML: name, description, model: {name, kwargs}, data: {name, root, train_subset}, "
           "seed, stages: a list of one-key mappings {<stage>: {<key>: <value>, ...}}. Keys below are "
           "'key: type = default'.", ""]
    nested: dict[type, None] = {}
    variants: list[tuple[str, str, type]] = []
    for name in registry.names():
        spec = registry.get(name)
        out += _block(f"stage {name}: {spec.doc}", spec.config, nested)
        out.append("")
        param_types = getattr(spec.config, "param_types", None)
        if param_types is not None:
            variants += [(name, choice, cls) for choice, cls in param_types().items()]
    for stage, choice, cls in variants:
        out += _block(f"{stage} params of {choice}: {summary(cls.__doc__ or '')}", cls, nested)
        out.append("")
    done: set[type] = {registry.get(n).config for n in registry.names()}
    while True:
        todo = [c for c in nested if c not in done]
        if not todo:
            break
        cls = todo[0]
        done.add(cls)
        out += _block(f"{cls.__name__} (nested options): {summary(cls.__doc__ or '')}", cls, nested)
        out.append("")
    return "\n".join(out).rstrip() + "\n"
