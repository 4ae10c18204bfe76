"""PruningPlan: the immutable, JSON-serializable decision of what to remove.

It records the target, the criterion and allocation that produced it, each group with its kept
unit count, and for every weight tensor (by parameter/buffer name) the kept indices of each axis
that shrinks. It can be priced and inspected before anything is cut, and replayed on the same
model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["GroupPlan", "PruningPlan"]


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

    def compose(self, later: PruningPlan) -> PruningPlan:
        """The plan equivalent to applying ``self`` and then ``later`` (made on self's output).

        Kept indices compose by indexing: a weight axis kept ``k1`` (original indices) and then
        ``k2`` (indices into the k1-sized tensor) keeps ``k1[k2]`` of the original. Groups and the
        target are ``later``'s (unit ids are per coupling analysis, so removed_units is dropped).
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
            provenance={**later.provenance, "steps": str(steps)},
        )

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
            provenance=d.get("provenance", {}),
        )
