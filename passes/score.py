"""score: per-unit importance with a registered criterion, normalized per group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from graphprune.analysis import CRITERIA, normalize_per_group
from graphprune.errors import OptionError
from graphprune.ir import Graph

from .infra import PassContext, PassResult, register_pass

__all__ = ["Score", "weights_of"]


def weights_of(graph: Graph, ctx: PassContext) -> dict[str, torch.Tensor]:
    """Weight tensors by IR value name, from the nn.Module or the ONNX initializers."""
    if ctx.onnx is not None:
        from graphprune.frontends.onnx import constant_values

        consts = constant_values(ctx.onnx.model)
        return {v.name: torch.from_numpy(consts[v.name].copy()) for v in graph.weights() if v.name in consts}
    model = ctx.model
    assert model is not None
    state = dict(model.named_parameters(remove_duplicate=False))
    state.update(dict(model.named_buffers(remove_duplicate=False)))
    return {v.name: state[v.source] for v in graph.weights() if v.source in state}


@register_pass
@dataclass(frozen=True)
class Score:
    name: ClassVar[str] = "score"
    criterion: str = "l2"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.coupling is None:
            raise OptionError("pass 'score' needs 'couple' to run first")
        fn = CRITERIA.get(self.criterion)
        if fn is None:
            raise OptionError(f"unknown criterion {self.criterion!r}; available: {', '.join(sorted(CRITERIA))}")
        raw = fn(ctx.coupling, weights_of(graph, ctx))
        ctx.scores = normalize_per_group(ctx.coupling, raw)
        ctx.criterion = self.criterion
        return PassResult(graph, False)
