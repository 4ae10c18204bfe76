"""The calibrated default recipe on detectors captured as fragments, against the default without calibration.

For each single-stage detector of ``tools/bench_detectors.py`` (same builders: random weights,
BatchNorm statistics set on random images, so the head outputs are not degenerate) the script
prunes to ``--flops`` twice, ``gp.prune(model, x, flops=F)`` and ``gp.prune(model, x, flops=F,
calib=batches)`` (``--calib`` random images of the example's size, one per batch like the
example), and reports the relative error ``||h' - h|| / ||h||`` of the head outputs (the tensors
before decoding and NMS, all heads concatenated) on ``--test`` other random images, with the
achieved FLOPs, the seconds per prune and what reconstruction ran. Random images are not a task
metric: the error says how much of the dense heads' arithmetic each pruned model keeps.

    python tools/bench_detector_calib.py --json docs/bench/detector_calib.json          # yolo (built in)
    python tools/bench_detector_calib.py --models yolo,ssdlite,fcos,retinanet ...     # torchvision venv
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detectors import build  # noqa: E402

import graphprune as gp  # noqa: E402


def _images(example: Any, n: int, seed: int) -> list[Any]:
    """``n`` inputs shaped like ``example`` (a list of images, or DETR's pixel_values), fresh random values."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(example, dict):
        return [{"pixel_values": torch.rand(example["pixel_values"].shape, generator=g)} for _ in range(n)]
    return [([torch.rand(img.shape, generator=g) for img in example[0]],) for _ in range(n)]


def head_outputs(model: nn.Module, heads: list[str], inputs: list[Any]) -> torch.Tensor:
    got: list[torch.Tensor] = []
    hooks = [model.get_submodule(p).register_forward_hook(
        lambda _m, _a, out: got.extend(t.detach().flatten() for t in torch.utils._pytree.tree_leaves(out)
                                       if isinstance(t, torch.Tensor))) for p in heads]
    try:
        with torch.no_grad():
            for x in inputs:
                model(**x) if isinstance(x, dict) else model(*x)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(got)


def bench(name: str, a: argparse.Namespace) -> list[dict[str, Any]]:
    model, example, head_mods = build(name, a.size)
    paths = {id(m): p for p, m in model.named_modules()}
    heads = [paths[id(m)] for m in head_mods]
    test = _images(example, a.test, seed=11)
    ref = head_outputs(model, heads, test)
    rows = []
    for label, calib in (("default, no calib", None), (f"default, calib ({a.calib} images)", _images(example, a.calib, 5))):
        t0 = time.perf_counter()
        res = gp.prune(model, example, flops=a.flops, calib=calib)
        secs = time.perf_counter() - t0
        err = float((head_outputs(res.model, heads, test) - ref).norm() / ref.norm())
        rows.append({"model": name, "run": label, "achieved_flops": round(res.report["achieved"]["flops"], 4),
                     "head_rel_err": round(err, 4), "seconds": round(secs, 1),
                     "reconstruction": res.report.get("reconstruction", []),
                     "pre_barrier_ok": res.report.get("capture", {}).get("pre_barrier_check", {}).get("ok")})
        print(f"| {name} | {label} | {rows[-1]['achieved_flops']:.3f} | {err:.4f} | {secs:.1f} | "
              f"{','.join(rows[-1]['reconstruction']) or '-'} |", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="yolo")
    p.add_argument("--flops", type=float, default=0.6)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--calib", type=int, default=32, help="calibration images")
    p.add_argument("--test", type=int, default=8, help="held-out images for the head-output error")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    load = os.getloadavg()
    print("| model | run | achieved FLOPs | head-output rel. error | s | reconstruction |\n|---|---|---|---|---|---|")
    rows = [r for name in a.models.split(",") for r in bench(name, a)]
    if a.json:
        a.json.write_text(json.dumps({"command": "python tools/bench_detector_calib.py " + " ".join(sys.argv[1:]),
                                      "threads": a.threads, "load_average_before": [round(v, 2) for v in load],
                                      "load_average_after": [round(v, 2) for v in os.getloadavg()], "rows": rows},
                                     indent=2))


if __name__ == "__main__":
    main()
