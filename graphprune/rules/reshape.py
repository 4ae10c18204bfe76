"""Movement ops: reshape (view/flatten/unflatten/squeeze/unsqueeze), permute, expand.

reshape keeps row-major element order. Axes are matched in groups of equal size products; inside
a group both sides are cut into common *factors* (e.g. [16, 2, 8] -> [16, 4, 4] becomes the factors
2*2*4 = N, H, D). A flat channel index c on an input axis with factors (F0, F1, ...) is the mixed
radix number (f0, f1, ...). A dense tensor can only lose channels along one factor per axis, so
each input axis picks one *carrier* factor: elements with the same carrier digit form one unit,
and output axes tie to input axes by that digit. The other factors are kept whole (heads are
pruned, head_dim is not). Choice: factors tagged CHANNEL, outermost first, skipping one that is
later selected from (a packed qkv axis) or re-merged as an inner factor (a channel shuffle).
An output axis holding two carriers keeps one and pins the other's input axis.

permute: y axis i = x axis perm[i]. expand: broadcast axes (1 -> n) tie nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..ir import Node, Value
from .registry import register_coupling

if TYPE_CHECKING:
    from ..analysis.coupling import CouplingBuilder, Factor

__all__ = ["axis_groups"]

_MOVEMENT = frozenset({"identity", "clone", "contiguous", "dropout", "cast", "permute", "reshape"})


def axis_groups(xs: tuple[int, ...], ys: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Pair input and output axes (size-1 axes dropped) into groups of equal size product."""
    xa = [i for i, s in enumerate(xs) if s != 1]
    ya = [i for i, s in enumerate(ys) if s != 1]
    out: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(xa) and j < len(ya):
        gi, gj = [xa[i]], [ya[j]]
        pi, pj = xs[xa[i]], ys[ya[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj and i < len(xa):
                gi.append(xa[i])
                pi *= xs[xa[i]]
                i += 1
            elif j < len(ya):
                gj.append(ya[j])
                pj *= ys[ya[j]]
                j += 1
            else:
                return out  # inconsistent shapes: leave the rest pinned
        out.append((gi, gj))
    return out


def _refine(sizes_a: list[int], sizes_b: list[int]) -> list[int]:
    """Common refinement of two factorizations of the same number (by cumulative products)."""
    def cuts(sizes: list[int]) -> set[int]:
        acc, s = 1, set()
        for n in sizes:
            acc *= n
            s.add(acc)
        return s

    points = sorted(cuts(sizes_a) | cuts(sizes_b))
    out, prev = [], 1
    for p in points:
        if p % prev != 0:
            return []  # not a refinement (factors do not nest): caller falls back
        out.append(p // prev)
        prev = p
    return out


def _avoid_as_carrier(y: Value, axis: int, depth: int = 6) -> bool:
    """True when ``y``'s axis is later indexed (select/unbind/chunk) or re-merged as inner factor."""
    frontier = [(y, axis)]
    for _ in range(depth):
        nxt: list[tuple[Value, int]] = []
        for v, ax in frontier:
            for u in v.users:
                if u.op in ("select", "unbind") and int(u.attrs["axis"]) % v.rank == ax:
                    return True
                if u.op == "split" and int(u.attrs["axis"]) % v.rank == ax and len(u.outputs) > 1:
                    return True
                if u.op == "permute":
                    perm = [p % v.rank for p in u.attrs["perm"]]
                    nxt.append((u.output, perm.index(ax)))
                elif u.op == "reshape":
                    for gi, gj in axis_groups(v.shape, u.output.shape):
                        if ax in gi:
                            if len(gi) == 1 and len(gj) == 1:
                                nxt.append((u.output, gj[0]))
                            elif len(gj) == 1 and gi.index(ax) > 0:
                                return True
                elif u.op in _MOVEMENT and u.output.rank == v.rank:
                    nxt.append((u.output, ax))
        frontier = nxt
    return False


@register_coupling("reshape")
def couple_reshape(node: Node, b: CouplingBuilder) -> None:
    from ..analysis.coupling import CHANNEL, FIXED

    x, y = node.inputs[0], node.output
    assert x is not None
    for gi, gj in axis_groups(x.shape, y.shape):
        if len(gi) == 1 and len(gj) == 1:
            b.same(x, gi[0], y, gj[0])
            continue
        xfac: list[Factor] = [f for ax in gi for f in b.structure(x, ax)]
        fine = _refine([s for s, _ in xfac], [y.shape[a] for a in gj])
        fine = _refine(fine, [x.shape[a] for a in gi]) if fine else []
        if not fine:
            continue  # leave the group pinned
        # tag of each fine factor: the tag of the input factor that contains it
        cum_x = np.cumsum(np.log2([sz for sz, _ in xfac]))
        cum_f = np.cumsum(np.log2(fine))
        owner = np.searchsorted(cum_x, cum_f - 1e-9)
        tags = [xfac[int(o)][1] for o in owner]
        x_span = _spans(fine, [x.shape[a] for a in gi])
        y_span = _spans(fine, [y.shape[a] for a in gj])
        y_of_factor = {f: n for n, (s, e) in enumerate(y_span) for f in range(s, e)}
        carriers: dict[int, int] = {}  # x group position -> fine factor index
        for n, (s, e) in enumerate(x_span):
            cands = [f for f in range(s, e) if tags[f] == CHANNEL and fine[f] > 1]
            if not cands:
                continue
            pick = cands[0]
            for f in cands:
                ys, ye = y_span[y_of_factor[f]]
                if ye - ys == 1 and len(cands) > 1 and _avoid_as_carrier(y, gj[y_of_factor[f]]):
                    continue
                pick = f
                break
            carriers[n] = pick
        taken: dict[int, int] = {}  # y group position -> x group position
        for n, f in carriers.items():
            m = y_of_factor[f]
            if m in taken:
                b.pin(x, gi[n])
                continue
            taken[m] = n
        for m, n in taken.items():
            f = carriers[n]
            dx = _digit(fine, x_span[n], f)
            dy = _digit(fine, y_span[m], f)
            rep_y = _first_index(dy, fine[f])
            rep_x = _first_index(dx, fine[f])
            b.pair(x, gi[n], np.arange(len(dx)), y, gj[m], rep_y[dx])
            b.pair(y, gj[m], np.arange(len(dy)), x, gi[n], rep_x[dy])
        for m, (s, e) in enumerate(y_span):
            carrier = carriers.get(taken[m]) if m in taken else None
            b.set_structure(y, gj[m], [(fine[f], CHANNEL if f == carrier else FIXED) for f in range(s, e)])


def _spans(fine: list[int], sizes: list[int]) -> list[tuple[int, int]]:
    """For each axis size, the [start, end) range of fine factors whose product it is."""
    spans, k = [], 0
    for size in sizes:
        start, acc = k, 1
        while acc < size:
            acc *= fine[k]
            k += 1
        spans.append((start, k))
    return spans


def _digit(fine: list[int], span: tuple[int, int], f: int) -> np.ndarray:
    """The mixed-radix digit of factor ``f`` for every flat index of an axis spanning ``span``."""
    s, e = span
    size = int(np.prod(fine[s:e]))
    stride = int(np.prod(fine[f + 1 : e])) if f + 1 < e else 1
    return (np.arange(size) // stride) % fine[f]


def _first_index(digits: np.ndarray, n: int) -> np.ndarray:
    """For each digit value 0..n-1, the first flat index that has it."""
    _, first = np.unique(digits, return_index=True)
    return first.astype(np.int64)


@register_coupling("permute")
def couple_permute(node: Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.output
    assert x is not None
    for yax, p in enumerate(node.attrs["perm"]):
        b.same(x, p % x.rank, y, yax)


@register_coupling("expand")
def couple_expand(node: Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.output
    assert x is not None
    lead = y.rank - x.rank
    for ax in range(x.rank):
        if x.shape[ax] == y.shape[lead + ax] and x.shape[ax] != 1:
            b.same(x, ax, y, lead + ax)
