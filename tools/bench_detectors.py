"""Detectors that torch.export cannot capture whole: graphprune vs Torch-Pruning in one run (issue #13).

Models (random weights, BatchNorm statistics calibrated on the benchmark image and norm affines
perturbed, so channels differ and head outputs are not ~0): torchvision SSDlite320-MobileNetV3,
FCOS-R50-FPN, RetinaNet-R50-FPN, Faster R-CNN MobileNetV3-FPN and R50-FPN, Mask R-CNN R50-FPN
(min/max size ``--size``), a small DETR from transformers (timm resnet18 backbone, not pretrained),
and graphprune's models/yolo.py. Per model and tool:

- graphprune: ``gp.prune(model, ([image],), flops=F)`` (zero config: the fallback capture pins
  the head outputs because glue reads them). Torch-Pruning: its documented ``MetaPruner`` with L2
  magnitude importance and ``ignored_layers`` = the heads, three ways (the README rule: its fastest
  documented way to the same result and its documented way to an exact target):

  * ``torch_pruning`` ("TP documented ratio"): one ``step()`` at ``pruning_ratio=R`` (``--ratio``,
    1 - sqrt(0.6)), which does not land on graphprune's FLOPs;
  * ``torch_pruning_equal_flops`` ("TP one step, equal FLOPs"): one ``step()`` at the ratio that
    reaches graphprune's achieved FLOPs (as this bench counts them), found by bisecting the ratio
    in [0, 0.95], one fresh prune of a copy per probe, until the FLOPs kept are within ``--tol`` of
    graphprune's; the number of prunes, every probe and the whole search time (prunes and FLOPs
    counts) are reported, and ``seconds`` is the final prune alone;
  * ``torch_pruning_progressive`` ("TP progressive"): ``iterative_steps=N`` (``--tp-steps``) towards
    ``pruning_ratio=1.0``, ``step()`` until the FLOPs kept are at or under graphprune's (TP's
    ImageNet benchmark's ``prune_to_target_flops``); ``seconds`` is the whole loop, FLOPs counts
    included;
- FLOPs kept: ``torch.utils.flop_counter.FlopCounterMode`` on the whole eager forward (glue
  included), pruned over original, the same counter for every tool;
- structure kept: the outputs have the original's pytree structure (types, dict keys) and every
  output tensor the original's trailing dims; the pre-NMS head outputs (forward hooks on the head
  modules) have the original's shapes; and the model runs at a second image size;
- latency, two figures from one interleaved loop (each round runs every variant once; ``--warmup``
  rounds first, then the median of ``--runs`` rounds), eager, one image, at ``--threads`` torch
  threads (default: torch's own default, recorded in the JSON):
  ``ms``: the whole forward as deployed (transform, backbone, heads, decoding, NMS);
  ``tensor ms``: the time inside the captured tensor part only (the calls of the modules graphprune
  captured as fragments: backbone, neck, heads, the pre-barrier outputs; the whole model where
  torch.export captured it whole), timed by forward pre/post hooks on those modules. With random
  weights the post-processing time depends on how many boxes pass the score threshold, which
  pruning changes; the tensor part is the figure pruning controls;
- time: the pruning call.

``--capture`` adds the measurement behind the choice of capture method: the fraction of the
model's MACs (FlopCounterMode) that graphprune can prune when the model is captured as fragments
(``gp.analyze`` on the module; a layer's MACs count half for each of its output and input channel
axes that can shrink) vs through the TorchScript tracer (``torch.onnx.export(...,
dynamo=False)`` of the whole detector, then ``gp.analyze`` of the .onnx).

    python tools/bench_detectors.py --json docs/bench/detectors.json [--models ssdlite,yolo] [--capture] [--append] [--threads 1]

With ``--append`` a model's new row replaces its old one; a capture comparison measured earlier
is kept (``capture_from_earlier_run``) when this run has none.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from graphprune.models._common import randomize_norm_affine
from torch import nn
from torch.utils._pytree import tree_flatten, tree_structure
from torch.utils.flop_counter import FlopCounterMode

import graphprune as gp

MODELS = "ssdlite,fcos,retinanet,frcnn_mobilenet,frcnn_r50,maskrcnn,detr,yolo"


def _calibrate(model: nn.Module, run: Callable[[], Any]) -> None:
    """Norm affines perturbed, BatchNorm running stats set to one batch's statistics (a batch of
    two images)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        randomize_norm_affine(model)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        run()
    for m in bns:
        m.momentum = 0.1
    model.eval()


def _torchvision(name: str, size: int) -> tuple[nn.Module, Any, list[nn.Module]]:
    from torchvision.models import detection as det

    ctor = {"ssdlite": det.ssdlite320_mobilenet_v3_large, "fcos": det.fcos_resnet50_fpn,
            "retinanet": det.retinanet_resnet50_fpn, "frcnn_mobilenet": det.fasterrcnn_mobilenet_v3_large_fpn,
            "frcnn_r50": det.fasterrcnn_resnet50_fpn, "maskrcnn": det.maskrcnn_resnet50_fpn}[name]
    kw: dict[str, Any] = {} if name == "ssdlite" else {"min_size": size, "max_size": size}
    torch.manual_seed(0)
    model = ctor(weights=None, weights_backbone=None, **kw).eval()
    g = torch.Generator().manual_seed(1)
    img, other = torch.rand(3, size, size, generator=g), torch.rand(3, size, size, generator=g)
    _calibrate(model, lambda: model([img, other]))  # two images: SSDlite's last maps are 1x1
    if hasattr(model, "roi_heads"):
        heads = [model.rpn.head, model.roi_heads.box_predictor]
        if getattr(model.roi_heads, "mask_predictor", None) is not None:
            heads.append(model.roi_heads.mask_predictor)
    else:
        heads = [model.head]
    return model, ([img],), heads


def _detr(size: int) -> tuple[nn.Module, Any, list[nn.Module]]:
    from transformers import DetrConfig, DetrForObjectDetection

    cfg = DetrConfig(use_timm_backbone=True, backbone="resnet18", use_pretrained_backbone=False, d_model=64,
                     encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                     encoder_ffn_dim=128, decoder_ffn_dim=128, num_queries=50, num_labels=20)
    torch.manual_seed(0)
    model = DetrForObjectDetection(cfg).eval()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    _calibrate(model, lambda: model(pixel_values=x))
    x = x[:1]
    return model, {"pixel_values": x}, [model.class_labels_classifier, model.bbox_predictor]


def _yolo(size: int) -> tuple[nn.Module, Any, list[nn.Module]]:
    from graphprune.models.yolo import build_yolo

    model, example = build_yolo(image_size=size)
    return model, example, [model.head]


def build(name: str, size: int) -> tuple[nn.Module, Any, list[nn.Module]]:
    if name == "detr":
        return _detr(size)
    if name == "yolo":
        return _yolo(size)
    return _torchvision(name, size)


def _call(model: nn.Module, inputs: Any) -> Any:
    with torch.no_grad():
        return model(**inputs) if isinstance(inputs, dict) else model(*inputs)


def _other_size(inputs: Any, size: int) -> Any:
    g = torch.Generator().manual_seed(2)
    h, w = size - 64, size - 32
    if isinstance(inputs, dict):
        return {"pixel_values": torch.rand(1, 3, h, w, generator=g)}
    return ([torch.rand(3, h, w, generator=g)],)


def macs(model: nn.Module, inputs: Any) -> float:
    with FlopCounterMode(display=False) as fc:
        _call(model, inputs)
    return fc.get_total_flops() / 2


class _TensorPartTimer:
    """Forward pre/post hooks on the captured modules (paths; ``""`` is the whole model) that add
    up the time spent inside them, outermost calls only; removed by :meth:`close`."""

    def __init__(self, model: nn.Module, paths: list[str], clock: Callable[[], float] = time.perf_counter) -> None:
        self.total, self._depth, self._t0, self._clock = 0.0, 0, 0.0, clock
        mods = [model.get_submodule(p) for p in paths]
        self._hooks = [h for m in mods for h in (m.register_forward_pre_hook(self._enter),
                                                  m.register_forward_hook(self._exit))]

    def _enter(self, _m: nn.Module, _a: Any) -> None:
        if self._depth == 0:
            self._t0 = self._clock()
        self._depth += 1

    def _exit(self, _m: nn.Module, _a: Any, _out: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.total += self._clock() - self._t0

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def latencies(models: dict[str, nn.Module], inputs: Any, parts: list[str], warmup: int, runs: int,
              clock: Callable[[], float] = time.perf_counter) -> dict[str, dict[str, float]]:
    """Median ms per model of the whole forward (``ms``) and of the time inside the modules at
    ``parts`` (``tensor_ms``), in one interleaved loop: each round runs every model once, so load
    changes on a shared machine hit all of them alike; ``warmup`` rounds are not counted."""
    timers = {k: _TensorPartTimer(m, parts, clock) for k, m in models.items()}
    whole: dict[str, list[float]] = {k: [] for k in models}
    part: dict[str, list[float]] = {k: [] for k in models}
    try:
        for i in range(warmup + runs):
            for k, m in models.items():
                timers[k].total = 0.0
                t0 = clock()
                _call(m, inputs)
                if i >= warmup:
                    whole[k].append(clock() - t0)
                    part[k].append(timers[k].total)
    finally:
        for t in timers.values():
            t.close()
    return {k: {"ms": statistics.median(whole[k]) * 1e3, "tensor_ms": statistics.median(part[k]) * 1e3}
            for k in models}


def _head_shapes(model: nn.Module, heads: list[str], inputs: Any) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    hooks = [model.get_submodule(p).register_forward_hook(
        lambda m, a, out: shapes.extend(tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)))
        for p in heads]
    try:
        _call(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _signature(out: Any) -> tuple[Any, list[tuple[int, ...]]]:
    leaves, spec = tree_flatten(out)
    return tree_structure(out), [tuple(t.shape[1:]) for t in leaves if isinstance(t, torch.Tensor)]


def structure(original: nn.Module, pruned: nn.Module, heads: list[str], inputs: Any, size: int) -> dict[str, Any]:
    ref, got = _call(original, inputs), _call(pruned, inputs)
    same_outputs = _signature(ref) == _signature(got)
    same_heads = _head_shapes(original, heads, inputs) == _head_shapes(pruned, heads, inputs)
    try:
        _call(pruned, _other_size(inputs, size))
        other = True
    except Exception as exc:  # a pruned model that cannot run at another size is the finding
        other = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    return {"outputs": same_outputs, "heads": same_heads, "other_size": other,
            "kept": bool(same_outputs and same_heads and other is True)}


def run_graphprune(model: nn.Module, inputs: Any, flops: float) -> tuple[nn.Module, dict[str, Any]]:
    t0 = time.perf_counter()
    res = gp.prune(model, inputs, flops=flops)
    r = res.report
    info = {"seconds": time.perf_counter() - t0, "route": r["route"], "verification": r["verification"],
            "graphprune_flops_kept": r["kept"]["flops"], "capture": r.get("capture", {"method": "torch.export"}),
            "barriers": sorted(r["barriers"])}
    return res.model, info


def _tp_pruner(model: nn.Module, m: nn.Module, inputs: Any, heads: list[nn.Module], ratio: float, steps: int) -> Any:
    """Torch-Pruning's documented ``MetaPruner`` on ``m`` (a copy of ``model``), L2 magnitude,
    ``ignored_layers`` = the heads (found in the copy by their paths in ``model``)."""
    import torch_pruning as tp

    ignored = [m.get_submodule(n) for n, mod in model.named_modules() if any(mod is h for h in heads)]
    return tp.pruner.MetaPruner(m, inputs, importance=tp.importance.MagnitudeImportance(p=2),
                                pruning_ratio=ratio, iterative_steps=steps, ignored_layers=ignored)


def run_torch_pruning(model: nn.Module, inputs: Any, heads: list[nn.Module], ratio: float) -> tuple[nn.Module, dict[str, Any]]:
    """One ``step()`` at ``ratio`` on a copy."""
    m = copy.deepcopy(model)
    t0 = time.perf_counter()
    _tp_pruner(model, m, inputs, heads, ratio, 1).step()
    return m.eval(), {"seconds": time.perf_counter() - t0, "pruning_ratio": ratio}


def bisect_ratio(prune_at: Callable[[float], tuple[Any, float]], target: float, tol: float, max_prunes: int,
                 lo: float = 0.0, hi: float = 0.95) -> tuple[Any, dict[str, Any]]:
    """Bisect a pruning ratio in [lo, hi] until ``prune_at(ratio)`` (a fresh prune: the pruned
    model and its FLOPs kept, which fall as the ratio grows) keeps ``target`` of the FLOPs within
    ``tol``, or ``max_prunes`` prunes were made; returns the model closest to the target (at or
    under it on a tie) and the search: the probes, how many prunes, the chosen ratio."""
    probes: list[dict[str, float]] = []
    best: tuple[float, Any, float] | None = None  # (distance, model, ratio)
    for _ in range(max_prunes):
        ratio = (lo + hi) / 2
        model, kept = prune_at(ratio)
        probes.append({"ratio": ratio, "flops_kept": kept})
        dist = abs(kept - target) + (0.0 if kept <= target else 1e-9)
        if best is None or dist < best[0]:
            best = (dist, model, ratio)
        if abs(kept - target) <= tol:
            break
        lo, hi = (ratio, hi) if kept > target else (lo, ratio)
    assert best is not None, "max_prunes must be at least 1"
    kept_best = next(p["flops_kept"] for p in probes if p["ratio"] == best[2])
    return best[1], {"prunes": len(probes), "probes": probes, "pruning_ratio": best[2], "flops_kept_search": kept_best,
                     "within_tol": abs(kept_best - target) <= tol}


def run_torch_pruning_equal_flops(model: nn.Module, inputs: Any, heads: list[nn.Module], target: float, base_macs: float,
                                  tol: float, max_prunes: int) -> tuple[nn.Module, dict[str, Any]]:
    """One ``step()`` at the ratio (bisected) that keeps ``target`` of the FLOPs."""
    times: dict[float, float] = {}

    def prune_at(ratio: float) -> tuple[nn.Module, float]:
        m, info = run_torch_pruning(model, inputs, heads, ratio)
        times[ratio] = info["seconds"]
        return m, macs(m, inputs) / base_macs

    t0 = time.perf_counter()
    m, search = bisect_ratio(prune_at, target, tol, max_prunes)
    search["search_seconds"] = time.perf_counter() - t0
    return m, {"seconds": times[search["pruning_ratio"]], "target": target, **search}


def run_torch_pruning_progressive(model: nn.Module, inputs: Any, heads: list[nn.Module], target: float, base_macs: float,
                                  steps: int) -> tuple[nn.Module, dict[str, Any]]:
    """``iterative_steps=steps`` towards ratio 1.0, ``step()`` until at or under ``target``."""
    m = copy.deepcopy(model)
    t0 = time.perf_counter()
    pruner = _tp_pruner(model, m, inputs, heads, 1.0, steps)
    done, kept, trace = 0, 1.0, []
    while kept > target and done < steps:
        pruner.step()
        done += 1
        kept = macs(m, inputs) / base_macs
        trace.append(kept)
    return m.eval(), {"seconds": time.perf_counter() - t0, "target": target, "iterative_steps": steps, "steps": done,
                      "pruning_ratio": done / steps, "flops_trace": trace, "reached": kept <= target}


def _prunable_share(a: Any, weight: str | None) -> float:
    """Half for each channel axis of a layer's weight (output, input) that can shrink: a layer's
    MACs are proportional to the product of the two."""
    v = next((w for w in a.graph.weights() if w.source == weight), None) if weight else None
    if v is None or v.rank < 2:
        return 0.0
    return (a.coupling.prunable(v, 0) + a.coupling.prunable(v, 1)) / 2


def capture_comparison(model: nn.Module, inputs: Any, total_macs: float) -> dict[str, Any]:
    """Prunable MACs / all MACs (:func:`_prunable_share`): fragments (module) vs TorchScript tracer
    (the whole model's .onnx)."""
    out: dict[str, Any] = {}
    for method in ("pytorch_capture", "torchscript_onnx"):
        t0 = time.perf_counter()
        try:
            if method == "pytorch_capture":
                a = gp.analyze(model, inputs)
            else:
                with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    path = str(Path(d) / "m.onnx")
                    args = (inputs["pixel_values"],) if isinstance(inputs, dict) else inputs
                    torch.onnx.export(model, args, path, dynamo=False, opset_version=17)
                    a = gp.analyze(path)
            prunable = sum(layer["macs"] * _prunable_share(a, layer["weight"]) for layer in a.report["layers"])
            captured = sum(layer["macs"] for layer in a.report["layers"])
            out[method] = {"prunable_macs_fraction": prunable / total_macs, "captured_macs_fraction": captured / total_macs,
                           "barriers": sorted(a.report["barriers"])[:12], "seconds": time.perf_counter() - t0}
        except Exception as exc:  # a method that fails on a model is part of the measurement
            out[method] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                           "seconds": time.perf_counter() - t0}
    return out


TP_VARIANTS = ("torch_pruning", "torch_pruning_equal_flops", "torch_pruning_progressive")
LABELS = {"graphprune": "graphprune", "torch_pruning": "TP documented ratio",
          "torch_pruning_equal_flops": "TP one step, equal FLOPs", "torch_pruning_progressive": "TP progressive"}


def _error(exc: BaseException) -> dict[str, Any]:
    traceback.print_exc(limit=3, file=sys.stderr)
    return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}


def bench(name: str, a: argparse.Namespace) -> dict[str, Any]:
    size = a.size
    load0 = os.getloadavg()
    model, inputs, heads = build(name, size)
    head_paths = [n for n, m in model.named_modules() if any(m is h for h in heads)]
    base_macs = macs(model, inputs)
    row: dict[str, Any] = {"model": name, "class": type(model).__name__, "image": size, "macs": base_macs,
                           "run": {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
                                   "torch": torch.__version__, "threads": torch.get_num_threads(),
                                   "warmup": a.warmup, "runs": a.runs, "tp_steps": a.tp_steps}}
    if a.capture:
        row["capture"] = capture_comparison(model, inputs, base_macs)
    pruned: dict[str, nn.Module] = {"original": model}
    try:
        gp_model, info = run_graphprune(model, inputs, a.flops)
        pruned["graphprune"] = gp_model
    except Exception as exc:  # a tool failing on a model is a result, not a crash of the run
        info = _error(exc)
    row["graphprune"] = info
    cap = info.get("capture", {})
    parts = [("" if f == "(root)" else f) for f in cap["fragments"]] if cap.get("method") == "fragments" else [""]
    row["tensor_part"] = parts
    target = a.flops
    if "graphprune" in pruned:
        info["flops_kept"] = target = macs(pruned["graphprune"], inputs) / base_macs
    tp_runs: dict[str, Callable[[], tuple[nn.Module, dict[str, Any]]]] = {
        "torch_pruning": lambda: run_torch_pruning(model, inputs, heads, a.ratio),
        "torch_pruning_equal_flops": lambda: run_torch_pruning_equal_flops(model, inputs, heads, target, base_macs,
                                                                           a.tol, a.max_prunes),
        "torch_pruning_progressive": lambda: run_torch_pruning_progressive(model, inputs, heads, target, base_macs,
                                                                           a.tp_steps)}
    for tool, fn in tp_runs.items():
        if "error" in row.get("torch_pruning", {}):  # the documented step already failed: so would these
            row[tool] = {"error": row["torch_pruning"]["error"], "not_tried": "the documented single step failed"}
            continue
        try:
            m, tinfo = fn()
            tinfo["flops_kept"] = macs(m, inputs) / base_macs
            pruned[tool] = m
        except Exception as exc:  # a tool failing on a model is a result, not a crash of the run
            tinfo = _error(exc)
        row[tool] = tinfo
    for tool, m in pruned.items():
        if tool == "original":
            continue
        try:
            row[tool]["structure"] = structure(model, m, head_paths, inputs, size)
            row[tool]["same_class"] = type(m) is type(model)
        except Exception as exc:  # a pruned model that does not run is the finding
            row[tool] = {**row[tool], **_error(exc)}
    runnable = {k: m for k, m in pruned.items() if k == "original" or "error" not in row[k]}
    lat = latencies(runnable, inputs, parts, a.warmup, a.runs)
    row["latency_ms"], row["tensor_ms"] = lat["original"]["ms"], lat["original"]["tensor_ms"]
    for tool, v in lat.items():
        if tool != "original":
            row[tool]["latency_ms"], row[tool]["tensor_ms"] = v["ms"], v["tensor_ms"]
    row["run"]["loadavg_1m"] = [load0[0], os.getloadavg()[0]]
    for tool in ("graphprune", *TP_VARIANTS):
        print(f"  {name} {LABELS[tool]}: {_cell(row[tool])}", file=sys.stderr, flush=True)
    return row


def _cell(info: dict[str, Any]) -> str:
    if "error" in info:
        return "FAILED " + info["error"][:90]
    s = info["structure"]
    extra = ""
    if "prunes" in info:
        extra = f"  ratio {info['pruning_ratio']:.3f} ({info['prunes']} prunes, {info['search_seconds']:.0f} s)"
    elif "steps" in info:
        extra = f"  {info['steps']}/{info['iterative_steps']} steps"
    return (f"FLOPs {info['flops_kept']:.3f}  structure {'kept' if s['kept'] else 'BROKEN'}  "
            f"{info['latency_ms']:.0f} ms  tensor {info['tensor_ms']:.0f} ms  {info['seconds']:.1f} s{extra}")


def _capture_cell(info: dict[str, Any]) -> str:
    cap = info.get("capture")
    if not cap:
        return "-"
    if cap.get("method") != "fragments":
        return "torch.export (whole)"
    check = cap.get("pre_barrier_check", {})
    ok = "ok" if check.get("ok") else "FAILED"
    return f"fragments {', '.join(cap['fragments'])}; glue: {', '.join(sorted(cap['glue_barriers']))} ({ok}, {check.get('tensors', 0)} tensors)"


def _ms(row: dict[str, Any], key: str, tool: str | None = None) -> str:
    info = row[tool] if tool else row
    return f"{info[key]:.0f}" if key in info else "-"


def _name(row: dict[str, Any]) -> str:
    """The model, marked when its row is from an earlier run of this bench (no ``run`` record)."""
    return row["model"] if "run" in row else f"{row['model']} (earlier run)"


def table(rows: list[dict[str, Any]]) -> str:
    """Three tables: what each tool kept (graphprune's capture beside it), the latency figures, and
    (rows measured with ``--capture``) the capture comparison."""
    tools = ("graphprune", *TP_VARIANTS)
    lines = ["| model | " + " | ".join(f"{LABELS[t]}: FLOPs kept, structure, prune s" for t in tools)
             + " | graphprune capture (pre-barrier check) |", "|---" * (len(tools) + 2) + "|"]
    for r in rows:
        cells = []
        for t in tools:
            info = r.get(t)
            if info is None:
                cells.append("not in that run")
                continue
            if "not_tried" in info:
                cells.append("not tried (" + info["not_tried"] + ")")
                continue
            if "error" in info:
                cells.append("FAILED " + info["error"][:90])
                continue
            c = f"{info['flops_kept']:.3f}, {'kept' if info['structure']['kept'] else 'BROKEN'}, {info['seconds']:.1f} s"
            if "prunes" in info:
                c += (f" (ratio {info['pruning_ratio']:.3f}; search: {info['prunes']} prunes, "
                      f"{info['search_seconds']:.0f} s)")
            elif "steps" in info:
                c += f" ({info['steps']}/{info['iterative_steps']} steps)"
            elif "pruning_ratio" in info:
                c += f" (ratio {info['pruning_ratio']:.3f})"
            cells.append(c)
        lines.append(f"| {_name(r)} | " + " | ".join(cells) + f" | {_capture_cell(r.get('graphprune', {}))} |")
    lines += ["", "| model | threads | load (1 min, start/end) | original: ms / tensor ms | "
              + " | ".join(f"{LABELS[t]}: ms / tensor ms" for t in tools) + " |", "|---" * (len(tools) + 4) + "|"]
    for r in rows:
        run = r.get("run", {})
        load = "/".join(f"{x:.1f}" for x in run.get("loadavg_1m", [])) or "?"
        cells = [f"{_ms(r, 'latency_ms', t)} / {_ms(r, 'tensor_ms', t)}" if t in r and "error" not in r[t] else "-"
                 for t in tools]
        lines.append(f"| {_name(r)} | {run.get('threads', '?')} | {load} | {_ms(r, 'latency_ms')} / {_ms(r, 'tensor_ms')} | "
                     + " | ".join(cells) + " |")
    if any("capture" in r for r in rows):
        lines += ["", "| model | prunable MACs, graphprune PyTorch capture (torch.export, else fragments) | prunable MACs, TorchScript tracer (.onnx) |", "|---|---|---|"]
        for r in rows:
            c = r.get("capture", {})
            cells = [f"{c[k]['prunable_macs_fraction']:.3f}" if "prunable_macs_fraction" in c.get(k, {})
                     else "failed: " + c.get(k, {}).get("error", "-")[:60] for k in ("pytorch_capture", "torchscript_onnx")]
            lines.append(f"| {r['model']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=MODELS)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--flops", type=float, default=0.6, help="graphprune flops= budget")
    p.add_argument("--ratio", type=float, default=0.225, help="Torch-Pruning's documented-ratio row (1 - sqrt(0.6))")
    p.add_argument("--tol", type=float, default=0.005, help="equal-FLOPs bisection: FLOPs-kept tolerance")
    p.add_argument("--max-prunes", type=int, default=8, help="equal-FLOPs bisection: most prunes")
    p.add_argument("--tp-steps", type=int, default=100, help="Torch-Pruning progressive: iterative_steps")
    p.add_argument("--warmup", type=int, default=3, help="latency: rounds not counted")
    p.add_argument("--runs", type=int, default=15, help="latency: rounds counted (median)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for the whole run (0: torch's default)")
    p.add_argument("--capture", action="store_true", help="also measure fragments vs TorchScript-tracer capture")
    p.add_argument("--json", type=Path)
    p.add_argument("--append", action="store_true", help="keep the rows already in --json (a run in parts)")
    a = p.parse_args(argv)
    default_threads = torch.get_num_threads()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows: list[dict[str, Any]] = []
    if a.append and a.json and a.json.exists():
        rows = json.loads(a.json.read_text())["rows"]
    for name in a.models.split(","):
        print(f"{name} ...", file=sys.stderr, flush=True)
        row = bench(name, a)
        old = next((i for i, r in enumerate(rows) if r["model"] == name), None)
        if old is not None:
            if "capture" not in row and "capture" in rows[old]:
                row["capture"], row["capture_from_earlier_run"] = rows[old]["capture"], True
            rows[old] = row
        else:
            rows.append(row)
        if a.json:
            a.json.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                          "default_threads": default_threads,
                                          "args": {k: str(v) for k, v in vars(a).items()}, "rows": rows},
                                         indent=1, default=str) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
