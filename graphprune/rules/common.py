"""Helpers shared by rule modules: pass-through and broadcasting ties, numel."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..ir import Value

if TYPE_CHECKING:
    from ..analysis.coupling import CouplingBuilder

__all__ = ["broadcast_ties", "numel", "pass_through"]


def numel(shape: Iterable[int]) -> int:
    return math.prod(shape)


def pass_through(b: CouplingBuilder, src: Value, dst: Value, skip: Iterable[int] = ()) -> None:
    """Identity-tie axis i of ``src`` to axis i of ``dst`` (same rank), except ``skip`` axes."""
    skipped = {s % src.rank for s in skip}
    for ax in range(min(src.rank, dst.rank)):
        if ax not in skipped and src.shape[ax] == dst.shape[ax]:
            b.same(src, ax, dst, ax)


def broadcast_ties(b: CouplingBuilder, inputs: Iterable[Value | None], out: Value) -> None:
    """Numpy broadcasting: align axes from the right; size-1 (broadcast) axes tie nothing."""
    for x in inputs:
        if x is None:
            continue
        lead = out.rank - x.rank
        for ax in range(x.rank):
            if x.shape[ax] == out.shape[lead + ax] and x.shape[ax] != 1:
                b.same(x, ax, out, lead + ax)
