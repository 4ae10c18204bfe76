"""Decide once, apply anywhere: a plan made on the PyTorch route replays on the model's ONNX
export (both exporters: the TorchScript one keeps parameter names, the dynamo one folds BatchNorm
into the conv and stores linear weights transposed under new names), on another checkpoint of the
same architecture, and from the CLI; a plan for another graph is refused with one line.

Oracles: the replayed ONNX model run in onnxruntime equals the PyTorch-pruned model on the same
inputs; every weight both graphs name keeps the same indices; the second checkpoint keeps exactly
the plan's indices and matches its own masked original (the library's verification, re-checked
here against an index-select reference); exact error text and exit status 2 with nothing written.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from graphprune.models import build
from torch import nn

import graphprune as gp
from graphprune.cli import main
from graphprune.errors import PlanError
from graphprune.ir import Node, Value
from graphprune.plan import PruningPlan
from graphprune.rules import reads


class ConvBN(nn.Module):
    def __init__(self, width: int = 48) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.conv3, self.fc = nn.Conv2d(32, width, 1), nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = h + torch.relu(self.bn2(self.conv2(h)))
        return self.fc(torch.relu(self.conv3(h)).mean(dim=(2, 3)))


def convbn(seed: int = 0, width: int = 48) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    m = ConvBN(width)
    for bn in (m.bn1, m.bn2):  # non-trivial statistics, so folding BN changes the conv weights
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    return m.eval(), torch.randn(2, 3, 16, 16)


def _export(model: nn.Module, args: tuple[torch.Tensor, ...], path: Path, dynamo: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=dynamo, do_constant_folding=False)


def _ort(model, args: tuple[torch.Tensor, ...]) -> np.ndarray:  # type: ignore[no-untyped-def]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), args, strict=True)})[0]


def _replay_on_export(model: nn.Module, args: tuple[torch.Tensor, ...], plan: PruningPlan, pruned: nn.Module,
                      path: Path, dynamo: bool) -> gp.PruneResult:
    _export(model, args, path, dynamo)
    res = gp.apply(str(path), plan)
    assert res.report["verification"]["ok"], res.report["verification"]
    common = set(res.plan.kept) & set(plan.kept)
    assert common, "no weight of the plan was matched by name"
    diff = [k for k in common if res.plan.kept[k] != plan.kept[k]]
    assert not diff, f"different kept channels for {diff[:3]}"
    with torch.no_grad():
        want = pruned(*args).numpy()
    np.testing.assert_allclose(_ort(res.model, args), want, rtol=1e-4, atol=1e-5)
    return res


@pytest.mark.parametrize("dynamo", [False, True])
def test_cnn_plan_replays_on_its_onnx_export(tmp_path: Path, dynamo: bool) -> None:
    model, x = convbn()
    res = gp.prune(model, x, flops=0.5, round_to=1)
    assert res.plan.kept, "nothing was pruned"
    plan = PruningPlan.from_json(res.plan.to_json())  # what a later process reads back
    rep = _replay_on_export(model, (x,), plan, res.model, tmp_path / "m.onnx", dynamo).report
    assert rep["units_removed"] == res.report["units_removed"]
    folded = [n for n in rep["notes"] if "per-channel vector" in n]
    assert bool(folded) == dynamo  # the dynamo exporter folds eval-mode BatchNorm into the convs


def test_transformer_plan_replays_on_dynamo_export_with_renamed_transposed_weights(tmp_path: Path) -> None:
    model, (ids, mask) = build("bert_tiny", num_layers=1, vocab_size=100)
    res = gp.prune(model, (ids, mask), flops=0.6, round_to=1)
    assert "layers.0.fc1.weight" in res.plan.kept
    out = _replay_on_export(model, (ids, mask), res.plan, res.model, tmp_path / "bert.onnx", dynamo=True)
    # fc1's weight is an initializer of another name, stored transposed: matched by op order
    assert "layers.0.fc1.weight" not in out.plan.kept
    assert sorted(len(v[1]) for v in out.plan.kept.values() if 1 in v) == \
        sorted(len(v[1]) for v in res.plan.kept.values() if 1 in v)


def test_plan_applies_to_another_checkpoint(tmp_path: Path) -> None:
    model, x = convbn(seed=0)
    res = gp.prune(model, x, flops=0.5, round_to=1)
    res.plan.save(tmp_path / "plan.json")
    other, _ = convbn(seed=1)
    got = gp.apply(other, tmp_path / "plan.json", x)
    assert got.plan.kept == res.plan.kept
    assert got.report["verification"]["ok"]
    # reference: index-select the other checkpoint's weights by the plan, compare weight by weight
    state = dict(other.state_dict())
    pruned = got.model.state_dict()
    for name, axes in res.plan.kept.items():
        ref = state[name]
        for ax, idx in axes.items():
            ref = ref.index_select(ax, torch.as_tensor(idx))
        assert torch.equal(pruned[name], ref), name
    assert {k: tuple(v.shape) for k, v in pruned.items()} == \
        {k: tuple(v.shape) for k, v in res.model.state_dict().items()}


def test_plan_for_another_graph_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, x = convbn()
    res = gp.prune(model, x, flops=0.5, round_to=1)
    wider, _ = convbn(width=64)
    with pytest.raises(PlanError) as exc:
        gp.apply(wider, res.plan, x)
    assert str(exc.value) == ("plan for 'ConvBN' does not fit model 'ConvBN': weight 'conv3.weight' is 48x32x1x1 in "
                              "the plan's graph but 64x32x1x1 in model 'ConvBN'; apply a plan made for this architecture")
    plan = tmp_path / "plan.json"
    res.plan.save(plan)
    assert main(["apply", "_cli_models:convnet", str(plan), "-o", str(tmp_path / "out.pt")]) == 2
    assert capsys.readouterr().err.strip() == (
        "graphprune: error: plan for 'ConvBN' does not fit model 'ConvNet': weight 'fc.weight' is 10x48 in the plan's "
        "graph but 10x32 in model 'ConvNet'; apply a plan made for this architecture")
    assert not (tmp_path / "out.pt").exists()
    (tmp_path / "bad.json").write_text("{}")
    assert main(["apply", "_cli_models:convnet", str(tmp_path / "bad.json"), "-o", str(tmp_path / "o.pt")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"graphprune: error: plan {tmp_path / 'bad.json'}: not a graphprune plan (KeyError: 'groups'); give the "
        "plan.json that graphprune prune --plan-out wrote")


def test_cli_prune_plan_out_then_apply_to_the_onnx_export(tmp_path: Path) -> None:
    import _cli_models

    plan, rep = tmp_path / "plan.json", tmp_path / "r.json"
    assert main(["prune", "_cli_models:convnet", "--flops", "0.5", "-o", str(tmp_path / "small.pt"),
                 "--plan-out", str(plan)]) == 0
    model, x = _cli_models.convnet()
    _export(model, (x,), tmp_path / "convnet.onnx", dynamo=False)
    assert main(["apply", str(tmp_path / "convnet.onnx"), str(plan), "-o", str(tmp_path / "small.onnx"),
                 "--report", str(rep)]) == 0
    data = json.loads(rep.read_text())
    assert data["verification"]["ok"] and data["plan"]["graph"]["route"] == "torch"
    small = torch.load(tmp_path / "small.pt", weights_only=False)
    import onnx

    with torch.no_grad():
        np.testing.assert_allclose(_ort(onnx.load(str(tmp_path / "small.onnx")), (x,)), small(x).numpy(),
                                   rtol=1e-4, atol=1e-5)


def test_reader_axes_table() -> None:
    """Which operand and axis each contraction reads (exact, per op)."""
    x, w = Value("x", (2, 8, 5, 5)), Value("w", (16, 8, 3, 3), kind="param")
    y = Value("y", (2, 16, 3, 3))
    r = reads(Node("c", "conv", [x, w], [y], attrs={"groups": 1}))
    assert r is not None and (r.lhs, r.rhs, r.rhs_out, r.y_axis, r.bias, r.dense) == ((0, 1), (1, 1), 0, 1, 2, True)
    r = reads(Node("t", "conv", [x, w], [y], attrs={"groups": 1, "transposed": True}))
    assert r is not None and (r.rhs, r.rhs_out) == ((1, 0), 1)
    assert not reads(Node("d", "conv", [x, w], [y], attrs={"groups": 8})).dense  # type: ignore[union-attr]
    a, b, z = Value("a", (4, 3, 8)), Value("b", (8, 6), kind="param"), Value("z", (4, 3, 6))
    r = reads(Node("m", "matmul", [a, b], [z]))
    assert r is not None and (r.lhs, r.rhs, r.rhs_out, r.y_axis, r.either) == ((0, 2), (1, 0), 1, 2, True)
    r = reads(Node("l", "linear", [a, Value("wl", (6, 8), kind="param")], [z]))
    assert r is not None and (r.lhs, r.rhs, r.rhs_out, r.y_axis) == ((0, 2), (1, 1), 0, 2)
    r = reads(Node("g", "gemm", [Value("a2", (4, 8)), Value("b2", (6, 8), kind="param")], [Value("z2", (4, 6))],
                   attrs={"trans_b": 1}))
    assert r is not None and (r.lhs, r.rhs, r.rhs_out) == ((0, 1), (1, 1), 0)
    assert reads(Node("v", "matmul", [Value("u", (8,)), b], [Value("o", (6,))])) is None
    assert reads(Node("r", "relu", [a], [Value("q", (4, 3, 8))])) is None


def test_latency_loop_needs_a_latency_budget() -> None:
    """The closed loop is a pass; in a pipeline without a latency budget it says what it needs."""
    model, x = convbn()
    with pytest.raises(gp.GraphpruneError) as exc:
        gp.prune(model, x, pipeline="couple,score,allocate{flops=0.5},rewrite,latency-loop")
    assert str(exc.value) == ("pass 'latency-loop' needs allocate with a latency budget (latency= or latency-ms=) "
                              "and rewrite to run first")


def test_replay_pass_in_a_pipeline_string(tmp_path: Path) -> None:
    """replay{plan=PATH} is a pass like any other: the same model replays to the same channels."""
    model, x = convbn()
    res = gp.prune(model, x, flops=0.5, round_to=1)
    res.plan.save(tmp_path / "plan.json")
    again = gp.prune(model, x, pipeline=f"couple,replay{{plan={tmp_path / 'plan.json'}}},rewrite,verify")
    assert again.plan.kept == res.plan.kept and again.plan.graph == res.plan.graph
    assert again.report["verification"]["ok"]
