"""Benchmark graphprune against onnxsim's structured pruning on the same ONNX files, in one process.

For each model of ``graphprune.models.MODELS`` (or ``--models a,b``):

1. Export it once with ``torch.onnx.export(model, example_inputs, path, dynamo=False)`` (TorchScript
   exporter, static shapes, weights inside the file). Both tools read that same file.
2. **graphprune**: ``gp.prune(path, flops=--target)`` (default criterion ``l2``, allocation
   ``uniform``), timed as one call; the call includes graphprune's own verification against its
   masked-original oracle (``report["verification"]``: ok, max_abs_err).
3. **onnxsim** (``onnxsim.apply_structured_pruning(path, sparsity=s, importance_norm="l2",
   global_sparsity=False)``): ``sparsity`` is the fraction of output channels removed from every
   producer->consumer chain onnxsim matches, not a FLOPs budget, so ``s`` is bisected on
   ``[0, --sim-max]`` (``--bisect-iters`` steps) to land its FLOPs as close as possible to
   ``--target`` of the original; every evaluated ``s`` is kept and the one whose FLOPs ratio is
   nearest the target wins (ties: the smaller ``s``). The reported wall time is one call at the
   chosen ``s``; ``search_s`` is the whole bisection (pruning + counting).

Measured for the dense export and both outputs, with ONE counter per model: ``gp.count_flops``
(graphprune's conventions) when it can analyze all three models, else a fallback that counts
Conv/ConvTranspose/Gemm/MatMul MACs from ``onnx.shape_inference`` (the ``counter`` field says
which; the fallback's ratio is always recorded too, as a cross-check, in ``macs_ratio_si``):

* ran: the pruning call returned without an exception (the message is recorded otherwise);
* valid: ``onnx.checker.check_model(m, full_check=True)``;
* shapes: onnxruntime output shapes equal the dense model's;
* oracle: graphprune's own verification result; onnxsim has none (``n/a``);
* rel.diff: ``||y - y_dense|| / ||y_dense||`` (max over float outputs) on the same seeded random
  inputs (float inputs: standard normal; integer inputs, e.g. token ids: the factory's example
  values). Structured pruning without fine-tuning changes outputs, so this is informative only;
* FLOPs and params ratios (pruned / dense);
* layers changed: how many weighted Conv/ConvTranspose/Gemm/MatMul nodes (matched by node name)
  have a different weight shape than in the dense export;
* onnxruntime CPU latency: ``intra_op_num_threads=--threads`` (default 1), one session per model,
  ORT's default graph optimizations (``ORT_ENABLE_ALL``),
  ``--warmup`` runs each, then ``--runs`` rounds that run dense / graphprune / onnxsim once each,
  in an order rotated every round (interleaved). Two medians per model: wall time
  (``perf_counter``) and the CPU time of the calling thread (``time.thread_time``; with one
  intra-op thread onnxruntime runs on the caller, so this excludes the time the thread sat
  preempted on a loaded machine -- the table's "cpu ms"; speedups are dense / pruned);
* wall time of the pruning call.

``--gp-round-to N`` passes ``round_to=N`` to graphprune (default 1, i.e. off: onnxsim has no
such option). An error in one model or one tool is recorded in its row and the run goes on;
``--timeout`` bounds each tool per model (SIGALRM).

Usage::

    . .venv/bin/activate && pip install onnxsim==0.8.1
    python tools/bench_vs_onnxsim.py --json docs/bench_vs_onnxsim.json
    python tools/bench_vs_onnxsim.py --models resnet18,vit_tiny --runs 20

This file lives in tools/: it is never imported by the graphprune package.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchutil import short_error, time_limit  # noqa: E402  (tools/benchutil.py)

TOOLS = ("graphprune", "onnxsim")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# ------------------------------------------------------------------------------------ utilities


class CountError(Exception):
    """``gp.count_flops`` failed on a model (as opposed to the pruning call failing)."""


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


# ------------------------------------------------------------------------- fallback MAC counter


def _shape_map(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Tensor name -> static shape (None for unknown dims) after onnx shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int | None]] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _ort_shapes(
    model: onnx.ModelProto, names: list[str], feeds: dict[str, np.ndarray]
) -> dict[str, list[int]]:
    """Real shapes of ``names`` from one onnxruntime run that exposes them as extra graph outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    sess = make_session(m, 1)
    outs = sess.run(names, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})
    return {n: list(o.shape) for n, o in zip(names, outs, strict=True)}


def _prod(dims: list[int | None]) -> int | None:
    out = 1
    for d in dims:
        if d is None:
            return None
        out *= d
    return out


def shape_inference_macs(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray] | None = None
) -> tuple[int, int, int, int]:
    """(MACs of Conv/ConvTranspose/Gemm/MatMul, params, tensors filled by onnxruntime, nodes unknown).

    Top-level graph only. Conv: out elements * prod(W.shape[1:]); ConvTranspose: input elements *
    prod(W.shape[1:]); Gemm/MatMul: out elements * reduction length. Params: elements of all
    floating-point initializers. Shapes come from ``onnx.shape_inference`` (``data_prop=True``);
    the weighted nodes' tensors it leaves unresolved (e.g. behind a Reshape whose target shape is
    computed at run time) are filled from one onnxruntime run on ``feeds`` when given.
    """
    shapes = _shape_map(model)
    filled = 0
    if feeds is not None:
        missing = sorted(
            {
                t
                for n in model.graph.node
                if n.op_type in WEIGHTED_OPS
                for t in (n.input[0], n.output[0])
                if t and (t not in shapes or None in shapes[t])
            }
        )
        if missing:
            shapes.update(_ort_shapes(model, missing, feeds))
            filled = len(missing)
    macs = 0
    unknown = 0
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        try:
            if node.op_type == "Conv":
                n = _prod(shapes[node.output[0]]) * _prod(shapes[node.input[1]][1:])  # type: ignore[operator]
            elif node.op_type == "ConvTranspose":
                n = _prod(shapes[node.input[0]]) * _prod(shapes[node.input[1]][1:])  # type: ignore[operator]
            elif node.op_type == "Gemm":
                trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
                a = shapes[node.input[0]]
                n = _prod(shapes[node.output[0]]) * (a[0] if trans_a else a[1])  # type: ignore[operator]
            else:  # MatMul
                a = shapes[node.input[0]]
                n = _prod(shapes[node.output[0]]) * a[-1]  # type: ignore[operator]
            macs += int(n)
        except (KeyError, TypeError, IndexError):
            unknown += 1
    float_types = {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
    }
    params = sum(int(np.prod(i.dims)) for i in model.graph.initializer if i.data_type in float_types)
    return macs, params, filled, unknown


def weight_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Node name -> shape of the first initializer among inputs 0-1 of each weighted node."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    out: dict[str, tuple[int, ...]] = {}
    for n in model.graph.node:
        if n.op_type in WEIGHTED_OPS:
            ws = [inits[i] for i in n.input[:2] if i in inits]
            if ws:
                out[n.name or f"#{len(out)}"] = ws[0]
    return out


# -------------------------------------------------------------------------------- onnxruntime


def make_session(model: onnx.ModelProto, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


_ORT_NP = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def make_feeds(sess: Any, example_inputs: tuple[Any, ...], seed: int) -> dict[str, np.ndarray]:
    """Float inputs: seeded standard normal; integer/bool inputs: the factory's example values."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    inputs = sess.get_inputs()
    if len(inputs) != len(example_inputs):
        raise RuntimeError(f"graph has {len(inputs)} inputs, factory gave {len(example_inputs)}")
    for info, ex in zip(inputs, example_inputs, strict=True):
        arr = ex.detach().cpu().numpy() if hasattr(ex, "detach") else np.asarray(ex)
        dtype = _ORT_NP.get(info.type, arr.dtype)
        if np.issubdtype(np.dtype(dtype), np.floating):
            feeds[info.name] = rng.standard_normal(arr.shape).astype(dtype)
        else:
            feeds[info.name] = arr.astype(dtype)
    return feeds


def rel_diff(outs: list[np.ndarray], ref: list[np.ndarray]) -> float | None:
    worst = None
    for a, b in zip(outs, ref, strict=False):
        if not np.issubdtype(b.dtype, np.floating) or a.shape != b.shape:
            continue
        denom = float(np.linalg.norm(b.astype(np.float64)))
        num = float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64)))
        d = num / denom if denom > 0 else num
        worst = d if worst is None else max(worst, d)
    return worst


def interleaved_latency(
    sessions: dict[str, Any], feeds: dict[str, np.ndarray], runs: int, warmup: int
) -> dict[str, dict[str, float]]:
    """Per session: median wall ms and median thread-CPU ms, plus min wall ms.

    Every round runs each session once, in an order rotated every round. With one intra-op thread
    onnxruntime runs the graph on the calling thread, so ``time.thread_time`` measures the CPU the
    run itself used: unlike wall time it does not include the time the thread spent preempted by
    other processes on a shared machine.
    """
    names = list(sessions)
    for name in names:
        for _ in range(warmup):
            sessions[name].run(None, feeds)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(runs):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            c0 = time.thread_time()
            t0 = time.perf_counter()
            sessions[name].run(None, feeds)
            t1 = time.perf_counter()
            c1 = time.thread_time()
            wall[name].append((t1 - t0) * 1e3)
            cpu[name].append((c1 - c0) * 1e3)
    return {
        n: {
            "wall_ms": round(statistics.median(wall[n]), 3),
            "cpu_ms": round(statistics.median(cpu[n]), 3),
            "wall_min_ms": round(min(wall[n]), 3),
        }
        for n in names
    }


# --------------------------------------------------------------------------------- the tools


def run_graphprune(path: str, target: float, round_to: int = 1) -> tuple[onnx.ModelProto, dict[str, Any]]:
    import graphprune as gp

    t0 = time.perf_counter()
    res = gp.prune(path, flops=target, round_to=round_to)
    wall = time.perf_counter() - t0
    rep = res.report
    ver = rep.get("verification") or {}
    info = {
        "prune_s": round(wall, 3),
        "setting": f"flops={target}" + (f",round_to={round_to}" if round_to != 1 else ""),
        "oracle": {
            "ok": ver.get("ok"),
            "max_abs_err": ver.get("max_abs_err"),
            "tolerance": ver.get("tolerance"),
        },
        "report_achieved": rep.get("achieved"),
        "report_flops_before": rep.get("flops_before"),
        "report_flops_after": rep.get("flops_after"),
        "report_timings": rep.get("timings"),
    }
    return res.model, info


def run_onnxsim(
    path: str,
    dense: onnx.ModelProto,
    target: float,
    count: Callable[[onnx.ModelProto], float],
    ns: argparse.Namespace,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Bisect ``sparsity`` so that ``count(out) / count(dense)`` is nearest ``target``."""
    import onnxsim

    f0 = count(dense)
    trials: dict[float, float] = {}

    def ratio(s: float) -> float:
        if s not in trials:
            out = onnxsim.apply_structured_pruning(
                dense, sparsity=s, importance_norm="l2", global_sparsity=False
            )
            trials[s] = count(out) / f0
        return trials[s]

    t0 = time.perf_counter()
    lo, hi = 0.0, ns.sim_max
    reachable = ratio(hi) <= target
    if reachable:
        for _ in range(ns.bisect_iters):
            mid = round((lo + hi) / 2, 6)
            if ratio(mid) > target:
                lo = mid
            else:
                hi = mid
    search_s = time.perf_counter() - t0
    best = min(trials, key=lambda s: (abs(trials[s] - target), s))

    t0 = time.perf_counter()
    out = onnxsim.apply_structured_pruning(path, sparsity=best, importance_norm="l2", global_sparsity=False)
    wall = time.perf_counter() - t0
    info = {
        "prune_s": round(wall, 3),
        "search_s": round(search_s, 3),
        "setting": f"sparsity={best:.4f}",
        "sparsity": best,
        "target_reachable": reachable,
        "trials": [[s, round(r, 5)] for s, r in sorted(trials.items())],
        "oracle": None,
    }
    return out, info


# -------------------------------------------------------------------------------------- models


def export(name: str, path: str) -> tuple[tuple[Any, ...], float]:
    import torch
    from graphprune.models import MODELS

    model, inputs = MODELS[name]()
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), inputs, path, dynamo=False, external_data=False)
    return inputs, time.perf_counter() - t0


def bench_model(name: str, workdir: str, ns: argparse.Namespace) -> dict[str, Any]:
    import graphprune as gp

    row: dict[str, Any] = {"model": name, "target": ns.target}
    path = os.path.join(workdir, f"{name}.onnx")
    try:
        example_inputs, export_s = export(name, path)
        dense = onnx.load(path)
        row["export_s"] = round(export_s, 3)
        row["dense"] = {"nodes": len(dense.graph.node), "inputs": [i.name for i in dense.graph.input]}
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"export: {short_error(exc)}"
        return row

    # ---- dense reference
    d = row["dense"]
    try:
        d["flops"], d["params"] = gp.count_flops(dense)
    except Exception as exc:  # noqa: BLE001
        d["count_error"] = short_error(exc)
    try:
        onnx.checker.check_model(dense, full_check=True)
        d["valid"] = True
    except Exception as exc:  # noqa: BLE001
        d["valid"] = False
        d["valid_error"] = short_error(exc)
    sessions: dict[str, Any] = {}
    try:
        sessions["dense"] = make_session(dense, ns.threads)
        feeds = make_feeds(sessions["dense"], example_inputs, ns.seed)
        ref = sessions["dense"].run(None, feeds)
        d["output_shapes"] = [list(o.shape) for o in ref]
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"dense onnxruntime: {short_error(exc)}"
        return row
    try:
        d["macs_si"], d["params_si"], d["macs_si_ort_filled"], d["macs_si_unknown_nodes"] = (
            shape_inference_macs(dense, feeds)
        )
    except Exception as exc:  # noqa: BLE001
        d["macs_si_error"] = short_error(exc)

    # ---- one counter for the model: graphprune's if it can analyze everything, else MACs by SI
    def gp_count(m: onnx.ModelProto) -> float:
        try:
            return float(gp.count_flops(m)[0])
        except Exception as exc:  # noqa: BLE001
            raise CountError(short_error(exc)) from exc

    def si_count(m: onnx.ModelProto) -> float:
        return float(shape_inference_macs(m, feeds)[0])

    # ---- prune
    outputs: dict[str, onnx.ModelProto] = {}
    tools: dict[str, dict[str, Any]] = {}
    row["tools"] = tools
    for tool in ns.tools:
        info: dict[str, Any] = {"ran": False}
        tools[tool] = info
        try:
            with warnings.catch_warnings(), time_limit(ns.timeout):
                warnings.simplefilter("ignore")
                if tool == "graphprune":
                    out, extra = run_graphprune(path, ns.target, ns.gp_round_to)
                elif "flops" in d:
                    try:
                        out, extra = run_onnxsim(path, dense, ns.target, gp_count, ns)
                        extra["steered_by"] = "gp.count_flops"
                    except CountError as exc:
                        # graphprune could not analyze an onnxsim output: steer by SI MACs instead
                        out, extra = run_onnxsim(path, dense, ns.target, si_count, ns)
                        extra["steered_by"] = "shape-inference MACs"
                        extra["gp_count_error"] = str(exc)
                else:
                    out, extra = run_onnxsim(path, dense, ns.target, si_count, ns)
                    extra["steered_by"] = "shape-inference MACs"
            info.update(extra)
            info["ran"] = True
            outputs[tool] = out
        except Exception as exc:  # noqa: BLE001
            info["error"] = short_error(exc)
            if ns.verbose:
                traceback.print_exc()

    # ---- counters
    counter = "gp.count_flops"
    counts: dict[str, tuple[float, float]] = {}
    if "flops" not in d:
        counter = "shape-inference MACs"
    for tool, out in outputs.items():
        try:
            counts[tool] = tuple(float(v) for v in gp.count_flops(out))  # type: ignore[assignment]
        except Exception as exc:  # noqa: BLE001
            tools[tool]["gp_count_error"] = short_error(exc)
            counter = "shape-inference MACs"
    row["counter"] = counter
    for tool, out in outputs.items():
        info = tools[tool]
        try:
            macs, params_si, filled, unknown = shape_inference_macs(out, feeds)
            info["macs_si_ort_filled"] = filled
            info["macs_ratio_si"] = _round(macs / d["macs_si"]) if d.get("macs_si") else None
            info["params_ratio_si"] = _round(params_si / d["params_si"]) if d.get("params_si") else None
            if unknown:
                info["macs_si_unknown_nodes"] = unknown
        except Exception as exc:  # noqa: BLE001
            info["macs_si_error"] = short_error(exc)
        if counter == "gp.count_flops":
            info["flops_ratio"] = _round(counts[tool][0] / d["flops"])
            info["params_ratio"] = _round(counts[tool][1] / d["params"])
        else:
            info["flops_ratio"] = info.get("macs_ratio_si")
            info["params_ratio"] = info.get("params_ratio_si")

        # validity, structure
        try:
            onnx.checker.check_model(out, full_check=True)
            info["valid"] = True
        except Exception as exc:  # noqa: BLE001
            info["valid"] = False
            info["valid_error"] = short_error(exc)
        dw, ow = weight_shapes(dense), weight_shapes(out)
        info["layers_total"] = len(dw)
        info["layers_changed"] = sum(1 for k, v in dw.items() if k in ow and ow[k] != v)
        info["layers_unmatched"] = sum(1 for k in dw if k not in ow)
        info["layers_unchanged"] = sorted(k for k, v in dw.items() if ow.get(k) == v)

        # run, shapes, output difference
        try:
            sess = make_session(out, ns.threads)
            got = sess.run(None, feeds)
            info["runs"] = True
            info["output_shapes"] = [list(o.shape) for o in got]
            info["shapes_ok"] = [o.shape for o in got] == [o.shape for o in ref]
            info["rel_diff"] = _round(rel_diff(got, ref), 5)
            sessions[tool] = sess
        except Exception as exc:  # noqa: BLE001
            info["runs"] = False
            info["shapes_ok"] = False
            info["run_error"] = short_error(exc)

    # ---- latency, interleaved
    try:
        row["loadavg_before_latency"] = [round(x, 2) for x in os.getloadavg()]
        lat = interleaved_latency(sessions, feeds, ns.runs, ns.warmup)
        d["latency"] = lat["dense"]
        for tool in outputs:
            if tool in lat:
                t = tools[tool]
                t["latency"] = lat[tool]
                t["speedup_cpu"] = _round(lat["dense"]["cpu_ms"] / lat[tool]["cpu_ms"], 3)
                t["speedup_wall"] = _round(lat["dense"]["wall_ms"] / lat[tool]["wall_ms"], 3)
    except Exception as exc:  # noqa: BLE001
        row["latency_error"] = short_error(exc)
    return row


# ----------------------------------------------------------------------------------- reporting


def _fmt(x: Any, spec: str = ".3f", none: str = "-") -> str:
    if x is None:
        return none
    if isinstance(x, bool):
        return "yes" if x else "NO"
    return format(x, spec)


def print_table(rows: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    head = (
        "model",
        "tool",
        "ran",
        "valid",
        "shapes",
        "oracle",
        "FLOPs",
        "params",
        "rel.diff",
        "cpu ms dense",
        "cpu ms pruned",
        "speedup",
        "wall ms dense",
        "wall ms pruned",
        "speedup",
        "prune s",
        "layers chg",
        "setting",
    )
    lines = [head]
    notes = []
    for row in rows:
        if "error" in row:
            lines.append((row["model"], "-", "NO") + ("-",) * (len(head) - 3))
            notes.append(f"{row['model']}: {row['error']}")
            continue
        d = row["dense"]
        for tool, info in row.get("tools", {}).items():
            if not info.get("ran"):
                lines.append((row["model"], tool, "NO") + ("-",) * (len(head) - 3))
                notes.append(f"{row['model']}/{tool}: {info.get('error')}")
                continue
            oracle = info.get("oracle")
            if oracle is None:
                o = "n/a"
            else:
                o = ("ok" if oracle.get("ok") else "FAIL") + f" {oracle.get('max_abs_err', 0):.1e}"
            if "run_error" in info:
                notes.append(f"{row['model']}/{tool} onnxruntime: {info['run_error']}")
            if not info.get("valid", True):
                notes.append(f"{row['model']}/{tool} checker: {info.get('valid_error')}")
            if info.get("target_reachable") is False:
                notes.append(f"{row['model']}/{tool}: target not reachable (max sparsity tried)")
            lines.append(
                (
                    row["model"],
                    tool,
                    "yes",
                    _fmt(info.get("valid")),
                    _fmt(info.get("shapes_ok")),
                    o,
                    _fmt(info.get("flops_ratio")),
                    _fmt(info.get("params_ratio")),
                    _fmt(info.get("rel_diff")),
                    _fmt(d.get("latency", {}).get("cpu_ms"), ".2f"),
                    _fmt(info.get("latency", {}).get("cpu_ms"), ".2f"),
                    _fmt(info.get("speedup_cpu"), ".2f") + "x",
                    _fmt(d.get("latency", {}).get("wall_ms"), ".2f"),
                    _fmt(info.get("latency", {}).get("wall_ms"), ".2f"),
                    _fmt(info.get("speedup_wall"), ".2f") + "x",
                    _fmt(info.get("prune_s"), ".2f"),
                    f"{info.get('layers_changed')}/{info.get('layers_total')}",
                    info.get("setting", ""),
                )
            )
        if row.get("counter") != "gp.count_flops":
            notes.append(f"{row['model']}: FLOPs counted as {row.get('counter')} (fallback)")
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(head))]
    for i, r in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)
    for n in notes:
        print("note:", n, file=out)


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    for mod in ("graphprune", "onnxsim", "onnx", "onnxruntime", "torch", "numpy"):
        try:
            m = __import__(mod)
            env[mod] = getattr(m, "__version__", "?")
        except Exception as exc:  # noqa: BLE001
            env[mod] = f"unavailable ({short_error(exc)})"
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        env["graphprune_commit"] = (
            subprocess.run(
                ["git", "-C", here, "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            or None
        )
        dirty = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--", "../graphprune", "../passes", "../models"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        env["graphprune_tree_dirty"] = bool(dirty)
    except OSError:
        env["graphprune_commit"] = None
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", help="comma-separated names (default: all of graphprune.models.MODELS)")
    parser.add_argument("--target", type=float, default=0.5, help="fraction of FLOPs to keep (default 0.5)")
    parser.add_argument("--only", choices=["both", *TOOLS], default="both", help="run one tool only")
    parser.add_argument(
        "--gp-round-to",
        type=int,
        default=1,
        help="graphprune round_to (default 1; onnxsim has no such option)",
    )
    parser.add_argument("--sim-max", type=float, default=0.99, help="upper end of onnxsim's sparsity search")
    parser.add_argument("--bisect-iters", type=int, default=14, help="bisection steps on onnxsim's sparsity")
    parser.add_argument("--runs", type=int, default=50, help="timed latency rounds (>= 20 recommended)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up runs per session")
    parser.add_argument(
        "--threads", type=int, default=1, help="onnxruntime intra-op threads and torch threads"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random float inputs")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per tool per model (0 = none)")
    parser.add_argument("--json", help="write environment, settings and all rows as JSON to this path")
    parser.add_argument("--workdir", help="keep the exported ONNX files here (default: a temp dir)")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of tool errors")
    ns = parser.parse_args(argv)
    ns.tools = list(TOOLS) if ns.only == "both" else [ns.only]

    import torch

    torch.set_num_threads(ns.threads)
    from graphprune.models import MODELS

    names = ns.models.split(",") if ns.models else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; available: {', '.join(MODELS)}")

    rows = []
    t_all = time.perf_counter()
    with contextlib.ExitStack() as stack:
        workdir = ns.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="gp_vs_sim_"))
        os.makedirs(workdir, exist_ok=True)
        for name in names:
            t0 = time.perf_counter()
            try:
                row = bench_model(name, workdir, ns)
            except Exception as exc:  # noqa: BLE001 - never stop the other models
                row = {"model": name, "error": f"benchmark: {short_error(exc)}"}
                if ns.verbose:
                    traceback.print_exc()
            row["bench_s"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            print(f"[{name}] done in {row['bench_s']:.1f} s", file=sys.stderr, flush=True)
    print_table(rows)
    if ns.json:
        doc = {
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "environment": environment(),
            "settings": {k: v for k, v in vars(ns).items() if k not in ("json", "verbose")},
            "onnxsim_call": "onnxsim.apply_structured_pruning(path, sparsity=s, importance_norm='l2', "
            "global_sparsity=False), s bisected",
            "graphprune_call": f"graphprune.prune(path, flops={ns.target}, round_to={ns.gp_round_to})",
            "total_s": round(time.perf_counter() - t_all, 1),
            "rows": rows,
        }
        os.makedirs(os.path.dirname(os.path.abspath(ns.json)), exist_ok=True)
        with open(ns.json, "w") as f:
            json.dump(doc, f, indent=1, default=str)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
