"""Concatenation and its inverses: cat, split/chunk, slice/narrow, select, unbind.

cat:    y[.., o_k + i, ..] = x_k[.., i, ..]   (o_k = sum of earlier sizes: an offset map)
split:  y_k[.., i, ..] = x[.., o_k + i, ..]
slice:  y[.., i, ..] = x[.., start + i, ..]   (step 1; a strided slice pins its axis)
select/unbind consume their axis (pinned); the other axes pass through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..ir import Node, Value
from .registry import register_coupling

if TYPE_CHECKING:
    from ..analysis.coupling import CouplingBuilder

__all__: list[str] = []


def _mark_channel(b: CouplingBuilder, v: Value, axis: int, sources: list[Value], src_axis: int) -> None:
    from ..analysis.coupling import CHANNEL

    if any(any(t == CHANNEL for _, t in b.structure(s, src_axis)) for s in sources) and v.shape[axis] > 1:
        b.set_structure(v, axis, [(v.shape[axis], CHANNEL)])


def _others(b: CouplingBuilder, x: Value, y: Value, axis: int) -> None:
    for ax in range(x.rank):
        if ax != axis and x.shape[ax] == y.shape[ax]:
            b.same(x, ax, y, ax)


@register_coupling("cat")
def couple_cat(node: Node, b: CouplingBuilder) -> None:
    y = node.output
    axis = int(node.attrs["axis"]) % y.rank
    offset = 0
    xs = [x for x in node.inputs if x is not None]
    for x in xs:
        n = x.shape[axis]
        b.pair(x, axis, np.arange(n), y, axis, offset + np.arange(n))
        _others(b, x, y, axis)
        offset += n
    _mark_channel(b, y, axis, xs, axis)


@register_coupling("split")
def couple_split(node: Node, b: CouplingBuilder) -> None:
    x = node.inputs[0]
    assert x is not None
    axis = int(node.attrs["axis"]) % x.rank
    offset = 0
    for y in node.outputs:
        n = y.shape[axis]
        b.pair(x, axis, offset + np.arange(n), y, axis, np.arange(n))
        _others(b, x, y, axis)
        _mark_channel(b, y, axis, [x], axis)
        offset += n


@register_coupling("slice")
def couple_slice(node: Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.output
    assert x is not None
    axis = int(node.attrs["axis"]) % x.rank
    _others(b, x, y, axis)
    if int(node.attrs.get("step", 1)) != 1:
        return  # a strided slice keeps its axis pinned
    start = int(node.attrs["start"])
    n = y.shape[axis]
    b.pair(x, axis, start + np.arange(n), y, axis, np.arange(n))
    _mark_channel(b, y, axis, [x], axis)


@register_coupling("select", "unbind")
def couple_select(node: Node, b: CouplingBuilder) -> None:
    x = node.inputs[0]
    assert x is not None
    axis = int(node.attrs["axis"]) % x.rank
    for y in node.outputs:
        rest = [ax for ax in range(x.rank) if ax != axis]
        for yax, xax in enumerate(rest):
            b.same(x, xax, y, yax)


@register_coupling("stack")
def couple_stack(node: Node, b: CouplingBuilder) -> None:
    y = node.output
    axis = int(node.attrs["axis"]) % y.rank
    for x in node.inputs:
        if x is None:
            continue
        for xax in range(x.rank):
            b.same(x, xax, y, xax if xax < axis else xax + 1)
