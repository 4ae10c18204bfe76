"""Prune the ONNX exports of the third-party architectures in tools/zoo.py at one FLOPs budget.

    python tools/zoo_onnx_check.py --flops 0.5 --json docs/zoo_onnx_check.json [--models resnet50 ...]

Each model is exported with the TorchScript exporter (falling back to the dynamo exporter), then
``gp.prune(path, flops=...)`` prunes the .onnx directly. Per model: exporter, achieved FLOPs,
onnxruntime oracle (masked original vs pruned), onnx.checker on the written file, output shapes
kept, barriers. One model failing does not stop the others.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo import ZOO  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.frontends import as_args_kwargs  # noqa: E402


def _export(model: torch.nn.Module, x: object, path: Path) -> str:
    args, kwargs = as_args_kwargs(x)
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(model, args, str(path), kwargs=kwargs or None, dynamo=dynamo, external_data=False)
            return "dynamo" if dynamo else "torchscript"
        except Exception as exc:  # record and try the other exporter
            errors.append(str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)
    raise RuntimeError("export failed: " + " | ".join(errors))


def check(name: str, flops: float, d: Path) -> dict:
    row: dict = {"model": name}
    try:
        model, x = ZOO[name]()
        src = d / f"{name}.onnx"
        row["exporter"] = _export(model, x, src)
        t0 = time.perf_counter()
        res = gp.prune(str(src), flops=flops)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        out = d / f"{name}_small.onnx"
        res.save(out)
        onnx.checker.check_model(str(out), full_check=True)
        before = [tuple(d.dim_value for d in o.type.tensor_type.shape.dim) for o in onnx.load(str(src)).graph.output]
        after = [tuple(d.dim_value for d in o.type.tensor_type.shape.dim) for o in onnx.load(str(out)).graph.output]
        rep = res.report
        row.update(achieved=round(rep["achieved"]["flops"], 4), within_3pct=abs(rep["achieved"]["flops"] - flops) <= 0.03,
                   oracle=bool(rep["verification"]["ok"]), max_err=rep["verification"]["max_abs_err"],
                   checker=True, shapes_kept=before == after, barriers=sorted(rep["barriers"]))
    except Exception as exc:  # a benchmark row, not a crash
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flops", type=float, default=0.5)
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    print(f"{'model':26s} {'exporter':11s} {'sec':>6s} {'achieved':>8s} {'±3%':>4s} {'oracle':>6s} {'shapes':>6s}  barriers / error")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models or list(ZOO):
            r = check(name, args.flops, Path(tmp))
            rows.append(r)
            if "error" in r:
                print(f"{name:26s} ERROR {r['error']}")
            else:
                print(f"{name:26s} {r['exporter']:11s} {r['seconds']:6.2f} {r['achieved']:8.4f} {str(r['within_3pct'])[0]:>4s} "
                      f"{str(r['oracle'])[0]:>6s} {str(r['shapes_kept'])[0]:>6s}  {', '.join(r['barriers'])}")
            sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps({"flops": args.flops, "torch": torch.__version__, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
