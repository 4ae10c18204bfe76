"""Latency benchmark: predictor error, and latency- vs FLOPs-targeted pruning at equal latency.

    python tools/bench_latency.py --out docs/latency_bench.json [--archs resnet50_w025,...] [--variants 10]

1. Predictor error. Per architecture: the calibrated table model is set up (profiling what the
   cache lacks; calibration uses seeds 0..), then ``--variants`` random pruned variants with
   other seeds are rewritten, exported and measured side by side on onnxruntime; the error is
   |pred - meas| / meas. Reported: median and p90 per architecture and over all variants.
2. Latency- vs FLOPs-targeted. The same scores (L2, group-normalized) feed graphprune's own
   ``allocate`` pass, as ``gp.prune`` runs it: latency budgets (``latency=F``) with the uniform
   allocation (the default for L2) and with the greedy knapsack, and a sweep of FLOPs budgets
   with the uniform allocation (the FLOPs default) and the greedy knapsack. All models of one
   architecture are exported and measured interleaved in one run. Importance kept (sum of kept
   unit scores / total) is compared at equal *measured* latency, like for like (uniform vs
   uniform, greedy vs greedy) and greedy-latency vs uniform-FLOPs: each FLOPs sweep's
   best-importance-so-far envelope (a slower model keeping less is never the better FLOPs choice)
   is interpolated at the latency-targeted model's measured latency. A latency-targeted model
   faster than every model of the sweep wins when it also keeps more than the sweep's fastest
   model (it dominates it); otherwise the point does not count. The same comparison on
   *predicted* latency (no measurement noise) is reported beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
from graphprune.models import build
from graphprune.passes import PassContext
from graphprune.passes.allocate import Allocate
from graphprune.passes.score import weights_of

from graphprune.analysis import couple, normalize_per_group
from graphprune.analysis.allocation import ShapeTable
from graphprune.analysis.importance import CRITERIA, CriterionInputs
from graphprune.cost import predict
from graphprune.cost.profile import random_masks
from graphprune.cost.runtimes import make_runtime
from graphprune.frontends import capture
from graphprune.latency_source import make_timer
from graphprune.latency_target import setup_latency

ARCHS = "resnet50_w025,resnet18_w050,mobilenet_v2,vit_tiny,unet"
LAT_FRACS = [0.5, 0.7]
FLOPS_FRACS = [0.04, 0.06, 0.08, 0.12, 0.16, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.85]
PAIRS = (("latency_uniform", "flops_uniform"), ("latency_greedy", "flops_greedy"), ("latency_greedy", "flops_uniform"))


def envelope_at(t: float, times: list[float], kept: list[float]) -> float | None:
    """Importance of the FLOPs sweep at measured latency ``t``: the running maximum of importance
    over models sorted by latency, linearly interpolated; None outside the measured range."""
    order = np.argsort(times)
    ts, ks = np.asarray(times)[order], np.maximum.accumulate(np.asarray(kept)[order])
    if not ts[0] <= t <= ts[-1]:
        return None
    return float(np.interp(t, ts, ks))


def judge(t: float, k: float, times: list[float], kept: list[float]) -> tuple[float | None, bool | None]:
    """(sweep importance at ``t`` or None, does (t, k) beat the sweep: True/False, None = no verdict)."""
    at = envelope_at(t, times, kept)
    if at is not None:
        return at, k > at
    fastest = int(np.argmin(times))
    if t < times[fastest]:
        return None, (True if k > kept[fastest] else None)  # faster and keeps more: dominates
    return None, None


def bench_arch(name: str, variants: int, threads: int, depth: bool | None) -> dict:
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

    # 2. the allocate pass, as gp.prune runs it, under each budget
    def allocation(**budget: float | str) -> np.ndarray:
        ctx = PassContext(model=model, example_inputs=x, program=cap.program)
        ctx.coupling, ctx.scores, ctx.latency = coupling, scores, setup
        extra = {"depth": depth} if depth is not None and "depth" in {f.name for f in dataclasses.fields(Allocate)} else {}
        Allocate(**budget, threads=threads, **extra).run(graph, ctx)  # type: ignore[arg-type]
        return ctx.allocation.removed

    plans = {"latency_uniform": [allocation(latency=f, policy="uniform") for f in LAT_FRACS],
             "latency_greedy": [allocation(latency=f, policy="greedy") for f in LAT_FRACS],
             "flops_uniform": [allocation(flops=f) for f in FLOPS_FRACS],
             "flops_greedy": [allocation(flops=f, policy="greedy") for f in FLOPS_FRACS]}
    flat = [m for ms in plans.values() for m in ms]
    times = timer.measure_masks([np.zeros(coupling.n_units, dtype=bool)] + flat)
    orig, it = times[0], iter(times[1:])
    sweep = {}
    for key, ms in plans.items():
        fr = LAT_FRACS if key.startswith("latency") else FLOPS_FRACS
        sweep[key] = [{"budget": f, "ms": next(it) * 1e3, "pred_ms": predict(lm, graph, table.shapes(m)).total * 1e3,
                       "kept": float(scores[~m].sum() / scores.sum())} for f, m in zip(fr, ms, strict=True)]
    compare = []
    for mine, base in PAIRS:
        s = sweep[base]
        for row in sweep[mine]:
            at, win = judge(row["ms"], row["kept"], [r["ms"] for r in s], [r["kept"] for r in s])
            at_pred, win_pred = judge(row["pred_ms"], row["kept"], [r["pred_ms"] for r in s], [r["kept"] for r in s])
            compare.append({"latency": mine, "flops": base, "latency_budget": row["budget"], "measured_ms": row["ms"],
                            "speedup": orig * 1e3 / row["ms"], "importance_latency": row["kept"],
                            "importance_flops_at_same_latency": at, "better": win,
                            "importance_flops_at_same_predicted": at_pred, "better_predicted": win_pred})
    return {
        "arch": name, "setup_s": t_setup, "signatures_measured_now": setup.measured_now,
        "calibration": setup.info()["calibration"], "original_ms": orig * 1e3,
        "predictor": {"pred_ms": [p * 1e3 for p in pred], "meas_ms": [m * 1e3 for m in meas], "rel_err": err,
                      "median": float(np.median(err)), "p90": float(np.percentile(err, 90))},
        "sweep": sweep, "compare": compare,
    }


def _fmt(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:.3f}"


def markdown(data: dict) -> str:
    """The tables of docs/LATENCY.md from a benchmark JSON."""
    out = ["| arch | original ms | predictor error median | p90 |", "|---|---|---|---|"]
    for r in data["rows"]:
        p = r["predictor"]
        out.append(f"| {r['arch']} | {r['original_ms']:.3f} | {100 * p['median']:.1f}% | {100 * p['p90']:.1f}% |")
    s = data["summary"]
    out.append(f"| all ({s['variants']} variants) | | {100 * s['median_err']:.1f}% | {100 * s['p90_err']:.1f}% |")
    out += ["", "| arch | latency-targeted | budget | measured ms (speed-up) | importance kept | FLOPs-targeted | "
            "its importance at the same measured latency | verdict | same, at equal predicted latency |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        for c in r["compare"]:
            verdict = {True: "**more**", False: "less", None: "no verdict"}[c["better"]]
            out.append(f"| {r['arch']} | {c['latency'].split('_')[1]} | {c['latency_budget']} | {c['measured_ms']:.3f} "
                       f"(x{c['speedup']:.2f}) | {c['importance_latency']:.3f} | {c['flops'].split('_')[1]} | "
                       f"{_fmt(c['importance_flops_at_same_latency'])} | {verdict} | "
                       f"{_fmt(c['importance_flops_at_same_predicted'])} |")
    wins = s["archs_latency_keeps_more_at_both_budgets"]
    out += ["", "Architectures where the latency-targeted model keeps more at both budgets: "
            + ", ".join(f"{k.replace('_vs_', ' vs ').replace('_', ' ')}: {v} of {s['archs']}" for k, v in wins.items())]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default=ARCHS)
    ap.add_argument("--variants", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--depth", choices=["default", "on", "off"], default="default",
                    help="whole-branch removal in the latency allocation (default: the pass's default)")
    ap.add_argument("--out", default="latency_bench.json")
    ap.add_argument("--render", metavar="JSON", help="only print the markdown tables of an earlier run's JSON")
    args = ap.parse_args()
    if args.render:
        print(markdown(json.loads(Path(args.render).read_text())))
        return
    logging.basicConfig(level=logging.WARNING)
    depth = {"default": None, "on": True, "off": False}[args.depth]
    rows = []
    for name in args.archs.split(","):
        t0 = time.perf_counter()
        r = bench_arch(name, args.variants, args.threads, depth)
        r["seconds"] = time.perf_counter() - t0
        rows.append(r)
        p = r["predictor"]
        print(f"{name:13s} orig {r['original_ms']:.3f} ms  pred err median {100 * p['median']:.1f}% p90 {100 * p['p90']:.1f}%"
              f"  ({r['seconds']:.0f}s)", flush=True)
        for c in r["compare"]:
            verdict = {True: "more", False: "less", None: "no verdict"}[c["better"]]
            print(f"    {c['latency']:15s} latency={c['latency_budget']}: {c['measured_ms']:.3f} ms (x{c['speedup']:.2f}) keeps "
                  f"{c['importance_latency']:.3f}; {c['flops']} {_fmt(c['importance_flops_at_same_latency'])} at the same "
                  f"measured latency -> {verdict} (predicted: {_fmt(c['importance_flops_at_same_predicted'])})", flush=True)
    errs = [e for r in rows for e in r["predictor"]["rel_err"]]
    wins = {f"{a}_vs_{b}": sum(all(c["better"] for c in r["compare"] if (c["latency"], c["flops"]) == (a, b)) for r in rows)
            for a, b in PAIRS}
    summary = {"variants": len(errs), "archs": len(rows), "median_err": float(np.median(errs)),
               "p90_err": float(np.percentile(errs, 90)), "archs_latency_keeps_more_at_both_budgets": wins}
    print(json.dumps(summary))
    data = {"summary": summary, "rows": rows}
    Path(args.out).write_text(json.dumps(data, indent=1))
    print(markdown(data))


if __name__ == "__main__":
    main()
