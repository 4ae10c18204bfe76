"""Rule tables keyed by normalized op: one table per interpretation.

- ``COUPLING[op](node, builder)`` declares channel ties and pins (see analysis.coupling).
- ``COST[op](node, shape)`` returns the op's FLOPs given a shape function, so the same rule
  prices the original graph and any candidate pruned widths.

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

__all__ = ["COST", "COUPLING", "CostRule", "CouplingRule", "ShapeFn", "register_cost", "register_coupling"]

CouplingRule = Callable[[Node, "CouplingBuilder"], None]
ShapeFn = Callable[[Value], tuple[int, ...]]
CostRule = Callable[[Node, ShapeFn], float]

COUPLING: dict[str, CouplingRule] = {}
COST: dict[str, CostRule] = {}


register_coupling: Callable[..., Callable[[CouplingRule], CouplingRule]] = registrar(COUPLING, unique=True)
register_cost: Callable[..., Callable[[CostRule], CostRule]] = registrar(COST, unique=True)
