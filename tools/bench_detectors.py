"""Detectors that torch.export cannot capture whole: graphprune vs Torch-Pruning in one run (issue #13).

Models (random weights, BatchNorm statistics calibrated on the benchmark image and norm affines
perturbed, so channels differ and head outputs are not ~0): torchvision SSDlite320-MobileNetV3,
FCOS-R50-FPN, RetinaNet-R50-FPN, Faster R-CNN MobileNetV3-FPN and R50-FPN, Mask R-CNN R50-FPN
(min/max size ``--size``), a small DETR from transformers (timm resnet18 backbone, not pretrained),
and graphprune's models/yolo.py. Per model and tool:

- graphprune: ``gp.prune(model, ([image],), flops=F)`` (zero config: the fallback capture pins
  the head outputs because glue reads them); Torch-Pruning: its documented ``MetaPruner`` with L2
  magnitude importance, ``ignored_layers`` = the heads, one ``step()`` at ``pruning_ratio=R``;
- FLOPs kept: ``torch.utils.flop_counter.FlopCounterMode`` on the whole eager forward (glue
  included), pruned over original, the same counter for both tools;
- structure kept: the outputs have the original's pytree structure (types, dict keys) and every
  output tensor the original's trailing dims; the pre-NMS head outputs (forward hooks on the head
  modules) have the original's shapes; and the model runs at a second image size;
- latency: median eager forward (NMS included) on one image, torch at its default threads;
- time: the pruning call.

``--capture`` adds the measurement behind the choice of capture method: the fraction of the
model's MACs (FlopCounterMode) that graphprune can prune when the model is captured as fragments
(``gp.analyze`` on the module; a layer's MACs count half for each of its output and input channel
axes that can shrink) vs through the TorchScript tracer (``torch.onnx.export(...,
dynamo=False)`` of the whole detector, then ``gp.analyze`` of the .onnx).

    python tools/bench_detectors.py --json docs/bench/detectors.json [--models ssdlite,yolo] [--capture] [--append]
"""

from __future__ import annotations

import argparse
import copy
import json
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


def latency_ms(model: nn.Module, inputs: Any, runs: int) -> float:
    _call(model, inputs)
    _call(model, inputs)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        _call(model, inputs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


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


def run_torch_pruning(model: nn.Module, inputs: Any, heads: list[nn.Module], ratio: float) -> tuple[nn.Module, dict[str, Any]]:
    import torch_pruning as tp

    m = copy.deepcopy(model)
    ignored = [m.get_submodule(n) for n, mod in model.named_modules() if any(mod is h for h in heads)]
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(m, inputs, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=ignored)
    pruner.step()
    return m.eval(), {"seconds": time.perf_counter() - t0}


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


def bench(name: str, size: int, flops: float, ratio: float, runs: int, with_capture: bool) -> dict[str, Any]:
    model, inputs, heads = build(name, size)
    head_paths = [n for n, m in model.named_modules() if any(m is h for h in heads)]
    base_macs = macs(model, inputs)
    row: dict[str, Any] = {"model": name, "class": type(model).__name__, "image": size, "macs": base_macs,
                           "latency_ms": latency_ms(model, inputs, runs)}
    if with_capture:
        row["capture"] = capture_comparison(model, inputs, base_macs)
    for tool, fn in (("graphprune", lambda: run_graphprune(model, inputs, flops)),
                     ("torch_pruning", lambda: run_torch_pruning(model, inputs, heads, ratio))):
        try:
            pruned, info = fn()
            info["flops_kept"] = macs(pruned, inputs) / base_macs
            info["structure"] = structure(model, pruned, head_paths, inputs, size)
            info["latency_ms"] = latency_ms(pruned, inputs, runs)
            info["same_class"] = type(pruned) is type(model)
        except Exception as exc:  # a tool failing on a model is a result, not a crash of the run
            info = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
            traceback.print_exc(limit=3, file=sys.stderr)
        row[tool] = info
        print(f"  {name} {tool}: {_cell(info)}", file=sys.stderr, flush=True)
    return row


def _cell(info: dict[str, Any]) -> str:
    if "error" in info:
        return "FAILED " + info["error"][:90]
    s = info["structure"]
    return (f"FLOPs {info['flops_kept']:.3f}  structure {'kept' if s['kept'] else 'BROKEN'}  "
            f"{info['latency_ms']:.0f} ms  {info['seconds']:.1f} s")


def _capture_cell(info: dict[str, Any]) -> str:
    cap = info.get("capture")
    if not cap:
        return "-"
    if cap.get("method") != "fragments":
        return "torch.export (whole)"
    check = cap.get("pre_barrier_check", {})
    ok = "ok" if check.get("ok") else "FAILED"
    return f"fragments {', '.join(cap['fragments'])}; glue: {', '.join(sorted(cap['glue_barriers']))} ({ok}, {check.get('tensors', 0)} tensors)"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | original ms | graphprune: FLOPs kept, structure, ms, prune s | graphprune capture (pre-barrier check) "
             "| Torch-Pruning: FLOPs kept, structure, ms, prune s |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['latency_ms']:.0f} | {_cell(r['graphprune'])} | {_capture_cell(r['graphprune'])} "
                     f"| {_cell(r['torch_pruning'])} |")
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
    p.add_argument("--ratio", type=float, default=0.225, help="Torch-Pruning pruning_ratio (1 - sqrt(0.6))")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--capture", action="store_true", help="also measure fragments vs TorchScript-tracer capture")
    p.add_argument("--json", type=Path)
    p.add_argument("--append", action="store_true", help="keep the rows already in --json (a run in parts)")
    a = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    if a.append and a.json and a.json.exists():
        rows = json.loads(a.json.read_text())["rows"]
    for name in a.models.split(","):
        print(f"{name} ...", file=sys.stderr, flush=True)
        rows.append(bench(name, a.size, a.flops, a.ratio, a.runs, a.capture))
        if a.json:
            a.json.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                          "args": {k: str(v) for k, v in vars(a).items()}, "rows": rows},
                                         indent=1, default=str) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
