"""In-place writes into a fresh buffer: ``aten.copy_`` (``dst[...] = src``).

    buf = x.new_empty(B, H, S, D1 + D2)         # uninitialized: it holds no data of its own
    buf[..., :D1].copy_(a)                       # slice -> copy_: element i of a's axis goes to
    buf[..., D1:].copy_(b.expand(-1, H, -1, -1)) #   element i of the slice's axis (same index)

copy_(dst, src) writes src into dst's storage with numpy broadcasting, element for element: every
axis where src is not broadcast is an identity tie between src and dst, and dst's axes are the
output's (copy_ returns dst). An axis that src gets from an ``expand`` of size 1 holds copies of
one element, so dst keeps any subset of it exactly: the tie is made to the expand's input (size 1:
nothing to tie), not to the expanded axis. This is how DeepSeek-V2's multi-head latent attention
builds its keys (``expand_kv``), so its heads can go.

An uninitialized factory (``empty``, ``new_empty``) declares its axes without tying or pinning
them (rules/elementwise.py, :data:`families.UNIFORM_FILL`): whatever a model reads from it was
written there first, by a copy_ whose ties decide its channels. Uniform fills (zeros, ones, full)
are free the same way: every element is equal, so any subset of an axis is exact. Other
constants (arange, eye...) stay pinned. FLOPs: 0 (a copy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..ir import Node, Value
from .families import IDENTITY
from .registry import register_coupling

if TYPE_CHECKING:
    from ..analysis.coupling import CouplingBuilder

__all__: list[str] = []


def _broadcast_source(src: Value, axis: int) -> bool:
    """True when ``src``'s ``axis`` is a size-1 axis broadcast by an ``expand`` (looking through
    identities): its elements are copies of one element."""
    v, ax = src, axis
    while v.producer is not None and v.producer.op in IDENTITY:
        nxt = v.producer.inputs[0]
        if nxt is None or nxt.rank != v.rank:
            return False
        v = nxt
    p = v.producer
    if p is None or p.op != "expand":
        return False
    x = p.inputs[0]
    if x is None:
        return False
    lead = v.rank - x.rank
    return ax < lead or x.shape[ax - lead] == 1


@register_coupling("aten.copy_")
def couple_copy(node: Node, b: CouplingBuilder) -> None:
    dst, src = node.inputs[0], node.inputs[1]
    y = node.output
    assert dst is not None and src is not None
    for ax in range(dst.rank):
        b.same(dst, ax, y, ax)
    lead = dst.rank - src.rank
    for ax in range(src.rank):
        if src.shape[ax] == 1 or src.shape[ax] != dst.shape[lead + ax]:
            continue  # broadcast: ties nothing (left pinned on src's side)
        if _broadcast_source(src, ax):
            b.pin(src, ax, f"copy_ node {node.name!r}: axis {ax} of {src.name!r} is an expanded size-1 axis")
            continue
        b.same(src, ax, dst, lead + ax)
