"""allocate: pick units to remove so FLOPs, MACs, params or latency land on the budget (fraction kept).

``macs=`` prices only the contractions' multiply-accumulates (conv, linear, matmul, attention: the
fvcore/thop convention, :data:`graphprune.cost.METRICS`); ``flops=`` also the elementwise ops.

Latency budgets (``latency=FRACTION`` of the measured latency, or ``latency-ms=MS``) price
candidates with the calibrated measured-table model of :mod:`graphprune.latency_target`, built on
first use on ``runtime`` with ``threads`` (and kept in the context for later passes and
iterations); whole models are timed from the PyTorch model or, for an ONNX source, from the
prepared ONNX model (``runtime=onnxruntime`` only). Policies: ``uniform`` and ``global`` bisect on the budget; ``greedy`` is the
importance-per-cost knapsack of :mod:`graphprune.analysis.knapsack`; it ranks by the loss-based
scores (``ctx.loss_scores``: taylor, fisher) when the criterion gives them, comparable across groups.
``depth=true`` (greedy only) also lets the groups :func:`graphprune.analysis.depth.depth_eligible`
finds be removed whole (a residual branch dropped).

``round-to``: ``auto`` (the default) rounds kept widths to the target runtime's channel step, per
group (:func:`graphprune.analysis.allocation.runtime_round_to`), for FLOPs and params budgets too:
off-step widths make onnxruntime's blocked conv kernels pad or fall back (mobilenet_v2 at half the
FLOPs ran slower than dense with round-to=1); where the steps are too coarse for a count budget to
land within 1% (a small model), the step is halved until it does. An integer N rounds every group to multiples of N
(``round-to=1``: no rounding); a latency budget never rounds finer than the runtime's step.

``uniform-layers=true`` (policy uniform; ``gp.prune(uniform=True)``) gives every group of one layer
kind the same width (:func:`graphprune.analysis.allocation.layer_kinds`) and, for a transformers
model, keeps whole the widths its stock config cannot express
(:func:`graphprune.rewrite.hf_attrs.stock_fixed`), so stock ``from_pretrained`` can reload it.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from graphprune.analysis.allocation import Allocation, RoundTo, allocate, layer_kinds, runtime_round_to
from graphprune.analysis.depth import depth_eligible
from graphprune.analysis.knapsack import allocate_greedy
from graphprune.cost import count, predict
from graphprune.errors import BudgetError, OptionError
from graphprune.ir import Graph
from graphprune.progress import step as progress_step
from graphprune.rules import COST, MACS

from .infra import PassContext, PassResult, register_pass

log = logging.getLogger(__name__)

__all__ = ["Allocate", "decide"]

POLICIES = ("uniform", "global", "greedy")
AUTO_TOLERANCE = 0.01  # round-to=auto gives up the runtime's step only to land a count budget this close


@register_pass
@dataclass(frozen=True)
class Allocate:
    name: ClassVar[str] = "allocate"
    flops: float | None = None
    macs: float | None = None
    params: float | None = None
    latency: float | None = None
    latency_ms: float | None = None
    policy: str = "uniform"
    round_to: int | str = "auto"  # "auto": the runtime's channel step per group; or an integer N >= 1
    runtime: str = "onnxruntime"
    threads: int = 0  # 0: the runtime's own default
    depth: bool = False
    uniform_layers: bool = False

    def _budget(self) -> tuple[str, float]:
        given = [(k, v) for k, v in (("flops", self.flops), ("macs", self.macs), ("params", self.params),
                                     ("latency", self.latency), ("latency_ms", self.latency_ms)) if v is not None]
        if len(given) != 1:
            raise BudgetError("give exactly one budget: flops=, macs=, params= or latency= FRACTION (fraction kept, "
                              "in (0, 1]), or latency-ms=MS")
        metric, frac = given[0]
        if metric == "latency_ms":
            if not frac > 0:
                raise BudgetError(f"latency_ms={frac} must be > 0 (the target latency in milliseconds)")
        elif not 0.0 < frac <= 1.0:
            raise BudgetError(f"{metric}={frac} is out of range: give the fraction to keep, in (0, 1]")
        return metric, float(frac)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.coupling is None:
            raise OptionError("pass 'allocate' needs 'couple' to run first")
        # a new allocation invalidates everything built from the previous one (the latency loop
        # re-runs allocate on the same context)
        ctx.pruned = ctx.masked = ctx.verification = None
        ctx.route = ctx.route_reason = ""
        metric, frac = self._budget()
        fixed = self._fixed_round_to()
        if self.policy not in POLICIES:
            raise OptionError(f"allocation policy {self.policy!r} is unknown; use one of: {', '.join(POLICIES)}")
        if self.uniform_layers and self.policy != "uniform":
            raise OptionError(f"allocate option uniform-layers=true (uniform=True) needs policy=uniform, got "
                              f"policy={self.policy}; drop one of them")
        tie, frozen = self._layer_ties(ctx)
        scores = ctx.scores if ctx.scores is not None else np.ones(ctx.coupling.n_units)
        if self.policy == "greedy" and ctx.loss_scores is not None:
            scores = ctx.loss_scores  # the knapsack trades importance across groups: keep it comparable
        depth = self._depth(ctx)
        if metric.startswith("latency"):
            return self._latency(graph, ctx, metric, frac, scores, depth, fixed, tie, frozen)
        ties = (tie, frozen)
        if fixed is not None:
            alloc, round_to = self._count_budget(graph, ctx, metric, frac, scores, depth, fixed, ties), fixed
        else:
            alloc, round_to = self._auto_rounded(graph, ctx, metric, frac, scores, depth, ties)
        decide(ctx, alloc, {metric: frac}, round_to)
        return PassResult(graph, bool(alloc.removed.any()))

    def _auto_rounded(self, graph: Graph, ctx: PassContext, metric: str, frac: float, scores: np.ndarray,
                      depth: frozenset[int], ties: tuple[list[list[int]], frozenset[int]]) -> tuple[Allocation, int]:
        """Widths on the runtime's step; where those steps are too coarse for the budget to land within
        ``AUTO_TOLERANCE`` (a small model: two 32-channel layers move 8 channels at a time), halve the
        step until it does (down to 1), keeping the closest allocation."""
        step = self._step()
        best: tuple[float, Allocation, int] | None = None
        while True:
            alloc = self._count_budget(graph, ctx, metric, frac, scores, depth, runtime_round_to(ctx.coupling, step),
                                       ties)
            miss = abs(alloc.cost_after / alloc.target - 1.0) if alloc.target else 0.0
            if best is None or miss < best[0]:
                best = (miss, alloc, step)
            if miss <= AUTO_TOLERANCE or step == 1 or not alloc.reachable:
                return best[1], best[2]
            log.info("allocate: widths on multiples of %d land %.1f%% off the budget; trying %d", step, 100 * miss,
                     step // 2)
            step //= 2

    def _count_budget(self, graph: Graph, ctx: PassContext, metric: str, frac: float, scores: np.ndarray,
                      depth: frozenset[int], round_to: RoundTo,
                      ties: tuple[list[list[int]], frozenset[int]]) -> Allocation:
        """Allocation for a FLOPs, MACs or params budget."""

        def cost(shape):  # type: ignore[no-untyped-def]
            rep = count(graph, shape)
            return {"flops": rep.flops, "macs": rep.macs}.get(metric, float(rep.params))

        if self.policy != "greedy":
            return allocate(ctx.coupling, scores, cost, frac, self.policy, round_to, *ties)
        if metric not in ("flops", "macs"):
            raise OptionError("policy=greedy supports flops=, macs= and latency budgets")
        base = count(graph).flops if metric == "flops" else count(graph).macs
        table = COST if metric == "flops" else MACS
        return allocate_greedy(
            ctx.coupling, scores, lambda n, s: float(table[n.op](n, s)) if n.op in table else 0.0,
            frac * base, step=round_to, depth=depth,
        )

    def _fixed_round_to(self) -> int | None:
        """The user's integer rounding, or None for ``auto``."""
        text = str(self.round_to).strip().lower()
        if text == "auto":
            return None
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise OptionError(f"round_to={self.round_to!r} must be an integer >= 1, or 'auto' (the target runtime's "
                              "channel step)")
        return value

    def _step(self) -> int:
        """The target runtime's channel step, without timing anything (nothing is measured for a
        FLOPs or params budget)."""
        from graphprune.cost.runtimes import make_runtime

        return make_runtime(self.runtime, self.threads).step

    def _layer_ties(self, ctx: PassContext) -> tuple[list[list[int]], frozenset[int]]:
        """Tied layer kinds and the groups a transformers config cannot express, for uniform-layers."""
        if not self.uniform_layers:
            return [], frozenset()
        assert ctx.coupling is not None
        frozen: set[int] = set()
        if ctx.model is not None and "transformers" in sys.modules:
            from graphprune.rewrite.hf_attrs import stock_fixed

            fixed = set(stock_fixed(ctx.model))
            graph = ctx.coupling.graph
            frozen = {g.id for g in ctx.coupling.groups
                      if any((graph.value(n).source, a) in fixed for n, a in g.spaces)}
        return layer_kinds(ctx.coupling), frozenset(frozen)

    def _depth(self, ctx: PassContext) -> frozenset[int]:
        """The groups that may be removed whole: none unless ``depth=true`` (greedy only)."""
        if not self.depth:
            return frozenset()
        if self.policy != "greedy":
            raise OptionError(f"allocate option depth=true needs policy=greedy (got policy={self.policy}); "
                              "drop depth or use policy=greedy")
        return depth_eligible(ctx.coupling)

    def _latency(self, graph: Graph, ctx: PassContext, metric: str, value: float, scores: np.ndarray,
                 depth: frozenset[int], fixed: int | None, tie: list[list[int]], frozen: frozenset[int]) -> PassResult:
        from graphprune.cost.runtimes import make_runtime
        from graphprune.latency_source import make_timer
        from graphprune.latency_target import setup_latency

        setup = ctx.latency
        if setup is None or setup.runtime.name != self.runtime or setup.runtime.threads != self.threads:
            timer = make_timer(make_runtime(self.runtime, self.threads), graph, ctx.coupling, model=ctx.model,
                               example_inputs=ctx.example_inputs, program=ctx.program, onnx=ctx.onnx)
            setup = setup_latency(graph, ctx.coupling, timer,
                                  progress=lambda done, total, what: progress_step(ctx.progress, "latency profiling", done, total))
            ctx.latency = setup
        lm = setup.model
        target = value * setup.base_measured if metric == "latency" else value / 1e3
        step: RoundTo = (max(fixed, setup.runtime.step) if fixed is not None
                         else runtime_round_to(ctx.coupling, setup.runtime.step))
        if self.policy == "greedy":
            cal = lm.calibration
            alloc = allocate_greedy(ctx.coupling, scores, lm.node_latency, target, step=step,
                                    scale=cal.scale, offset=cal.offset, depth=depth)
        else:
            base_pred = predict(lm, graph).total
            alloc = allocate(ctx.coupling, scores, lambda shape: predict(lm, graph, shape).total,
                             target / base_pred, self.policy, step, tie, frozen)
        decide(ctx, alloc, {metric: value}, max(fixed or 1, setup.runtime.step))
        return PassResult(graph, bool(alloc.removed.any()))


def decide(ctx: PassContext, alloc: Allocation, target: dict[str, float], round_to: int,
           criterion: str | None = None) -> None:
    """Record a decision: ``ctx.allocation`` (its costs) and ``ctx.plan``, the
    :class:`~graphprune.plan.PruningPlan` the later passes read."""
    from graphprune.plan import make_plan

    assert ctx.coupling is not None
    ctx.allocation = alloc
    ctx.plan = make_plan(ctx.coupling, alloc.removed, target=target, criterion=criterion or ctx.criterion,
                         allocation=alloc.policy, round_to=round_to, route="onnx" if ctx.onnx is not None else "torch")
