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

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        ctx.coupling = couple(graph, hidden=self.hidden, multiple=self.multiple)
        return PassResult(graph, False)
