"""GPU check for graph-route (fx) models: prune torchvision vit_b_16 and swin_t, run them on CUDA.

For a session with a GPU (issue #9: the fx GraphModule of vit_b_16 raised "view size is not
compatible with input tensor's size and stride" once moved to CUDA). For each model: prune on CPU
at ``--flops`` (default 0.6), move the pruned module to CUDA, run it at two batch sizes, compare
with the CPU result of the same pruned module and with the masked original on CPU, and print one
row per (model, batch). Exit status 1 when any row fails.

Needs torchvision, which does not import beside torch 2.13 (the project's test pin): run it from a
venv with a matching pair, e.g.::

    python3 -m venv /work/venv-zoo-fx
    /work/venv-zoo-fx/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/venv-zoo-fx/bin/pip install -e .
    /work/venv-zoo-fx/bin/python tools/gpu_check.py               # vit_b_16 swin_t, batches 1 and 3
    /work/venv-zoo-fx/bin/python tools/gpu_check.py --models swin_t --batches 2 5 --flops 0.5

Weights are random (no download); the comparisons do not depend on training.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check(name: str, flops: float, batches: list[int], tol: float, device: str = "cuda") -> list[dict[str, object]]:
    import torchvision.models as tvm

    import graphprune as gp
    from graphprune.rewrite.to_fx import hard_coded_devices
    from graphprune.verification import masked_original

    torch.manual_seed(0)
    model = getattr(tvm, name)().eval()
    with torch.no_grad():  # torchvision zero-initializes vit's head: all outputs would be 0 == 0
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0.0, 0.02)
    t0 = time.perf_counter()
    res = gp.prune(model, torch.randn(2, 3, 224, 224), flops=flops)
    prune_s = time.perf_counter() - t0
    pruned = res.model
    dyn = getattr(pruned, "meta", {}).get("graphprune_dynamic", {})
    devices = hard_coded_devices(pruned) if isinstance(pruned, torch.fx.GraphModule) else []
    masked = masked_original(model, res.coupling, res.removed)
    cuda = copy.deepcopy(pruned).to(device)
    rows = []
    for b in batches:
        x = torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(b))
        row: dict[str, object] = {"model": name, "route": res.report["route"], "dynamic": bool(dyn.get("kept")),
                                  "device_consts": len(devices), "batch": b, "prune_s": round(prune_s, 1)}
        try:
            with torch.no_grad():
                cpu_out, ref = pruned(x), masked(x)
                _sync(device)
                t1 = time.perf_counter()
                gpu_out = cuda(x.to(device))
                _sync(device)
                row["cuda_ms"] = round((time.perf_counter() - t1) * 1e3, 1)
            row["cpu_vs_masked"] = _max_rel(cpu_out, ref)
            row["cuda_vs_cpu"] = _max_rel(gpu_out, cpu_out)
            row["ok"] = row["cpu_vs_masked"] <= 1e-4 and row["cuda_vs_cpu"] <= tol and not devices  # type: ignore[operator]
        except Exception as exc:  # report and go on with the next row
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            row["ok"] = False
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vit_b_16", "swin_t"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 3])
    ap.add_argument("--flops", type=float, default=0.6)
    ap.add_argument("--tol", type=float, default=1e-3, help="relative CUDA-vs-CPU tolerance (TF32/kernels differ)")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only to smoke-test this script")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run this where torch.cuda.is_available()", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cols = ["model", "route", "dynamic", "device_consts", "batch", "prune_s", "cuda_ms", "cpu_vs_masked", "cuda_vs_cpu",
            "ok", "error"]
    rows = [r for name in args.models for r in check(name, args.flops, args.batches, args.tol, args.device)]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.2e}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
