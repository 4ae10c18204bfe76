"""Spatial and reduction ops.

pool / adaptive_pool / resize: y[n, c, ...] = f(x[n, c, window]) -- batch and channel axes pass
through, the trailing ``spatial`` axes are pinned. pad pins padded axes. reduce (mean/sum/max
over ``axes``), softmax, cumsum consume their axes (pinned; removing a channel there would change
the result) and pass the others through.
pixel_shuffle: x[n, c*r*r + k] -> y[n, c]: a block of r*r input channels per output channel.
channel_shuffle(g): y[n, j*g + i] = x[n, i*(C/g) + j]: the i-th group's j-th channel; the unit
ties channel j of every group (the groups themselves stay, so the shuffle still holds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..ir import Node
from .common import numel, pass_through
from .families import POOL, REDUCE
from .hidden import statistic_axes
from .moe import along_expert_axis
from .registry import ShapeFn, register_cost, register_coupling

if TYPE_CHECKING:
    from ..analysis.coupling import CouplingBuilder

__all__: list[str] = []


@register_coupling(*sorted(POOL))
def couple_pool(node: Node, b: CouplingBuilder) -> None:
    x = node.inputs[0]
    assert x is not None
    spatial = int(node.attrs.get("spatial", max(x.rank - 2, 0)))
    pass_through(b, x, node.output, skip=range(x.rank - spatial, x.rank))


@register_coupling("pad")
def couple_pad(node: Node, b: CouplingBuilder) -> None:
    x = node.inputs[0]
    assert x is not None
    if "padded" in node.attrs:  # ONNX: the padded axes, already resolved
        padded = set(node.attrs["padded"])
    else:  # torch: pads pair up from the last axis backwards
        pads = list(node.attrs.get("pads", []))
        padded = {x.rank - 1 - i // 2 for i, p in enumerate(pads) if p != 0}
    pass_through(b, x, node.output, skip=padded)


@register_coupling("reduce")
def couple_reduce(node: Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.output
    assert x is not None
    axes = {a % x.rank for a in node.attrs.get("axes", range(x.rank))}
    keep = bool(node.attrs.get("keepdim", False))
    statistic_axes(node, b)  # hidden-size pruning: RMSNorm's mean(x^2) may lose channels
    yax = 0
    for ax in range(x.rank):
        if ax in axes:
            yax += int(keep)
            continue
        b.same(x, ax, y, yax)
        yax += 1


@register_coupling(*sorted(REDUCE - {"reduce"}))
def couple_along_axis(node: Node, b: CouplingBuilder) -> None:
    x = node.inputs[0]
    assert x is not None
    if along_expert_axis(node):  # a router's softmax / cumsum of expert counts (rules/moe.py)
        pass_through(b, x, node.output)
        return
    pass_through(b, x, node.output, skip=[int(node.attrs.get("axis", -1))])


@register_coupling("pixel_shuffle", "pixel_unshuffle")
def couple_pixel_shuffle(node: Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.output
    assert x is not None
    r = int(node.attrs["factor"])
    for ax in range(x.rank - 3):
        b.same(x, ax, y, ax)
    if node.op == "pixel_shuffle":
        n = x.shape[-3]
        b.pair(x, -3, np.arange(n), y, -3, np.arange(n) // (r * r))
    else:
        n = y.shape[-3]
        b.pair(y, -3, np.arange(n), x, -3, np.arange(n) // (r * r))


@register_coupling("depth_to_space", "space_to_depth")
def couple_depth_to_space(node: Node, b: CouplingBuilder) -> None:
    """ONNX DCR DepthToSpace: y[n, c] reads x[n, k*C' + c] for every block offset k, so output
    channel c ties to input channels c, c + C', ...; SpaceToDepth is the inverse map."""
    x, y = node.inputs[0], node.output
    assert x is not None
    b.same(x, 0, y, 0)
    if node.op == "depth_to_space":
        n, c_out = x.shape[1], y.shape[1]
        b.pair(x, 1, np.arange(n), y, 1, np.arange(n) % c_out)
    else:
        n, c_in = y.shape[1], x.shape[1]
        b.pair(y, 1, np.arange(n), x, 1, np.arange(n) % c_in)


@register_coupling("channel_shuffle")
def couple_channel_shuffle(node: Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.output
    assert x is not None
    g = int(node.attrs["groups"])
    c = x.shape[1]
    pass_through(b, x, y, skip=[1])
    b.pair(x, 1, np.arange(c), y, 1, (np.arange(c) % (c // g)) * g)
    b.block(y, 1, g)


@register_cost(*sorted(POOL | REDUCE | {"pad", "depth_to_space", "space_to_depth"}))
def cost_pool(node: Node, shape: ShapeFn) -> float:
    x = node.inputs[0]
    assert x is not None
    return float(numel(shape(x)))


@register_coupling("roll")
def couple_roll(node: Node, b: CouplingBuilder) -> None:
    """roll shifts positions along ``axes`` (pinned); other axes pass through. No axes: pinned."""
    x = node.inputs[0]
    assert x is not None
    axes = list(node.attrs.get("axes", []))
    if axes:
        pass_through(b, x, node.output, skip=axes)


@register_coupling("index")
def couple_index(node: Node, b: CouplingBuilder) -> None:
    """y = x[:, ..., idx, ...] with one index tensor at ``axis``: y's shape is
    x.shape[:axis] + idx.shape + x.shape[axis+1:]. Axes other than ``axis`` pass through."""
    x, idx, y = node.inputs[0], node.inputs[1], node.output
    assert x is not None and idx is not None
    axis = int(node.attrs["axis"])
    if y.rank != x.rank - 1 + idx.rank:
        return
    for ax in range(axis):
        b.same(x, ax, y, ax)
    for ax in range(axis + 1, x.rank):
        b.same(x, ax, y, ax - 1 + idx.rank)
