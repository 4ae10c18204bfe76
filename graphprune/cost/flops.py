"""FLOPs, MACs and parameter counts from the IR, for the original graph or any pruned widths.

Each op's FLOPs come from its ``COST`` rule given a shape function, so the allocator prices a
candidate removal by recomputing shapes, without building a model. Conventions: a multiply-add
is 2 FLOPs (conv, linear, matmul, attention); elementwise ops count one FLOP per output element;
movement ops are free. Params count every parameter (not buffer) tensor once, shared ones too.

MACs (``MACS`` rules) follow the fvcore / thop / Torch-Pruning convention: one per multiply-add of
a contraction (conv, conv-transpose, linear, matmul/bmm, einsum, the two matmuls of sdpa) and
nothing else, so ``flops = 2 * macs + (elementwise, norm, softmax, pooling FLOPs)``. A model
pruned to ``flops=0.5`` therefore keeps a little more than half its MACs when the uncounted ops
shrink less (softmax over the sequence does not shrink with channels): ``macs=`` budgets MACs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ..ir import Graph, Value
from ..rules import COST, MACS

__all__ = ["METRICS", "CostReport", "count"]

# what each cost budget counts, as the report and the CLI state it
METRICS: dict[str, str] = {
    "flops": "FLOPs: 2 per multiply-add of conv/linear/matmul/attention plus 1 per output element of "
             "elementwise, norm, softmax and pooling ops",
    "macs": "MACs: multiply-accumulates of conv/linear/matmul/attention only (the fvcore/thop/Torch-Pruning "
            "convention; FLOPs of elementwise, norm and softmax ops not counted)",
    "params": "parameters: every weight and bias element, shared tensors once",
}


@dataclass(frozen=True)
class CostReport:
    flops: float
    params: int
    per_node: dict[str, float]
    macs: float = 0.0
    per_node_macs: dict[str, float] = field(default_factory=dict)


def count(graph: Graph, shape: Callable[[Value], tuple[int, ...]] | None = None) -> CostReport:
    shape_fn: Callable[[Value], tuple[int, ...]] = shape or (lambda v: v.shape)
    per_node: dict[str, float] = {}
    per_macs: dict[str, float] = {}
    total = 0.0
    for node in graph.nodes:
        rule = COST.get(node.op)
        if rule is None:
            continue
        f = float(rule(node, shape_fn))
        per_node[node.name] = f
        total += f
        mac_rule = MACS.get(node.op)
        if mac_rule is not None:
            per_macs[node.name] = float(mac_rule(node, shape_fn))
    params = sum(math.prod(shape_fn(v)) for v in graph.values if v.kind == "param")
    return CostReport(total, int(params), per_node, float(sum(per_macs.values())), per_macs)
