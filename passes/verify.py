"""verify: the pruned model must equal the masked original (fails loudly unless strict=false).

After a reconstruction pass has changed weights, the numbers legitimately differ from the masked
original, so verify then checks STRUCTURE only: every pruned weight has its planned shape and
the outputs have the masked original's shapes. Pipelines should run verify between rewrite and
reconstruction (the default does), which keeps the numeric oracle exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from graphprune.errors import OptionError, VerificationError
from graphprune.ir import Graph
from graphprune.progress import step
from graphprune.verification import masked_original, merge_results, verify_pruned, verify_structure
from graphprune.verification_onnx import verify_onnx, verify_onnx_dynamic

from .infra import PassContext, PassResult, register_pass
from .rewrite import rewrite_onnx_ctx

__all__ = ["Verify"]


@register_pass
@dataclass(frozen=True)
class Verify:
    name: ClassVar[str] = "verify"
    strict: bool = True
    rtol: float = 1e-4
    trials: int = 1  # extra checks on random inputs of the example inputs' shapes

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.pruned is None or ctx.coupling is None or ctx.allocation is None:
            raise OptionError("pass 'verify' needs 'rewrite' to run first")
        removed = ctx.allocation.removed
        if ctx.onnx is not None:
            self._verify_onnx(graph, ctx)
            return self._check(graph, ctx)
        if ctx.reconstructed:
            res = verify_structure(ctx.model, ctx.pruned, ctx.coupling, removed, ctx.example_inputs)
            if not res.ok and self.strict:
                raise VerificationError(f"pruned {graph.name} has the wrong structure after reconstruction: {res.detail}")
            # a numeric check made by rewrite before reconstruction stays in the record
            ctx.verification = res if ctx.verification is None else merge_results(res, ctx.verification)
            return PassResult(graph, False)
        if ctx.masked is None:
            ctx.masked = masked_original(ctx.model, ctx.coupling, removed)
        if ctx.verification is None:
            ctx.verification = verify_pruned(ctx.model, ctx.pruned, ctx.coupling, removed, ctx.example_inputs,
                                             rtol=self.rtol, masked=ctx.masked)
        if ctx.verification.ok and self.trials > 0:
            step(ctx.progress, self.name, 1, 1 + self.trials)
            extra = verify_pruned(
                ctx.model, ctx.pruned, ctx.coupling, removed, ctx.example_inputs, random_trials=self.trials,
                rtol=self.rtol, include_example=False, masked=ctx.masked,
            )
            ctx.verification = merge_results(ctx.verification, extra)
        return self._check(graph, ctx)

    def _verify_onnx(self, graph: Graph, ctx: PassContext) -> None:
        """Exact oracle at the bound shapes; a model with symbolic dims kept is also checked against
        the masked original graph at several input sizes. If either fails, the model is rewritten
        with static shapes, checked again, and the report says why."""
        prep, removed = ctx.onnx, ctx.allocation.removed
        ctx.verification = verify_onnx(prep.model, ctx.pruned, ctx.coupling, removed, prep.input_shapes,
                                       feeds=ctx.example_inputs, trials=max(1, self.trials), rtol=self.rtol)
        if not ctx.onnx_dynamic.get("kept"):
            return
        if ctx.verification.ok:
            alt, checked = verify_onnx_dynamic(prep.dynamic, prep.model, ctx.pruned, ctx.coupling, removed,
                                               trials=max(1, self.trials), rtol=self.rtol)
            if alt.ok:
                ctx.onnx_dynamic["checked_at"] = [{k: list(v) for k, v in c.items()} for c in checked]
                return
            why = alt.detail or f"max abs error {alt.max_abs_err:.3g} > {alt.tolerance:.3g}"
            at = checked[-1] if checked else prep.dynamic.alt_shapes
            reason = f"at input shapes {at} the pruned model disagrees with the masked original: {why}"
        else:
            res = ctx.verification
            reason = ("the model with symbolic dims failed verification at the bound shapes: "
                      + (res.detail or f"max abs error {res.max_abs_err:.3g} > {res.tolerance:.3g}"))
        rewrite_onnx_ctx(graph, ctx, dynamic=False, reason=reason)
        ctx.verification = verify_onnx(prep.model, ctx.pruned, ctx.coupling, removed, prep.input_shapes,
                                       feeds=ctx.example_inputs, trials=max(1, self.trials), rtol=self.rtol)

    def _check(self, graph: Graph, ctx: PassContext) -> PassResult:
        res = ctx.verification
        if not res.ok and self.strict:
            raise VerificationError(
                f"pruned {graph.name} does not match the masked original (max abs error {res.max_abs_err:.3g}, "
                f"tolerance {res.tolerance:.3g}{'; ' + res.detail if res.detail else ''}); nothing was written -- "
                "please report this model; pass verify=False / --no-verify to keep the unverified model"
            )
        return PassResult(graph, False)
