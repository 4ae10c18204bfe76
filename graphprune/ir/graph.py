"""The graphprune IR: a small typed dataflow graph shared by every frontend.

A :class:`Graph` is a topologically ordered list of :class:`Node` objects connected by
:class:`Value` objects. Every tensor is a Value with a static ``shape``; weights are Values of
kind ``param``/``buffer`` whose ``source`` names where they live (a parameter FQN in an
nn.Module, an initializer name in ONNX). Nodes carry a normalized ``op`` from one vocabulary
(``conv``, ``linear``, ``add``, ``reshape``, ``sdpa``...), normalized ``attrs`` and the original
``target`` they were lowered from, so rules and reports never depend on the frontend.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Graph", "Node", "Value", "ValueKind"]

ValueKind = Literal["input", "param", "buffer", "const", "activation"]


class Value:
    """One tensor: its static shape, producer node (None for inputs/weights) and users."""

    __slots__ = ("name", "shape", "dtype", "kind", "source", "producer", "users", "index")

    def __init__(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: str = "float32",
        kind: ValueKind = "activation",
        source: str | None = None,
    ) -> None:
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self.kind: ValueKind = kind
        self.source = source
        self.producer: Node | None = None
        self.users: list[Node] = []
        self.index = -1  # position in Graph.values, set by Graph.add_value

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_weight(self) -> bool:
        return self.kind in ("param", "buffer")

    def __repr__(self) -> str:
        return f"%{self.name}{list(self.shape)}"


class Node:
    """One operation: normalized ``op``, input/output Values and normalized ``attrs``."""

    __slots__ = ("name", "op", "inputs", "outputs", "attrs", "target", "scope")

    def __init__(
        self,
        name: str,
        op: str,
        inputs: list[Value | None],
        outputs: list[Value],
        attrs: dict[str, Any] | None = None,
        target: str = "",
        scope: str = "",
    ) -> None:
        self.name = name
        self.op = op
        self.inputs = inputs  # None marks an absent optional input (e.g. a conv without bias)
        self.outputs = outputs
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.target = target or op
        self.scope = scope  # module path the node came from, for reports

    def input(self, i: int) -> Value | None:
        return self.inputs[i] if i < len(self.inputs) else None

    @property
    def output(self) -> Value:
        return self.outputs[0]

    def __repr__(self) -> str:
        return f"Node({self.name}: {self.op})"


@dataclass
class Graph:
    """A topologically ordered IR graph with named model inputs and outputs."""

    name: str = "graph"
    nodes: list[Node] = field(default_factory=list)
    values: list[Value] = field(default_factory=list)
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    _by_name: dict[str, Value] = field(default_factory=dict, repr=False)

    def add_value(self, value: Value) -> Value:
        if value.name in self._by_name:
            raise ValueError(f"duplicate value name {value.name!r} in graph {self.name!r}")
        value.index = len(self.values)
        self.values.append(value)
        self._by_name[value.name] = value
        return value

    def add_node(self, node: Node) -> Node:
        for v in node.inputs:
            if v is not None:
                v.users.append(node)
        for v in node.outputs:
            if v.producer is not None:
                raise ValueError(f"value {v.name!r} already produced by {v.producer.name!r}")
            v.producer = node
        self.nodes.append(node)
        return node

    def value(self, name: str) -> Value:
        return self._by_name[name]

    def has_value(self, name: str) -> bool:
        return name in self._by_name

    def weights(self) -> Iterator[Value]:
        return (v for v in self.values if v.is_weight)

    def activations(self) -> Iterator[Value]:
        return (v for v in self.values if v.kind in ("input", "activation"))
