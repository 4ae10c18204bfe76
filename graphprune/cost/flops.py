"""FLOPs and parameter counts from the IR, for the original graph or any pruned widths.

Each op's FLOPs come from its ``COST`` rule given a shape function, so the allocator prices a
candidate removal by recomputing shapes, without building a model. Conventions: a multiply-add
is 2 FLOPs (conv, linear, matmul, attention); elementwise ops count one FLOP per output element;
movement ops are free. Params count every parameter (not buffer) tensor once, shared ones too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..ir import Graph, Value
from ..rules import COST

__all__ = ["CostReport", "count"]


@dataclass(frozen=True)
class CostReport:
    flops: float
    params: int
    per_node: dict[str, float]


def count(graph: Graph, shape: Callable[[Value], tuple[int, ...]] | None = None) -> CostReport:
    shape_fn: Callable[[Value], tuple[int, ...]] = shape or (lambda v: v.shape)
    per_node: dict[str, float] = {}
    total = 0.0
    for node in graph.nodes:
        rule = COST.get(node.op)
        if rule is None:
            continue
        f = float(rule(node, shape_fn))
        per_node[node.name] = f
        total += f
    params = sum(math.prod(shape_fn(v)) for v in graph.values if v.kind == "param")
    return CostReport(total, int(params), per_node)
