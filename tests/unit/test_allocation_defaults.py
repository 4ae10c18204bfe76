"""Which scores the knapsack ranks by, and the default allocation per budget and criterion."""

from __future__ import annotations

import numpy as np
import torch
from graphprune.passes import PassContext, parse_pipeline, run_pipeline
from torch import nn

from graphprune.analysis import CRITERIA
from graphprune.api import default_allocation
from graphprune.frontends.torch_export import capture


def _net() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    return net, torch.randn(4, 6)


def test_loss_based_criteria_keep_scores_comparable_across_groups() -> None:
    assert {n for n, c in CRITERIA.items() if c.loss_based} == {"taylor", "fisher"}
    net, x = _net()
    calib = [torch.randn(4, 6) for _ in range(3)]
    for crit in ("taylor", "l2"):
        cap = capture(net, (x,))
        ctx = PassContext(model=net, example_inputs=(x,), program=cap.program, calib=calib)
        run_pipeline(parse_pipeline(f"couple,score{{criterion={crit}}}"), cap.graph, ctx)
        for g in ctx.coupling.groups:  # per-group normalization: mean 1 in every group
            assert np.isclose(ctx.scores[g.units].mean(), 1.0)
        if crit == "l2":
            assert ctx.loss_scores is None
            continue
        assert np.isclose(ctx.loss_scores.mean(), 1.0)
        a, b = ctx.coupling.groups
        # the raw ratios survive: same order within each group, and the groups' means differ
        for g in (a, b):
            assert (np.argsort(ctx.loss_scores[g.units]) == np.argsort(ctx.scores[g.units])).all()
        assert not np.isclose(ctx.loss_scores[a.units].mean(), ctx.loss_scores[b.units].mean())


def test_greedy_ranks_by_loss_scores() -> None:
    from graphprune.analysis.knapsack import allocate_greedy
    from graphprune.cost import count
    from graphprune.rules import COST

    net, x = _net()
    calib = [torch.randn(4, 6) for _ in range(3)]
    cap = capture(net, (x,))
    ctx = PassContext(model=net, example_inputs=(x,), program=cap.program, calib=calib)
    run_pipeline(parse_pipeline("couple,score{criterion=taylor},allocate{flops=0.6,policy=greedy}"), cap.graph, ctx)

    def flops(n, s):  # type: ignore[no-untyped-def]
        return float(COST[n.op](n, s)) if n.op in COST else 0.0

    target = 0.6 * count(cap.graph).flops
    by_loss = allocate_greedy(ctx.coupling, ctx.loss_scores, flops, target).removed
    by_group = allocate_greedy(ctx.coupling, ctx.scores, flops, target).removed
    assert (ctx.allocation.removed == by_loss).all()
    assert not (by_loss == by_group).all()  # the choice matters on this net


def test_default_allocation() -> None:
    assert default_allocation(True, "taylor") == "greedy"
    assert default_allocation(True, "fisher") == "greedy"
    assert default_allocation(True, "l2") == "uniform"
    assert default_allocation(True, "wanda") == "uniform"
    assert default_allocation(False, "taylor") == "uniform"
    assert default_allocation(False, "l2") == "uniform"


def test_default_allocation_follows_the_calibrated_recipe() -> None:
    from graphprune.api import default_recipe

    # calib= and nothing chosen: the recipe's global ranking, for FLOPs and latency budgets alike
    recipe = default_recipe(None, None, None, calibrated=True)
    assert recipe.allocation == "global"
    # a criterion chosen by the user: default_allocation decides, as before
    chosen = default_recipe("taylor", None, None, calibrated=True)
    assert chosen.allocation is None and default_allocation(True, chosen.criterion) == "greedy"
    # an allocation chosen by the user always wins
    assert default_recipe(None, None, "uniform", calibrated=True).allocation == "uniform"
    # no calibration data: l2, and default_allocation's uniform
    plain = default_recipe(None, None, None, calibrated=False)
    assert plain.allocation is None and default_allocation(False, plain.criterion) == "uniform"
