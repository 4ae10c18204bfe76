"""Rule tables keyed by normalized op: one table per interpretation.

- ``COUPLING[op](node, builder)`` declares channel ties and pins (see analysis.coupling).
- ``COST[op](node, shape)`` returns the op's FLOPs given a shape function, so the same rule
  prices the original graph and any candidate pruned widths.

Rules register with decorators, one function covering a whole op family where the maths is the
same; an op missing from ``COUPLING`` is a barrier.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..ir import Node, Value

if TYPE_CHECKING:
    from ..analysis.coupling import CouplingBuilder

__all__ = ["COST", "COUPLING", "CostRule", "CouplingRule", "ShapeFn", "register_cost", "register_coupling"]

CouplingRule = Callable[[Node, "CouplingBuilder"], None]
ShapeFn = Callable[[Value], tuple[int, ...]]
CostRule = Callable[[Node, ShapeFn], float]

COUPLING: dict[str, CouplingRule] = {}
COST: dict[str, CostRule] = {}


def _register(table: dict, ops: Iterable[str]) -> Callable:
    def deco(fn: Callable) -> Callable:
        for op in ops:
            if op in table:
                raise ValueError(f"rule for op {op!r} registered twice ({table[op].__name__}, {fn.__name__})")
            table[op] = fn
        return fn

    return deco


def register_coupling(*ops: str) -> Callable[[CouplingRule], CouplingRule]:
    return _register(COUPLING, ops)


def register_cost(*ops: str) -> Callable[[CostRule], CostRule]:
    return _register(COST, ops)
