"""Group importance from weight magnitudes (Li et al. 2016 filter norms; Han et al. 2015).

For a unit u (a set of channels removed together) the score is

    s(u) = sum over every weight tensor W and axis a with elements of u:  || W.select(a, i) ||_p^p

summed over all slices i of u in W's axis a (producer rows and consumer columns alike), so a
unit's score counts every tensor that loses a slice when it goes. Scores are then divided by
the mean score of the unit's group, so groups of different scale compete fairly in global
allocation. Criteria are pluggable: each maps (coupling, weights) -> per-unit scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from .coupling import Coupling

__all__ = ["CRITERIA", "Criterion", "magnitude", "normalize_per_group"]

Criterion = Callable[[Coupling, Mapping[str, torch.Tensor]], np.ndarray]


def _slice_norms(powered: torch.Tensor, axis: int) -> np.ndarray:
    dims = [d for d in range(powered.dim()) if d != axis]
    return (powered.sum(dim=dims) if dims else powered).cpu().numpy().astype(np.float64)


def magnitude(coupling: Coupling, weights: Mapping[str, torch.Tensor], p: int = 2) -> np.ndarray:
    """Sum of |w|^p over every weight slice belonging to each unit."""
    scores = np.zeros(coupling.n_units, dtype=np.float64)
    for v in coupling.graph.weights():
        t = weights.get(v.name)
        if t is None or v.kind != "param":
            continue
        powered: torch.Tensor | None = None  # |w|^p, computed once per tensor
        for ax in range(v.rank):
            units = coupling.units_of(v, ax)
            ok = units >= 0
            if not ok.any():
                continue
            if powered is None:
                x = t.detach().float()
                powered = x * x if p == 2 else x.abs().pow(p)
            norms = _slice_norms(powered, ax)
            np.add.at(scores, units[ok], norms[ok])
    return scores


def normalize_per_group(coupling: Coupling, scores: np.ndarray) -> np.ndarray:
    out = scores.astype(np.float64).copy()
    for g in coupling.groups:
        s = out[g.units]
        mean = float(s.mean()) if len(s) else 0.0
        out[g.units] = s / mean if mean > 0 else 1.0
    return out


CRITERIA: dict[str, Criterion] = {
    "l1": lambda c, w: magnitude(c, w, p=1),
    "l2": lambda c, w: magnitude(c, w, p=2),
}
