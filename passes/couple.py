"""couple: coupling analysis (units, groups, barriers) into the context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from graphprune.analysis import couple
from graphprune.ir import Graph

from .infra import PassContext, PassResult, register_pass

__all__ = ["Couple"]


@register_pass
@dataclass(frozen=True)
class Couple:
    name: ClassVar[str] = "couple"
    hidden: bool = False  # hidden-size (residual-stream) pruning through RMSNorm (rules/hidden.py)
    multiple: int = 1  # the hidden size stays a multiple of it (transformers: num_attention_heads)
    experts: bool = True  # whole MoE experts as units (rules/moe.py); api.prune turns it off unless params= is the budget

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        ctx.coupling = couple(graph, hidden=self.hidden, multiple=self.multiple, experts=self.experts)
        return PassResult(graph, False)
