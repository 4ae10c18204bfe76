"""Scaled dot-product attention with head structure, including grouped-query attention.

q: [*B, Hq, Sq, D], k: [*B, Hkv, Sk, D], v: [*B, Hkv, Sk, Dv] -> y: [*B, Hq, Sq, Dv]
    y[h] = softmax(q[h] k[h // r]^T * scale) v[h // r],   r = Hq / Hkv
Heads are batch-like: query head h ties to output head h and to KV head h // r, so a unit is a
whole KV group (one KV head and its r query heads). The contracted head_dim D is pinned (the
default scale 1/sqrt(D) depends on it); Dv ties v to y. A per-head mask (size Hq on the head
axis: T5 position bias, ALiBi) ties its head axis to the query heads; a mask broadcast over heads
ties nothing.
MACs = B*Hq*Sq*Sk*(D + Dv) (the two matmuls; softmax and scaling are not MACs); FLOPs = 2 * MACs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..ir import Node
from .registry import ShapeFn, register_cost, register_coupling, register_macs

if TYPE_CHECKING:
    from ..analysis.coupling import CouplingBuilder

__all__: list[str] = []


@register_coupling("sdpa")
def couple_sdpa(node: Node, b: CouplingBuilder) -> None:
    q, k, v = node.inputs[0], node.inputs[1], node.inputs[2]
    y = node.output
    assert q is not None and k is not None and v is not None
    nb = q.rank - 2  # batch-like axes, heads included
    for ax in range(nb - 1 if q.rank >= 4 else nb):
        for t in (k, v):
            if t.shape[ax] == q.shape[ax]:
                b.same(q, ax, t, ax)
        b.same(q, ax, y, ax)
    if q.rank >= 4:
        h = q.rank - 3
        hq, hkv = q.shape[h], k.shape[h]
        b.same(q, h, y, h)
        b.same(k, h, v, h)
        if hq % hkv == 0:
            b.pair(q, h, np.arange(hq), k, h, np.arange(hq) // (hq // hkv))
    b.same(q, -2, y, -2)
    b.same(k, -2, v, -2)
    b.same(v, -1, y, -1)
    _tie_mask_heads(node, b)


def _tie_mask_heads(node: Node, b: CouplingBuilder) -> None:
    """A per-head additive mask (T5's relative position bias, ALiBi: [*, Hq, Sq, Sk], broadcast
    from the right) adds its head h to query head h: tie that axis to the query heads, so removing
    a head removes its mask slice too. Its other axes stay pinned; a mask broadcast over heads
    (size 1) ties nothing."""
    q, mask = node.inputs[0], node.input(3)
    if mask is None or q is None or q.rank < 4 or mask.rank < 3:
        return
    h = q.rank - 3
    i = h - (q.rank - mask.rank)
    if 0 <= i < mask.rank and mask.shape[i] == q.shape[h] and q.shape[h] > 1:
        b.same(mask, i, q, h)


@register_macs("sdpa")
def macs_sdpa(node: Node, shape: ShapeFn) -> float:
    q, k, v = (shape(t) for t in node.inputs[:3] if t is not None)
    return float(math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1]))


@register_cost("sdpa")
def cost_sdpa(node: Node, shape: ShapeFn) -> float:
    return 2.0 * macs_sdpa(node, shape)
