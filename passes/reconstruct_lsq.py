"""reconstruct-lsq: ridge least-squares refit of each shrunk consumer's kept weights (and bias).

[W', b'] = [W, b] G~[:, K~] (G~[K~, K~] + lambda I)^-1 on the dense inputs' Gram matrix, one
Cholesky factorization per distinct (Gram, kept columns), shared by consumers reading one tensor
(structured OBS / ZipLM). ``rounds=k`` then refits the same consumers k more times on the pruned
model's own inputs against the dense model's outputs (errors of earlier layers are then seen). ``ridge`` scales lambda by the mean
diagonal of G[K, K]. Linear, 2-d conv (groups=1) and 2-d weight matmul/addmm consumers are refit;
others are left as they are and named in the report notes. Maths: ``graphprune.rewrite.reconstruct``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from graphprune.analysis.calibration import GRAM_ROWS_PER_DIM
from graphprune.errors import OptionError
from graphprune.ir import Graph
from graphprune.memory import reuse_freed_memory
from graphprune.progress import step
from graphprune.rewrite.reconstruct import (
    LSQ_RIDGE,
    as_matrix,
    can_create_bias,
    lsq_refit,
    refit_on_pruned_inputs,
    set_bias,
    set_weight,
    shrunk_sites,
)

from .infra import PassContext, PassResult, register_pass, removed_units
from .score import ensure_stats, weights_of

__all__ = ["ReconstructLsq"]

log = logging.getLogger(__name__)


@register_pass
@dataclass(frozen=True)
class ReconstructLsq:
    name: ClassVar[str] = "reconstruct-lsq"
    ridge: float = LSQ_RIDGE
    rounds: int = 0  # correction rounds on the pruned model's own inputs against the dense outputs

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        with reuse_freed_memory():  # the solves' Gram-sized temporaries are reused, not faulted in again
            return self._run(graph, ctx)

    def _run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.pruned is None or ctx.plan is None or ctx.coupling is None or ctx.model is None:
            raise OptionError(f"pass {self.name!r} needs 'rewrite' to run first")
        if self.rounds < 0:
            raise OptionError(f"pass {self.name!r} option rounds={self.rounds} must be >= 0")
        if self.ridge < 0:
            raise OptionError(f"pass {self.name!r} option ridge={self.ridge} must be >= 0")
        if self.rounds and ctx.program is None:
            raise OptionError(f"pass {self.name!r} option rounds={self.rounds} runs the dense model as one captured "
                              "program, and this model was captured as fragments; use rounds=0 (the default)")
        removed = removed_units(ctx)
        if ctx.calib_stats.sites is None:
            ensure_stats(ctx, who=f"pass {self.name!r}")
        dense = weights_of(graph, ctx)
        todo = [s for s in shrunk_sites(ctx.calib_stats.sites or [], ctx.coupling, removed)
                if s.weight.name in dense and as_matrix(s, dense[s.weight.name]) is not None]
        t0 = time.perf_counter()
        ensure_stats(ctx, frozenset(s.node for s in todo), who=f"pass {self.name!r}")
        ctx.records.timings[f"{self.name}:gram"] = ctx.records.timings.get(f"{self.name}:gram", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        done, skipped = 0, []
        factors: dict[Any, torch.Tensor] = {}
        for i, site in enumerate(todo):
            step(ctx.progress, self.name, i + 1, len(todo))  # working on consumer i + 1 of len(todo)
            st = ctx.calib_stats.stats[site.node]
            intercept = site.bias is not None or can_create_bias(ctx.pruned, site)
            b = dense.get(site.bias.name) if site.bias is not None else None
            got = lsq_refit(site, dense[site.weight.name], b, st, ctx.coupling, removed, self.ridge, intercept, factors)
            if got is None or not set_weight(ctx.pruned, site, got[0]):
                skipped.append(site.node)
                continue
            if got[1] is not None:
                set_bias(ctx.pruned, site, got[1])
            ctx.calib_stats.refit.add(site.node)
            done += 1
        ctx.records.timings[f"{self.name}:solve"] = ctx.records.timings.get(f"{self.name}:solve", 0.0) + time.perf_counter() - t0
        refit = [s for s in todo if s.node in ctx.calib_stats.refit]
        for _ in range(self.rounds if refit else 0):
            t0 = time.perf_counter()
            again = refit_on_pruned_inputs(ctx.program, ctx.pruned, refit, ctx.coupling, removed, ctx.calib or [],
                                           self.ridge, GRAM_ROWS_PER_DIM)
            log.info("%s: correction round refit %d of %d consumers on the pruned inputs", self.name, len(again), len(refit))
            ctx.records.timings[f"{self.name}:rounds"] = ctx.records.timings.get(f"{self.name}:rounds", 0.0) + time.perf_counter() - t0
        if skipped:
            ctx.records.notes.append(f"{self.name}: not refit: {', '.join(skipped[:10])}")
        log.info("%s: refit %d consumers (%d skipped)", self.name, done, len(skipped))
        if done:
            ctx.records.reconstructed.append(self.name)
        return PassResult(graph, done > 0)
