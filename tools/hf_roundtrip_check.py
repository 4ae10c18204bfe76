"""Hugging Face round trip, one row per transformers class (docs/HF.md).

For each tiny random model of tests/hf/_hf_models.py (LLaMA, Qwen2, Mistral, Gemma, Phi-3, GPT-2,
BERT, ViT, and every transformers class tools/zoo.py builds: Phi, Qwen3, OLMo, StableLM, Starcoder2,
GPT-NeoX, OPT, Granite, DistilBERT, RoBERTa, ALBERT, ELECTRA, T5 encoder): prune with per-layer widths (global allocation, 60% FLOPs) and with ``uniform=True``
(50% FLOPs), then check

- class kept: ``type(res.model)`` is the input class and the route is ``module`` (both prunes);
- generate (decoders): greedy ``generate(use_cache=True)`` equals the masked original's tokens;
- stock reload (uniform): ``res.model.save_pretrained(d)`` then the class's ``from_pretrained(d)``
  in a subprocess that never imports graphprune gives identical outputs;
- one-line reload (per-layer): ``res.save_pretrained(d)``; ``graphprune.load_pretrained(d)`` gives
  identical outputs, and stock ``from_pretrained(d)`` (same subprocess) refuses the directory;
- mapped: graphprune has a config mapping (``SPECS``) for the class; an unmapped one still prunes
  and its directory is for the one-line loader.

A step that raises ends that class's row (its message is printed under the table); the others go on.

    python tools/hf_roundtrip_check.py [--json out.json] [NAME ...]

This file lives in tools/: it is never imported by the graphprune package.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "hf"))

from _hf_models import HF_MODELS, build  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.rewrite.hf_attrs import spec_for  # noqa: E402
from graphprune.verification import masked_original  # noqa: E402

STOCK = """
import json, sys, torch, transformers
out = {}
for item in json.loads(sys.argv[1]):
    try:
        m = getattr(transformers, item["cls"]).from_pretrained(item["dir"]).eval()
    except Exception as exc:
        out[item["dir"]] = {"error": (type(exc).__name__ + ": " + str(exc)).strip().splitlines()[-1][:300]}
        continue
    with torch.no_grad():
        y = m(**torch.load(item["dir"] + "/inputs.pt"))
    y = y[0] if isinstance(y, tuple) else next(iter(y.values()))
    out[item["dir"]] = {"equal": bool(torch.equal(y, torch.load(item["dir"] + "/ref.pt")))}
out["graphprune_imported"] = "graphprune" in sys.modules
print(json.dumps(out))
"""


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else next(iter(out.values()))


def _error(exc: BaseException) -> str:
    return (type(exc).__name__ + ": " + str(exc)).strip().splitlines()[0][:300]


def check(name: str, work: Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """One row; a step that raises is recorded in ``row["error"]`` (the later columns stay unset)."""
    row: dict[str, Any] = {"model": name, "class": HF_MODELS[name].model_cls, "class_kept": None, "generate": None,
                           "one_line_reload": None, "per_layer_loader": None, "flops_uniform": None,
                           "uniform_reachable": None, "flops_per_layer": None, "mapped": None, "error": None}
    items: list[dict[str, str]] = []
    try:
        _check(name, work, row, items)
    except Exception as exc:  # a row per class: report the failing step, go on with the next class
        row["error"] = _error(exc)
    return row, items


def _check(name: str, work: Path, row: dict[str, Any], items: list[dict[str, str]]) -> None:
    case = HF_MODELS[name]
    model, x = build(name, skew=True)
    per = gp.prune(model, x, flops=0.6, allocation="global", round_to=1)
    uni_model, _ = build(name)
    uni = gp.prune(uni_model, x, flops=0.5, uniform=True, round_to=1)
    row.update({
        "class_kept": all(type(r.model) is type(model) and r.report["route"] == "module" for r in (per, uni)),
        "flops_per_layer": round(per.report["achieved"]["flops"], 3),
        "flops_uniform": round(uni.report["achieved"]["flops"], 3),
        "uniform_reachable": bool(uni.report["target_reachable"]),
        "mapped": spec_for(model) is not None,
    })
    if case.decoder:
        masked = masked_original(model, per.coupling, per.removed)
        ids = x["input_ids"][:, :5]
        kw = dict(max_new_tokens=5, do_sample=False, use_cache=True)
        with torch.no_grad():
            row["generate"] = bool(torch.equal(per.model.generate(ids, **kw), masked.generate(ids, **kw)))
    else:
        row["generate"] = None
    d_uni, d_per = work / f"{name}-uniform", work / f"{name}-per-layer"
    uni.model.save_pretrained(d_uni)
    with torch.no_grad():
        torch.save(_first(uni.model(**x)), d_uni / "ref.pt")
        torch.save(x, d_uni / "inputs.pt")
        items.append({"dir": str(d_uni), "cls": case.model_cls})
        info = per.save_pretrained(d_per)
        items.append({"dir": str(d_per), "cls": case.model_cls})
        row["per_layer_loader"] = info["loader"]
        back = gp.load_pretrained(d_per)
        row["one_line_reload"] = bool(type(back) is type(model) and torch.equal(_first(back(**x)), _first(per.model(**x))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(HF_MODELS), help=f"any of {', '.join(HF_MODELS)}")
    ap.add_argument("--json", help="write the rows as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows, items = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            row, its = check(name, Path(tmp))
            rows.append(row)
            items += its
        proc = subprocess.run([sys.executable, "-c", STOCK, json.dumps(items)], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        stock = json.loads(proc.stdout.strip().splitlines()[-1])
        for row, name in zip(rows, args.names, strict=True):
            uni_dir, per_dir = str(Path(tmp) / f"{name}-uniform"), str(Path(tmp) / f"{name}-per-layer")
            row["stock_reload_uniform"] = stock[uni_dir].get("equal", False) if uni_dir in stock else None
            row["stock_uniform_error"] = stock.get(uni_dir, {}).get("error")
            row["stock_refuses_per_layer"] = ("graphprune.load_pretrained" in stock[per_dir].get("error", "")
                                              if per_dir in stock else None)
        graphprune_in_stock = stock["graphprune_imported"]
    cols = ["class", "mapped", "class_kept", "generate", "stock_reload_uniform", "one_line_reload",
            "stock_refuses_per_layer", "flops_uniform", "uniform_reachable", "flops_per_layer"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join("-" if r[c] is None else ("yes" if r[c] is True else "NO" if r[c] is False else str(r[c]))
                                for c in cols) + " |")
    print(f"(stock subprocess imported graphprune: {graphprune_in_stock})")
    for r in rows:
        for key in ("error", "stock_uniform_error"):
            if r.get(key):
                print(f"{r['class']}: {key}: {r[key]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "graphprune_in_stock": graphprune_in_stock}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
