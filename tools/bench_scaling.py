"""How graphprune's analysis cost grows with graph size.

Builds ResNets with Bottleneck stages of increasing depth and LLaMA-style decoders with more
layers, then times each phase of ``gp.prune(flops=0.5)``: capture (torch.export + lowering), couple,
score, allocate, rewrite (verification excluded; it is model forwards). Prints a table and the
seconds per 1000 IR nodes, which stays flat when cost is linear in graph size.

    python tools/bench_scaling.py --json docs/bench_scaling.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from graphprune.models.llama import build_llama_tiny
from graphprune.models.resnet import Bottleneck, ResNet

import graphprune as gp


def _resnet(blocks: int) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    per = max(1, blocks // 4)
    model = ResNet(Bottleneck, (per, per, per, per), num_classes=10, width=0.25).eval()
    return model, (torch.randn(1, 3, 32, 32),)


def _llama(layers: int) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    return build_llama_tiny(num_layers=layers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    cases = [("resnet", n, _resnet) for n in (8, 16, 32, 64, 128)] + [("llama", n, _llama) for n in (4, 8, 16, 32, 64)]
    print(f"{'family':8s} {'size':>5s} {'nodes':>6s} {'capture':>8s} {'analysis':>9s} {'rewrite':>8s} {'total*':>7s} {'s/1k nodes':>10s}")
    for family, n, make in cases:
        model, x = make(n)
        t0 = time.perf_counter()
        res = gp.prune(model, x, flops=0.5, pipeline="couple,score,allocate{flops=0.5},rewrite{route=module},verify{trials=0}")
        wall = time.perf_counter() - t0
        t = res.report["timings"]
        analysis = t.get("couple", 0) + t.get("score", 0) + t.get("allocate", 0)
        total = t.get("capture", 0) + analysis + t.get("rewrite", 0)
        nodes = gp.analyze(model, x).report["nodes"]
        row = {"family": family, "size": n, "nodes": nodes, "capture": t.get("capture", 0), "analysis": analysis,
               "rewrite": t.get("rewrite", 0), "total_excl_verify": total, "wall_incl_verify": wall,
               "sec_per_1k_nodes": 1000 * total / nodes, "verified": bool(res.report["verification"]["ok"])}
        rows.append(row)
        print(f"{family:8s} {n:5d} {nodes:6d} {row['capture']:8.2f} {analysis:9.2f} {row['rewrite']:8.2f} {total:7.2f} {row['sec_per_1k_nodes']:10.2f}")
    print("* capture + analysis + rewrite; verification (model forwards) excluded")
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
