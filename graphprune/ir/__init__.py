"""The graphprune IR: Graph, Node, Value, a text printer and a structural verifier."""

from __future__ import annotations

from .graph import Graph, Node, Value, ValueKind
from .printer import format_graph, format_node
from .verify import IRError, verify_graph

__all__ = ["Graph", "IRError", "Node", "Value", "ValueKind", "format_graph", "format_node", "verify_graph"]
