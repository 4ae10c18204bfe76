"""Latency benchmark: predictor error, and latency- vs FLOPs-targeted pruning at equal latency.

    python tools/bench_latency.py --out docs/latency_bench.json [--archs resnet50,...] [--variants 10]

1. Predictor error. Per architecture: the calibrated table model is set up (profiling what the
   cache lacks; calibration uses seeds 0..), then ``--variants`` random pruned variants with
   other seeds are rewritten, exported and measured side by side on onnxruntime; the error is
   |pred - meas| / meas. Reported: median and p90 per architecture and over all variants.
2. Latency- vs FLOPs-targeted. The same scores (L2, group-normalized) and the same greedy
   knapsack allocator, once with the measured-latency cost (width steps of the runtime) and
   once with FLOPs (step 1), swept over budgets; all models of one architecture are measured
   interleaved in one run. Importance kept (sum of kept unit scores / total) is compared at equal
   *measured* latency by interpolating the FLOPs sweep at the latency-targeted models' latencies.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from graphprune.models import build
from graphprune.passes.score import weights_of

from graphprune.analysis import couple, normalize_per_group
from graphprune.analysis.allocation import ShapeTable
from graphprune.analysis.importance import CRITERIA, CriterionInputs
from graphprune.analysis.knapsack import allocate_greedy
from graphprune.cost import count, predict
from graphprune.cost.profile import random_masks
from graphprune.cost.runtimes import make_runtime
from graphprune.frontends import capture
from graphprune.latency_source import make_timer
from graphprune.latency_target import setup_latency
from graphprune.rules import COST

ARCHS = "resnet50,resnet18,mobilenet_v2,vit_tiny,unet"


def flops_cost(n, s):  # type: ignore[no-untyped-def]
    return float(COST[n.op](n, s)) if n.op in COST else 0.0


def bench_arch(name: str, variants: int, threads: int, lat_fracs: list[float], flops_fracs: list[float]) -> dict:
    model, x = build(name)
    model.eval()
    cap = capture(model, x)
    graph = cap.graph
    coupling = couple(graph)
    scores = normalize_per_group(coupling, CRITERIA["l2"](CriterionInputs(coupling, weights_of(graph, model))))
    t0 = time.perf_counter()
    timer = make_timer(make_runtime("onnxruntime", threads), graph, coupling, model=model, example_inputs=x,
                       program=cap.program)
    setup = setup_latency(graph, coupling, timer)
    t_setup = time.perf_counter() - t0
    lm, table, rt = setup.model, ShapeTable(coupling), setup.runtime
    # 1. predictor error on variants the calibration never saw
    masks = random_masks(coupling, rt.step, variants, seed=1000)
    pred = [predict(lm, graph, table.shapes(m)).total for m in masks]
    meas = timer.measure_masks(masks)
    err = [abs(p - m) / m for p, m in zip(pred, meas, strict=True)]
    # 2. latency- vs FLOPs-targeted at equal measured latency
    cal = lm.calibration
    lat_masks = [allocate_greedy(coupling, scores, lm.node_latency, f * setup.base_measured, step=rt.step,
                                 scale=cal.scale, offset=cal.offset).removed for f in lat_fracs]
    base_flops = count(graph).flops
    fl_masks = [allocate_greedy(coupling, scores, flops_cost, f * base_flops, step=1).removed for f in flops_fracs]
    all_masks = lat_masks + fl_masks
    times = timer.measure_masks([np.zeros(coupling.n_units, dtype=bool)] + all_masks)
    orig = times[0]
    kept = [float(scores[~m].sum() / scores.sum()) for m in all_masks]
    lt, ft = times[1 : 1 + len(lat_masks)], times[1 + len(lat_masks) :]
    lk, fk = kept[: len(lat_masks)], kept[len(lat_masks) :]
    order = np.argsort(ft)
    compare = []
    for t, k, f in zip(lt, lk, lat_fracs, strict=True):
        inside = min(ft) <= t <= max(ft)
        fk_at = float(np.interp(t, np.asarray(ft)[order], np.asarray(fk)[order]))
        compare.append({"latency_budget": f, "measured_ms": t * 1e3, "speedup": orig / t, "importance_latency": k,
                        "importance_flops_at_same_latency": fk_at, "interpolated": inside,
                        "better": k > fk_at})
    return {
        "arch": name, "setup_s": t_setup, "signatures_measured_now": setup.measured_now,
        "calibration": setup.info()["calibration"], "original_ms": orig * 1e3,
        "predictor": {"pred_ms": [p * 1e3 for p in pred], "meas_ms": [m * 1e3 for m in meas], "rel_err": err,
                      "median": float(np.median(err)), "p90": float(np.percentile(err, 90))},
        "sweep": {"latency": [{"budget": f, "ms": t * 1e3, "kept": k} for f, t, k in zip(lat_fracs, lt, lk, strict=True)],
                  "flops": [{"budget": f, "ms": t * 1e3, "kept": k} for f, t, k in zip(flops_fracs, ft, fk, strict=True)]},
        "compare": compare,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default=ARCHS)
    ap.add_argument("--variants", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="latency_bench.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name in args.archs.split(","):
        t0 = time.perf_counter()
        r = bench_arch(name, args.variants, args.threads, [0.5, 0.7], [0.15, 0.25, 0.4, 0.55, 0.7, 0.85])
        r["seconds"] = time.perf_counter() - t0
        rows.append(r)
        p = r["predictor"]
        print(f"{name:14s} orig {r['original_ms']:.3f} ms  pred err median {100 * p['median']:.1f}% p90 {100 * p['p90']:.1f}%  "
              + "  ".join(f"L{c['latency_budget']}: {c['measured_ms']:.3f}ms x{c['speedup']:.2f} kept {c['importance_latency']:.3f}"
                          f" vs flops {c['importance_flops_at_same_latency']:.3f}" for c in r["compare"])
              + f"  ({r['seconds']:.0f}s)", flush=True)
    errs = [e for r in rows for e in r["predictor"]["rel_err"]]
    wins = sum(all(c["better"] for c in r["compare"]) for r in rows)
    summary = {"variants": len(errs), "archs": len(rows), "median_err": float(np.median(errs)),
               "p90_err": float(np.percentile(errs, 90)), "archs_latency_keeps_more": wins}
    print(json.dumps(summary))
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
