"""reconstruct-bn: re-estimate BatchNorm running statistics of the pruned model on calibration data.

Statistics are reset and accumulated as cumulative averages over ``ctx.calib`` (momentum=None).
Only BatchNorm modules are recalibrated (module route); an fx GraphModule has none, which is
noted in the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from graphprune.errors import CalibrationError, OptionError
from graphprune.ir import Graph
from graphprune.rewrite.reconstruct import recalibrate_bn

from .infra import PassContext, PassResult, register_pass

__all__ = ["ReconstructBn"]


@register_pass
@dataclass(frozen=True)
class ReconstructBn:
    name: ClassVar[str] = "reconstruct-bn"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.pruned is None:
            raise OptionError(f"pass {self.name!r} needs 'rewrite' to run first")
        if ctx.calib is None:
            raise CalibrationError(f"pass {self.name!r} needs calibration data: pass calib=[batch, ...] (CLI: --calib FILE)")
        n = recalibrate_bn(ctx.pruned, ctx.calib)
        if n == 0:
            ctx.records.notes.append(f"{self.name}: no BatchNorm module in the pruned model (route {ctx.route or '?'})")
            return PassResult(graph, False)
        ctx.records.reconstructed.append(self.name)
        return PassResult(graph, True)
