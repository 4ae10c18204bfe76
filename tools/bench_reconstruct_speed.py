"""Wall and CPU time of a prune with ``reconstruct="lsq,bias"`` on the CRAFT-like detector.

The detector (``graphprune.models.craft``, VGG16-BN + U-Net head, random weights) is pruned to
``--flops`` with the given recipe and ``--images`` calibration images in batches of
``--batch x 3 x --height x --image-width``; the example input is ``--example-batch`` images of
that size (verification runs on it). Prints the per-phase timings the prune reports
(``report["timings"]``: the calibration pass split into ``calibration:forward`` / ``:sums`` /
``:gram``), the wall time, the process CPU time (user + system), and the relative output error of
the pruned model against the dense one on 2 held-out images (a fidelity check of the refit; the
weights are random, so it is not a task metric), and writes JSON.

    python tools/bench_reconstruct_speed.py --json docs/bench/reconstruct_speed.json
    python tools/bench_reconstruct_speed.py --images 8 --batch 2 --height 128 --image-width 320   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import time
from pathlib import Path

import torch
from graphprune.models.craft import build_craft

import graphprune as gp


def _cpu() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def _commit() -> str:
    """The checked-out commit (``+dirty`` with uncommitted changes), for the JSON record."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--image-width", type=int, default=640)
    p.add_argument("--example-batch", type=int, default=1, help="images in the example input")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier of the detector")
    p.add_argument("--flops", type=float, default=0.8)
    p.add_argument("--criterion", default="wanda")
    p.add_argument("--reconstruct", default="lsq,bias")
    p.add_argument("--allocation", default="global")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model, _ = build_craft(width=args.width)
    n_params = sum(t.numel() for t in model.parameters())
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, args.height, args.image_width)
    calib = [torch.randn(shape, generator=g) for _ in range(max(1, args.images // args.batch))]
    example = (calib[0][: args.example_batch],)  # calibration batches may have another batch size
    held_out = torch.randn((2, *shape[1:]), generator=g)

    load_before = os.getloadavg()
    u0, s0 = _cpu()
    t0 = time.perf_counter()
    res = gp.prune(model, example, flops=args.flops, criterion=args.criterion, calib=calib,
                   reconstruct=args.reconstruct, allocation=args.allocation)
    wall = time.perf_counter() - t0
    u1, s1 = _cpu()

    timings = res.report["timings"]
    with torch.no_grad():
        dense_out, pruned_out = model(held_out), res.model(held_out)
    rel_err = float((pruned_out - dense_out).norm() / dense_out.norm())
    print(f"CRAFT-like detector: {n_params / 1e6:.1f}M params, {len(calib)} batches of {list(shape)}, "
          f"flops={args.flops}, criterion={args.criterion}, reconstruct={args.reconstruct}, "
          f"allocation={args.allocation}, {args.threads} threads")
    print(f"{'phase':<28}{'seconds':>10}")
    for k, v in timings.items():
        print(f"{k:<28}{v:>10.2f}")
    print(f"{'wall':<28}{wall:>10.2f}")
    print(f"{'cpu user':<28}{u1 - u0:>10.2f}")
    print(f"{'cpu system':<28}{s1 - s0:>10.2f}")
    print(f"{'cpu total':<28}{u1 - u0 + s1 - s0:>10.2f}")
    print(f"achieved flops {res.report['achieved']}, held-out relative output error {rel_err:.4f}")
    out = {
        "params": n_params, "batches": len(calib), "batch_shape": list(shape), "flops": args.flops,
        "criterion": args.criterion, "reconstruct": args.reconstruct, "allocation": args.allocation,
        "threads": args.threads, "achieved": res.report["achieved"], "timings": timings,
        "example_batch": args.example_batch, "heldout_rel_err": round(rel_err, 5),
        "wall_s": round(wall, 2), "cpu_user_s": round(u1 - u0, 2), "cpu_system_s": round(s1 - s0, 2),
        "cpu_total_s": round(u1 - u0 + s1 - s0, 2), "commit": _commit(),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "load_average_1_5_15_before": [round(v, 2) for v in load_before],
        "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()],
        "reconstruction": res.report["reconstruction"], "notes": res.report["notes"],
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
