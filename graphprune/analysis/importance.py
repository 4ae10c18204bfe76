"""Group importance criteria: one interface, each criterion declaring what it needs.

A unit u is a set of channels removed together; it owns slices of several tensors (producer rows,
consumer columns, norm scales, biases). ``Coupling.readers`` marks the consumer-side slices; a
*site* (``calibration.Site``) is a consumer node with input activation X [n, C] (rows flattened).

    weights       l1 / l2    s(u) = sum_{tensors W, slices i of u} ||W.select(a, i)||_p^p   (Li et al. 2016)
                  bn_scale   s(u) = sum over BatchNorm scales of u: |gamma_c|      (Liu et al. 2017)
                  random     s(u) ~ U(0, 1), seeded                                  (baseline)
    activations   wanda      s(u) = sum_{sites, columns j of u} (sum_rows |W[:, j]|) * ||X_j||   (Sun et al. 2023)
                  flap       s(u) = sum_{sites, columns j of u} Var(X_j) * ||W[:, j]||^2          (An et al. 2024)
    gradients     taylor     s(u) = mean_b (sum_{elements of u} w * dL_b/dw)^2       (Molchanov et al. 2019)
                  fisher     s(u) = mean_b sum_{elements of u} w^2 (dL_b/dw)^2       (OBD / Fisher diagonal)

(``||X_j||`` is the root mean square over rows; conv kernels are summed over their spatial
positions. The gradient statistics and their default loss are defined in ``gradients.py``.)
A group no slice of which a data-aware criterion can see (no consumer site with statistics, no
BatchNorm) falls back to l2 for its units, so every group has a meaningful ranking.

Scores are then divided by the mean score of the unit's group (``normalize_per_group``): the
allocator compares units across groups of different scale on a common, unit-mean footing (the
adaptive structure search of FLAP standardizes per layer for the same reason). Loss-based
criteria (taylor, fisher: ``Criterion.loss_based``) estimate the loss change of removing a unit,
one unit of measure in every group, so their raw scores (``normalize_global``: divided by the
overall mean only) are also kept: the latency/FLOPs knapsack, which trades importance against
cost across groups, ranks by them (per-group normalization would throw away which layer matters
more, which is what the knapsack needs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .calibration import ChannelStats, Site
from .coupling import Coupling
from .gradients import GradientScores

__all__ = [
    "CRITERIA",
    "Criterion",
    "CriterionInputs",
    "Need",
    "magnitude",
    "normalize_global",
    "normalize_per_group",
    "normalize_per_kind",
    "NORMALIZERS",
    "register_criterion",
]

Need = Literal["weights", "activations", "gradients"]


@dataclass(frozen=True)
class CriterionInputs:
    """What the score pass collected for a criterion (only what it declared it needs)."""

    coupling: Coupling
    weights: Mapping[str, torch.Tensor]
    sites: Sequence[Site] = ()
    stats: Mapping[str, ChannelStats] | None = None
    gradients: GradientScores | None = None
    seed: int = 0


@dataclass(frozen=True)
class Criterion:
    name: str
    needs: Need
    fn: Callable[[CriterionInputs], np.ndarray]
    gram: bool = False  # also needs the consumers' input Gram matrices (activations criteria only)

    def __call__(self, inputs: CriterionInputs) -> np.ndarray:
        return self.fn(inputs)

    @property
    def loss_based(self) -> bool:
        """Scores estimate the loss change of removing the unit (Taylor, Fisher): one unit of
        measure in every group, so they may be compared across groups as they are."""
        return self.needs == "gradients"


CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, needs: Need, gram: bool = False) -> Callable[[Callable[[CriterionInputs], np.ndarray]], Criterion]:
    def deco(fn: Callable[[CriterionInputs], np.ndarray]) -> Criterion:
        if name in CRITERIA:
            raise ValueError(f"criterion {name!r} registered twice")
        CRITERIA[name] = Criterion(name, needs, fn, gram)
        return CRITERIA[name]

    return deco


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


def normalize_global(scores: np.ndarray) -> np.ndarray:
    """Scores divided by their overall mean (ratios across groups kept; mean 1 for readable sums)."""
    out = scores.astype(np.float64).copy()
    mean = float(out.mean()) if len(out) else 0.0
    return out / mean if mean > 0 else np.ones_like(out)


def normalize_per_group(coupling: Coupling, scores: np.ndarray) -> np.ndarray:
    out = scores.astype(np.float64).copy()
    for g in coupling.groups:
        s = out[g.units]
        mean = float(s.mean()) if len(s) else 0.0
        out[g.units] = s / mean if mean > 0 else 1.0
    return out


def normalize_per_kind(coupling: Coupling, scores: np.ndarray) -> np.ndarray:
    """Scores divided by the mean over every group of the unit's layer kind (the same role in
    repeated blocks: :func:`graphprune.analysis.allocation.layer_kinds`), per group where a group has
    no kind: blocks then compete on their raw scores, heads against heads and FFN channels against
    FFN channels, instead of each group getting mean 1."""
    from .allocation import layer_kinds

    out = normalize_per_group(coupling, scores)
    for kind in layer_kinds(coupling):
        units = np.concatenate([coupling.groups[g].units for g in kind])
        mean = float(scores[units].mean()) if len(units) else 0.0
        out[units] = scores[units] / mean if mean > 0 else 1.0
    return out


#: the score pass's ``normalize=`` choices (``passes/score.py``, the streamed route)
NORMALIZERS: dict[str, Callable[[Coupling, np.ndarray], np.ndarray]] = {
    "group": normalize_per_group, "kind": normalize_per_kind,
}


def _fallback_l2(inp: CriterionInputs, scores: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Groups none of whose units the criterion could see are ranked by l2 magnitude."""
    blind = [g for g in inp.coupling.groups if not covered[g.units].any()]
    if not blind:
        return scores
    l2 = magnitude(inp.coupling, inp.weights, p=2)
    for g in blind:
        scores[g.units] = l2[g.units]
    return scores


@register_criterion("l1", "weights")
def _l1(inp: CriterionInputs) -> np.ndarray:
    return magnitude(inp.coupling, inp.weights, p=1)


@register_criterion("l2", "weights")
def _l2(inp: CriterionInputs) -> np.ndarray:
    return magnitude(inp.coupling, inp.weights, p=2)


@register_criterion("random", "weights")
def _random(inp: CriterionInputs) -> np.ndarray:
    return np.random.default_rng(inp.seed).random(inp.coupling.n_units)


@register_criterion("bn_scale", "weights")
def _bn_scale(inp: CriterionInputs) -> np.ndarray:
    c = inp.coupling
    scores = np.zeros(c.n_units)
    covered = np.zeros(c.n_units, dtype=bool)
    for node in c.graph.nodes:
        gamma = node.input(1) if node.op == "batch_norm" else None
        t = inp.weights.get(gamma.name) if gamma is not None else None
        if gamma is None or t is None or gamma.kind != "param":
            continue
        units = c.units_of(gamma, 0)
        ok = units >= 0
        np.add.at(scores, units[ok], t.detach().abs().double().numpy()[ok])
        covered[units[ok]] = True
    return _fallback_l2(inp, scores, covered)


def _measured_sites(inp: CriterionInputs) -> Iterator[tuple[Site, ChannelStats, torch.Tensor]]:
    """Each consumer site with its calibration statistics and dense weight (sites without either skipped)."""
    for site in inp.sites:
        st = (inp.stats or {}).get(site.node)
        w = inp.weights.get(site.weight.name)
        if st is not None and w is not None:
            yield site, st, w


def _site_columns(inp: CriterionInputs, column_score: Callable[[torch.Tensor, int, ChannelStats], np.ndarray]) -> np.ndarray:
    c = inp.coupling
    scores = np.zeros(c.n_units)
    covered = np.zeros(c.n_units, dtype=bool)
    for site, st, w in _measured_sites(inp):
        if st.sum is None:
            continue
        units = c.units_of(site.weight, site.w_axis)
        ok = units >= 0
        col = column_score(w.detach().double(), site.w_axis % w.dim(), st)
        np.add.at(scores, units[ok], col[ok])
        covered[units[ok]] = True
    return _fallback_l2(inp, scores, covered)


@register_criterion("wanda", "activations")
def _wanda(inp: CriterionInputs) -> np.ndarray:
    return _site_columns(inp, lambda w, ax, st: _slice_norms(w.abs(), ax) * st.rms)


@register_criterion("flap", "activations")
def _flap(inp: CriterionInputs) -> np.ndarray:
    return _site_columns(inp, lambda w, ax, st: _slice_norms(w * w, ax) * st.var)


OBS_RIDGE = 1e-8  # numerical damping only: a ridge lambda charges every unit about lambda * ||w||^2 more


def _obs_site(w: torch.Tensor, site: Site, st: ChannelStats, units: np.ndarray,
              ridge: float = OBS_RIDGE) -> tuple[np.ndarray, np.ndarray] | None:
    """(unit ids, OBS cost) of removing each unit's columns of one consumer, the rest refit: with
    H = G~ + lambda I (the intercept-augmented Gram) and J a unit's columns, tr(W_J (H^-1)_JJ^-1 W_J^T)."""
    from ..rewrite.reconstruct import as_matrix

    mat = as_matrix(site, w.detach())
    if mat is None or st.gram is None or st.gsum is None:
        return None
    d = mat.shape[1]
    per = d // len(units)  # kernel positions per channel (1 for linear)
    h = torch.empty(d + 1, d + 1, dtype=torch.float64)
    h[:d, :d], h[:d, d], h[d, :d], h[d, d] = st.gram, st.gsum, st.gsum, float(max(st.gn, 1))
    lam = max(ridge * float(st.gram.diagonal().mean()), 1e-12)
    h.diagonal()[:d] += lam
    h.diagonal()[d] += 1e-12
    try:
        hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))[:d, :d]
    except RuntimeError:  # not positive definite even with the ridge: leave the site to the others
        return None
    ok = np.flatnonzero(units >= 0)
    ids, cols = np.unique(units[ok], return_inverse=True)
    out = np.zeros(len(ids))
    members = [ok[cols == i] for i in range(len(ids))]
    by_width: dict[int, list[int]] = {}
    for i, m in enumerate(members):
        by_width.setdefault(len(m), []).append(i)
    for width, which in by_width.items():
        ch = np.stack([members[i] for i in which])  # [U, width] channels
        j = torch.as_tensor((ch[:, :, None] * per + np.arange(per)).reshape(len(which), width * per))
        hjj = hinv[j[:, :, None], j[:, None, :]]  # [U, k, k]
        wj = mat.T[j]  # [U, k, out]
        cost = (wj * torch.linalg.solve(hjj, wj)).sum(dim=(1, 2))
        out[which] = cost.clamp(min=0).numpy()
    return ids, out


@register_criterion("obs", "activations", gram=True)
def _obs(inp: CriterionInputs) -> np.ndarray:
    """Structured OBS (ZipLM / SlimGPT style): the output error of removing a unit when the consumer
    is then refit by least squares on the calibration Gram, summed over the unit's consumers."""
    c = inp.coupling
    scores = np.zeros(c.n_units)
    covered = np.zeros(c.n_units, dtype=bool)
    for site, st, w in _measured_sites(inp):
        got = _obs_site(w.detach().double(), site, st, c.units_of(site.weight, site.w_axis))
        if got is None:
            continue
        np.add.at(scores, got[0], got[1])
        covered[got[0]] = True
    return _fallback_l2(inp, scores, covered)


@register_criterion("taylor", "gradients")
def _taylor(inp: CriterionInputs) -> np.ndarray:
    assert inp.gradients is not None
    return inp.gradients.taylor.copy()


@register_criterion("fisher", "gradients")
def _fisher(inp: CriterionInputs) -> np.ndarray:
    assert inp.gradients is not None
    return inp.gradients.fisher.copy()
