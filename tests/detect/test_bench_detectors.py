"""The detector benchmark's own logic (tools/bench_detectors.py), without Torch-Pruning or
torchvision: the equal-FLOPs ratio bisection on a known step function of the ratio, and the
tensor-part timer on a fake clock (nothing is timed: the clock advances one tick per read, so the
expected totals are exact counts of clock reads inside the hooked calls)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from bench_detectors import _TensorPartTimer, bisect_ratio, latencies  # noqa: E402


def _kept(ratio: float) -> float:
    """FLOPs kept by a ratio as a pruner rounds channels: (1 - r)^2 on a grid of 1/256."""
    return round((1 - ratio) * 256) ** 2 / 256**2


def test_bisect_ratio_reaches_target_and_counts_prunes() -> None:
    calls: list[float] = []

    def prune_at(r: float) -> tuple[str, float]:
        calls.append(r)
        return f"model@{r}", _kept(r)

    model, s = bisect_ratio(prune_at, target=0.6, tol=0.005, max_prunes=8)
    assert s["prunes"] == len(calls) == len(s["probes"])
    assert [p["ratio"] for p in s["probes"]] == calls
    assert calls[0] == 0.475  # the middle of [0, 0.95]
    assert abs(s["flops_kept_search"] - 0.6) <= 0.005 and s["within_tol"]
    assert model == f"model@{s['pruning_ratio']}"
    assert s["flops_kept_search"] == _kept(s["pruning_ratio"])
    # each probe after the first halves the bracket on the side the previous probe missed
    for prev, cur in zip(s["probes"], s["probes"][1:], strict=False):
        assert (cur["ratio"] > prev["ratio"]) == (prev["flops_kept"] > 0.6)


def test_bisect_ratio_stops_at_max_prunes_with_the_closest() -> None:
    model, s = bisect_ratio(lambda r: (r, _kept(r)), target=0.6, tol=0.0, max_prunes=3)
    assert s["prunes"] == 3 and not s["within_tol"]
    best = min(s["probes"], key=lambda p: abs(p["flops_kept"] - 0.6))
    assert s["pruning_ratio"] == best["ratio"] == model


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.backbone(x)))


def test_tensor_part_timer_counts_only_the_hooked_calls_and_removes_its_hooks() -> None:
    net, clock = _Net(), _Clock()
    timer = _TensorPartTimer(net, ["backbone", "head"], clock)
    with torch.no_grad():
        net(torch.ones(1, 4))
    # two outermost calls, each one enter and one exit read: 1 tick apiece
    assert timer.total == 2.0
    timer.close()
    assert not net.backbone._forward_hooks and not net.head._forward_pre_hooks
    whole = _TensorPartTimer(net, ["", "head"], clock)  # "" is the whole model; head is nested inside it
    with torch.no_grad():
        net(torch.ones(1, 4))
    assert whole.total == 1.0  # only the outermost call is timed
    whole.close()


def test_latencies_interleave_and_take_medians() -> None:
    nets, clock = {"a": _Net(), "b": _Net()}, _Clock()
    out = latencies(nets, (torch.ones(1, 4),), ["backbone", "head"], warmup=1, runs=3, clock=clock)
    # per call: t0 read, backbone enter/exit, head enter/exit, end read -> whole = 5 ticks, part = 2
    assert out == {"a": {"ms": 5000.0, "tensor_ms": 2000.0}, "b": {"ms": 5000.0, "tensor_ms": 2000.0}}
    assert all(not m.head._forward_hooks for m in nets.values())
