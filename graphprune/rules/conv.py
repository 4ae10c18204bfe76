"""Convolutions (1d/2d/3d, grouped, depthwise, transposed).

conv:  y[n, o, ...] = b[o] + sum_{i in group(o)} w[o, i - g0, k] * x[n, i, ...]
       w: [Cout, Cin/g, *k]. With g == 1 output channels tie to w axis 0 and bias, input
       channels to w axis 1 (a consumer-side axis). With g > 1 each group j (inputs
       j*Cin/g.., outputs j*Cout/g..) is one unit: a dense grouped conv needs equal group
       sizes, so whole groups are removed (depthwise: a channel and its multiplier outputs).
conv_transpose: w: [Cin, Cout/g, *k]; the same with the roles of the weight axes swapped.
MACs = numel(y) * (Cin/g * prod(k)) (transposed: numel(x) * (Cout/g * prod(k))); FLOPs = 2 * MACs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..ir import Node
from .common import numel
from .registry import ShapeFn, register_cost, register_coupling, register_macs

if TYPE_CHECKING:
    from ..analysis.coupling import CouplingBuilder

__all__: list[str] = []


@register_coupling("conv")
def couple_conv(node: Node, b: CouplingBuilder) -> None:
    x, w, bias = node.inputs[0], node.inputs[1], node.input(2)
    y = node.output
    assert x is not None and w is not None
    groups = int(node.attrs.get("groups", 1))
    transposed = bool(node.attrs.get("transposed", False))
    b.same(x, 0, y, 0)  # batch
    w_in, w_out = (0, 1) if transposed else (1, 0)
    cin, cout = x.shape[1], y.shape[1]
    if groups == 1:
        b.same(x, 1, w, w_in)
        b.reader(w, w_in)
        b.same(y, 1, w, w_out)
        if bias is not None:
            b.same(y, 1, bias, 0)
        return
    gin, gout = cin // groups, cout // groups
    # units are whole groups: tie every input and output channel of group j together
    b.block(x, 1, gin)
    b.block(y, 1, gout)
    b.pair(x, 1, np.arange(groups) * gin, y, 1, np.arange(groups) * gout)
    # the weight's within-group axis (1) is part of the kernel: left pinned
    if transposed:
        b.same(x, 1, w, 0)
    else:
        b.same(y, 1, w, 0)
    if bias is not None:
        b.same(y, 1, bias, 0)


@register_macs("conv")
def macs_conv(node: Node, shape: ShapeFn) -> float:
    w = node.inputs[1]
    assert w is not None
    ws = shape(w)
    if bool(node.attrs.get("transposed", False)):
        x = node.inputs[0]
        assert x is not None
        # each input element is scattered over Cout/g * prod(k) outputs
        return float(numel(shape(x)) * numel(ws[1:]))
    return float(numel(shape(node.output)) * numel(ws[1:]))


@register_cost("conv")
def cost_conv(node: Node, shape: ShapeFn) -> float:
    return 2.0 * macs_conv(node, shape)
