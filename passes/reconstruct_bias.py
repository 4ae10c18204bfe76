"""reconstruct-bias: fold the removed channels' mean contribution into each consumer's bias.

b' = b + W[:, removed] mu[removed] (conv kernels summed spatially; padding ignored), with mu the
calibration mean of the consumer's dense input; a Linear/Conv without a bias gets one. Consumers
already refit by reconstruct-lsq (which refits the bias itself) are skipped. Maths:
``graphprune.rewrite.reconstruct``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from graphprune.errors import OptionError
from graphprune.ir import Graph
from graphprune.rewrite.reconstruct import bias_delta, current_bias, set_bias, shrunk_sites

from .infra import PassContext, PassResult, register_pass, removed_units
from .score import ensure_stats, weights_of

__all__ = ["ReconstructBias"]

log = logging.getLogger(__name__)


@register_pass
@dataclass(frozen=True)
class ReconstructBias:
    name: ClassVar[str] = "reconstruct-bias"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.pruned is None or ctx.plan is None or ctx.coupling is None or ctx.model is None:
            raise OptionError(f"pass {self.name!r} needs 'rewrite' to run first")
        ensure_stats(ctx, who=f"pass {self.name!r}")
        removed = removed_units(ctx)
        dense = weights_of(graph, ctx)
        done = skipped = 0
        for site in shrunk_sites(ctx.calib_stats.sites or [], ctx.coupling, removed):
            if site.node in ctx.calib_stats.refit:
                continue
            st = ctx.calib_stats.stats.get(site.node)
            w = dense.get(site.weight.name)
            delta = bias_delta(site, w, st, ctx.coupling, removed) if w is not None and st is not None else None
            if delta is None:
                skipped += 1
                continue
            new = current_bias(ctx.pruned, site, len(delta), delta) + delta
            if set_bias(ctx.pruned, site, new):
                done += 1
            else:
                skipped += 1
        if skipped:
            ctx.records.notes.append(f"{self.name}: {skipped} consumer(s) without a usable bias were left as they are")
        log.info("%s: compensated %d consumers (%d skipped)", self.name, done, skipped)
        if done:
            ctx.records.reconstructed.append(self.name)
        return PassResult(graph, done > 0)
