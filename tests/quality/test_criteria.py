"""Criteria on tiny models whose right answer is known by construction.

Oracles: which hidden channel the pruned model lost (read from the composed plan's kept
indices), compared with the channel built to be dead / duplicated / activation-heavy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune as gp
from graphprune.errors import CalibrationError

HIDDEN = 6
# each hidden unit costs 1/6 of the MLP's FLOPs: 0.84 keeps 5 of 6
ONE_UNIT = 0.84


class MLP(nn.Module):
    def __init__(self, d_in: int = 4, hidden: int = HIDDEN, d_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def _mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP().eval()


def _calib(n: int = 8, scale: torch.Tensor | None = None, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = scale if scale is not None else torch.ones(4)
    return [torch.randn(16, 4, generator=g) * s for _ in range(n)]


def _removed_hidden(res: gp.PruneResult) -> set[int]:
    kept = res.plan.kept.get("fc1.weight", {}).get(0, tuple(range(HIDDEN)))
    return set(range(HIDDEN)) - set(kept)


def _dead_channel_model() -> MLP:
    """Hidden channel 2 has the LARGEST weights but a bias that keeps it below zero: always dead."""
    m = _mlp()
    with torch.no_grad():
        m.fc1.weight[2] = 3.0
        m.fc1.bias[2] = -1000.0
        m.fc2.weight[:, 2] = 3.0
    return m


@pytest.mark.parametrize("criterion", ["wanda", "flap", "obs", "taylor", "fisher"])
def test_data_aware_criteria_remove_the_dead_channel(criterion: str) -> None:
    m = _dead_channel_model()
    calib = _calib()
    res = gp.prune(m, calib[0], flops=ONE_UNIT, criterion=criterion, calib=calib)
    assert _removed_hidden(res) == {2}
    assert res.report["verification"]["ok"] is True


def test_l2_keeps_the_dead_channel_with_large_weights() -> None:
    res = gp.prune(_dead_channel_model(), _calib()[0], flops=ONE_UNIT, criterion="l2")
    assert len(_removed_hidden(res)) == 1 and 2 not in _removed_hidden(res)


def test_wanda_keeps_a_channel_with_large_activations_and_small_weights_l2_drops_it() -> None:
    """Channel 0 reads input feature 0 (std 1000) with tiny weights: small norm, large effect."""
    m = _mlp()
    with torch.no_grad():
        m.fc1.weight.uniform_(0.5, 1.0)
        m.fc1.weight[:, 0] = 0.0
        m.fc1.weight[0] = torch.tensor([0.05, 0.0, 0.0, 0.0])
        m.fc1.bias.zero_()
        m.fc2.weight.uniform_(0.5, 1.0)
        m.fc2.weight[:, 0] = 0.05
    calib = _calib(scale=torch.tensor([1000.0, 1.0, 1.0, 1.0]))
    l2 = gp.prune(m, calib[0], flops=ONE_UNIT, criterion="l2")
    wanda = gp.prune(m, calib[0], flops=ONE_UNIT, criterion="wanda", calib=calib)
    assert _removed_hidden(l2) == {0}
    assert 0 not in _removed_hidden(wanda) and len(_removed_hidden(wanda)) == 1


def test_duplicated_channel_is_removed_and_lsq_loses_nothing() -> None:
    """Channels 1 and 4 are identical with small weights; removing one and refitting the consumer
    (its column absorbed by the twin) must reproduce the dense outputs."""
    m = _mlp()
    with torch.no_grad():
        m.fc1.weight[4] = m.fc1.weight[1] = torch.tensor([0.1, -0.1, 0.1, 0.1])
        m.fc1.bias[4] = m.fc1.bias[1] = 0.05
    calib = _calib()
    text = f"couple,score{{criterion=l2}},allocate{{flops={ONE_UNIT}}},rewrite,verify,reconstruct-lsq{{ridge=1e-9}}"
    res = gp.prune(m, calib[0], pipeline=text, calib=calib)
    assert len(_removed_hidden(res) & {1, 4}) == 1
    x = _calib(1, seed=9)[0]
    with torch.no_grad():
        assert torch.allclose(res.model(x), m(x), atol=1e-3)


def test_obs_removes_a_twin_with_the_largest_weights_that_wanda_keeps() -> None:
    """Channels 1 and 4 are identical and the strongest: dropping one costs nothing once the consumer
    is refit (its twin takes its column), which only obs sees; wanda drops a weak channel instead."""
    m = _mlp()
    with torch.no_grad():
        m.fc1.weight[4] = m.fc1.weight[1] = torch.tensor([2.0, -2.0, 2.0, 2.0])
        m.fc1.bias[4] = m.fc1.bias[1] = 0.5
        m.fc2.weight[:, 1] = m.fc2.weight[:, 4] = 2.0
        m.fc1.bias[[0, 2, 3, 5]] = 3.0  # every other channel active (none is free to drop)
    calib = _calib()
    text = f"allocate{{flops={ONE_UNIT}}},rewrite,verify,reconstruct-lsq{{ridge=1e-9}}"
    obs = gp.prune(m, calib[0], pipeline="couple,score{criterion=obs}," + text, calib=calib)
    wanda = gp.prune(m, calib[0], pipeline="couple,score{criterion=wanda}," + text, calib=calib)
    assert len(_removed_hidden(obs)) == 1 and _removed_hidden(obs) <= {1, 4}
    assert len(_removed_hidden(wanda)) == 1 and not _removed_hidden(wanda) & {1, 4}
    x = _calib(1, seed=9)[0]
    with torch.no_grad():
        assert torch.allclose(obs.model(x), m(x), atol=1e-3)


def test_obs_cost_is_the_refit_error_of_removing_the_unit() -> None:
    """Per unit, the obs score equals the least-squares error of the consumer refit without that
    unit's columns, measured against the consumer's dense outputs with the same regularized Gram
    (closed form vs. an explicit constrained solve, for a one-column unit and a two-column unit)."""
    from graphprune.analysis.calibration import ChannelStats, Site
    from graphprune.analysis.importance import _obs_site
    from graphprune.ir import Value

    g = torch.Generator().manual_seed(3)
    z = torch.randn(200, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    w = torch.randn(3, 5, generator=g, dtype=torch.float64)
    gram, gsum = z.T @ z, z.sum(0)
    st = ChannelStats(n=200, gram=gram, gsum=gsum, gn=200)
    val = Value("w", (3, 5), "float32", kind="param")
    site = Site("fc", "linear", val, 1, val, 0, 1, None, out_axis=0)
    units = np.array([0, 1, 1, 2, 3])
    ids, cost = _obs_site(w, site, st, units, ridge=0.0)
    assert list(ids) == [0, 1, 2, 3]
    za = torch.cat([z, torch.ones(200, 1, dtype=torch.float64)], 1)
    target = z @ w.T
    for u, c in zip(ids, cost, strict=True):
        keep = [j for j in range(5) if units[j] != u] + [5]
        sol = torch.linalg.lstsq(za[:, keep], target).solution
        err = float(((za[:, keep] @ sol - target) ** 2).sum())
        assert np.isclose(c, err, rtol=1e-6, atol=1e-8)


def test_bn_scale_removes_the_channel_whose_gamma_is_zero() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        m[0].weight[1] *= 10.0
        m[1].weight.copy_(torch.tensor([1.0, 0.0, 1.0, 1.0]))
    res = gp.prune(m, torch.randn(1, 3, 6, 6), flops=0.8, criterion="bn_scale")
    kept = res.plan.kept["0.weight"][0]
    assert 1 not in kept and len(kept) == 3


def test_random_is_seeded() -> None:
    a = gp.prune(_mlp(), _calib()[0], flops=0.5, criterion="random", seed=3)
    b = gp.prune(_mlp(), _calib()[0], flops=0.5, criterion="random", seed=3)
    assert a.plan.kept == b.plan.kept


def test_taylor_with_a_user_loss() -> None:
    m = _dead_channel_model()
    calib = _calib()
    res = gp.prune(m, calib[0], flops=ONE_UNIT, criterion="taylor", calib=calib,
                   loss=lambda out, batch: (out**2).mean())
    assert _removed_hidden(res) == {2}


@pytest.mark.parametrize("criterion", ["wanda", "flap", "obs", "taylor", "fisher"])
def test_data_aware_criterion_without_calib_names_the_option(criterion: str) -> None:
    with pytest.raises(CalibrationError, match=rf"(?s)'{criterion}'.*calib="):
        gp.prune(_mlp(), _calib()[0], flops=0.5, criterion=criterion)


def test_calib_batches_must_match_the_example_shapes() -> None:
    # the batch size may differ (tests/unit/test_calib_shapes.py); the feature size may not
    with pytest.raises(CalibrationError, match="batch 1"):
        gp.prune(_mlp(), _calib()[0], flops=0.5, criterion="wanda", calib=[_calib()[0], torch.randn(3, 5)])
    assert gp.prune(_mlp(), _calib()[0], flops=0.5, criterion="wanda", calib=[_calib()[0], torch.randn(3, 4)]).report[
        "verification"]["ok"]
    with pytest.raises(CalibrationError, match="empty"):
        gp.prune(_mlp(), _calib()[0], flops=0.5, criterion="wanda", calib=[])


def test_scores_are_normalized_per_group() -> None:
    from graphprune.passes.score import weights_of

    from graphprune.analysis import CRITERIA, CriterionInputs, couple, normalize_per_group
    from graphprune.frontends.torch_export import capture

    cap = capture(_mlp(), _calib()[0])
    c = couple(cap.graph)
    raw = CRITERIA["l1"](CriterionInputs(c, weights_of(cap.graph, _mlp())))
    norm = normalize_per_group(c, raw)
    for g in c.groups:
        assert np.isclose(norm[g.units].mean(), 1.0)


class _Blocks(nn.Module):
    """Two residual MLP blocks of one kind (``layers.#.fc1``/``layers.#.fc2``)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MLP(4, HIDDEN, 4) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


def test_scores_normalized_per_kind_keep_the_ratio_between_blocks() -> None:
    from graphprune.passes.score import weights_of

    from graphprune.analysis import CRITERIA, CriterionInputs, couple, normalize_per_kind
    from graphprune.analysis.allocation import layer_kinds
    from graphprune.frontends.torch_export import capture

    torch.manual_seed(0)
    m = _Blocks().eval()
    with torch.no_grad():
        m.layers[1].fc1.weight.mul_(5.0)  # block 1's channels weigh more
    cap = capture(m, _calib()[0])
    c = couple(cap.graph)
    raw = CRITERIA["l1"](CriterionInputs(c, weights_of(cap.graph, m)))
    norm = normalize_per_kind(c, raw)
    kinds = layer_kinds(c)
    assert len(kinds) == 1 and len(kinds[0]) == 2
    units = np.concatenate([c.groups[g].units for g in kinds[0]])
    assert np.isclose(norm[units].mean(), 1.0)
    assert np.allclose(norm[units] / raw[units], norm[units][0] / raw[units][0])  # one scale for the whole kind
    res = gp.prune(m, _calib()[0], calib=_calib(), pipeline="couple,score{criterion=l1,normalize=kind},"
                   "allocate{flops=0.75,policy=global,round-to=1},rewrite,verify")
    kept = [len(res.plan.kept.get(f"layers.{i}.fc1.weight", {}).get(0, range(HIDDEN))) for i in range(2)]
    assert kept[1] == HIDDEN and kept[0] < HIDDEN  # the light block pays for the whole budget


def test_unknown_score_normalization_names_the_option() -> None:
    from graphprune.errors import OptionError

    with pytest.raises(OptionError, match="normalize='layer'.*group or kind"):
        gp.prune(_mlp(), _calib()[0], pipeline="couple,score{criterion=l2,normalize=layer},allocate{flops=0.5},rewrite")
