"""Prune every third-party architecture in tools/zoo.py at one FLOPs budget and report.

Run in an environment with torchvision/timm/transformers (see README, "Trying other models"):

    python tools/zoo_check.py --flops 0.5 --json docs/zoo_check.json [--models resnet50 swin_t]
    python tools/zoo_check.py --flops 0.5 --set families --json docs/zoo_check_families.json

Per model: capture+prune seconds, achieved FLOPs, output shape kept, oracle result, rewrite
route, barriers, and whether the .onnx export runs in onnxruntime and matches. One model failing
does not stop the others.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo import ZOO  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.frontends import call_model  # noqa: E402


def _first(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out[0]  # type: ignore[index]


# named sets of zoo entries: `--set families` runs issue #12 item 5's transformers families
SETS: dict[str, list[str]] = {
    "families": ["falcon", "bloom", "t5_encoder", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "phimoe", "deepseek_v2",
                 "gptj", "codegen", "mpt", "cohere", "gemma2", "gemma3", "mamba", "opt", "deberta_v2",
                 "clip_vision", "whisper_encoder"],
}


def check(name: str, flops: float, onnx: bool) -> dict:
    row: dict = {"model": name}
    try:
        model, x = ZOO[name]()
        ref = _first(call_model(model, x))
        t0 = time.perf_counter()
        res = gp.prune(copy.deepcopy(model), x, flops=flops)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rep = res.report
        out = _first(call_model(res.model, x))
        row.update(
            achieved=round(rep["achieved"]["flops"], 4),
            within_3pct=abs(rep["achieved"]["flops"] - flops) <= 0.03,
            shape_kept=tuple(out.shape) == tuple(ref.shape),
            oracle=bool(rep["verification"] and rep["verification"]["ok"]),
            max_err=rep["verification"]["max_abs_err"] if rep["verification"] else None,
            route=rep["route"],
            barriers=sorted(rep["barriers"]),
            params_kept=round(rep["params_after"] / rep["params_before"], 4),
        )
        if onnx:
            with tempfile.TemporaryDirectory() as d:
                try:
                    info = res.save(Path(d) / f"{name}.onnx")
                    row["onnx"] = f"ok ({info['onnxruntime_max_abs_err']:.2g})"
                except gp.GraphpruneError as exc:
                    row["onnx"] = f"FAIL: {str(exc)[:400]}"
    except gp.GraphpruneError as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    except Exception as exc:  # a benchmark row, not a crash
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        row["trace"] = traceback.format_exc()[-1500:]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flops", type=float, default=0.5)
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--set", choices=sorted(SETS), default=None, help="a named set of entries instead of --models")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    names = args.models or (SETS[args.set] if args.set else [n for n in ZOO])
    rows = []
    print(f"{'model':26s} {'sec':>6s} {'achieved':>8s} {'±3%':>4s} {'shape':>5s} {'oracle':>6s} {'route':>6s} {'onnx':>8s}  barriers / error")
    for name in names:
        r = check(name, args.flops, not args.no_onnx)
        rows.append(r)
        if "error" in r:
            print(f"{name:26s} ERROR {r['error']}")
        else:
            print(f"{name:26s} {r['seconds']:6.2f} {r['achieved']:8.4f} {str(r['within_3pct'])[0]:>4s} "
                  f"{str(r['shape_kept'])[0]:>5s} {str(r['oracle'])[0]:>6s} {r['route']:>6s} {r.get('onnx', '-')[:8]:>8s}  {', '.join(r['barriers'])}")
        sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps({"flops": args.flops, "torch": torch.__version__, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
