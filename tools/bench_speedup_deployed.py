"""Does ``speedup=2`` hold where the model is deployed? Thread count at pruning vs at serving.

For each built-in model: ``gp.prune(model, x, speedup=S)`` twice, once with the default thread
count (the runtime's own: onnxruntime uses one intra-op thread per physical core) and once pinned
to ``threads=1``. Then the original and both pruned models are exported, opened in FRESH
onnxruntime sessions at the default thread count (how a serving process opens them) and at 1
thread, and timed interleaved (every model once per round, median of ``--runs`` rounds). The
table shows the speed-up each pruned model gives in each deployment setting, next to the one the
pruning loop measured.

    python tools/bench_speedup_deployed.py --json docs/bench/speedup_deployed.json [--models resnet50_w025,...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
from graphprune.models import build

import graphprune as gp
from graphprune.cost.runtimes import physical_cores
from graphprune.export import save_model

MODELS = "resnet50_w025,resnet18_w050,mobilenet_v2,vit_tiny,unet"
SETTINGS = {"default": 0, "1 thread": 1}


def _session(path: str, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads  # 0: onnxruntime's default
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle sessions must not spin
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _timed(paths: dict[str, str], arrays: list[Any], threads: int, runs: int) -> dict[str, float]:
    sessions = {tag: _session(p, threads) for tag, p in paths.items()}
    # the exporters name inputs differently (input.1, x, images): feed by position
    feeds = {tag: {i.name: a for i, a in zip(s.get_inputs(), arrays, strict=False)} for tag, s in sessions.items()}
    for tag, s in sessions.items():
        for _ in range(5):
            s.run(None, feeds[tag])
    times: dict[str, list[float]] = {t: [] for t in sessions}
    for _ in range(runs):
        for tag, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds[tag])
            times[tag].append((time.perf_counter() - t0) * 1e3)
    return {t: statistics.median(v) for t, v in times.items()}


def bench(name: str, speedup: float, runs: int) -> dict[str, Any]:
    model, x = build(name)
    row: dict[str, Any] = {"model": name, "target_speedup": speedup, "loop": {}}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"dense": f"{tmp}/dense.onnx"}
        save_model(model, paths["dense"], x)
        for label, threads in SETTINGS.items():
            res = gp.prune(model, x, speedup=speedup, threads=threads or None)
            lat = res.report["latency"]
            row["loop"][label] = {"threads": lat["threads"], "measured_speedup": round(lat["measured_speedup"], 3),
                                  "met": lat["met"], "flops_kept": round(res.report["achieved"]["flops"], 4)}
            paths[f"pruned@{label}"] = f"{tmp}/{label.replace(' ', '_')}.onnx"
            res.save(paths[f"pruned@{label}"])
        arrays = [t.numpy() for t in x]
        row["deployed_ms"] = {label: _timed(paths, arrays, threads, runs) for label, threads in SETTINGS.items()}
    row["deployed_speedup"] = {
        label: {tag: round(ms["dense"] / ms[tag], 3) for tag in ms if tag != "dense"}
        for label, ms in row["deployed_ms"].items()
    }
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=MODELS)
    p.add_argument("--speedup", type=float, default=2.0)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--json")
    ns = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    rows = []
    for name in [m.strip() for m in ns.models.split(",") if m.strip()]:
        rows.append(bench(name, ns.speedup, ns.runs))
        print(json.dumps(rows[-1]), flush=True)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"speedup={ns.speedup}: loop measurement vs fresh sessions "
                    f"(default = onnxruntime's own thread count, {physical_cores()} here)")
    for col in ("model", "pruned at", "loop measured", "served at default", "served at 1 thread"):
        t.add_column(col, justify="left" if col in ("model", "pruned at") else "right")
    for r in rows:
        for label in SETTINGS:
            loop = r["loop"][label]
            t.add_row(r["model"], f"{label} ({loop['threads']} thr)", f"x{loop['measured_speedup']:.2f}",
                      *(f"x{r['deployed_speedup'][s][f'pruned@{label}']:.2f}" for s in SETTINGS))
    Console(width=160).print(t)
    if ns.json:
        Path(ns.json).write_text(json.dumps({"argv": sys.argv[1:], "torch": torch.__version__,
                                             "onnxruntime": ort.__version__, "physical_cores": physical_cores(),
                                             "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
