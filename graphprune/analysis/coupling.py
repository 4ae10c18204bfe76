"""Coupling analysis: which channels must be removed together.

Every axis of every tensor Value is a *channel space*; each position on it is an *element* with a
global integer id. Rules (``graphprune.rules``) declare ties between elements with pure index maps
(identity, offset for concat/split, blocks for reshape into heads, repeat for GQA) and pin what
must keep its size. A union-find over all elements (scipy connected components, linear time)
turns the ties into **units**: sets of elements that are removed together. A unit containing a
pinned element is frozen. Units touching the same set of spaces form a **group** (one conv's
filters, a residual stream, the KV-head groups of one attention layer).

Anything a rule does not declare is pinned, so an op without a rule is a barrier: it freezes the
spaces it touches and is reported by name.

Each axis also carries a static *factor structure* (sizes with a CHANNEL/FIXED tag per factor),
propagated forward while rules run. Reshape rules use it to decide which factor of a split axis
is the prunable one (heads vs head_dim, channel-shuffle groups); the choice affects what can be
pruned, never correctness.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..ir import Graph, Node, Value

__all__ = ["CHANNEL", "FIXED", "Coupling", "CouplingBuilder", "Factor", "Group", "couple"]

log = logging.getLogger(__name__)

CHANNEL = "channel"  # a factor that can carry prunable units
FIXED = "fixed"  # batch, sequence, spatial, broadcast, or a non-carrier factor

Factor = tuple[int, str]  # (size, tag)


class CouplingBuilder:
    """The API rules use to declare ties; owns element ids and the growing edge list."""

    def __init__(self, graph: Graph, hidden: bool = False, experts: bool = True) -> None:
        self.graph = graph
        # hidden-size pruning: reductions such as RMSNorm's mean(x^2) may lose channels
        # (rules/hidden.py); their spaces are recorded in ``statistics``
        self.hidden = hidden
        # whole MoE experts (with their router rows) as units (rules/moe.py); False pins them
        self.experts = experts
        self.statistics: set[tuple[int, int]] = set()  # (value index, axis) a statistic reduces over
        self.std_weights: set[tuple[int, int]] = set()  # (weight index, input axis) standardized at every forward
        self.base = np.zeros(len(graph.values) + 1, dtype=np.int64)
        sizes = [sum(v.shape) for v in graph.values]
        self.base[1:] = np.cumsum(sizes)
        self.axis_offset: list[list[int]] = []
        for v in graph.values:
            offs, o = [], 0
            for s in v.shape:
                offs.append(o)
                o += s
            self.axis_offset.append(offs)
        self.n_elements = int(self.base[-1])
        self._src: list[np.ndarray] = []
        self._dst: list[np.ndarray] = []
        self.pinned = np.zeros(self.n_elements, dtype=bool)
        self.pin_reasons: list[tuple[int, int, str]] = []  # [start, end) element range, why
        self._owner: list[np.ndarray] = []  # node index that declared each edge batch
        self._node_index = -1
        self.factors: dict[tuple[int, int], tuple[Factor, ...]] = {}
        self.readers: set[tuple[int, int]] = set()  # (weight value index, axis): consumer-side axes
        self.declared: set[tuple[int, int]] = set()  # (value index, axis) declared by the current rule
        self.barriers: dict[str, list[str]] = {}  # op/target -> node names
        self.fired: list[tuple[str, str]] = []  # (node name, rule name): the rule trace

    # -- element ids -------------------------------------------------------------------------
    def ids(self, v: Value, axis: int) -> np.ndarray:
        axis = axis % v.rank
        start = self.base[v.index] + self.axis_offset[v.index][axis]
        return np.arange(start, start + v.shape[axis], dtype=np.int64)

    # -- static factor structure ---------------------------------------------------------------
    def structure(self, v: Value, axis: int) -> tuple[Factor, ...]:
        axis = axis % v.rank
        got = self.factors.get((v.index, axis))
        if got is not None:
            return got
        size = v.shape[axis]
        tag = CHANNEL if v.is_weight and size > 1 else FIXED
        return ((size, tag),)

    def set_structure(self, v: Value, axis: int, factors: Sequence[Factor]) -> None:
        self.factors[(v.index, axis % v.rank)] = tuple(factors)

    # -- ties ----------------------------------------------------------------------------------
    def _declare(self, v: Value, axis: int) -> None:
        self.declared.add((v.index, axis % v.rank))

    def same(self, a: Value, ax: int, b: Value, bx: int) -> None:
        """Identity tie: element i of ``a``'s axis ``ax`` is element i of ``b``'s axis ``bx``."""
        if a.shape[ax] != b.shape[bx]:
            raise ValueError(f"identity tie between {a}[{ax}] and {b}[{bx}] of different sizes")
        self.pair(a, ax, np.arange(a.shape[ax]), b, bx, np.arange(b.shape[bx]))

    def pair(self, a: Value, ax: int, ia: np.ndarray, b: Value, bx: int, ib: np.ndarray) -> None:
        """Tie element ``ia[k]`` of ``a``'s axis with element ``ib[k]`` of ``b``'s axis, for all k."""
        self._declare(a, ax)
        self._declare(b, bx)
        if len(ia):
            self._src.append(self.ids(a, ax)[np.asarray(ia, dtype=np.int64)])
            self._dst.append(self.ids(b, bx)[np.asarray(ib, dtype=np.int64)])
            self._owner.append(np.full(len(ia), self._node_index, dtype=np.int64))
        self._inherit(a, ax, b, bx)

    def _inherit(self, a: Value, ax: int, b: Value, bx: int) -> None:
        """Propagate factor structure forward: an activation axis learns it from its tie partner."""
        ka, kb = (a.index, ax % a.rank), (b.index, bx % b.rank)
        if a.shape[ax] != b.shape[bx]:
            return
        if kb not in self.factors and b.producer is not None and not b.is_weight:
            if ka in self.factors or a.is_weight:
                self.factors[kb] = self.structure(a, ax)
        elif ka not in self.factors and a.producer is not None and not a.is_weight:
            if kb in self.factors or b.is_weight:
                self.factors[ka] = self.structure(b, bx)

    def block(self, v: Value, axis: int, block: int) -> None:
        """Tie elements ``i`` and ``j`` of an axis when ``i // block == j // block``."""
        n = v.shape[axis]
        if block <= 1 or n == 0:
            self._declare(v, axis)
            return
        idx = np.arange(n)
        self.pair(v, axis, idx, v, axis, (idx // block) * block)

    def pin(self, v: Value, axis: int | None = None, why: str = "") -> None:
        """Freeze one axis (or all axes) of a value: no unit touching it may be removed."""
        axes = range(v.rank) if axis is None else [axis % v.rank]
        for ax in axes:
            self._declare(v, ax)
            self._pin_range(v, ax, why or "pinned by a rule")

    def _pin_range(self, v: Value, ax: int, why: str) -> None:
        ids = self.ids(v, ax)
        if len(ids):
            self.pinned[ids] = True
            self.pin_reasons.append((int(ids[0]), int(ids[-1]) + 1, why))

    def reader(self, w: Value, axis: int) -> None:
        """Mark a weight axis as consumer-side: it reads input channels (zeroed by the oracle)."""
        self.readers.add((w.index, axis % w.rank))

    def statistic(self, v: Value, axis: int) -> None:
        """Declare an axis a statistic is taken over (a mean of a function that is 0 at 0): its
        channels may go when the masked original zeroes them at every writer (see
        ``Coupling.statistics`` and ``verification.masked_original``)."""
        self._declare(v, axis)
        self.statistics.add((v.index, axis % v.rank))

    def standardized(self, w: Value, axis: int) -> None:
        """Declare ``w`` a weight the model standardizes over ``axis`` (and the ones after it) at
        every forward (weight-standardized convs, rules/norm.py): the masked original leaves that
        axis whole and the module route folds the standardization into a plain conv
        (rewrite/std_conv.py)."""
        self.std_weights.add((w.index, axis % w.rank))

    def barrier(self, node: Node) -> None:
        self.barriers.setdefault(node.target, []).append(node.name)

    # -- per-node bookkeeping ----------------------------------------------------------------
    def begin(self, node: Node, index: int = -1) -> None:
        self.declared = set()
        self._node_index = index

    def end(self, node: Node) -> None:
        """Pin every axis of the node's inputs and outputs that its rule did not declare."""
        for v in [*node.inputs, *node.outputs]:
            if v is None:
                continue
            for ax in range(v.rank):
                if (v.index, ax) not in self.declared:
                    self._pin_range(v, ax, f"{node.op} node {node.name!r} keeps axis {ax} of {v.name!r} whole")

    # -- finish ----------------------------------------------------------------------------------
    def finish(self) -> Coupling:
        for v in self.graph.values:
            if v.producer is None and not v.users:  # unused weights and inputs
                for ax in range(v.rank):
                    self._pin_range(v, ax, f"{v.name!r} is not used")
        for v in self.graph.inputs:
            for ax in range(v.rank):
                self._pin_range(v, ax, f"model input {v.name!r} keeps its shape")
        for v in self.graph.outputs:
            for ax in range(v.rank):
                self._pin_range(v, ax, f"model output {v.name!r} keeps its shape")
        n = self.n_elements
        if self._src:
            src = np.concatenate(self._src)
            dst = np.concatenate(self._dst)
            owner = np.concatenate(self._owner)
        else:
            src = dst = owner = np.zeros(0, dtype=np.int64)
        adj = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
        n_comp, labels = connected_components(adj, directed=False)
        comp_pinned = np.zeros(n_comp, dtype=bool)
        np.logical_or.at(comp_pinned, labels, self.pinned)
        # a unit made only of weight elements that no computation reads (rows of a position table
        # beyond the sliced range, say) saves nothing and would only shrink the model's capacity
        is_act = np.zeros(n, dtype=bool)
        for v in self.graph.values:
            if not v.is_weight and v.kind != "const":
                is_act[self.base[v.index] : self.base[v.index + 1]] = True
        comp_has_act = np.zeros(n_comp, dtype=bool)
        np.logical_or.at(comp_has_act, labels, is_act)
        comp_pinned |= ~comp_has_act
        c = Coupling.build(self, labels.astype(np.int64), comp_pinned)
        c.trace = _Trace(src, dst, owner, self.pinned, self.pin_reasons)
        return c


@dataclass(frozen=True)
class Group:
    """Units that touch the same set of channel spaces; the allocator's unit of uniformity."""

    id: int
    units: np.ndarray  # unit ids (indices into Coupling.unit_*)
    spaces: tuple[tuple[str, int], ...]  # (value name, axis) of every space the group touches
    width: int  # elements each unit has in its widest space (1 for channels, head_dim for heads)

    @property
    def size(self) -> int:
        return len(self.units)


@dataclass
class Coupling:
    """Result of coupling analysis: units (removable element sets), groups and barriers."""

    graph: Graph
    base: np.ndarray
    axis_offset: list[list[int]]
    labels: np.ndarray  # element id -> component id
    unit_of_comp: np.ndarray  # component id -> unit id, or -1 when frozen
    n_units: int
    groups: list[Group]
    unit_group: np.ndarray  # unit id -> group id
    readers: frozenset[tuple[int, int]]
    barriers: dict[str, list[str]]
    factors: dict[tuple[int, int], tuple[Factor, ...]] = field(repr=False, default_factory=dict)
    fired: list[tuple[str, str]] = field(repr=False, default_factory=list)
    trace: _Trace | None = field(repr=False, default=None)
    statistics: frozenset[tuple[int, int]] = frozenset()  # (value index, axis): see CouplingBuilder.statistic
    std_weights: frozenset[tuple[int, int]] = frozenset()  # (value index, axis): see CouplingBuilder.standardized
    statistic_multiple: int = 1  # kept widths of statistic groups stay multiples of it (a config's head count)

    @staticmethod
    def build(b: CouplingBuilder, labels: np.ndarray, comp_pinned: np.ndarray) -> Coupling:
        free = np.flatnonzero(~comp_pinned)
        unit_of_comp = np.full(len(comp_pinned), -1, dtype=np.int64)
        unit_of_comp[free] = np.arange(len(free))
        n_units = len(free)
        elem_unit = unit_of_comp[labels]
        # signature of each unit: the sorted set of spaces it touches
        space_of_elem = np.zeros(b.n_elements, dtype=np.int64)
        space_names: list[tuple[str, int]] = []
        space_is_param: list[bool] = []
        for v in b.graph.values:
            for ax in range(v.rank):
                ids = b.ids(v, ax)
                space_of_elem[ids] = len(space_names)
                space_names.append((v.name, ax))
                space_is_param.append(v.kind == "param")
        sel = elem_unit >= 0
        pairs, counts = np.unique(
            np.stack([elem_unit[sel], space_of_elem[sel]], axis=1), axis=0, return_counts=True
        )
        pu, ps = pairs[:, 0], pairs[:, 1]
        # signature of a unit = the set of spaces it touches, hashed order-free (sum of random
        # 64-bit keys per space), so grouping is vectorized even for millions of elements
        keys = np.random.default_rng(0).integers(1, 2**62, size=len(space_names), dtype=np.int64)
        sig = np.zeros(n_units, dtype=np.int64)
        np.add.at(sig, pu, keys[ps])
        # width: channels per unit in a weight tensor (1 for a filter, head_dim for a head)
        is_param = np.asarray(space_is_param, dtype=bool)[ps]
        width = np.full(n_units, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(width, pu[is_param], counts[is_param])
        width[width == np.iinfo(np.int64).max] = 1
        _, first_unit, group_of = np.unique(sig, return_index=True, return_inverse=True)
        order = np.argsort(first_unit, kind="stable")  # groups numbered by first unit
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        unit_group = rank[group_of].astype(np.int64)
        starts = np.searchsorted(pu, np.arange(n_units))
        ends = np.searchsorted(pu, np.arange(n_units), side="right")
        members = np.argsort(unit_group, kind="stable")
        bounds = np.searchsorted(unit_group[members], np.arange(len(order) + 1))
        groups: list[Group] = []
        for gid in range(len(order)):
            units = members[bounds[gid] : bounds[gid + 1]]
            u0 = units[0]
            spaces = tuple(space_names[s] for s in ps[starts[u0] : ends[u0]])
            groups.append(Group(gid, units, spaces, int(width[units].min())))
        log.debug("coupling: %d elements, %d units, %d groups", b.n_elements, n_units, len(groups))
        return Coupling(
            graph=b.graph,
            base=b.base,
            axis_offset=b.axis_offset,
            labels=labels,
            unit_of_comp=unit_of_comp,
            n_units=n_units,
            groups=groups,
            unit_group=unit_group,
            readers=frozenset(b.readers),
            barriers=dict(b.barriers),
            factors=dict(b.factors),
            fired=list(b.fired),
            statistics=frozenset(b.statistics),
            std_weights=frozenset(b.std_weights),
        )

    def pin_groups(self, group_ids: Sequence[int]) -> tuple[Coupling, np.ndarray]:
        """A new Coupling in which the units of ``group_ids`` are frozen (as if a rule had pinned
        them), and the old unit ids kept, in order (index per-unit arrays such as scores with it).
        Groups and units are renumbered; ``self`` is unchanged."""
        drop = np.zeros(self.n_units, dtype=bool)
        for gid in group_ids:
            drop[self.groups[gid].units] = True
        kept_units = np.flatnonzero(~drop)
        new_id = np.full(self.n_units, -1, dtype=np.int64)
        new_id[kept_units] = np.arange(len(kept_units))
        unit_of_comp = np.where(self.unit_of_comp >= 0, new_id[np.maximum(self.unit_of_comp, 0)], -1)
        groups = [g for g in self.groups if not drop[g.units].any()]
        groups = [Group(i, new_id[g.units], g.spaces, g.width) for i, g in enumerate(groups)]
        unit_group = np.zeros(len(kept_units), dtype=np.int64)
        for g in groups:
            unit_group[g.units] = g.id
        pinned = dataclasses.replace(self, unit_of_comp=unit_of_comp, n_units=len(kept_units), groups=groups,
                                     unit_group=unit_group)
        return pinned, kept_units

    # -- queries ---------------------------------------------------------------------------------
    def ids(self, v: Value, axis: int) -> np.ndarray:
        axis = axis % v.rank
        start = self.base[v.index] + self.axis_offset[v.index][axis]
        return np.arange(start, start + v.shape[axis], dtype=np.int64)

    def statistic_units(self) -> np.ndarray:
        """Boolean per unit: the unit has channels in a space a statistic reduces over (its
        writers must be zeroed in the masked original too)."""
        out = np.zeros(self.n_units, dtype=bool)
        for vi, ax in self.statistics:
            u = self.units_of(self.graph.values[vi], ax)
            out[u[u >= 0]] = True
        return out

    def is_statistic_group(self, g: Group) -> bool:
        return any((self.graph.value(n).index, ax) in self.statistics for n, ax in g.spaces)

    def units_of(self, v: Value, axis: int) -> np.ndarray:
        """Unit id of each element on an axis (-1 where frozen)."""
        return self.unit_of_comp[self.labels[self.ids(v, axis)]]

    def kept(self, v: Value, axis: int, removed: np.ndarray) -> np.ndarray:
        """Indices kept on an axis when the boolean per-unit mask ``removed`` is applied."""
        u = self.units_of(v, axis)
        gone = np.zeros(len(u), dtype=bool)
        ok = u >= 0
        gone[ok] = removed[u[ok]]
        return np.flatnonzero(~gone)

    def prunable(self, v: Value, axis: int) -> bool:
        return bool((self.units_of(v, axis) >= 0).any())

    def locate(self, element: int) -> tuple[Value, int, int]:
        """(value, axis, index) of a global element id."""
        vi = int(np.searchsorted(self.base, element, side="right")) - 1
        off = element - int(self.base[vi])
        axis = int(np.searchsorted(self.axis_offset[vi], off, side="right")) - 1
        return self.graph.values[vi], axis, off - self.axis_offset[vi][axis]

    def explain(self, v: Value, axis: int, index: int = 0) -> list[str]:
        """Why channel ``index`` of ``v``'s axis is (not) prunable: the chain of ties from it to
        the first pinned element, each step naming the node whose rule tied it, and the pin's
        reason. Answers "why was this channel not pruned?"."""
        e = int(self.ids(v, axis)[index])
        unit = int(self.unit_of_comp[self.labels[e]])
        if unit >= 0:
            g = self.groups[int(self.unit_group[unit])]
            return [f"{v.name}[{axis}][{index}] is prunable: unit {unit} of group {g.id} ({g.size} units)"]
        if self.trace is None:
            return [f"{v.name}[{axis}][{index}] is frozen"]
        return self.trace.path(self, e)


class _Trace:
    """The tie edges with the node that declared each, and the pin reasons: enough to walk from a
    frozen channel to what froze it."""

    def __init__(self, src: np.ndarray, dst: np.ndarray, owner: np.ndarray, pinned: np.ndarray,
                 reasons: list[tuple[int, int, str]]) -> None:
        self.src, self.dst, self.owner, self.pinned, self.reasons = src, dst, owner, pinned, reasons
        self._adj: Any = None

    def _reason(self, e: int) -> str:
        for start, end, why in self.reasons:
            if start <= e < end:
                return why
        return "pinned"

    def path(self, c: Coupling, start: int) -> list[str]:
        from collections import deque

        from scipy.sparse import csr_matrix

        n = len(self.pinned)
        if self._adj is None:
            edge = np.arange(len(self.src), dtype=np.int64) + 1
            both_src = np.concatenate([self.src, self.dst])
            both_dst = np.concatenate([self.dst, self.src])
            # a tie declared twice (``x + x``, or two rules on one pair) must keep one edge id: the
            # sparse matrix would sum the duplicates' ids into an id past the end (IndexError on Olmo2)
            _, first = np.unique(both_src * n + both_dst, return_index=True)
            self._adj = csr_matrix((np.concatenate([edge, edge])[first], (both_src[first], both_dst[first])),
                                   shape=(n, n))
        prev: dict[int, tuple[int, int]] = {start: (-1, -1)}
        queue = deque([start])
        found = -1
        while queue:
            e = queue.popleft()
            if self.pinned[e]:
                found = e
                break
            row = slice(self._adj.indptr[e], self._adj.indptr[e + 1])
            for nb, edge_id in zip(self._adj.indices[row].tolist(), self._adj.data[row].tolist(), strict=True):
                if nb not in prev:
                    prev[nb] = (e, int(edge_id) - 1)
                    queue.append(nb)
        def name(el: int) -> str:
            v, ax, i = c.locate(el)
            return f"{v.name}[{ax}][{i}]"

        if found < 0:
            return [f"{name(start)} is frozen: it only ties weight elements that no computation reads"]
        steps = []
        e = found
        while prev[e][0] >= 0:
            p, edge_id = prev[e]
            owner = int(self.owner[edge_id])
            via = c.graph.nodes[owner] if owner >= 0 else None
            steps.append(f"{name(p)} -> {name(e)}" + (f"  (tied by {via.op} node {via.name!r})" if via else ""))
            e = p
        return [f"{name(start)} is frozen: {self._reason(found)}", *reversed(steps)]


def couple(graph: Graph, hidden: bool = False, multiple: int = 1, experts: bool = True) -> Coupling:
    """Run every node's coupling rule (in topological order) and solve the union-find.
    ``hidden``: statistics over the residual stream (RMSNorm) may lose channels (rules/hidden.py)."""
    from ..rules import COUPLING

    b = CouplingBuilder(graph, hidden=hidden, experts=experts)
    for i, node in enumerate(graph.nodes):
        rule = COUPLING.get(node.op)
        if rule is None:
            _barrier(b, node)
            continue
        b.begin(node, i)
        try:
            rule(node, b)
            b.end(node)
        except (AssertionError, ValueError, IndexError, KeyError, TypeError, ZeroDivisionError) as exc:
            log.warning("rule %s failed on node %s (%s); treating the node as a barrier", rule.__name__, node.name, exc)
            _barrier(b, node)
            continue
        b.fired.append((node.name, rule.__name__))
        b._node_index = -1
    c = b.finish()
    if c.statistics and multiple > 1:
        c = dataclasses.replace(c, statistic_multiple=int(multiple))
    return c


def _barrier(b: CouplingBuilder, node: Node) -> None:
    b.barrier(node)
    for v in [*node.inputs, *node.outputs]:
        if v is not None:
            b.pin(v, why=f"{node.target} node {node.name!r} has no rule (barrier)")
