"""Retraining-free pruning quality on two small trained models (see tools/quality_models.py).

cnn  digits CNN: test accuracy at ``--cnn-flops`` (default 0.7) of the FLOPs; calibration = 256
     TRAINING images (the test split is only used for the reported accuracy)
lm   byte-level LLaMA-style LM: perplexity on the held-out last 10% of the text at ``--lm-flops``
     (default 0.8); calibration = 64 training windows of 64 bytes

Every criterion, with and without reconstruction (cnn: lsq,bias,bn; lm: lsq,bias); ``default`` is
``prune(model, x, flops=F, calib=calib)`` with nothing else set.

    python tools/bench_quality_small.py --json docs/bench/quality_small.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_models import LM_SEQ, load_cnn, load_lm  # noqa: E402

import graphprune as gp  # noqa: E402

# "default": prune(model, x, flops=F, calib=calib) with nothing else set (the calibrated default recipe)
CRITERIA = ("default", "l1", "l2", "random", "bn_scale", "wanda", "flap", "taylor", "fisher")


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


@torch.no_grad()
def perplexity(model: nn.Module, text: torch.Tensor, batch: int = 16) -> float:
    n = (len(text) - 1) // LM_SEQ
    windows = text[: n * LM_SEQ + 1]
    xs = windows[:-1].view(n, LM_SEQ)
    ys = windows[1:].view(n, LM_SEQ)
    total, count = 0.0, 0
    for i in range(0, n - batch + 1, batch):
        logits = model(xs[i : i + batch])
        total += float(F.cross_entropy(logits.reshape(-1, 256), ys[i : i + batch].reshape(-1), reduction="sum"))
        count += ys[i : i + batch].numel()
    return math.exp(total / count)


def run(kind: str, flops: float, criteria: list[str], allocation: str | None = None) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    if kind == "cnn":
        model, (xtr, ytr, xte, yte) = load_cnn()
        g = torch.Generator().manual_seed(0)
        pick = torch.randperm(len(ytr), generator=g)[:256]
        calib = list(xtr[pick].split(32))
        dense = accuracy(model, xte, yte)

        def metric(m: nn.Module) -> float:
            return accuracy(m, xte, yte)

        recons = ("", "lsq,bias,bn")
        name = "accuracy"
    else:
        model, (train, test) = load_lm()
        g = torch.Generator().manual_seed(0)
        starts = torch.randint(0, len(train) - LM_SEQ, (64,), generator=g)
        calib = list(torch.stack([train[s : s + LM_SEQ] for s in starts]).split(16))
        dense = perplexity(model, test)

        def metric(m: nn.Module) -> float:
            return perplexity(m, test)

        recons = ("", "lsq,bias")
        name = "perplexity"
    print(f"{kind}: dense {name} {dense:.4f}", flush=True)
    rows.append({"model": kind, "flops": 1.0, "criterion": "dense", "reconstruct": "-", name: round(dense, 4)})
    for crit in criteria:
        for recon in ("",) if crit == "default" else recons:
            t0 = time.perf_counter()
            if crit == "default":
                res = gp.prune(model, calib[0], flops=flops, calib=calib)
                recon = ",".join(r.removeprefix("reconstruct-") for r in res.report["reconstruction"])
            else:
                res = gp.prune(model, calib[0], flops=flops, criterion=crit, calib=calib, reconstruct=recon,
                               allocation=allocation)
            value = metric(res.model)
            row = {"model": kind, "flops": flops, "criterion": crit if crit != "default" else
                   f"default ({res.report['criterion']}, {res.report['allocation']})", "reconstruct": recon or "-",
                   name: round(value, 4),
                   "achieved": round(res.report["achieved"]["flops"], 4), "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(f"{kind} {flops} {crit:8s} {row['reconstruct']:12s} {name} {value:.4f} "
                  f"achieved {row['achieved']:.3f}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["cnn", "lm"], choices=["cnn", "lm"])
    p.add_argument("--cnn-flops", type=float, default=0.7)
    p.add_argument("--lm-flops", type=float, default=0.8)
    p.add_argument("--criteria", nargs="+", default=list(CRITERIA))
    p.add_argument("--allocation", choices=["uniform", "global", "greedy"], help="for the named criteria")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows: list[dict[str, object]] = []
    for kind in args.models:
        rows += run(kind, args.cnn_flops if kind == "cnn" else args.lm_flops, args.criteria, args.allocation)
    print("\n| model | FLOPs | criterion | reconstruct | accuracy / perplexity | achieved |\n|---|---|---|---|---|---|")
    for r in rows:
        v = r.get("accuracy", r.get("perplexity"))
        print(f"| {r['model']} | {r['flops']} | {r['criterion']} | {r['reconstruct']} | {v} | {r.get('achieved', 1.0)} |")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"command": "python tools/bench_quality_small.py " + " ".join(sys.argv[1:]), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
