"""Rule tables keyed by normalized op: one table per interpretation.

- ``COUPLING[op](node, builder)`` declares channel ties and pins (see analysis.coupling).
- ``COST[op](node, shape)`` returns the op's FLOPs given a shape function, so the same rule
  prices the original graph and any candidate pruned widths.
- ``MACS[op](node, shape)`` returns the op's multiply-accumulates, only for the contractions
  (conv, conv-transpose, linear, matmul/bmm/addmm/gemm, einsum, sdpa's two matmuls): the
  fvcore / thop / Torch-Pruning convention, where elementwise, norm and softmax ops count 0.

Rules register with decorators, one function covering a whole op family where the maths is the
same; an op missing from ``COUPLING`` is a barrier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..ir import Node, Value
from ..registry import registrar

if TYPE_CHECKING:
    from ..analysis.coupling import CouplingBuilder

__all__ = [
    "COST", "COUPLING", "MACS", "CostRule", "CouplingRule", "ShapeFn", "register_cost", "register_coupling",
    "register_macs",
]

CouplingRule = Callable[[Node, "CouplingBuilder"], None]
ShapeFn = Callable[[Value], tuple[int, ...]]
CostRule = Callable[[Node, ShapeFn], float]

COUPLING: dict[str, CouplingRule] = {}
COST: dict[str, CostRule] = {}
MACS: dict[str, CostRule] = {}


register_coupling: Callable[..., Callable[[CouplingRule], CouplingRule]] = registrar(COUPLING, unique=True)
register_cost: Callable[..., Callable[[CostRule], CostRule]] = registrar(COST, unique=True)
register_macs: Callable[..., Callable[[CostRule], CostRule]] = registrar(MACS, unique=True)
