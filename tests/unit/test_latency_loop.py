"""The latency loop measures the model a plan makes, re-allocates while the measurement misses the
target, and keeps the best plan: checked with a fake timer whose latency is a deterministic
function of the plan's kept widths (nothing is timed), and a fake latency model (the allocator's
prediction: the sum of the linear layers' output widths)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
import torch
from graphprune.passes import PassContext, parse_pipeline, run_pipeline
from torch import nn

from graphprune.cost import Calibration
from graphprune.cost.profile import Calibrated
from graphprune.cost.runtimes import Runtime, make_runtime
from graphprune.frontends.torch_export import capture
from graphprune.latency_target import LatencySetup
from graphprune.plan import PruningPlan

H = 256  # hidden width: onnxruntime's channel step (16) leaves 16 widths per group
FULL = 2 * H  # units the unpruned model keeps


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, H)
        self.fc2 = nn.Linear(H, H)
        self.fc3 = nn.Linear(H, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@dataclass
class WidthModel:
    """Predicted latency: the linear layers' output widths, summed (uncalibrated)."""

    name: str = "widths"
    calibration: Calibration = field(default_factory=Calibration)

    def node_latency(self, node: Any, shape: Any) -> float:
        return float(shape(node.inputs[1])[0]) if node.op == "linear" else 0.0


def kept(plan: PruningPlan) -> int:
    return sum(g.kept for g in plan.groups)


def widths(module: nn.Module) -> tuple[int, int]:
    return int(module.fc1.out_features), int(module.fc2.out_features)


@dataclass
class FakeTimer:
    """Latency (seconds) = f(units the plan keeps); records every plan it measured, and checks the
    model it is given is the one the plan makes."""

    runtime: Runtime
    f: Callable[[int], float]
    kind: str = "fake"
    seen: list[PruningPlan] = field(default_factory=list)

    def measure(self, plan: PruningPlan, built: Any = None) -> tuple[float, float]:
        assert built is not None and sum(widths(built)) == kept(plan)
        self.seen.append(plan)
        return self.f(FULL), self.f(kept(plan))

    def measure_pair(self, pruned: Any) -> tuple[float, float]:
        raise AssertionError("the loop measures plans")

    def measure_masks(self, masks: Sequence[np.ndarray]) -> list[float]:
        raise AssertionError("the setup is calibrated already")


def run(f: Callable[[int], float], loop: str) -> tuple[PassContext, FakeTimer]:
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(2, 16)
    cap = capture(model, (x,))
    rt = make_runtime("onnxruntime")
    timer = FakeTimer(rt, f)
    raw = FULL + 4.0  # the fake model's prediction for the unpruned model (fc3's 4 outputs included)
    cal = Calibration(scale=f(FULL) / raw)  # calibrated: the prediction of the original is its measurement
    setup = LatencySetup(rt, WidthModel(calibration=cal), Calibrated(cal, [raw], [f(FULL)]), 0, "", timer)  # type: ignore[arg-type]
    ctx = PassContext(model=model, example_inputs=(x,), program=cap.program)
    ctx.latency = setup
    run_pipeline(parse_pipeline(f"couple,allocate{{latency=0.5}},rewrite,verify,{loop}"), cap.graph, ctx)
    return ctx, timer


def first_plan_kept() -> int:
    """Units kept by the plan allocate makes at latency=0.5 under the fake model (no loop)."""
    ctx, timer = run(lambda w: 1e-3 * w / FULL, "latency-loop{iterate=0}")
    assert len(timer.seen) == 1
    return kept(timer.seen[0])


def test_loop_reallocates_until_the_measurement_lands() -> None:
    # the true latency falls slower than the prediction (a fixed overhead): the first plan is
    # too slow, so each re-allocation asks for less, and each lands closer
    ctx, timer = run(lambda w: 1e-3 * (0.25 + 0.75 * w / FULL), "latency-loop{iterate=3,tolerance=0.02}")
    rows = ctx.records.latency_loop["iterations"]  # type: ignore[index]
    assert len(rows) == len(timer.seen) >= 3
    fracs = [r["allocate_fraction"] for r in rows]
    assert fracs[0] == 0.5 and all(b < a for a, b in pairwise(fracs))
    misses = [abs(r["miss"]) for r in rows]
    assert all(b < a for a, b in pairwise(misses))
    assert rows[0]["miss"] > 0.1
    seen = [kept(p) for p in timer.seen]
    assert all(b < a for a, b in pairwise(seen))
    # the best (last) plan is the one kept, and the pruned model is the one it makes
    assert kept(ctx.plan) == seen[-1] == sum(widths(ctx.pruned))
    assert ctx.plan.target == {"latency": 0.5}  # the user's budget, not the last fraction tried
    assert ctx.records.latency_loop["measured_ms"] == rows[-1]["measured_ms"]  # type: ignore[index]
    assert ctx.verification.ok


def test_loop_keeps_the_best_plan_when_a_later_one_is_worse() -> None:
    w0 = first_plan_kept()
    # narrower than the first plan falls off a fast kernel path: slower than the original
    ctx, timer = run(lambda w: 1e-3 * (0.25 + 0.75 * w / FULL) if w >= w0 else 2e-3, "latency-loop{iterate=1}")
    rows = ctx.records.latency_loop["iterations"]  # type: ignore[index]
    assert len(rows) == len(timer.seen) == 2
    assert kept(timer.seen[1]) < kept(timer.seen[0]) == w0
    assert abs(rows[1]["miss"]) > abs(rows[0]["miss"])
    # allocate ran again at the best fraction: the same plan as the first, rewritten and verified
    assert ctx.plan.removed_units == timer.seen[0].removed_units
    assert sum(widths(ctx.pruned)) == w0
    assert ctx.records.latency_loop["measured_ms"] == rows[0]["measured_ms"]  # type: ignore[index]
    assert ctx.verification.ok


def test_the_run_inputs_stay_as_given() -> None:
    ctx, _ = run(lambda w: 1e-3 * w / FULL, "latency-loop{iterate=0}")
    model = ctx.model
    assert isinstance(model, MLP) and widths(model) == (H, H)  # the original is not pruned in place
    with pytest.raises(AttributeError):
        ctx.model = None  # type: ignore[misc]  # read-only: the run's inputs are frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.given.seed = 1  # type: ignore[misc]
