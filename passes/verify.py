"""verify: the pruned model must equal the masked original (fails loudly unless strict=false)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from graphprune.errors import OptionError, VerificationError
from graphprune.ir import Graph
from graphprune.verification import verify_pruned

from .infra import PassContext, PassResult, register_pass

__all__ = ["Verify"]


@register_pass
@dataclass(frozen=True)
class Verify:
    name: ClassVar[str] = "verify"
    strict: bool = True
    rtol: float = 1e-4

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.pruned is None or ctx.coupling is None or ctx.allocation is None or ctx.model is None:
            raise OptionError("pass 'verify' needs 'rewrite' to run first")
        if ctx.verification is None:
            ctx.verification = verify_pruned(
                ctx.model, ctx.pruned, ctx.coupling, ctx.allocation.removed, ctx.example_inputs, rtol=self.rtol
            )
        res = ctx.verification
        if not res.ok and self.strict:
            raise VerificationError(
                f"pruned {graph.name} does not match the masked original (max abs error {res.max_abs_err:.3g}, "
                f"tolerance {res.tolerance:.3g}{'; ' + res.detail if res.detail else ''}); nothing was written -- "
                "please report this model; pass verify=False / --no-verify to keep the unverified model"
            )
        return PassResult(graph, False)
