"""Elementwise ops: identity, unary maths, and broadcasting n-ary maths.

y[..., c, ...] = f(x1[..., c, ...], x2[..., c, ...]): channel c of the output reads only channel c
of each input, so every non-broadcast axis is an identity tie (residual adds, gating multiplies,
squeeze-excite scaling). Size-1 axes are broadcast and tie nothing. PReLU ties its slope vector to
the channel axis. FLOPs = numel(y).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..ir import Node
from .common import broadcast_ties, numel, pass_through
from .families import BINARY, IDENTITY, SOURCES, UNARY, UNIFORM_FILL
from .registry import ShapeFn, register_cost, register_coupling

if TYPE_CHECKING:
    from ..analysis.coupling import CouplingBuilder

__all__: list[str] = []


@register_coupling(*sorted(IDENTITY | UNARY))
def couple_unary(node: Node, b: CouplingBuilder) -> None:
    x = node.inputs[0]
    assert x is not None
    pass_through(b, x, node.output)


@register_coupling(*sorted(BINARY))
def couple_broadcast(node: Node, b: CouplingBuilder) -> None:
    broadcast_ties(b, node.inputs, node.output)


@register_coupling("prelu")
def couple_prelu(node: Node, b: CouplingBuilder) -> None:
    x, w = node.inputs[0], node.inputs[1]
    assert x is not None and w is not None
    pass_through(b, x, node.output)
    if w.rank == 1 and w.shape[0] > 1 and x.rank >= 2:
        b.same(w, 0, node.output, 1)


@register_coupling(*sorted(SOURCES))
def couple_source(node: Node, b: CouplingBuilder) -> None:
    """Constants (arange, eye, ...) carry no channels: their axes stay pinned. A uniform fill
    (zeros, ones, full: every element equal) or an uninitialized buffer (empty, new_empty, which
    holds nothing until a copy_ writes it) is the same tensor on any subset of any axis: its axes
    are declared free, and what it meets ties them (Mamba's zero scan state, rules/inplace.py)."""
    parts = node.target.split(".")
    if len(parts) > 1 and parts[1] in UNIFORM_FILL:
        for ax in range(node.output.rank):
            b.block(node.output, ax, 1)


@register_cost(*sorted(IDENTITY - {"identity", "dropout", "contiguous", "clone"} | UNARY | BINARY | {"prelu"}))
def cost_elementwise(node: Node, shape: ShapeFn) -> float:
    return float(numel(shape(node.output)))
