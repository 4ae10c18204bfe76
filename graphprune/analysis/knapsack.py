"""Budgeted allocation over a per-node cost (latency): greedy knapsack on width steps.

Each group g keeps k_g of its n_g units, k_g restricted to *allowed widths*: for channel groups
(unit width 1) with step s > 1 the multiples of s below n_g and n_g itself; otherwise 1..n_g.
Units leave a group lowest score first. With per-node costs t_n, the total is

    T(k) = a * sum_n t_n(k) + b,

and a move takes one group from k_g to a smaller allowed width k'. Its price is the importance
it removes, I = sum of the scores of the units it drops, and its gain the cost it saves,
dT = T(k) - T(k with k_g = k') (only nodes reading or writing g's tensors change, so dT is
computed on those). The greedy repeatedly applies the move with the least ``I / dT`` until
``T <= target``:

    argmin_{g, k' < k_g, dT > 0}  I(g, k_g -> k') / dT(g, k_g -> k')

Looking ahead over the next few allowed widths (not only the next one) *snaps* widths to the
steps where a smaller width is actually faster: a step with dT <= 0 is never taken on its own,
only together with a later one that pays. With a linear cost and equal-importance units this is
the classic fractional-knapsack greedy, optimal up to the last step.

Depth: a group in ``depth`` (see :mod:`.depth`) may also take width 0, removing its residual
branch; nodes left with an empty tensor cost nothing, so that move also saves the per-op fixed
costs that no single width step sees. Besides the snapped step, such a group is offered the move
straight to 0 (all its remaining importance for all its remaining cost), taken when its ratio is
best -- unless it would overshoot the target and buying the remaining need at the best other
move's rate loses less importance than the jump (large groups are then shrunk instead of
dropped). From the last step the two moves coincide. A move to 0 is offered only while the groups
at 0 together keep every model output depending on an input (``depth.bypassed``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ..ir import Node, Value
from .allocation import Allocation, RoundTo, ShapeTable, per_group
from .coupling import Coupling, Group
from .depth import bypassed

__all__ = ["NodeCost", "allowed_widths", "allocate_greedy"]

log = logging.getLogger(__name__)

NodeCost = Callable[[Node, Callable[[Value], tuple[int, ...]]], float]


def allowed_widths(g: Group, step: int, allow_zero: bool = False) -> list[int]:
    """Kept counts a group may take, descending (``n_g`` first); 0 last when ``allow_zero``."""
    n = g.size
    if g.width == 1 and step > 1 and n > step:
        ws = [n] + [k for k in range((n - 1) // step * step, 0, -step) if k < n]
    else:
        ws = list(range(n, 0, -1))
    return [*ws, 0] if allow_zero else ws


class _Move(NamedTuple):
    ratio: float  # importance lost per cost saved
    q: int  # index of the new width in the group's allowed widths
    new: np.ndarray  # the group's nodes' costs after the move
    lost: float
    gain: float
    jump: bool  # straight to width 0 (a depth group), skipping the widths between


def _group_nodes(coupling: Coupling) -> list[list[int]]:
    graph = coupling.graph
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    out = []
    for g in coupling.groups:
        nodes: set[int] = set()
        for name, _ax in g.spaces:
            v = graph.value(name)
            if v.producer is not None:
                nodes.add(index[id(v.producer)])
            nodes.update(index[id(u)] for u in v.users)
        out.append(sorted(nodes))
    return out


def allocate_greedy(
    coupling: Coupling,
    scores: np.ndarray,
    node_cost: NodeCost,
    target: float,
    step: RoundTo = 1,
    scale: float = 1.0,
    offset: float = 0.0,
    lookahead: int = 4,
    depth: frozenset[int] | set[int] = frozenset(),
) -> Allocation:
    """Remove units until ``scale * sum_n node_cost + offset <= target`` (see module docstring);
    groups whose index is in ``depth`` may be removed whole."""
    graph = coupling.graph
    table = ShapeTable(coupling)
    n_units = coupling.n_units
    rem = np.zeros(n_units, dtype=bool)
    full = table.shapes(rem)
    cost = np.array([node_cost(n, full) for n in graph.nodes], dtype=np.float64)
    base = scale * float(cost.sum()) + offset
    raw_target = (target - offset) / scale
    groups = coupling.groups
    order = [g.units[np.argsort(scores[g.units], kind="stable")] for g in groups]
    steps = per_group(coupling, step)
    widths = [allowed_widths(g, steps[g.id], allow_zero=g.id in depth) for g in groups]
    pos = [0] * len(groups)  # index into widths[g] of the current kept count
    gnodes = _group_nodes(coupling)
    neighbours: list[set[int]] = [set() for _ in groups]
    by_node: dict[int, list[int]] = {}
    for gi, ns in enumerate(gnodes):
        for n in ns:
            by_node.setdefault(n, []).append(gi)
    for gi, ns in enumerate(gnodes):
        for n in ns:
            neighbours[gi].update(by_node[n])

    zeroed: list[Group] = []  # groups taken to width 0 so far
    connected: dict[int, tuple[int, bool]] = {}  # group -> (len(zeroed) when checked, may go to 0)

    def may_empty(gi: int) -> bool:
        """Whether group gi may go to 0 along with the groups already there (see depth.bypassed)."""
        got = connected.get(gi)
        if got is None or got[0] != len(zeroed):
            got = (len(zeroed), bypassed(coupling, [*zeroed, groups[gi]]))
            connected[gi] = got
        return got[1]

    def candidate(gi: int) -> list[_Move]:
        """The group's moves: the snapped step, and for a depth group the jump to width 0."""
        g, ws, p = groups[gi], widths[gi], pos[gi]
        ns = gnodes[gi]
        if not ns:
            return []
        old = float(cost[ns].sum())

        def move(q: int, jump: bool = False) -> _Move | None:
            trial = rem.copy()
            trial[order[gi][: g.size - ws[q]]] = True
            shp = table.shapes(trial)
            new = np.array([node_cost(graph.nodes[n], shp) for n in ns])
            gain = old - float(new.sum())
            if gain <= 1e-12 * max(old, 1e-30):
                return None
            lost = float(scores[order[gi][g.size - ws[p] : g.size - ws[q]]].sum())
            return _Move(lost / gain, q, new, lost, gain, jump)

        step: _Move | None = None
        for q in range(p + 1, min(len(ws), p + 1 + lookahead)):
            if ws[q] == 0 and not may_empty(gi):
                break
            step = move(q)
            if step is not None:
                break  # the first step that pays is the snapped step; later ones are other moves
        moves = [step] if step is not None else []
        last = len(ws) - 1
        if ws[last] == 0 and p < last and (step is None or step.q < last) and may_empty(gi):
            whole = move(last, jump=True)  # the whole branch at once
            if whole is not None:
                moves.append(whole)
        return moves

    cands = [candidate(gi) for gi in range(len(groups))]
    total = float(cost.sum())
    steps = 0
    while total > raw_target:
        live = [(m.ratio, gi, k) for gi, ms in enumerate(cands) for k, m in enumerate(ms)]
        if not live:
            break
        _, gi, k = min(live)
        need = total - raw_target
        if cands[gi][k].jump and cands[gi][k].gain > need:
            # a jump past the target: take the best other move instead when buying the rest of
            # the need at its rate loses less than the jump
            live.sort()
            alt = next(((gj, kj) for _, gj, kj in live[1:] if not (cands[gj][kj].jump and cands[gj][kj].gain > need)), None)
            if alt is not None and cands[alt[0]][alt[1]].ratio * need < cands[gi][k].lost:
                gi, k = alt
        mv = cands[gi][k]
        g = groups[gi]
        rem[order[gi][: g.size - widths[gi][mv.q]]] = True
        pos[gi] = mv.q
        cost[gnodes[gi]] = mv.new
        total = float(cost.sum())
        steps += 1
        again = set(neighbours[gi])
        if widths[gi][mv.q] == 0:  # other groups' moves to 0 must now keep the model connected with it
            zeroed.append(g)
            again.update(gj for gj, ws in enumerate(widths) if ws[-1] == 0 and pos[gj] < len(ws) - 1)
        for nb in again:
            cands[nb] = candidate(nb)
    after = scale * total + offset
    log.info("greedy allocation: %d moves, cost %.4g -> %.4g (target %.4g)", steps, base, after, target)
    return Allocation(rem, base, after, target, after <= target * 1.0 + 1e-12, "greedy")
