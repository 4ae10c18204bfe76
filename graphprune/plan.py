"""PruningPlan: the immutable, JSON-serializable decision of what to remove.

Allocation produces it; rewrite, verify, reconstruction and the latency timers consume it. It
records the target, the criterion and allocation that produced it, each group with its kept unit
count, and for every weight tensor (by parameter / initializer name) the kept indices of each axis
that shrinks. It can be priced and inspected before anything is cut, written to JSON, and replayed
(:func:`bind`) on the graph it was made for or on another capture of the same architecture: the
model's ONNX export, or another checkpoint.

The fingerprint of the graph a plan was made for (:func:`fingerprint`) is stable across processes:
the op sequence and every weight's name and shape, hashed, plus the names and shapes themselves so
a replay can say which weight differs. Replay keys on weight names, which both routes share (the
PyTorch route names weights by parameter FQN; both ONNX exporters keep FQNs as initializer names;
copies the ONNX loader makes of a shared 1-D initializer, ``name__useN``, count as ``name``); where
the target's weights carry other names (an exporter that renamed them), the rank >= 2 weights are
matched by position when their shapes agree one for one. Per-channel vectors of the plan's graph
that the target lacks (the dynamo exporter folds eval-mode BatchNorm into the conv before it) are
not needed: every channel they carry is coupled to a matched conv/linear weight.

Binding a plan to a coupling turns it back into a removed-units mask: a unit is removed when a
matched weight space drops one of its indices; then every matched weight must keep exactly the
plan's indices, or the plan is refused with one line naming the first weight that differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import PlanError

if TYPE_CHECKING:
    from .analysis.coupling import Coupling
    from .ir import Graph, Value

__all__ = ["GroupPlan", "PruningPlan", "bind", "contraction_weights", "fingerprint", "make_plan", "weight_key"]

_USE = re.compile(r"__use\d+$")


@dataclass(frozen=True)
class GroupPlan:
    id: int
    units: int
    kept: int
    width: int
    spaces: tuple[str, ...]


@dataclass(frozen=True)
class PruningPlan:
    model: str
    target: dict[str, float]
    criterion: str
    allocation: str
    round_to: int
    groups: tuple[GroupPlan, ...]
    removed_units: tuple[int, ...]
    kept: dict[str, dict[int, tuple[int, ...]]]  # weight name -> axis -> kept indices
    provenance: dict[str, str] = field(default_factory=dict)
    # the graph it was made for (see :func:`fingerprint`); empty for a composed multi-step plan
    graph: dict[str, Any] = field(default_factory=dict)

    def compose(self, later: PruningPlan) -> PruningPlan:
        """The plan equivalent to applying ``self`` and then ``later`` (made on self's output).

        Kept indices compose by indexing: a weight axis kept ``k1`` (original indices) and then
        ``k2`` (indices into the k1-sized tensor) keeps ``k1[k2]`` of the original. Groups and the
        target are ``later``'s (unit ids are per coupling analysis, so removed_units is dropped);
        the graph is ``self``'s (the original one the composed plan applies to).
        """
        kept: dict[str, dict[int, tuple[int, ...]]] = {k: dict(v) for k, v in self.kept.items()}
        for name, axes in later.kept.items():
            mine = kept.setdefault(name, {})
            for ax, idx in axes.items():
                mine[ax] = tuple(mine[ax][i] for i in idx) if ax in mine else tuple(idx)
        steps = int(self.provenance.get("steps", "1")) + int(later.provenance.get("steps", "1"))
        return PruningPlan(
            model=self.model, target=dict(later.target), criterion=later.criterion, allocation=later.allocation,
            round_to=later.round_to, groups=later.groups, removed_units=(), kept=kept,
            provenance={**later.provenance, "steps": str(steps)}, graph=dict(self.graph),
        )

    def removed_mask(self, n_units: int) -> np.ndarray:
        """The removed units as a boolean mask over the coupling the plan was made on."""
        mask = np.zeros(n_units, dtype=bool)
        if self.removed_units:
            mask[np.asarray(self.removed_units, dtype=np.int64)] = True
        return mask

    def to_json(self) -> str:
        d = asdict(self)
        d["kept"] = {k: {str(ax): list(ix) for ax, ix in v.items()} for k, v in self.kept.items()}
        return json.dumps(d)

    @staticmethod
    def from_json(text: str) -> PruningPlan:
        d: dict[str, Any] = json.loads(text)
        groups = tuple(GroupPlan(**{**g, "spaces": tuple(g["spaces"])}) for g in d["groups"])
        kept = {k: {int(ax): tuple(ix) for ax, ix in v.items()} for k, v in d["kept"].items()}
        return PruningPlan(
            model=d["model"], target=d["target"], criterion=d["criterion"], allocation=d["allocation"],
            round_to=d["round_to"], groups=groups, removed_units=tuple(d["removed_units"]), kept=kept,
            provenance=d.get("provenance", {}), graph=d.get("graph", {}),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan as JSON, atomically."""
        from .export import write_atomic

        text = self.to_json()
        write_atomic(str(path), lambda tmp: tmp.write_text(text))

    @staticmethod
    def load(path: str | os.PathLike[str]) -> PruningPlan:
        """Read a plan written by :meth:`save` (``graphprune prune --plan-out``); a file that is not
        one is a :class:`PlanError` naming it."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise PlanError(f"plan {p}: cannot read it ({exc.strerror or exc}); give the plan.json that "
                            "graphprune prune --plan-out wrote") from None
        try:
            return PruningPlan.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise PlanError(f"plan {p}: not a graphprune plan ({type(exc).__name__}: {str(exc)[:120]}); give the "
                            "plan.json that graphprune prune --plan-out wrote") from None


def make_plan(coupling: Coupling, removed: np.ndarray, *, target: dict[str, float], criterion: str, allocation: str,
              round_to: int, route: str) -> PruningPlan:
    """The plan of one decision: ``removed`` (bool per unit of ``coupling``), with its groups, the
    kept indices of every weight axis that shrinks and the fingerprint of the graph."""
    import torch

    from . import __version__
    from .rewrite.slicing import kept_indices

    graph = coupling.graph
    groups = tuple(
        GroupPlan(g.id, g.size, int((~removed[g.units]).sum()), g.width, tuple(f"{n}[{a}]" for n, a in g.spaces))
        for g in coupling.groups
    )
    kept = {weight_key(k.value): {ax: tuple(idx.tolist()) for ax, idx in k.axes.items()}
            for k in kept_indices(coupling, removed)}
    return PruningPlan(
        model=graph.name, target=dict(target), criterion=criterion or "l2", allocation=allocation, round_to=round_to,
        groups=groups, removed_units=tuple(int(u) for u in np.flatnonzero(removed)), kept=kept,
        provenance={"graphprune": __version__, "torch": torch.__version__}, graph=fingerprint(graph, route),
    )


def weight_key(v: Value) -> str:
    """The name a plan files a weight under: its parameter FQN / initializer name."""
    return v.source or v.name


def contraction_weights(graph: Graph) -> list[tuple[Value, int, int]]:
    """(weight, contracted axis, output axis) of every contraction reading a weight, in op order:
    the reader-axes table (:data:`graphprune.rules.READERS`) says which operand and axis."""
    from .rules.readers import reads

    out: list[tuple[Value, int, int]] = []
    for node in graph.nodes:
        r = reads(node)
        if r is None:
            continue
        (li, la), (ri, ra) = r.lhs, r.rhs
        rhs, lhs = node.input(ri), node.input(li)
        if rhs is not None and rhs.is_weight and rhs.rank >= 2:
            out.append((rhs, ra % rhs.rank, r.rhs_out % rhs.rank))
        elif r.either and lhs is not None and lhs.is_weight and lhs.rank >= 2:
            out.append((lhs, la % lhs.rank, (la - 1) % lhs.rank))
    return out


def fingerprint(graph: Graph, route: str) -> dict[str, Any]:
    """The graph a plan is made for: op sequence and weight names/shapes, hashed (stable across
    processes: no object ids), the weights themselves for naming a mismatch on replay, and the
    contractions' weights in op order (name, contracted axis, output axis) for matching weights an
    exporter renamed or stored transposed."""
    weights = [[weight_key(v), list(v.shape)] for v in graph.weights()]
    readers = [[weight_key(v), c, o] for v, c, o in contraction_weights(graph)]
    h = hashlib.sha256()
    h.update("\n".join(n.op for n in graph.nodes).encode())
    h.update(json.dumps(weights).encode())
    return {"route": route, "nodes": len(graph.nodes), "hash": h.hexdigest()[:16], "weights": weights,
            "readers": readers}


def _shape(s: Any) -> str:
    return "x".join(str(int(d)) for d in s)


Match = tuple["Value", dict[int, int]]  # the target's weight, plan axis -> target axis


def _by_reader(plan: PruningPlan, graph: Graph, sizes: dict[str, tuple[int, ...]]) -> dict[str, Match]:
    """The plan's contraction weights matched one for one, in op order, to the target's (when both
    graphs have the same number and their contracted and output sizes agree), with the axis map:
    contracted to contracted, output to output, other axes in order (a weight the exporter stored
    transposed, ``W^T`` for ``X @ W^T``, maps its two axes crosswise)."""
    mine = [(str(n), int(c), int(o)) for n, c, o in plan.graph.get("readers", [])]
    theirs = contraction_weights(graph)
    if not mine or len(mine) != len(theirs):
        return {}
    out: dict[str, Match] = {}
    for (n, c, o), (v, tc, to) in zip(mine, theirs, strict=True):
        ps = sizes.get(n)
        if ps is None or len(ps) != v.rank or ps[c] != v.shape[tc] or ps[o] != v.shape[to]:
            return {}
        rest = [a for a in range(v.rank) if a not in (c, o)]
        trest = [a for a in range(v.rank) if a not in (tc, to)]
        if [ps[a] for a in rest] != [v.shape[a] for a in trest]:
            return {}
        out.setdefault(n, (v, {c: tc, o: to, **dict(zip(rest, trest, strict=True))}))
    return out


def _name_map(plan: PruningPlan, graph: Graph, where: str) -> tuple[dict[str, Match], list[str]]:
    """Plan weight name -> the target's weight and axis map: by name (FQN / initializer name), else
    by the contractions' op order (:func:`_by_reader`); and the plan's pruned per-channel vectors
    the target lacks (BatchNorm folded into the conv by the exporter): their channels follow from
    the matched weights they were coupled to."""
    targets: dict[str, Value] = {}
    for v in graph.weights():
        key = weight_key(v)
        targets.setdefault(key, v)
        targets.setdefault(_USE.sub("", key), v)
    planned = [(str(n), tuple(int(d) for d in s)) for n, s in plan.graph.get("weights", [])]
    sizes = dict(planned)
    names = [n for n, _ in planned] if planned else list(plan.kept)
    out: dict[str, Match] = {}
    for n in names:
        v = targets.get(n)
        if v is None:
            continue
        if n in sizes and sizes[n] != v.shape:
            raise PlanError(f"plan for {plan.model!r} does not fit {where}: weight {n!r} is {_shape(sizes[n])} in "
                            f"the plan's graph but {_shape(v.shape)} in {where}; apply a plan made for this "
                            "architecture")
        out[n] = (v, {a: a for a in range(v.rank)})

    def missing() -> list[str]:
        return [n for n in plan.kept if n not in out and len(sizes.get(n, (0, 0))) >= 2]

    if missing():
        for n, m in _by_reader(plan, graph, sizes).items():
            out.setdefault(n, m)
    gone = missing()
    if gone or not out:
        first = gone[0] if gone else next(iter(plan.kept), "?")
        raise PlanError(f"plan for {plan.model!r} does not fit {where}: it prunes weight {first!r}, which "
                        f"{where} does not have ({max(len(gone), 1)} such); apply a plan made for this architecture")
    return out, [n for n in plan.kept if n not in out]


def bind(plan: PruningPlan, coupling: Coupling, where: str = "") -> tuple[np.ndarray, list[str]]:
    """The removed-units mask of ``coupling`` that keeps exactly the plan's indices, and the plan's
    per-channel vectors the graph lacks (folded; see :func:`_name_map`); a plan made for another
    graph is refused with one :class:`PlanError` line naming the first mismatch."""
    graph = coupling.graph
    where = where or repr(graph.name)
    removed = np.zeros(coupling.n_units, dtype=bool)
    names, folded = _name_map(plan, graph, where)
    for n, (v, amap) in names.items():
        for ax, idx in plan.kept.get(n, {}).items():
            if ax not in amap:
                raise PlanError(f"plan for {plan.model!r} does not fit {where}: weight {n!r} has no axis {ax}")
            units = coupling.units_of(v, amap[ax])
            keep = np.asarray(idx, dtype=np.int64)
            if keep.size and (keep.min() < 0 or keep.max() >= len(units)):
                raise PlanError(f"plan for {plan.model!r} does not fit {where}: weight {n!r} axis {ax} keeps "
                                f"index {int(keep.max())} of {len(units)}")
            gone = np.ones(len(units), dtype=bool)
            gone[keep] = False
            u = units[gone]
            removed[u[u >= 0]] = True
    _check(plan, coupling, removed, names, where)
    return removed, folded


def _check(plan: PruningPlan, coupling: Coupling, removed: np.ndarray, names: dict[str, Match], where: str) -> None:
    """Every weight the plan names keeps exactly the plan's indices under ``removed``."""
    for n, (v, amap) in names.items():
        axes = plan.kept.get(n, {})
        for ax, tax in amap.items():
            got = coupling.kept(v, tax, removed)
            want = np.asarray(axes[ax], dtype=np.int64) if ax in axes else np.arange(v.shape[tax])
            if not np.array_equal(got, want):
                raise PlanError(
                    f"plan for {plan.model!r} does not fit {where}: weight {n!r} axis {ax} keeps {len(want)} of "
                    f"{v.shape[tax]} in the plan but its channels are coupled differently in {where} (it would keep "
                    f"{len(got)}); apply a plan made for this architecture")
