"""Latency cost model and latency budgets, without timing anything.

Oracles: exact round trips of the JSON table cache and its fingerprint keying; exact values of
multilinear interpolation on planes; the greedy allocator against a brute-force optimum on a
synthetic step-cost table; exact error types naming the option for bad budgets and runtimes,
and exit status 2 from the CLI.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from graphprune.passes import parse_pipeline
from torch import nn

import graphprune as gp
from graphprune.analysis import couple
from graphprune.analysis.knapsack import allocate_greedy, allowed_widths
from graphprune.cli import main
from graphprune.cost import Calibration, OpTable, TableCache
from graphprune.cost.runtimes import make_runtime, ort_fused
from graphprune.cost.signature import grid_points, op_spec
from graphprune.cost.table import cache_dir, fingerprint_key
from graphprune.errors import BudgetError, OptionError
from graphprune.frontends.torch_export import capture

FP = {"cpu": "test-cpu", "cores": 2, "runtime": "onnxruntime", "version": "1.0", "threads": 1, "step": 16}


def test_cache_round_trip_and_keying(tmp_path):
    path = tmp_path / "lat.json"
    c = TableCache(path)
    t = OpTable([[16, 32], [8, 16, 24]], np.arange(6, dtype=float) * 1e-6)
    c.put(FP, "conv-sig", t)
    c.put_calibration(FP, "model-a", {"scale": 1.5, "offset": -1e-5})
    c.save()
    again = TableCache(path)
    got = again.get(FP, "conv-sig")
    assert got is not None and got.axes == t.axes
    np.testing.assert_array_equal(got.values, t.values)
    assert again.calibration(FP, "model-a") == {"scale": 1.5, "offset": -1e-5}
    # another thread count (or runtime, cpu, version) is another device: nothing shared
    assert again.get({**FP, "threads": 2}, "conv-sig") is None
    assert again.get(FP, "other-sig") is None
    assert fingerprint_key(FP) != fingerprint_key({**FP, "runtime": "torch"})
    assert fingerprint_key(FP) == fingerprint_key(dict(reversed(list(FP.items()))))


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert TableCache().path == tmp_path / "c" / "latency-v1.json"


def test_unreadable_cache_names_the_file(tmp_path):
    bad = tmp_path / "lat.json"
    bad.write_text("{not json")
    with pytest.raises(OptionError, match="lat.json"):
        TableCache(bad)


def test_interpolation_is_exact_on_planes():
    a, b = [8, 16, 32], [4, 12]
    f = lambda x, y: 3.0 * x + 0.5 * y + 2.0  # noqa: E731
    t = OpTable([a, b], np.array([[f(x, y) for y in b] for x in a]))
    for x, y in [(8, 4), (12, 8), (24, 12), (31, 5)]:
        assert t((x, y)) == pytest.approx(f(x, y))
    assert t((40, 12)) == pytest.approx(f(40, 12))  # linear extrapolation beyond the grid
    one = OpTable([[16], [4, 8]], np.array([[1.0, 3.0]]))  # single-point axis is ignored
    assert one((7, 6)) == pytest.approx(2.0)
    assert OpTable([[1], [1]], np.array([[0.5]]))((3, 3)) == 0.5


def test_grid_points_and_allowed_widths():
    assert grid_points(64, 16) == [16, 32, 48, 64]
    assert grid_points(200, 16)[0] == 16 and grid_points(200, 16)[-1] == 200 and len(grid_points(200, 16)) == 6
    assert grid_points(3, 16) == [1, 2, 3]


def test_calibration_fit_recovers_a_line():
    raw = [1.0, 2.0, 3.0, 4.0]
    cal = Calibration.fit(raw, [0.5 * r + 0.25 for r in raw])
    assert cal.scale == pytest.approx(0.5) and cal.offset == pytest.approx(0.25)
    assert cal.inverse(cal(3.0)) == pytest.approx(3.0)
    assert Calibration.fit([2.0], [4.0]).scale == pytest.approx(2.0)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _ceil4(n: int) -> int:
    return 4 * math.ceil(n / 4)


@pytest.mark.parametrize("step", [1, 4])
def test_greedy_allocator_hits_brute_force_optimum_on_step_table(step):
    cap = capture(MLP().eval(), (torch.randn(2, 8),))
    coupling = couple(cap.graph)
    assert len(coupling.groups) == 2
    ga = next(g for g in coupling.groups if any("fc1" in n for n, _ in g.spaces))
    gb = next(g for g in coupling.groups if g is not ga)
    scores = np.ones(coupling.n_units)
    scores[ga.units] = 0.1  # hidden-1 channels matter little, hidden-2 channels a lot
    scores[ga.units[0]] = 0.05

    # synthetic latency table: a layer costs its output width rounded up to 4 (a smaller width
    # that is not a multiple of 4 is not faster), fc3 is fixed
    def cost(node, shape):  # type: ignore[no-untyped-def]
        if node.op != "linear":
            return 0.0
        out = shape(node.inputs[1])[0]
        return float(_ceil4(out)) if out != 4 else 0.0

    res = allocate_greedy(coupling, scores, cost, target=24.0, step=step)
    ka = int((~res.removed[ga.units]).sum())
    kb = int((~res.removed[gb.units]).sum())
    # brute force over all widths: most importance kept with cost <= 24 (ties: fewer channels)
    best = max(
        (0.1 * a + 1.0 * b, -a - b, a, b) for a in range(1, 17) for b in range(1, 17) if _ceil4(a) + _ceil4(b) <= 24
    )
    assert (ka, kb) == (best[2], best[3]) == (8, 16)
    assert res.cost_after == 24.0 and res.reachable
    assert not res.removed[ga.units[1:9]].all() or res.removed[ga.units[0]]  # lowest score went first
    assert allowed_widths(ga, 4) == [16, 12, 8, 4]


def test_conv_signature_recovers_stride_and_padding():
    conv = nn.Sequential(nn.Conv2d(3, 16, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=16)).eval()
    g = capture(conv, (torch.randn(1, 3, 32, 32),)).graph
    convs = [n for n in g.nodes if n.op == "conv"]
    s = op_spec(convs[0])
    assert s is not None and s.fixed["strides"] == [2, 2] and s.fixed["pads"] == [5, 5] and s.full == (3, 16)
    d = op_spec(convs[1])
    assert d is not None and d.fixed["groups"] == "per" and d.full == (16,) and d.widths == (16,)
    assert s.key == op_spec(convs[0]).key  # type: ignore[union-attr]
    # onnxruntime folds BatchNorm and Relu into the first conv
    assert [n.op for n in g.nodes if ort_fused(n)] == ["batch_norm", "relu"]


@pytest.mark.parametrize("stride, padding, out_pad", [(2, 0, 0), (2, 1, 1), (3, 1, 0)])
def test_transposed_conv_signature_is_measured_at_the_model_shape(stride, padding, out_pad):
    net = nn.ConvTranspose2d(12, 6, 3, stride=stride, padding=padding, output_padding=out_pad).eval()
    x = torch.randn(1, 12, 9, 9)
    g = capture(net, (x,)).graph
    node = next(n for n in g.nodes if n.op == "conv")
    s = op_spec(node)
    assert s is not None and s.fixed["transposed"] and s.full == (12, 6) and s.fixed["strides"] == [stride, stride]
    assert s.key != op_spec(next(n for n in capture(nn.Conv2d(12, 6, 3), (x,)).graph.nodes if n.op == "conv")).key  # type: ignore[union-attr]
    y = make_runtime("torch").op_call(s, (8, 4))()
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (1, 4, *net(x).shape[2:])
    make_runtime("onnxruntime").op_call(s, (8, 4))()  # a valid ConvTranspose at the same output size


def _small():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval(), (torch.randn(1, 4),)


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"latency": 0.0}, "latency=0.0"),
        ({"latency": -0.5}, "latency=-0.5"),
        ({"latency": 1.5}, "latency=1.5"),
        ({"speedup": 1.0}, "speedup=1.0"),
        ({"speedup": 0.5}, "speedup=0.5"),
        ({"latency_ms": 0.0}, "latency_ms=0.0"),
        ({"latency_ms": -3.0}, "latency_ms=-3.0"),
        ({"latency": 0.5, "flops": 0.5}, "exactly one budget"),
        ({"latency": 0.5, "speedup": 2.0}, "exactly one latency budget"),
    ],
)
def test_bad_latency_budgets_name_the_option(kwargs, option):
    m, x = _small()
    with pytest.raises(BudgetError, match=option):
        gp.prune(m, x, **kwargs)


def test_unknown_runtime_and_threads_name_the_option():
    m, x = _small()
    with pytest.raises(OptionError, match="runtime='tvm'"):
        gp.prune(m, x, speedup=2.0, runtime="tvm")
    with pytest.raises(OptionError, match="threads=-1"):
        gp.prune(m, x, speedup=2.0, threads=-1)
    with pytest.raises(OptionError, match="runtime='tvm'"):
        make_runtime("tvm")


def test_pipeline_latency_options_parse_and_check():
    p = parse_pipeline("allocate{latency-ms=2.5,runtime=torch,threads=2,policy=greedy}")[0]
    assert (p.latency_ms, p.runtime, p.threads, p.policy) == (2.5, "torch", 2, "greedy")
    with pytest.raises(BudgetError, match="latency=1.5"):
        parse_pipeline("allocate{latency=1.5}")[0]._budget()


@pytest.mark.parametrize(
    "argv",
    [
        ["prune", "resnet18_w050", "--speedup", "1", "-o", "x.onnx"],
        ["prune", "resnet18_w050", "--latency", "0", "-o", "x.onnx"],
        ["prune", "resnet18_w050", "--latency-ms", "-2", "-o", "x.onnx"],
        ["prune", "resnet18_w050", "--speedup", "2", "--runtime", "tvm", "-o", "x.onnx"],
        ["prune", "resnet18_w050", "--speedup", "2", "--threads", "0", "-o", "x.onnx"],
        ["profile", "resnet18_w050", "--runtime", "tvm"],
        ["profile", "no_such_model"],
    ],
)
def test_cli_bad_latency_input_exits_2(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
