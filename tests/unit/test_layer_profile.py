"""Measured per-layer latency (``analyze --latency``): where each measured unit is attributed.

Oracles: exact per-run medians of a synthetic onnxruntime profile; exact placements of executed
kernels on hand-written source graphs (NCHWc names, fusions that append to a name, generated
helpers, layout reorders); exact module paths from exporter names; on real runs, the exact set of
layers (every conv/linear scope of ResNet-18, every leaf module for the torch runtime), only
layout reorders left unattributed, and rows that add up to the total exactly. No timing value is
compared with anything.
"""

from __future__ import annotations

import json
import textwrap

import onnx
import pytest
import torch
from graphprune.models import build
from onnx import helper
from torch import nn

import graphprune as gp
from graphprune.cli import main
from graphprune.cost.layer_profile import TOP, UNATTRIBUTED, layer_profile
from graphprune.cost.ort_nodes import LAYOUT_OPS, OnnxIndex, anchor, module_path, node_times, place
from graphprune.cost.profile import table_model
from graphprune.cost.runtimes import make_runtime, physical_cores
from graphprune.errors import OptionError
from graphprune.export import save_model
from graphprune.frontends import load_onnx, prepare

# ---------------------------------------------------------------- profile events


def _run(ts: float, dur: float) -> dict:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}


def _kernel(name: str, ts: float, dur: float, op: str = "Conv") -> dict:
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_node_times_medians_per_run_after_warmup():
    events = [
        _run(0, 100), _kernel("a", 1, 50), _kernel("b", 60, 40, "Relu"),  # warm-up: dropped
        _run(200, 100), _kernel("a", 201, 10), _kernel("b", 220, 3, "Relu"), _kernel("b", 230, 4, "Relu"),
        _run(400, 100), _kernel("a", 401, 30), _kernel("b", 420, 1, "Relu"),
        _run(600, 100), _kernel("a", 601, 20),  # b did not run
        _kernel("a", 900, 999),  # outside every run
        {"cat": "Node", "name": "a_fence_before", "ts": 401, "dur": 5},
    ]
    times, ops, runs = node_times(events, warmup=1)
    assert runs == pytest.approx([100e-6] * 3)
    assert ops == {"a": "Conv", "b": "Relu"}
    # a: median(10, 30, 20) us; b: median(3 + 4, 1, 0) us (repeats within a run add up)
    assert times == pytest.approx({"a": 20e-6, "b": 1e-6})


# ---------------------------------------------------------------- placing kernels


def _source() -> OnnxIndex:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, [8, 8, 1, 1], [0.0] * 64)
    m = helper.make_tensor("m", onnx.TensorProto.FLOAT, [8, 8], [0.0] * 64)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["/conv1/Conv_output_0"], name="/conv1/Conv"),
        helper.make_node("Relu", ["/conv1/Conv_output_0"], ["/relu/Relu_output_0"], name="/relu/Relu"),
        helper.make_node("Flatten", ["/relu/Relu_output_0"], ["/Flatten_output_0"], name="/Flatten", axis=2),
        helper.make_node("MatMul", ["/Flatten_output_0", "m"], ["/fc/MatMul_output_0"], name="/fc/MatMul"),
        helper.make_node("Relu", ["/fc/MatMul_output_0"], ["y"], name="/act/Relu"),
    ]
    return OnnxIndex.of(helper.make_graph(nodes, "g", [x], [y], [w, m]))


def test_anchor_rules():
    src = _source()
    assert anchor("/Flatten", "Flatten", src) == "/Flatten"  # kept as is
    # NCHWc Conv+Relu named after the Relu's output: the Conv it runs
    assert anchor("/relu/Relu_output_0_nchwc", "Conv", src) == "/conv1/Conv"
    assert anchor("/relu/Relu_output_0_nchwc", "Relu", src) == "/relu/Relu"
    # fusions that append to the name; FusedConv/FusedMatMul end with the source op
    assert anchor("/fc/MatMul/MatMulAddFusion", "Gemm", src) == "/fc/MatMul"
    assert anchor("/fc/MatMul_new_reshape", "Reshape", src) == "/fc/MatMul"
    assert anchor("fused_0", "FusedConv", src, outputs=["/relu/Relu_output_0"]) == "/conv1/Conv"
    assert anchor("gen_1", "FusedMatMul", src, inputs=["tok", "m"]) == "/fc/MatMul"  # its initializer
    for op in sorted(LAYOUT_OPS):  # layout reorders stand for no source node, whatever their outputs
        assert anchor("ReorderOutput", op, src, outputs=["/relu/Relu_output_0"]) is None
    assert anchor("something_else", "Gemm", src) is None


def test_place_puts_generated_helpers_with_their_neighbours():
    src = _source()
    ops = {"gemm_input_reshape": "Reshape", "/fc/MatMul/MatMulAddFusion": "Gemm", "gemm_output_reshape": "Reshape",
           "ReorderOutput": "ReorderOutput", "orphan": "Identity"}
    io = {
        "ReorderOutput": (["t0"], ["/Flatten_output_0"]),
        "gemm_input_reshape": (["/Flatten_output_0"], ["g_in"]),
        "/fc/MatMul/MatMulAddFusion": (["g_in", "m"], ["g_out"]),
        "gemm_output_reshape": (["g_out"], ["h"]),
        "orphan": (["nowhere"], ["nothing"]),
    }
    assert place(ops, io, src) == {
        "gemm_input_reshape": "/fc/MatMul", "/fc/MatMul/MatMulAddFusion": "/fc/MatMul",
        "gemm_output_reshape": "/fc/MatMul", "ReorderOutput": None, "orphan": None,
    }


@pytest.mark.parametrize(
    ("name", "meta", "path"),
    [
        ("/layer2/layer2.0/downsample/downsample.0/Conv", None, "layer2.0.downsample.0"),
        ("/layer1/layer1.0/relu_1/Relu", None, "layer1.0.relu"),  # second call of layer1.0.relu
        ("/layer1/layer1.0/Add", None, "layer1.0"),
        ("/Flatten", None, ""),
        ("/fc/Gemm", None, "fc"),
        ("/layer1/layer1.0/not_a_module/Conv", None, "layer1.0"),  # deepest module it names
        ("node_conv2d", "['', 'layer1', 'layer1.0', 'conv1', 'conv2d']", "layer1.0.conv1"),  # dynamo exporter
        ("node_conv2d", None, None),  # no scope to read
    ],
)
def test_module_path_from_exporter_names(name, meta, path):
    modules = {"", "fc", "layer1", "layer1.0", "layer1.0.conv1", "layer1.0.relu", "layer2", "layer2.0",
               "layer2.0.downsample", "layer2.0.downsample.0"}
    node = helper.make_node("Conv", ["x"], ["y"], name=name)
    if meta is not None:
        helper.set_metadata_props(node, {"pkg.torch.onnx.name_scopes": meta})
    assert module_path(node, modules) == path


# ---------------------------------------------------------------- whole models


def _check_sums(prof):
    assert prof.rows[-1].layer == UNATTRIBUTED
    assert [r.layer for r in prof.rows].count(UNATTRIBUTED) == 1
    assert all(r.predicted >= 0 and r.measured >= 0 for r in prof.rows)
    assert sum(r.measured for r in prof.rows) == prof.measured_total
    scale, offset = prof.calibration.scale, prof.calibration.offset
    assert sum(r.predicted for r in prof.rows) == pytest.approx(prof.predicted_total - offset, rel=1e-9)
    assert scale > 0 and prof.run_time > 0


@pytest.fixture(scope="module")
def resnet18():
    model, x = build("resnet18_w050")
    return model, x, gp.analyze(model, x)


def test_onnxruntime_rows_cover_every_conv_and_linear_scope(resnet18):
    model, x, a = resnet18
    rt = make_runtime("onnxruntime")
    prof = layer_profile(a.graph, table_model({}, rt), model, x, rt, runs=3, warmup=1)
    _check_sums(prof)
    assert prof.runs == 3
    rows = {r.layer: r for r in prof.rows}
    weighted = {n.scope for n in a.graph.nodes if n.op in ("conv", "linear")}
    assert len(weighted) == 21
    for scope in weighted:
        assert rows[scope].units >= 1, scope  # every conv and the fc ran as (at least) one kernel
    # layers are module scopes of the model (or the top level); what is left over is layout only
    modules = {name for name, _ in model.named_modules()}
    assert set(rows) - {UNATTRIBUTED, TOP} <= modules
    assert set(filter(None, rows[UNATTRIBUTED].op.split("+"))) <= LAYOUT_OPS
    # onnxruntime folds BatchNorm into the conv: no kernel and no predicted time of its own
    assert "layer1.0.bn1" not in rows


def test_torch_rows_one_per_leaf_module(resnet18):
    model, x, a = resnet18
    rt = make_runtime("torch")
    prof = layer_profile(a.graph, table_model({}, rt), model, x, rt, runs=3, warmup=1)
    _check_sums(prof)
    rows = {r.layer: r for r in prof.rows}
    leaves = {name for name, m in model.named_modules() if not list(m.children())}
    assert leaves <= set(rows)
    assert all(rows[leaf].units == 1 for leaf in leaves)
    # a block's own ops (the residual add) are its self time; flatten runs at the top level
    assert rows["layer1.0"].op == "add" and rows[TOP].op == "reshape"
    assert set(rows) == leaves | {"layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
                                  "layer4.0", "layer4.1", TOP, UNATTRIBUTED}
    assert model.training is False and not model._forward_hooks and not model.conv1._forward_pre_hooks


def _tiny() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    return model.eval(), (torch.randn(1, 3, 16, 16),)


def test_onnx_source_rows_are_its_node_names(tmp_path):
    path = tmp_path / "tiny.onnx"
    model, x = _tiny()
    save_model(model, path, x)
    a = gp.analyze(str(path))
    rt = make_runtime("onnxruntime")
    prof = layer_profile(a.graph, table_model({}, rt), prepare(load_onnx(str(path)), {}), None, rt, runs=2, warmup=1)
    _check_sums(prof)
    rows = {r.layer: r for r in prof.rows}
    names = {n.name for n in a.graph.nodes}
    assert set(rows) - {UNATTRIBUTED} <= names
    for n in a.graph.nodes:
        if n.op in ("conv", "gemm", "linear"):
            assert rows[n.name].units >= 1, n.name
    assert set(filter(None, rows[UNATTRIBUTED].op.split("+"))) <= LAYOUT_OPS
    with pytest.raises(OptionError, match="onnxruntime"):
        layer_profile(a.graph, table_model({}, rt), prepare(load_onnx(str(path)), {}), None, make_runtime("torch"))


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize("kind", ["factory", "onnx"])
def test_cli_analyze_latency_writes_measured_rows(kind, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    if kind == "factory":
        (tmp_path / f"tiny_{kind}.py").write_text(textwrap.dedent("""
            import torch
            from torch import nn

            def build():
                torch.manual_seed(0)
                model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))
                return model.eval(), (torch.randn(1, 3, 8, 8),)
        """))
        source, weighted = f"tiny_{kind}:build", {"0", "3"}
    else:
        model, x = _tiny()
        save_model(model, tmp_path / "tiny.onnx", x)
        source = "tiny.onnx"
        weighted = {n.name for n in gp.analyze(source).graph.nodes if n.op in ("conv", "gemm", "linear")}
    assert main(["analyze", source, "--latency", "--json", "out.json"]) == 0
    lat = json.loads((tmp_path / "out.json").read_text())["latency"]
    layers = {r["layer"]: r for r in lat["layers"]}
    assert weighted <= set(layers) and UNATTRIBUTED in layers
    assert all(layers[w]["units"] >= 1 for w in weighted)
    assert all(r["predicted_us"] >= 0 and r["measured_us"] >= 0 for r in lat["layers"])
    assert sum(r["measured_us"] for r in lat["layers"]) == pytest.approx(lat["measured_total_us"])
    assert (lat["runtime"], lat["threads"]) == ("onnxruntime", physical_cores())
    assert lat["measured_model_us"] > 0 and lat["measured_run_us"] > 0
    out = capsys.readouterr().out
    assert "measured us" in out and UNATTRIBUTED in out
    assert (tmp_path / "cache" / "latency-v1.json").exists()
