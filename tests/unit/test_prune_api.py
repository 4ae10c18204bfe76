"""The public prune API on tiny models: tied weights, identity, bad input, rounding, plans.

Oracles: ``res.report["verification"]["ok"]`` (pruned == masked original) on every pruning run;
bit-exact identity when nothing is pruned; object identity of shared Parameters; exact error
types and the option named in their messages; exact channel counts after ``round_to``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune as gp
from graphprune.errors import BudgetError, CaptureError, GraphpruneError, OptionError
from graphprune.frontends.torch_export import capture
from graphprune.plan import PruningPlan


class TiedLM(nn.Module):
    """Embedding whose weight is also the output projection (weight tying)."""

    def __init__(self, vocab: int = 11, dim: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc2(F.relu(self.fc1(self.emb(ids)))))


class SmallConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 24, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(24)
        self.conv3 = nn.Conv2d(24, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.conv3(x)


def _convnet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    m = SmallConvNet().eval()
    with torch.no_grad():  # non-trivial BN statistics so the oracle sees them
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
    return m, torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _ids() -> torch.Tensor:
    return torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))


# -- 13. tied weights ----------------------------------------------------------------------------


def test_tied_weight_is_one_value_with_two_users() -> None:
    torch.manual_seed(0)
    graph = capture(TiedLM().eval(), _ids()).graph
    sources = [v.source for v in graph.weights()]
    assert sources.count("emb.weight") == 1
    assert "head.weight" not in sources
    emb = next(v for v in graph.weights() if v.source == "emb.weight")
    assert sorted(n.op for n in emb.users) == ["embedding", "linear"]


def test_pruning_keeps_tied_weights_tied() -> None:
    torch.manual_seed(0)
    model, ids = TiedLM().eval(), _ids()
    res = gp.prune(model, ids, flops=0.5)
    assert res.report["verification"]["ok"] is True
    m = res.model
    assert m.head.weight is m.emb.weight
    dim = m.emb.weight.shape[1]
    assert dim < 8  # the hidden size shrank, in both users at once
    assert m.emb.embedding_dim == dim and m.head.in_features == dim and m.fc1.in_features == dim
    assert m.fc2.out_features == dim
    with torch.no_grad():
        assert m(ids).shape == model(ids).shape == (2, 5, 11)
    assert res.report["widths"]["emb.weight"]["after"] == [11, dim]
    assert "head.weight" not in res.report["widths"]


# -- 14/15. shapes and the identity ------------------------------------------------------------


def test_prune_nothing_is_the_identity() -> None:
    model, x = _convnet()
    res = gp.prune(model, x, flops=1.0)
    assert res.report["verification"]["ok"] is True
    assert res.report["units_removed"] == 0
    assert res.plan.removed_units == ()
    assert res.report["widths"] == {}
    assert res.report["flops_after"] == res.report["flops_before"]
    assert res.report["achieved"] == {"flops": 1.0}
    assert res.model is not model
    xr = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        for inp in (x, xr):
            assert torch.equal(res.model(inp), model(inp))


def test_prune_does_not_mutate_the_input_model() -> None:
    model, x = _convnet()
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        ref = model(x)
    res = gp.prune(model, x, flops=0.5)
    assert res.report["verification"]["ok"] is True
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.conv1.out_channels == 32 and not model.training
    with torch.no_grad():
        assert torch.equal(model(x), ref)
        assert res.model(x).shape == ref.shape


def test_prune_half_lands_near_the_budget() -> None:
    model, x = _convnet()
    res = gp.prune(model, x, flops=0.5)
    rep = res.report
    assert rep["verification"]["ok"] is True
    assert rep["route"] == "module"
    assert rep["flops_after"] < rep["flops_before"]
    assert abs(rep["achieved"]["flops"] - 0.5) < 0.05
    assert rep["achieved"]["flops"] == pytest.approx(rep["flops_after"] / rep["flops_before"])
    assert gp.count_flops(res.model, x)[0] == pytest.approx(rep["flops_after"])


def test_prune_params_budget() -> None:
    model, x = _convnet()
    res = gp.prune(model, x, params=0.5)
    assert res.report["verification"]["ok"] is True
    assert abs(res.report["achieved"]["params"] - 0.5) < 0.05
    n = sum(p.numel() for p in res.model.parameters())
    assert n == res.report["params_after"]


def test_plan_json_roundtrip() -> None:
    model, x = _convnet()
    res = gp.prune(model, x, flops=0.5, criterion="l1")
    assert res.report["verification"]["ok"] is True
    plan = PruningPlan.from_json(res.plan.to_json())
    assert plan == res.plan
    assert plan.criterion == "l1" and plan.target == {"flops": 0.5}
    kept = plan.kept["conv1.weight"][0]
    assert len(kept) == res.model.conv1.out_channels
    assert plan.kept["conv2.weight"][1] == kept


# -- 16. bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "needle"),
    [
        ({"flops": 0}, BudgetError, "flops"),
        ({"flops": 1.5}, BudgetError, "flops=1.5"),
        ({"flops": -0.5}, BudgetError, "flops"),
        ({"params": 2.0}, BudgetError, "params=2.0"),
        ({"flops": 0.5, "params": 0.5}, BudgetError, "params"),
        ({}, BudgetError, "flops"),
        ({"flops": 0.5, "criterion": "nope"}, OptionError, "'nope'"),
        ({"flops": 0.5, "allocation": "nope"}, OptionError, "'nope'"),
        ({"flops": 0.5, "round_to": 0}, OptionError, "round_to"),
    ],
)
def test_bad_options_raise_named_errors(kwargs: dict, exc: type, needle: str) -> None:
    model, x = _convnet()
    with pytest.raises(exc) as info:
        gp.prune(model, x, **kwargs)
    assert isinstance(info.value, GraphpruneError)
    assert needle in str(info.value)


def test_non_module_is_rejected() -> None:
    with pytest.raises(OptionError, match=r"torch\.nn\.Module"):
        gp.prune(lambda t: t, torch.randn(1, 3), flops=0.5)  # type: ignore[arg-type]


def test_missing_example_inputs_is_rejected() -> None:
    model, _ = _convnet()
    with pytest.raises(OptionError, match="example_inputs"):
        gp.prune(model, flops=0.5)
    with pytest.raises(OptionError, match="example_inputs"):
        gp.analyze(model, None)


def test_wrong_example_inputs_is_a_capture_error() -> None:
    model, _ = _convnet()
    with pytest.raises(CaptureError, match="SmallConvNet"):
        gp.prune(model, torch.randn(1, 4, 8, 8), flops=0.5)
    with pytest.raises(OptionError, match="example_inputs"):
        gp.prune(model, 3, flops=0.5)


# -- 18. round_to --------------------------------------------------------------------------------


@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("flops", [0.4, 0.5])
def test_round_to_8_gives_multiples_of_8(allocation: str, flops: float) -> None:
    model, x = _convnet()
    res = gp.prune(model, x, flops=flops, round_to=8, allocation=allocation)
    assert res.report["verification"]["ok"] is True
    assert res.report["units_removed"] > 0
    m = res.model
    widths = {
        name: (getattr(m, name).out_channels, getattr(model, name).out_channels)
        for name in ("conv1", "conv2")
    }
    for name, (new, old) in widths.items():
        assert new == old or new % 8 == 0, f"{name}: {new} channels (was {old}) with round_to=8 ({widths})"
    assert m.conv3.out_channels == 10  # the model output is pinned
    assert m.bn1.num_features == m.conv1.out_channels == m.conv2.in_channels
