"""Speed-up at equal FLOPs: graphprune's defaults against Torch-Pruning, timed as deployed.

For each model of the zoo (tools/zoo.py) and one FLOPs target ``t`` (fraction kept):

* ``gp``: ``gp.prune(model, x, flops=t)`` with every default (widths on the runtime's step);
* ``gp-r1``: the same with ``round_to=1`` (any width: what the rounding default buys);
* ``tp-1``: Torch-Pruning's fastest documented way to a given result: ONE ``pruner.step()`` at a
  known ``pruning_ratio`` (the ratio that reaches ``t`` is found by bisection; the time column is
  the final build + step, the search is in the JSON);
* ``tp-prog``: Torch-Pruning's documented way to an exact FLOPs target (its ImageNet benchmark's
  ``prune_to_target_flops``): ``iterative_steps=100``, ``step()`` until FLOPs <= t.

Torch-Pruning uses ``GroupMagnitudeImportance(p=2)`` and its model recipes from
tools/bench_vs_torch_pruning.py, with its own default ``round_to`` (None). All models are counted
with one counter (``gp.count_flops``), exported with the same exporter and timed on onnxruntime CPU
in one interleaved loop (every model once per round; median of ``--runs`` rounds) twice: with
onnxruntime's default intra-op thread count (0: one thread per physical core, as a deployed session
runs) and pinned to 1 thread.

    /work/venv-bench/bin/python tools/bench_speed_equal_flops.py --target 0.5 --json docs/bench/speed_equal_flops.json

Needs torchvision, timm and torch-pruning (a venv with torch 2.14.1 + torchvision 0.29.1; see
docs/LATENCY.md). This file lives in tools/: it is never imported by the graphprune package.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vs_torch_pruning import (  # noqa: E402
    _versions,
    gp_counter,
    interleaved_median_ms,
    onnx_session,
    resolve_model,
    run_gp,
    run_tp,
)
from benchutil import short_error, time_limit  # noqa: E402

MODELS = ("resnet50,resnext50_32x4d,mobilenet_v2,mobilenet_v3_large,efficientnet_b0,densenet121,regnet_y_400mf,"
          "convnext_tiny,inception_v3,shufflenet_v2_x1_0,vit_b_16,deit_tiny_patch16_224,swin_t,mobilevit_s")
VARIANTS = ("gp", "gp-r1", "tp-1", "tp-prog")
THREADS = {"default": 0, "1 thread": 1}


def _tp_args(mode: str) -> argparse.Namespace:
    return argparse.Namespace(counter="gp", tp_mode=mode, tp_recipe="auto", tp_steps=100, tp_bisect_iters=8,
                              round_to=None)


def prune_variants(model: torch.nn.Module, x: Any, target: float, timeout: float) -> tuple[dict[str, Any], dict]:
    """Every variant's pruned model (or its error) and its timings."""
    models: dict[str, Any] = {}
    info: dict[str, Any] = {}
    jobs = {
        "gp": lambda: run_gp(model, x, target, None),
        "gp-r1": lambda: run_gp(model, x, target, 1),
        "tp-1": lambda: run_tp(model, x, target, _tp_args("bisect")),
        "tp-prog": lambda: run_tp(model, x, target, _tp_args("progressive")),
    }
    for tag, job in jobs.items():
        try:
            with time_limit(timeout):
                t0 = time.perf_counter()
                r = job()
                r["wall_s"] = round(time.perf_counter() - t0, 2)
            models[tag] = r.pop("_model")
            info[tag] = {k: v for k, v in r.items() if not k.startswith("gp_report")}
        except Exception as exc:  # noqa: BLE001 - one tool failing must not stop the others
            info[tag] = {"error": short_error(exc)}
    return models, info


def bench(name: str, target: float, runs: int, timeout: float) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "target": target}
    _, factory = resolve_model(name)
    torch.manual_seed(0)
    model, x = factory()
    model.eval()
    pruned, row["variants"] = prune_variants(model, x, target, timeout)
    count = gp_counter()
    assert count is not None, "graphprune is not importable in this venv"
    base = count(model, x)[0]
    row["flops_kept"] = {}
    for tag, m in pruned.items():
        try:
            row["flops_kept"][tag] = round(count(m, x)[0] / base, 4)
        except Exception as exc:  # noqa: BLE001
            row["variants"][tag]["count_error"] = short_error(exc)
    row["ms"] = {}
    for label, threads in THREADS.items():
        with tempfile.TemporaryDirectory() as tmp:
            sessions = {}
            for tag, m in [("dense", model), *pruned.items()]:
                try:
                    sess, feeds, _ = onnx_session(m, x, tmp, tag, threads)
                    sessions[tag] = (sess, feeds)
                except Exception as exc:  # noqa: BLE001
                    row.setdefault("export_errors", {})[tag] = short_error(exc)
            row["ms"][label] = interleaved_median_ms(sessions, runs)
    return row


def speedups(row: dict[str, Any], label: str) -> dict[str, float]:
    ms = row["ms"].get(label, {})
    dense = ms.get("dense")
    return {tag: round(dense / ms[tag], 3) for tag in VARIANTS if dense and ms.get(tag)}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label in THREADS:
        sp = [speedups(r, label) for r in rows]
        med = {tag: round(statistics.median([s[tag] for s in sp if tag in s]), 3)
               for tag in VARIANTS if any(tag in s for s in sp)}
        best_tp = [max(s.get("tp-1", 0), s.get("tp-prog", 0)) for s in sp]
        gp_faster = sum(1 for s, b in zip(sp, best_tp, strict=True) if "gp" in s and s["gp"] > b)
        out[label] = {"median_speedup": med, "gp_faster_than_best_tp": f"{gp_faster}/{len(rows)}",
                      "gp_slower_than_dense": [r["model"] for r, s in zip(rows, sp, strict=True) if s.get("gp", 2) < 1.0]}
    return out


def print_table(rows: list[dict[str, Any]], summ: dict[str, Any], target: float) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Speed-up at {target} of the FLOPs, onnxruntime CPU (dense ms / pruned ms)")
    t.add_column("model")
    for tag in VARIANTS:
        t.add_column(f"{tag} FLOPs", justify="right")
    for label in THREADS:
        for tag in VARIANTS:
            t.add_column(f"{tag} x ({label})", justify="right")
    for r in rows:
        cells = [f"{r['flops_kept'][tag]:.3f}" if tag in r.get("flops_kept", {}) else
                 r["variants"].get(tag, {}).get("error", "-")[:40] for tag in VARIANTS]
        for label in THREADS:
            sp = speedups(r, label)
            cells += [f"{sp[tag]:.2f}" if tag in sp else "-" for tag in VARIANTS]
        t.add_row(r["model"], *cells)
    Console(width=240).print(t)
    Console().print_json(data=summ)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=MODELS, help="comma-separated tools/zoo.py names")
    p.add_argument("--target", type=float, default=0.5, help="fraction of FLOPs to keep")
    p.add_argument("--runs", type=int, default=30, help="interleaved rounds per thread setting")
    p.add_argument("--timeout", type=float, default=900, help="seconds per variant per model")
    p.add_argument("--json", help="write rows + summary here")
    ns = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    rows = []
    for name in [m.strip() for m in ns.models.split(",") if m.strip()]:
        t0 = time.perf_counter()
        try:
            row = bench(name, ns.target, ns.runs, ns.timeout)
        except Exception as exc:  # noqa: BLE001
            row = {"model": name, "error": short_error(exc), "variants": {}, "ms": {}}
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
    ok = [r for r in rows if "error" not in r]
    summ = summary(ok)
    print_table(ok, summ, ns.target)
    if ns.json:
        Path(ns.json).write_text(json.dumps({"meta": {"argv": sys.argv[1:], "versions": _versions(),
                                                      "threads": THREADS}, "summary": summ, "rows": rows},
                                            indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
