"""allocate: pick units to remove so FLOPs or params land on the budget (fraction kept)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from graphprune.analysis.allocation import allocate
from graphprune.cost import count
from graphprune.errors import BudgetError, OptionError
from graphprune.ir import Graph

from .infra import PassContext, PassResult, register_pass

__all__ = ["Allocate"]


@register_pass
@dataclass(frozen=True)
class Allocate:
    name: ClassVar[str] = "allocate"
    flops: float | None = None
    params: float | None = None
    policy: str = "uniform"
    round_to: int = 1

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.coupling is None:
            raise OptionError("pass 'allocate' needs 'couple' to run first")
        if (self.flops is None) == (self.params is None):
            raise BudgetError("give exactly one budget: flops=FRACTION or params=FRACTION (fraction kept, in (0, 1])")
        metric, frac = ("flops", self.flops) if self.flops is not None else ("params", self.params)
        assert frac is not None
        if not 0.0 < frac <= 1.0:
            raise BudgetError(f"{metric}={frac} is out of range: give the fraction to keep, in (0, 1]")
        if self.round_to < 1:
            raise OptionError(f"round_to={self.round_to} must be >= 1")
        if self.policy not in ("uniform", "global"):
            raise OptionError(f"allocation policy {self.policy!r} is unknown; use 'uniform' or 'global'")
        scores = ctx.scores if ctx.scores is not None else np.ones(ctx.coupling.n_units)

        def cost(shape):  # type: ignore[no-untyped-def]
            rep = count(graph, shape)
            return rep.flops if metric == "flops" else float(rep.params)

        ctx.allocation = allocate(ctx.coupling, scores, cost, frac, self.policy, self.round_to)
        ctx.target = {metric: frac}
        ctx.round_to = self.round_to
        return PassResult(graph, bool(ctx.allocation.removed.any()))
