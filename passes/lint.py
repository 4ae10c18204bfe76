"""lint: check IR invariants (the verifier as a pass; run it after every pass in tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from graphprune.ir import Graph, verify_graph

from .infra import PassContext, PassResult, register_pass

__all__ = ["Lint"]


@register_pass
@dataclass(frozen=True)
class Lint:
    name: ClassVar[str] = "lint"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        verify_graph(graph)
        return PassResult(graph, False)
