"""The public Python API: ``prune``, ``analyze``, ``count_flops``.

    import graphprune as gp
    res = gp.prune(model, example_inputs, flops=0.5)   # keep 50% of FLOPs; or params=0.5
    res.model; res.report; res.plan; res.save("small.pt"); res.save("small.onnx")
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .analysis import Coupling, couple
from .cost import count
from .errors import BudgetError, OptionError
from .export import save_model
from .frontends import ExampleInputs, capture
from .frontends.calib import check_batches, materialize
from .ir import Graph
from .plan import GroupPlan, PruningPlan
from .rewrite import kept_indices

__all__ = ["Analysis", "PruneResult", "analyze", "count_flops", "prune"]


@dataclass
class Analysis:
    """Coupling analysis of a model: groups, barriers and per-layer cost, before any pruning."""

    graph: Graph
    coupling: Coupling
    program: Any
    seconds: float
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class PruneResult:
    model: nn.Module
    report: dict[str, Any]
    plan: PruningPlan
    example_inputs: Any = field(default=None, repr=False)
    coupling: Coupling | None = field(default=None, repr=False)
    removed: np.ndarray | None = field(default=None, repr=False)  # bool per coupling unit

    def save(self, path: str | os.PathLike[str], opset: int | None = None) -> dict[str, Any]:
        """Write ``.pt`` or ``.onnx`` (checked in onnxruntime) atomically."""
        return save_model(self.model, path, self.example_inputs, opset)


def _check_model(model: Any, example_inputs: Any) -> None:
    if isinstance(model, (str, Path)):
        raise OptionError(
            f"{str(model)!r}: ONNX files are not supported by this version yet; pass an nn.Module and example inputs"
        )
    if not isinstance(model, nn.Module):
        raise OptionError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if example_inputs is None:
        raise OptionError("example_inputs is required for a PyTorch model (a tensor, a tuple, or a dict)")


def analyze(model: nn.Module, example_inputs: ExampleInputs) -> Analysis:
    _check_model(model, example_inputs)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        cap = capture(model, example_inputs)
    finally:
        model.train(was_training)
    coupling = couple(cap.graph)
    a = Analysis(cap.graph, coupling, cap.program, time.perf_counter() - t0)
    a.report = analysis_report(cap.graph, coupling)
    return a


def count_flops(model: nn.Module, example_inputs: ExampleInputs) -> tuple[int, int]:
    """(FLOPs, params) of any module, with graphprune's per-op counting conventions."""
    cap = capture(model, example_inputs)
    rep = count(cap.graph)
    return int(rep.flops), rep.params


def prune(
    model: nn.Module,
    example_inputs: ExampleInputs = None,
    *,
    flops: float | None = None,
    params: float | None = None,
    criterion: str = "l2",
    allocation: str = "uniform",
    round_to: int = 1,
    verify: bool = True,
    pipeline: str | None = None,
    progress: Callable[[str], None] | None = None,
    calib: Iterable[ExampleInputs] | None = None,
    loss: Callable[[Any, ExampleInputs], torch.Tensor] | None = None,
    reconstruct: Sequence[str] | str = (),
    steps: int = 1,
    callback: Callable[[nn.Module, int], None] | None = None,
    seed: int = 0,
) -> PruneResult:
    """Prune ``model`` to keep ``flops`` (or ``params``) fraction; returns a new, verified model.

    ``verify=False`` keeps a model that fails the oracle instead of raising (the report says so).
    ``calib``: iterable of batches shaped like ``example_inputs``, for data-aware criteria
    (wanda, flap, taylor, fisher) and reconstruction; ``loss(outputs, batch)`` replaces the
    default output probe of the gradient criteria. ``reconstruct``: any of ``"lsq"``, ``"bias"``,
    ``"bn"`` (run after verification, in that order). ``steps=k`` prunes in k steps toward the
    budget (step i keeps ``1 - (1 - fraction) * i / k`` of the original), calling
    ``callback(model, i)`` between steps; the returned plan is the composition of the steps' plans.
    """
    from graphprune.passes import default_pipeline

    _check_model(model, example_inputs)
    if (flops is None) == (params is None) and pipeline is None:
        raise BudgetError("give exactly one budget: flops=FRACTION or params=FRACTION (fraction to keep, in (0, 1])")
    batches = materialize(calib)
    if batches is not None:
        check_batches(batches, example_inputs)
    recon = tuple(r.strip() for r in reconstruct.split(",") if r.strip()) if isinstance(reconstruct, str) else tuple(reconstruct)
    metric, frac = ("flops", flops) if flops is not None else ("params", params)
    if not isinstance(steps, int) or steps < 1:
        raise OptionError(f"steps={steps!r} must be an integer >= 1")
    if steps > 1 and pipeline is not None:
        raise OptionError("steps= needs the budget options (flops=/params=), not pipeline=")

    def once(m: nn.Module, fraction: float | None) -> PruneResult:
        text = pipeline or default_pipeline(
            metric, float(1.0 if fraction is None else fraction), criterion, allocation, round_to, strict=verify, reconstruct=recon
        )
        return _prune_once(m, example_inputs, text, batches, loss, seed, progress)

    if steps == 1:
        return once(model, frac)
    return _prune_steps(model, once, metric, float(frac), steps, callback)  # type: ignore[arg-type]


def _prune_once(
    model: nn.Module, example_inputs: ExampleInputs, text: str, calib: list[Any] | None,
    loss: Callable[[Any, ExampleInputs], torch.Tensor] | None, seed: int, progress: Callable[[str], None] | None,
) -> PruneResult:
    from graphprune.passes import PassContext, parse_pipeline, run_pipeline

    passes = parse_pipeline(text)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        if progress:
            progress("capture")
        cap = capture(model, example_inputs)
        ctx = PassContext(model=model, example_inputs=example_inputs, program=cap.program, calib=calib, loss=loss, seed=seed)
        ctx.timings["capture"] = cap.seconds
        graph = run_pipeline(passes, cap.graph, ctx, progress)
    finally:
        model.train(was_training)
    if ctx.pruned is None or ctx.allocation is None or ctx.coupling is None:
        raise OptionError(f"pipeline {text!r} did not produce a model; it needs couple, allocate and rewrite")
    ctx.timings["total"] = time.perf_counter() - t0
    plan = _plan(graph, ctx)
    report = prune_report(graph, ctx)
    return PruneResult(ctx.pruned, report, plan, example_inputs, ctx.coupling, ctx.allocation.removed)


def _prune_steps(
    model: nn.Module, once: Callable[[nn.Module, float], PruneResult], metric: str, frac: float, steps: int,
    callback: Callable[[nn.Module, int], None] | None,
) -> PruneResult:
    """k pruning steps; step i targets ``1 - (1 - frac) * i / k`` of the ORIGINAL cost, asking each
    step for (goal / current cost) of its own input, so rounding in one step is absorbed by the next."""
    res = once(model, 1.0 - (1.0 - frac) / steps)
    first = res.report
    total0 = float(first[f"{metric}_before"])
    plan, history = res.plan, [res.report["achieved"][metric]]
    for i in range(2, steps + 1):
        if callback is not None:
            callback(res.model, i - 1)
        goal = (1.0 - (1.0 - frac) * i / steps) * total0
        current = float(res.report[f"{metric}_after"])
        res = once(res.model, min(1.0, goal / current) if current > 0 else 1.0)
        plan = plan.compose(res.plan)
        history.append(res.report["achieved"][metric])
    report = dict(res.report)
    report.update({
        "target": {metric: frac},
        "achieved": {metric: float(report[f"{metric}_after"]) / total0 if total0 else 1.0},
        "flops_before": first["flops_before"], "params_before": first["params_before"],
        "steps": {"count": steps, "achieved_per_step_of_input": history},
    })
    plan = dataclasses.replace(plan, target={metric: frac})
    return PruneResult(res.model, report, plan, res.example_inputs, res.coupling, res.removed)


def _plan(graph: Graph, ctx: Any) -> PruningPlan:
    coupling: Coupling = ctx.coupling
    removed: np.ndarray = ctx.allocation.removed
    groups = tuple(
        GroupPlan(g.id, g.size, int((~removed[g.units]).sum()), g.width, tuple(f"{n}[{a}]" for n, a in g.spaces))
        for g in coupling.groups
    )
    kept = {
        k.value.source or k.value.name: {ax: tuple(int(i) for i in idx) for ax, idx in k.axes.items()}
        for k in kept_indices(coupling, removed)
    }
    return PruningPlan(
        model=graph.name, target=dict(ctx.target), criterion=ctx.criterion or "l2",
        allocation=ctx.allocation.policy, round_to=ctx.round_to, groups=groups,
        removed_units=tuple(int(u) for u in np.flatnonzero(removed)), kept=kept,
        provenance={"graphprune": __version__, "torch": torch.__version__},
    )


def analysis_report(graph: Graph, coupling: Coupling) -> dict[str, Any]:
    cost = count(graph)
    layers = []
    for node in graph.nodes:
        w = [v for v in node.inputs if v is not None and v.kind == "param"]
        if node.op in ("conv", "linear", "embedding", "matmul", "sdpa") or w:
            layers.append({
                "node": node.name, "op": node.op, "scope": node.scope,
                "weight": w[0].source if w else None, "shape": list(w[0].shape) if w else list(node.output.shape),
                "flops": cost.per_node.get(node.name, 0.0),
                "params": int(sum(int(np.prod(v.shape)) for v in w)),
                "prunable": bool(w and any(coupling.prunable(w[0], ax) for ax in range(w[0].rank))),
            })
    return {
        "model": graph.name,
        "nodes": len(graph.nodes),
        "flops": cost.flops,
        "params": cost.params,
        "units": coupling.n_units,
        "groups": [
            {"id": g.id, "units": g.size, "width": g.width, "spaces": [f"{n}[{a}]" for n, a in g.spaces]}
            for g in coupling.groups
        ],
        "barriers": {op: names for op, names in coupling.barriers.items()},
        "layers": layers,
    }


def prune_report(graph: Graph, ctx: Any) -> dict[str, Any]:
    from .analysis.allocation import ShapeTable

    coupling: Coupling = ctx.coupling
    removed: np.ndarray = ctx.allocation.removed
    before = count(graph)
    after = count(graph, ShapeTable(coupling).shapes(removed))
    widths = {
        k.value.source or k.value.name: {"before": list(k.value.shape), "after": [
            len(k.axes[ax]) if ax in k.axes else s for ax, s in enumerate(k.value.shape)
        ]}
        for k in kept_indices(coupling, removed)
    }
    metric, frac = next(iter(ctx.target.items()))
    achieved = (after.flops / before.flops if metric == "flops" else after.params / before.params) if before.flops else 1.0
    return {
        "model": graph.name,
        "target": dict(ctx.target),
        "achieved": {metric: achieved},
        "target_reachable": bool(ctx.allocation.reachable),
        "flops_before": before.flops,
        "flops_after": after.flops,
        "params_before": before.params,
        "params_after": after.params,
        "criterion": ctx.criterion,
        "allocation": ctx.allocation.policy,
        "units": coupling.n_units,
        "units_removed": int(removed.sum()),
        "groups": len(coupling.groups),
        "barriers": {op: names for op, names in coupling.barriers.items()},
        "route": ctx.route,
        "route_reason": ctx.route_reason,
        "verification": ctx.verification.as_dict() if ctx.verification is not None else None,
        "widths": widths,
        "timings": {k: round(v, 4) for k, v in ctx.timings.items()},
        "reconstruction": list(ctx.reconstructed),
        "notes": list(ctx.notes),
    }
