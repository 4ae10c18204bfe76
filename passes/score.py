"""score: per-unit importance with a registered criterion, normalized per group (and, for a
loss-based criterion, also kept comparable across groups for the knapsack: ``ctx.loss_scores``).

The criterion declares what it needs (``graphprune.analysis.importance``): weights only, activation
statistics (one streamed pass over ``ctx.calib``), or loss gradients (backward passes over
``ctx.calib`` with ``ctx.loss`` or the default output probe). A data-aware criterion without
calibration data is an error naming the criterion and the ``calib=`` option. ``gram=true`` (set by
the default pipeline when ``reconstruct-lsq`` follows) takes the Gram matrices in the same streamed
pass, so the calibration data runs through the model once instead of twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from graphprune.analysis import CRITERIA, NORMALIZERS, CriterionInputs, normalize_global
from graphprune.analysis.calibration import collect_stats, reader_sites
from graphprune.analysis.fragment_calibration import collect_fragment_stats
from graphprune.analysis.gradients import gradient_scores
from graphprune.errors import CalibrationError, OptionError
from graphprune.ir import Graph
from graphprune.progress import step

from .infra import PassContext, PassResult, register_pass

__all__ = ["Score", "ensure_stats", "weights_of"]


def weights_of(graph: Graph, src: PassContext | torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weight tensors by IR value name: from an nn.Module, or from a run's context (its module or,
    for an ONNX model, its initializers)."""
    if isinstance(src, PassContext) and src.onnx is not None:
        from graphprune.frontends.onnx import constant_values

        consts = constant_values(src.onnx.model)
        return {v.name: torch.from_numpy(consts[v.name].copy()) for v in graph.weights() if v.name in consts}
    model = src.model if isinstance(src, PassContext) else src
    assert model is not None
    state = dict(model.named_parameters(remove_duplicate=False))
    state.update(dict(model.named_buffers(remove_duplicate=False)))
    return {v.name: state[v.source] for v in graph.weights() if v.source in state}


def ensure_stats(ctx: PassContext, gram_for: frozenset[str] = frozenset(), who: str = "") -> None:
    """Fill ``ctx.calib_stats.sites``/``ctx.calib_stats.stats`` (and Grams for ``gram_for``) from ``ctx.calib``, once."""
    if ctx.calib is None:
        raise CalibrationError(f"{who} needs calibration data: pass calib=[batch, ...] to prune() (CLI: --calib FILE)")
    if ctx.calib_stats.sites is None:
        ctx.calib_stats.sites = reader_sites(ctx.coupling)
    def progress(done: int, total: int) -> None:
        step(ctx.progress, "calibration", done, total)

    if ctx.program is None and ctx.fragments is not None:  # captured as fragments: the model runs itself
        ctx.calib_stats.stats = collect_fragment_stats(ctx.model, ctx.fragments, ctx.calib_stats.sites, ctx.calib, gram_for,
                                                       ctx.calib_stats.stats, progress, ctx.records.timings)
        return
    ctx.calib_stats.stats = collect_stats(ctx.program, ctx.calib_stats.sites, ctx.calib, gram_for, ctx.calib_stats.stats,
                                          progress=progress, timings=ctx.records.timings)


@register_pass
@dataclass(frozen=True)
class Score:
    name: ClassVar[str] = "score"
    criterion: str = "l2"
    gram: bool = False  # also take the Gram matrices reconstruct-lsq needs, in the same pass over calib
    normalize: str = "group"  # group: mean 1 per group; kind: mean 1 per layer kind (groups compete on raw scores)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.coupling is None:
            raise OptionError("pass 'score' needs 'couple' to run first")
        crit = CRITERIA.get(self.criterion)
        if crit is None:
            raise OptionError(f"unknown criterion {self.criterion!r}; available: {', '.join(sorted(CRITERIA))}")
        inputs = CriterionInputs(ctx.coupling, weights_of(graph, ctx), seed=ctx.seed)
        if crit.needs == "activations":
            if ctx.calib_stats.sites is None:
                ctx.calib_stats.sites = reader_sites(ctx.coupling)
            want = frozenset(s.node for s in ctx.calib_stats.sites if s.linear_like or s.op in ("matmul", "addmm")) if self.gram or crit.gram \
                else frozenset()
            ensure_stats(ctx, want, who=f"criterion {self.criterion!r}")
            inputs = CriterionInputs(ctx.coupling, inputs.weights, ctx.calib_stats.sites or [], ctx.calib_stats.stats, seed=ctx.seed)
        elif crit.needs == "gradients":
            if ctx.calib is None:
                raise CalibrationError(
                    f"criterion {self.criterion!r} needs calibration data: pass calib=[batch, ...] to prune() "
                    "(CLI: --calib FILE)"
                )
            if ctx.program is None:
                raise OptionError(f"criterion {self.criterion!r} backpropagates through one captured program, and "
                                  f"{type(ctx.model).__name__} was captured as fragments (torch.export cannot capture it "
                                  "whole); use an activation criterion (the default with calib=, wanda, flap, obs)")
            grads = gradient_scores(ctx.program, ctx.coupling, ctx.calib, ctx.loss, ctx.seed)
            inputs = CriterionInputs(ctx.coupling, inputs.weights, gradients=grads, seed=ctx.seed)
        if self.normalize not in NORMALIZERS:
            raise OptionError(f"score option normalize={self.normalize!r} is unknown; use {' or '.join(NORMALIZERS)}")
        raw = crit(inputs)
        ctx.scores = NORMALIZERS[self.normalize](ctx.coupling, raw)
        ctx.loss_scores = normalize_global(raw) if crit.loss_based else None
        ctx.criterion = self.criterion
        return PassResult(graph, False)
