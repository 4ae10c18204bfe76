"""rewrite: build the physically smaller model (module route first, fx route as fallback).

route=auto tries the module route (same classes, updated configs) and checks it with the oracle;
if the model's code cannot follow the new shapes (an updater refuses, forward fails, or the
outputs disagree) it emits the fx GraphModule instead and records why.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from graphprune.errors import ExportError, OptionError, VerificationError, exception_line
from graphprune.frontends.torch_export import dynamic_dims, second_size_inputs
from graphprune.ir import Graph
from graphprune.rewrite import NotDynamic, NotRewritable, rewrite_fx, rewrite_module, rewrite_onnx
from graphprune.verification import masked_original, verify_pruned

from .infra import PassContext, PassResult, register_pass, removed_units

__all__ = ["Rewrite", "fx_route", "rewrite_onnx_ctx"]

log = logging.getLogger(__name__)


@register_pass
@dataclass(frozen=True)
class Rewrite:
    name: ClassVar[str] = "rewrite"
    route: str = "auto"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.coupling is None or ctx.plan is None:
            raise OptionError("pass 'rewrite' needs 'couple' and 'allocate' (or 'replay') to run first")
        if ctx.onnx is not None:
            rewrite_onnx_ctx(graph, ctx, dynamic=True)
            ctx.route, ctx.verification = "onnx", None
            return PassResult(graph, True)
        assert ctx.model is not None
        if self.route not in ("auto", "module", "fx"):
            raise OptionError(f"rewrite route {self.route!r} is unknown; use auto, module or fx")
        removed = removed_units(ctx)
        if self.route in ("auto", "module"):
            try:
                pruned = rewrite_module(ctx.model, ctx.coupling, removed)
                if self.route == "module":
                    ctx.pruned, ctx.route = pruned, "module"
                    return PassResult(graph, True)
                t0 = time.perf_counter()
                if ctx.masked is None:
                    ctx.masked = masked_original(ctx.model, ctx.coupling, removed)
                res = verify_pruned(ctx.model, pruned, ctx.coupling, removed, ctx.example_inputs, masked=ctx.masked)
                ctx.records.timings["verify"] = ctx.records.timings.get("verify", 0.0) + time.perf_counter() - t0
                if res.ok:
                    ctx.pruned, ctx.route, ctx.verification = pruned, "module", res
                    return PassResult(graph, True)
                reason = f"module route disagrees with the masked original ({res.detail or f'max error {res.max_abs_err:.3g}'})"
            except NotRewritable as exc:
                reason = str(exc)
            except Exception as exc:  # the user's forward() failing on new shapes is expected here
                reason = f"forward of the rewritten module failed: {exception_line(exc)}"
            if ctx.program is None:  # captured as fragments: no whole program for the fx route
                raise VerificationError(
                    f"{graph.name} was captured as fragments (torch.export cannot capture it whole), so only the "
                    f"module route can rewrite it, and it is not usable: {reason}")
            log.info("module route not usable (%s); emitting an fx GraphModule", reason)
            ctx.route_reason = reason
        ctx.pruned = fx_route(graph, ctx)
        ctx.route = "fx"
        ctx.verification = None
        return PassResult(graph, True)


def fx_route(graph: Graph, ctx: PassContext) -> Any:
    """The fx GraphModule, keeping the capture's symbolic dims when it matches the masked original
    at a second size of each (else rewritten static, with the reason in ``ctx.records.notes``);
    ``pruned.meta["graphprune_dynamic"]`` records which."""
    removed = removed_units(ctx)
    dims = dynamic_dims(ctx.program)
    pruned = rewrite_fx(ctx.program, graph, ctx.coupling, removed)
    if not dims:
        pruned.meta["graphprune_dynamic"] = {"kept": False, "reason": "the capture has no symbolic dims"}
        return pruned
    alt, sizes = second_size_inputs(ctx.program, ctx.example_inputs)
    t0 = time.perf_counter()
    if ctx.masked is None:
        ctx.masked = masked_original(ctx.model, ctx.coupling, removed)
    try:
        res = verify_pruned(ctx.model, pruned, ctx.coupling, removed, alt, masked=ctx.masked)
        why = "" if res.ok else (res.detail or f"max error {res.max_abs_err:.3g} > {res.tolerance:.3g}")
    except Exception as exc:  # the masked original or the pruned module failing at the second size
        why = exception_line(exc)
    ctx.records.timings["verify"] = ctx.records.timings.get("verify", 0.0) + time.perf_counter() - t0
    if not why:
        users = [n.name for n in pruned.graph.nodes if n.op == "placeholder"]
        pruned.meta["graphprune_dynamic"] = {"kept": True, "dims": dims, "inputs": users, "checked_at": sizes}
        ctx.records.notes.append(f"fx route keeps symbolic input dims {dims} (checked at {sizes})")
        return pruned
    reason = f"at symbolic sizes {sizes} the pruned GraphModule disagrees with the masked original: {why}"
    log.info("fx route specialized to the example shapes: %s", reason)
    ctx.records.notes.append(f"fx route specialized to the example input shapes: {reason}")
    pruned = rewrite_fx(ctx.program, graph, ctx.coupling, removed, static=True)
    pruned.meta["graphprune_dynamic"] = {"kept": False, "reason": reason}
    return pruned


def rewrite_onnx_ctx(graph: Graph, ctx: PassContext, dynamic: bool, reason: str = "") -> None:
    """Set ``ctx.pruned`` to the rewritten ONNX model and ``ctx.onnx_dynamic`` to what became of the
    symbolic input dims: kept symbolic when ``dynamic`` and the rewriter can express every shape,
    else bound (static, as analyzed) with the reason."""
    prep, removed = ctx.onnx, removed_units(ctx)
    dyn = prep.dynamic if dynamic else None
    if dyn is not None:
        try:
            ctx.pruned = rewrite_onnx(prep.model, graph, ctx.coupling, removed, dynamic=dyn)
            ctx.onnx_dynamic = {"kept": True, "dims": {k: {str(ax): p for ax, p in v.items()} for k, v in dyn.dims.items()}}
            return
        except (NotDynamic, ExportError) as exc:
            reason = str(exc)
    ctx.pruned = rewrite_onnx(prep.model, graph, ctx.coupling, removed)
    ctx.onnx_dynamic = {"kept": False, "reason": reason} if reason else {}
    if reason:
        log.info("pruned ONNX model keeps the bound input shapes %s: %s", prep.input_shapes, reason)
