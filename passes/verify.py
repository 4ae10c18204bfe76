"""verify: the pruned model must equal the masked original (fails loudly unless strict=false).

A failed check costs one group, not the model: with ``repair=N`` (default 3) the removed groups
are bisected (each subset rewritten and checked against its own masked original) to find the
group(s) whose removal breaks the oracle; those are pinned (frozen in the coupling, recorded in
``report["pinned_after_check"]`` with the ops that touch them and the most suspect one), the
allocation is redone to the same budget, the model rewritten and checked again, at most N rounds.
Only when that still fails is the model refused.

After a reconstruction pass has changed weights, the numbers legitimately differ from the masked
original, so verify then checks STRUCTURE only: every pruned weight has its planned shape and
the outputs have the masked original's shapes. Pipelines should run verify between rewrite and
reconstruction (the default does), which keeps the numeric oracle exact.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from graphprune.errors import OptionError, VerificationError, exception_line
from graphprune.ir import Graph
from graphprune.progress import step
from graphprune.rewrite import rewrite_fx, rewrite_module
from graphprune.verification import (
    VerifyResult,
    find_culprits,
    group_ops,
    masked_original,
    merge_results,
    suspect_op,
    verify_pruned,
    verify_structure,
)
from graphprune.verification_onnx import verify_onnx, verify_onnx_dynamic

from .allocate import Allocate
from .infra import PassContext, PassResult, register_pass, removed_units
from .rewrite import Rewrite, rewrite_onnx_ctx

__all__ = ["Verify"]

log = logging.getLogger(__name__)


@register_pass
@dataclass(frozen=True)
class Verify:
    name: ClassVar[str] = "verify"
    strict: bool = True
    rtol: float = 1e-4
    trials: int = 1  # extra checks on random inputs of the example inputs' shapes
    repair: int = 3  # rounds of bisect-pin-replan when the oracle fails (0: fail at once)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.pruned is None or ctx.coupling is None or ctx.plan is None:
            raise OptionError("pass 'verify' needs 'rewrite' to run first")
        removed = removed_units(ctx)
        if ctx.onnx is not None:
            self._verify_onnx(graph, ctx)
            return self._check(graph, ctx)
        if ctx.records.reconstructed:
            res = verify_structure(ctx.model, ctx.pruned, ctx.coupling, removed, ctx.example_inputs)
            if not res.ok and self.strict:
                raise VerificationError(f"pruned {graph.name} has the wrong structure after reconstruction: {res.detail}")
            # a numeric check made by rewrite before reconstruction stays in the record
            ctx.verification = res if ctx.verification is None else merge_results(res, ctx.verification)
            return PassResult(graph, False)
        self._numeric(ctx)
        for round_ in range(1, self.repair + 1):
            if ctx.verification.ok or not self._pin_culprits(graph, ctx, round_):
                break
            self._replan(graph, ctx)
            self._numeric(ctx)
        if ctx.fragments is not None and ctx.verification.ok:
            self._pre_barrier(ctx)
        return self._check(graph, ctx)

    def _pre_barrier(self, ctx: PassContext) -> None:
        """A fragment capture's oracle on the tensors before the barriers (head outputs before
        decoding/NMS; ``frontends/fragments.py::check_pre_barrier``), here while the weights are
        still the masked original's, before any reconstruction pass changes them."""
        from graphprune.frontends.fragments import check_pre_barrier
        from graphprune.frontends.inputs import as_args_kwargs

        args, kwargs = as_args_kwargs(ctx.example_inputs)
        res = check_pre_barrier(ctx.masked, ctx.pruned, ctx.fragments, args, kwargs)
        ctx.records.pre_barrier_check = res
        if not res["ok"] and self.strict:
            raise VerificationError(f"pruned {type(ctx.model).__name__} differs from the masked original before the "
                                    f"barriers: {res['detail']}")

    def _numeric(self, ctx: PassContext) -> None:
        """The oracle on the example inputs (reusing rewrite's check) and ``trials`` random ones."""
        removed = removed_units(ctx)
        if ctx.masked is None:
            ctx.masked = masked_original(ctx.model, ctx.coupling, removed)
        if ctx.verification is None:
            ctx.verification = _run_check(lambda: verify_pruned(
                ctx.model, ctx.pruned, ctx.coupling, removed, ctx.example_inputs, rtol=self.rtol, masked=ctx.masked))
        if ctx.verification.ok and self.trials > 0:
            step(ctx.progress, self.name, 1, 1 + self.trials)
            extra = _run_check(lambda: verify_pruned(
                ctx.model, ctx.pruned, ctx.coupling, removed, ctx.example_inputs, random_trials=self.trials,
                rtol=self.rtol, include_example=False, masked=ctx.masked,
            ))
            ctx.verification = merge_results(ctx.verification, extra)

    def _pin_culprits(self, graph: Graph, ctx: PassContext, round_: int) -> bool:
        """Bisect the removed groups for the ones that make the check fail (each subset rewritten
        by the route that failed and checked against its own masked original), record them in
        ``ctx.records.pinned_after_check`` with the ops that touch them, and freeze them in the coupling.
        False when no subset reproduces the failure (nothing to pin)."""
        removed, coupling, route = removed_units(ctx), ctx.coupling, ctx.route

        def fails(mask: np.ndarray) -> VerifyResult | None:
            try:
                pruned = (rewrite_module(ctx.model, coupling, mask) if route == "module"
                          else rewrite_fx(ctx.program, graph, coupling, mask))
                res = verify_pruned(ctx.model, pruned, coupling, mask, ctx.example_inputs, random_trials=self.trials,
                                    rtol=self.rtol)
            except Exception as exc:  # a subset the route cannot even build counts as failing
                return VerifyResult(False, math.inf, 0.0, 0.0, 1, f"rewrite failed: {type(exc).__name__}: {exc}"[:200])
            return None if res.ok else res

        culprits = find_culprits(coupling, removed, fails)
        if not culprits:
            return False
        for gid, res in culprits:
            g = coupling.groups[gid]
            ops = group_ops(coupling, gid)
            why = (res.detail or f"max abs error {res.max_abs_err:.3g} > {res.tolerance:.3g}") if res is not None else \
                "fails only together with the other groups of this round"
            entry = {
                "round": round_, "group": gid, "units_removed": int(removed[g.units].sum()),
                "spaces": [f"{n}[{a}]" for n, a in g.spaces],
                "weights": [f"{graph.value(n).source}[{a}]" for n, a in g.spaces if graph.value(n).is_weight],
                "ops": [f"{op} ({name})" for op, name in ops], "suspect_op": suspect_op(coupling, ops),
                "reason": f"removing this group alone, the pruned model differs from the masked original: {why}",
            }
            ctx.records.pinned_after_check.append(entry)
            log.warning("verify: pinned group %d (%s) of %s: the rule of %r looks wrong; re-planning to the same budget",
                        gid, ", ".join(entry["weights"] or entry["spaces"]), graph.name, entry["suspect_op"])
        ctx.coupling, kept = coupling.pin_groups([gid for gid, _ in culprits])
        if ctx.scores is not None:
            ctx.scores = ctx.scores[kept]
        if ctx.loss_scores is not None:
            ctx.loss_scores = ctx.loss_scores[kept]
        ctx.records.notes.append(f"verification failed; pinned {len(culprits)} group(s) and re-planned (round {round_})")
        return True

    @staticmethod
    def _replan(graph: Graph, ctx: PassContext) -> None:
        """Allocate again with the pipeline's allocate pass (same budget and options) on the
        pinned coupling, and rewrite again; without one (a replayed plan), the plan's budget."""
        alloc = next((p for p in ctx.pipeline if p.name == Allocate.name), None)
        if alloc is None:
            metric, frac = next(iter(ctx.plan.target.items()))
            opts: dict[str, Any] = {metric: frac, "policy": ctx.allocation.policy, "round_to": ctx.plan.round_to}
            if ctx.latency is not None:
                opts.update(runtime=ctx.latency.runtime.name, threads=ctx.latency.runtime.threads)
            alloc = Allocate(**opts)
        alloc.run(graph, ctx)
        Rewrite().run(graph, ctx)

    def _verify_onnx(self, graph: Graph, ctx: PassContext) -> None:
        """Exact oracle at the bound shapes; a model with symbolic dims kept is also checked against
        the masked original graph at several input sizes. If either fails, the model is rewritten
        with static shapes, checked again, and the report says why."""
        prep, removed = ctx.onnx, removed_units(ctx)
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


def _run_check(check: Callable[[], VerifyResult]) -> VerifyResult:
    """The oracle's result; a pruned model that does not even run (a rule that gave some op a
    shape it refuses) is a failed check like any other, so the repair bisects for its group."""
    try:
        return check()
    except Exception as exc:  # the pruned model's forward raising: a wrong rule, not the user's input
        return VerifyResult(False, math.inf, 0.0, 0.0, 1, f"the pruned model failed to run: {exception_line(exc)}")
