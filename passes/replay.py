"""replay: take a saved :class:`~graphprune.plan.PruningPlan` as the allocation (decide once, apply
anywhere): the plan is bound to this run's coupling (:func:`graphprune.plan.bind`), which refuses a
plan made for another graph with one line naming the first weight that differs.

``replay{plan=plan.json}`` in a pipeline string; :func:`graphprune.apply` passes the plan object.
Nothing is scored or allocated: the plan's kept indices are the decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from graphprune.analysis.allocation import Allocation, ShapeTable
from graphprune.cost import count
from graphprune.errors import OptionError
from graphprune.ir import Graph
from graphprune.plan import PruningPlan, bind

from .allocate import decide
from .infra import PassContext, PassResult, register_pass

__all__ = ["Replay"]


@register_pass
@dataclass(frozen=True)
class Replay:
    name: ClassVar[str] = "replay"
    plan: str | PruningPlan = ""  # a plan, or the path of its JSON

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.coupling is None:
            raise OptionError("pass 'replay' needs 'couple' to run first")
        if isinstance(self.plan, PruningPlan):
            plan = self.plan
        elif self.plan:
            plan = PruningPlan.load(self.plan)
        else:
            raise OptionError("pass 'replay' needs plan=PATH (a plan.json written by graphprune prune --plan-out)")
        removed, folded = bind(plan, ctx.coupling, f"model {graph.name!r}")
        before = count(graph).flops
        after = count(graph, ShapeTable(ctx.coupling).shapes(removed)).flops
        ctx.criterion = plan.criterion
        decide(ctx, Allocation(removed, before, after, after, True, "replay"),
               dict(plan.target) or {"flops": after / before if before else 1.0}, plan.round_to)
        ctx.records.notes.append(f"replayed a plan made for {plan.model!r} ({plan.graph.get('route', 'unknown')} route, "
                         f"graph {plan.graph.get('hash', 'unrecorded')})")
        if folded:
            ctx.records.notes.append(f"{len(folded)} pruned per-channel vector(s) of the plan's graph are not in this one "
                             f"(folded into a conv/linear by the exporter, e.g. {folded[0]!r}); their channels "
                             "follow from the matched weights")
        return PassResult(graph, bool(removed.any()))
