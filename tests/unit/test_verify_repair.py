"""A failed check costs one group, not the model (issue #11).

A test-only custom op (``gptest::chanroll``: rolls the channel axis by one) is registered with a WRONG
coupling rule (identity: "channel i of the output is channel i of the input") in a fixture that
removes both the op and the rule afterwards. Pruning the conv that feeds it then breaks the oracle;
verify must find that group by bisection, pin it, re-plan to the same budget and pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

import graphprune as gp
from graphprune.errors import VerificationError
from graphprune.rules import COUPLING
from graphprune.rules.common import pass_through
from graphprune.verification import verify_pruned

# the torch frontend names an op without a lowering "aten.<name>" whatever its namespace
OP = "gptest.chanroll"  # a custom op keeps its library name (issue #11)


@pytest.fixture
def wrong_rule() -> Iterator[str]:
    lib = torch.library.Library("gptest", "DEF")
    lib.define("chanroll(Tensor x) -> Tensor")
    lib.impl("chanroll", lambda x: torch.roll(x, 1, 1), "CompositeExplicitAutograd")
    lib.impl("chanroll", lambda x: torch.empty_like(x), "Meta")

    def wrong(node, b):  # the bug under test: chanroll moves channel i to i + 1
        pass_through(b, node.inputs[0], node.output)

    COUPLING[OP] = wrong
    try:
        yield OP
    finally:
        del COUPLING[OP]
        lib._destroy()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.gptest.chanroll(torch.relu(self.c1(x)))
        return self.c3(torch.relu(self.c2(y)))


def test_wrong_rule_pins_its_group_and_replans(wrong_rule: str) -> None:
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    a = gp.analyze(model, x)
    assert {tuple(g["weights"][:1]) for g in a.report["groups"]} == {("c1.weight[0]",), ("c2.weight[0]",)}
    res = gp.prune(model, x, flops=0.6)
    pinned = res.report["pinned_after_check"]
    assert [(p["group"], p["suspect_op"], p["round"]) for p in pinned] == [(0, wrong_rule, 1)]
    assert "c1.weight[0]" in pinned[0]["weights"]
    assert f"{wrong_rule} (" in " ".join(pinned[0]["ops"])
    assert "differs from the masked original" in pinned[0]["reason"]
    # the pinned group kept every channel; the budget went to the other group
    assert res.model.c1.out_channels == 8 and res.model.c2.out_channels < 16
    assert res.report["verification"]["ok"] is True
    assert abs(res.report["achieved"]["flops"] - 0.6) < 0.05
    again = verify_pruned(model, res.model, res.coupling, res.removed, x, random_trials=2)
    assert again.ok


def test_repair_zero_refuses_the_model(wrong_rule: str) -> None:
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    text = "couple,score,allocate{flops=0.6},rewrite,verify{repair=0}"
    with pytest.raises(VerificationError, match="does not match the masked original"):
        gp.prune(model, x, pipeline=text)


def test_correct_rules_pin_nothing() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    res = gp.prune(model, torch.randn(2, 3, 8, 8), flops=0.5)
    assert res.report["pinned_after_check"] == []
    assert not np.isnan(res.report["achieved"]["flops"])



def test_pruned_model_that_raises_is_a_failed_check_not_a_crash() -> None:
    """DeepSeek-V2-style keys (a shared rotary part expanded over the heads, copied into a fresh
    buffer): on the fx route the expand keeps its traced head count, so the pruned GraphModule
    raises inside ``copy_``. That is a failed check: its group is pinned and the model re-planned,
    not an InternalError."""
    from test_rules_families import CopyKeys

    torch.manual_seed(0)
    model, x = CopyKeys().eval(), torch.randn(2, 5, 16)
    res = gp.prune(model, x, pipeline="couple,score,allocate{flops=0.5},rewrite{route=fx},verify")
    pins = res.report["pinned_after_check"]
    assert [p["weights"] for p in pins] == [["q.weight[0]", "kv.weight[0]", "o.weight[1]"]]
    assert res.report["verification"]["ok"]
    torch.testing.assert_close(res.model(x), model(x))  # the heads were the only group: nothing removed
