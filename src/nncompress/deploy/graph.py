"""A small ONNX graph builder on top of ``onnx.helper``: nodes, initializers, unique names.

Every value name is made unique; initializers are stored as ``raw_data`` so that their bytes
in the file are exactly the array's bytes. ``bytes_of`` measures what a list of nodes and
initializers adds to a serialized model (the storage encoders pick the smallest form by it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

_SAFE = re.compile(r"[^A-Za-z0-9_.:/-]")


class GraphBuilder:
    """Collects ONNX nodes and initializers for one graph.

    Example:
        >>> b = GraphBuilder(17)
        >>> c = b.const(np.array([1.0], np.float32), "one")
        >>> b.node("Relu", [c], hint="r")
        'r'
    """

    def __init__(self, opset: int):
        import onnx  # noqa: F401  (fail early with ImportError when onnx is missing)

        self.opset = opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()
        self._consts: dict[tuple, str] = {}
        self._node_names: set[str] = set()
        self._counter = 0

    def child(self) -> GraphBuilder:
        """A builder for a candidate piece of graph: its own nodes and initializers, names
        unique against this builder's; :meth:`absorb` adds the chosen one here."""
        kid = GraphBuilder.__new__(GraphBuilder)
        kid.opset, kid.nodes, kid.initializers = self.opset, [], []
        kid._names, kid._consts, kid._node_names = set(self._names), dict(self._consts), set(self._node_names)
        kid._counter = self._counter
        return kid

    def absorb(self, kid: GraphBuilder) -> None:
        """Take over the nodes, initializers and names of a :meth:`child`."""
        self.nodes.extend(kid.nodes)
        self.initializers.extend(kid.initializers)
        self._names |= kid._names
        self._node_names |= kid._node_names
        self._consts.update(kid._consts)
        self._counter = max(self._counter, kid._counter)

    def tmp(self) -> str:
        """A short fresh name for an internal value of a decoding subgraph."""
        while True:
            self._counter += 1
            name = f"_{self._counter:x}"
            if name not in self._names:
                self._names.add(name)
                return name

    def fresh(self, hint: str | None) -> str:
        """A value name not used yet, derived from ``hint`` (None: a short internal one)."""
        if hint is None:
            return self.tmp()
        base = _SAFE.sub("_", hint) or "v"
        name, i = base, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def reserve(self, name: str) -> None:
        """Mark ``name`` as used (graph inputs)."""
        self._names.add(name)

    def node(self, op: str, inputs: Sequence[str], hint: str | None = None, outputs: int = 1,
             name: str | None = None, **attrs: Any) -> Any:
        """Append one node; return its output name (or a list when ``outputs > 1``).

        ``hint`` is the output's name (made unique; None: a short internal name); ``name``
        names the node itself.
        """
        from onnx import helper

        outs = [self.fresh(hint) for _ in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        if name is not None:
            base, i = name, 1
            while name in self._node_names:
                name = f"{base}@{i}"
                i += 1
            self._node_names.add(name)
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def const(self, array: np.ndarray, hint: str, exact_name: bool = False) -> str:
        """An initializer holding ``array`` (raw bytes); small constants are shared."""
        from onnx import numpy_helper

        array = np.asarray(array)
        key = None
        if array.size <= 16 and not exact_name:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._consts:
                return self._consts[key]
        if exact_name:
            if hint in self._names:
                raise ValueError(f"initializer name {hint!r} is already used")
            self._names.add(hint)
            name = hint
        else:
            name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        if key is not None:
            self._consts[key] = name
        return name

    def int64s(self, values: Sequence[int], hint: str = "shape") -> str:
        """A 1-D int64 constant (shapes, axes, pads)."""
        return self.const(np.asarray(list(values), dtype=np.int64), hint)

    def scalar(self, value: float | int, dtype: Any = np.float32, hint: str = "c") -> str:
        """A 0-D constant of ``dtype``."""
        return self.const(np.asarray(value, dtype=dtype), hint)


def bytes_of(nodes: Sequence[Any], initializers: Sequence[Any]) -> int:
    """Serialized bytes that ``nodes`` and ``initializers`` add to a graph (field tags and
    length prefixes included, up to a byte or two per entry)."""
    total = 0
    for item in (*nodes, *initializers):
        size = item.ByteSize()
        total += size + 1 + max(1, (size.bit_length() + 6) // 7)
    return total
