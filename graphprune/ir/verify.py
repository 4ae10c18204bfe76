"""Structural verifier for the IR (the ``lint`` pass): catches frontend and pass bugs early.

Checks: unique value names, every node input is produced earlier (topological order) or is a
graph input/weight/constant, producer/user links are symmetric, and outputs are reachable values.
"""

from __future__ import annotations

from .graph import Graph

__all__ = ["IRError", "verify_graph"]


class IRError(ValueError):
    """The IR violates an invariant; the message names the node and value."""


def verify_graph(graph: Graph) -> None:
    seen: set[str] = set()
    available = {v.name for v in graph.values if v.producer is None}
    for node in graph.nodes:
        if node.name in seen:
            raise IRError(f"duplicate node name {node.name!r}")
        seen.add(node.name)
        for v in node.inputs:
            if v is None:
                continue
            if v.name not in available:
                raise IRError(f"node {node.name!r} ({node.op}) reads {v.name!r} before it is produced")
            if node not in v.users:
                raise IRError(f"value {v.name!r} does not list its user {node.name!r}")
        for v in node.outputs:
            if v.producer is not node:
                raise IRError(f"value {v.name!r} does not name {node.name!r} as its producer")
            available.add(v.name)
    for v in graph.outputs:
        if v.name not in available:
            raise IRError(f"graph output {v.name!r} is never produced")
