"""Allocation: choose which units to remove so the pruned cost lands on a budget.

The cost is a function ``removed_mask -> cost`` (FLOPs or params now, measured latency later),
evaluated by recomputing every value's shape from the kept element counts. Two policies:

- uniform: every group removes the same fraction r of its units (lowest scores first); r is
  found by bisection so that cost(r) is as close as possible to the target.
- global: all units ranked by group-normalized score; the k lowest are removed (bisection on k),
  skipping units whose removal would take a group below its minimum.

Both keep kept channel counts a multiple of ``round_to`` (one number, or one per group): a unit of
``width`` channels (a GroupNorm group, a head) moves in steps of ``round_to / gcd(round_to, width)``
units, and every group keeps at least one such step. :func:`runtime_round_to` gives the default
per-group rounding: the target runtime's channel step, finer only for a group too small to take
four such steps. Nothing here touches a model.

Same width per layer kind (``tie``, uniform policy; ``gp.prune(uniform=True)``): groups of one
*kind* (:func:`layer_kinds`: the same weights once layer indices are stripped from their FQNs, e.g.
``model.layers.#.mlp.down_proj.weight[1]``, and the same size and unit width) keep the same number
of units. The uniform fraction already gives equal groups equal counts; the fine step then removes
one block from every member of a kind at once (each member's own lowest-scored units), so the
kind moves together and the cost still lands within one such block of the target; the local search
(``_refine``, one group at a time) is skipped for tied allocations. ``frozen`` groups keep every
unit (widths a stock config cannot express, for instance).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..ir import Value
from .coupling import Coupling

__all__ = ["Allocation", "RoundTo", "ShapeTable", "allocate", "layer_kinds", "per_group", "runtime_round_to"]

log = logging.getLogger(__name__)

CostFn = Callable[[Callable[[Value], tuple[int, ...]]], float]


class ShapeTable:
    """Fast pruned shapes: for a removal mask, the kept size of every axis of every value."""

    def __init__(self, coupling: Coupling) -> None:
        self.coupling = coupling
        spaces: list[tuple[int, int]] = []
        units: list[np.ndarray] = []
        space_idx: list[np.ndarray] = []
        for v in coupling.graph.values:
            for ax in range(v.rank):
                u = coupling.units_of(v, ax)
                ok = u >= 0
                if ok.any():
                    space_idx.append(np.full(int(ok.sum()), len(spaces), dtype=np.int64))
                    units.append(u[ok])
                    spaces.append((v.index, ax))
        self.spaces = spaces
        self.units = np.concatenate(units) if units else np.zeros(0, dtype=np.int64)
        self.space_idx = np.concatenate(space_idx) if space_idx else np.zeros(0, dtype=np.int64)

    def shapes(self, removed: np.ndarray) -> Callable[[Value], tuple[int, ...]]:
        gone = np.bincount(self.space_idx, weights=removed[self.units].astype(np.float64), minlength=len(self.spaces))
        delta: dict[int, dict[int, int]] = {}
        for (vi, ax), g in zip(self.spaces, gone.tolist(), strict=True):
            if g:
                delta.setdefault(vi, {})[ax] = int(g)

        def shape(v: Value) -> tuple[int, ...]:
            d = delta.get(v.index)
            if not d:
                return v.shape
            return tuple(s - d.get(i, 0) for i, s in enumerate(v.shape))

        return shape


@dataclass(frozen=True)
class Allocation:
    removed: np.ndarray  # bool per unit
    cost_before: float
    cost_after: float
    target: float  # absolute cost target
    reachable: bool
    policy: str


RoundTo = int | Sequence[int]  # one rounding for every group, or one per group (by group id)


def per_group(coupling: Coupling, round_to: RoundTo) -> list[int]:
    """``round_to`` as one value per group."""
    if isinstance(round_to, int):
        return _statistic_multiples(coupling, [round_to] * len(coupling.groups))
    steps = [int(r) for r in round_to]
    if len(steps) != len(coupling.groups):
        raise ValueError(f"round_to has {len(steps)} entries for {len(coupling.groups)} groups")
    return _statistic_multiples(coupling, steps)


def _statistic_multiples(coupling: Coupling, steps: list[int]) -> list[int]:
    """A hidden-size group (rules/hidden.py) also keeps a multiple of ``statistic_multiple``
    (transformers validates ``hidden_size % num_attention_heads == 0``)."""
    m = coupling.statistic_multiple
    if m <= 1:
        return steps
    return [math.lcm(s, m) if coupling.is_statistic_group(g) else s for g, s in zip(coupling.groups, steps, strict=True)]


def runtime_round_to(coupling: Coupling, step: int) -> list[int]:
    """Default rounding: the runtime's channel ``step`` (its kernels' block: onnxruntime's NCHWc
    16 with AVX-512, else 8), so kept widths run on the fast kernels. A group with fewer than four
    steps' worth of channels is rounded to the largest power of two <= a quarter of its channels
    instead (a 16-channel layer could otherwise only stay whole)."""
    out = []
    for g in coupling.groups:
        channels = g.size * max(1, g.width)
        out.append(step if channels >= 4 * step else max(1, 1 << max(0, (channels // 4).bit_length() - 1)))
    return _statistic_multiples(coupling, out)


def unit_step(width: int, round_to: int) -> int:
    """Units per step so that kept channels (units * width) stay a multiple of round_to."""
    return max(1, round_to // math.gcd(round_to, max(1, width)))


def _kept_count(n: int, frac_removed: float, width: int, round_to: int) -> int:
    step = unit_step(width, round_to)
    keep = n - int(np.floor(frac_removed * n + 1e-9))
    keep = int(np.ceil(keep / step) * step)
    return int(min(n, max(min(n, step), keep)))


_LAYER_INDEX = re.compile(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)")


def layer_kinds(coupling: Coupling) -> list[list[int]]:
    """Group ids that play the same role in repeated blocks, as lists of two or more: groups whose
    weight spaces are the same once layer indices are stripped from the FQNs
    (``h.3.mlp.c_fc.weight[1]`` -> ``h.#.mlp.c_fc.weight[1]``), with equal size and unit width."""
    kinds: dict[tuple[object, ...], list[int]] = {}
    graph = coupling.graph
    for g in coupling.groups:
        key = frozenset(
            (_LAYER_INDEX.sub("#", graph.value(n).source or ""), a) for n, a in g.spaces if graph.value(n).is_weight
        )
        if key:
            kinds.setdefault((key, g.size, g.width), []).append(g.id)
    return [ids for ids in kinds.values() if len(ids) > 1]


def _extra_blocks(coupling: Coupling, extra: np.ndarray, scores: np.ndarray, round_to: list[int],
                  tie: Sequence[Sequence[int]] = ()) -> list[np.ndarray]:
    """Split the extra units into removal blocks (round_to units of one group where a unit is one
    channel wide, else single units), ordered by mean score. The groups of a tied kind share each
    block: block i takes the i-th step of lowest-scored extra units of every member."""
    members = {gid: kind for kind in tie for gid in kind}
    per_group: dict[int, list[np.ndarray]] = {}
    for g in coupling.groups:
        units = g.units[extra[g.units]]
        units = units[np.argsort(scores[units], kind="stable")]
        step = unit_step(g.width, round_to[g.id])
        per_group[g.id] = [units[i : i + step] for i in range(0, len(units), step)]
    blocks: list[np.ndarray] = []
    for g in coupling.groups:
        kind = members.get(g.id)
        if kind is None:
            blocks += per_group[g.id]
        elif g.id == kind[0]:
            n = min(len(per_group[k]) for k in kind)
            blocks += [np.concatenate([per_group[k][i] for k in kind]) for i in range(n)]
    blocks.sort(key=lambda b: float(scores[b].mean()))
    return blocks


def _closest_by_bisection(
    candidate: Callable[[int], np.ndarray], n: int, price: Callable[[np.ndarray], float], target: float,
    best: np.ndarray, best_cost: float,
) -> tuple[np.ndarray, float]:
    """Bisect k in [0, n] over removal masks whose cost falls as k grows; return the mask whose
    cost is closest to ``target`` among those tried (starting from ``best``)."""
    a, z = 0, n
    while a <= z:
        k = (a + z) // 2
        rem = candidate(k)
        c = price(rem)
        if abs(c - target) < abs(best_cost - target):
            best, best_cost = rem, c
        if c > target:
            a = k + 1
        else:
            z = k - 1
    return best, best_cost


def _refine(
    coupling: Coupling, rem: np.ndarray, price: Callable[[np.ndarray], float], target: float, rts: list[int],
    order_in_group: list[np.ndarray], scores: np.ndarray, tol: float = 0.005, rounds: int = 16,
) -> tuple[np.ndarray, float]:
    """Local search toward the target: move one group by one width step at a time (remove its
    lowest-scored kept step, or restore its best removed step), taking the move that ends closest to
    the target (ties inside ``tol``: the least importance lost). Coarse steps (a 16-channel block of
    a 32-channel stage) otherwise leave the cost a few percent off; rounding is kept."""
    cost = price(rem)
    for _ in range(rounds):
        if abs(cost - target) <= tol * target:
            break
        best: tuple[float, float, np.ndarray, float] | None = None
        for g, order in zip(coupling.groups, order_in_group, strict=True):
            step = unit_step(g.width, rts[g.id])
            kept, gone = order[~rem[order]], order[rem[order]]
            if cost > target and len(kept) - step >= min(g.size, step):
                units, value = kept[:step], True
            elif cost < target and len(gone) >= step:
                units, value = gone[-step:], False
            else:
                continue
            cand = rem.copy()
            cand[units] = value
            c = price(cand)
            key = (max(abs(c - target), tol * target), float(scores[units].sum()) * (1 if value else -1))
            if abs(c - target) < abs(cost - target) and (best is None or key < best[:2]):
                best = (*key, cand, c)
        if best is None:
            break
        rem, cost = best[2], best[3]
    return rem, cost


def _fill(coupling: Coupling, start: np.ndarray, scores: np.ndarray, round_to: list[int], tie: Sequence[Sequence[int]],
          frozen: frozenset[int], price: Callable[[np.ndarray], float], target: float) -> tuple[np.ndarray, float]:
    """Tied kinds move in coarse blocks (a KV group in every layer at once), so at the uniform
    fraction where one kind jumps past the target the finer kinds have not moved. From ``start``
    (cost above the target) remove further blocks of the kinds whose single block does not cross
    the target (score order, each group keeping its floor), bisecting on how many; the caller keeps
    whichever of this and the plain solution lands closer."""
    start_cost = price(start)
    avail = ~start
    for g in coupling.groups:
        left = g.units[avail[g.units]]
        keep = min(len(left), unit_step(g.width, round_to[g.id]))
        if g.id in frozen:
            keep = len(left)
        avail[left[np.argsort(scores[left], kind="stable")][len(left) - keep:]] = False
    blocks = _extra_blocks(coupling, avail, scores, round_to, tie)
    unit_group = coupling.unit_group
    coarse: dict[int, bool] = {}
    fine = []
    for blk in blocks:
        gid = int(unit_group[blk[0]])
        if gid not in coarse:
            cand = start.copy()
            cand[blk] = True
            coarse[gid] = price(cand) < target  # one block crosses the target: the caller already tried it
        if not coarse[gid]:
            fine.append(blk)

    def with_fine(k: int) -> np.ndarray:
        rem = start.copy()
        for blk in fine[:k]:
            rem[blk] = True
        return rem

    return _closest_by_bisection(with_fine, len(fine), price, target, start, start_cost)


def allocate(
    coupling: Coupling,
    scores: np.ndarray,
    cost: CostFn,
    target_fraction: float,
    policy: str = "uniform",
    round_to: RoundTo = 1,
    tie: Sequence[Sequence[int]] = (),
    frozen: frozenset[int] = frozenset(),
) -> Allocation:
    """Remove units so that ``cost(shapes) ~= target_fraction * cost(original)``. ``tie``: lists of
    group ids that keep equal widths (uniform policy only); ``frozen``: group ids kept whole."""
    if tie and policy != "uniform":
        raise ValueError(f"equal widths per layer kind need the uniform policy, got {policy!r}")
    rts = per_group(coupling, round_to)
    table = ShapeTable(coupling)
    n = coupling.n_units
    base = cost(lambda v: v.shape)
    target = target_fraction * base
    none = np.zeros(n, dtype=bool)
    if n == 0 or target_fraction >= 1.0:
        return Allocation(none, base, base, target, target_fraction >= 1.0, policy)
    order_in_group = [g.units[np.argsort(scores[g.units], kind="stable")] for g in coupling.groups]

    def uniform(r: float) -> np.ndarray:
        rem = np.zeros(n, dtype=bool)
        for g, order in zip(coupling.groups, order_in_group, strict=True):
            if g.id in frozen:
                continue
            keep = _kept_count(g.size, r, g.width, rts[g.id])
            rem[order[: g.size - keep]] = True
        return rem

    ranked = np.argsort(scores, kind="stable")

    def global_k(k: int) -> np.ndarray:
        rem = np.zeros(n, dtype=bool)
        left = np.array([g.size for g in coupling.groups], dtype=np.int64)
        floor = np.array(
            [min(g.size, unit_step(g.width, rts[g.id])) for g in coupling.groups], dtype=np.int64
        )
        taken = 0
        for u in ranked:
            if taken >= k:
                break
            gid = coupling.unit_group[u]
            if left[gid] > floor[gid]:
                rem[u] = True
                left[gid] -= 1
                taken += 1
        if max(rts, default=1) > 1:  # give back the best removed units until kept widths are multiples
            for g, order in zip(coupling.groups, order_in_group, strict=True):
                step = unit_step(g.width, rts[g.id])
                kept = int((~rem[g.units]).sum())
                want = min(g.size, int(np.ceil(kept / step) * step))
                back = [u for u in order[::-1] if rem[u]][: want - kept]
                rem[back] = False
        return rem

    def price(rem: np.ndarray) -> float:
        return cost(table.shapes(rem))

    if policy == "uniform":
        lo, hi = 0.0, 1.0  # cost(uniform(lo)) > target >= cost(uniform(hi)), when reachable
        for _ in range(30):
            mid = (lo + hi) / 2
            if price(uniform(mid)) > target:
                lo = mid
            else:
                hi = mid
        rem_lo, rem_hi = uniform(lo), uniform(hi)
        # fine step: between the two uniform solutions, remove the extra units in score order
        # (bisection on how many), so coarse groups do not make the cost jump. Where round_to
        # applies, extra units move in blocks of unit_step so kept widths stay multiples.
        blocks = _extra_blocks(coupling, rem_hi & ~rem_lo, scores, rts, tie)

        def with_blocks(k: int) -> np.ndarray:
            rem = rem_lo.copy()
            for blk in blocks[:k]:
                rem[blk] = True
            return rem

        best, best_cost = _closest_by_bisection(with_blocks, len(blocks), price, target, rem_lo, price(rem_lo))
        if abs(price(rem_hi) - target) < abs(best_cost - target):
            best, best_cost = rem_hi, price(rem_hi)
        if tie:  # from the longest prefix still above the target, fill past the coarse block
            a, z = 0, len(blocks)
            while a < z:
                k = (a + z + 1) // 2
                a, z = (k, z) if price(with_blocks(k)) > target else (a, k - 1)
            filled, filled_cost = _fill(coupling, with_blocks(a), scores, rts, tie, frozen, price, target)
            if abs(filled_cost - target) < abs(best_cost - target):
                best, best_cost = filled, filled_cost
        floor_rem = uniform(1.0)
    elif policy == "global":
        if frozen:
            raise ValueError("frozen groups need the uniform policy")
        best, best_cost = _closest_by_bisection(global_k, n, price, target, none, base)
        floor_rem = global_k(n)
    else:
        raise ValueError(f"unknown allocation policy {policy!r}; use 'uniform' or 'global'")
    if not tie and not frozen:  # _refine moves single groups: it would break equal widths per kind (and frozen ones)
        best, best_cost = _refine(coupling, best, price, target, rts, order_in_group, scores)
    floor_cost = price(floor_rem)
    reachable = floor_cost <= target * 1.03
    log.info("allocation %s: cost %.4g -> %.4g (target %.4g)", policy, base, best_cost, target)
    return Allocation(best, base, best_cost, target, reachable, policy)
