"""Sequential (layer-by-layer) refit of a pruned all-MiniLM-L6-v2, measured block by block.

An experiment for issue #14 (cosine >= 0.90 at 0.5 FLOPs), not a library feature: the model is
pruned with the defaults (``gp.prune(model, x, flops=F, calib=calib)``), then, for each encoder
layer in order, the chosen linears are refit by ridge least squares (intercept unregularized,
lambda = ridge * mean diag) on the PRUNED model's own inputs, which already carry the refits of
the layers before:

    sublayer  target = the dense linear's output on the dense inputs (kept rows for q/k/v/up);
              the SparseGPT / FLAP sequential target
    residual  (o, down only) target = dense (residual + linear output) - pruned residual, i.e. the
              dense sum that goes into the block's LayerNorm: the linear also cancels the error the
              residual stream brings from earlier layers

The cosine / nn@1 of the mean-pooled embeddings to the dense ones (256 held-out sentences) is
printed after each layer. It uses the Hugging Face BERT module names (``attention.output``,
``output``), so it only runs on this model.

    HF_HUB_OFFLINE=1 python tools/bench_minilm_sequential.py --flops 0.5 --target residual --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from graphprune.models.minilm import calib_batches, embed, eval_batches, fidelity, load, sentences
from torch import nn

import graphprune as gp

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _Stop(Exception):
    """Raised by the capture hook: the rest of the forward pass is not needed."""


def _inputs(model: nn.Module, path: str, calib: list[Any], residual: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(input, residual or None) of module ``path`` for every calibration batch."""
    out: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
        out.append((args[0].detach(), args[1].detach() if residual else None))
        raise _Stop

    h = model.get_submodule(path).register_forward_pre_hook(hook)
    try:
        for b in calib:
            try:
                model(*b)
            except _Stop:
                pass
    finally:
        h.remove()
    return out


def _kept_rows(dense: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Which dense rows the (not yet refit) pruned weight kept: its rows are exact copies."""
    return torch.cdist(pruned.double(), dense.double()).argmin(1)


@torch.no_grad()
def _refit(dense: nn.Module, pruned: nn.Module, path: str, lin_d: nn.Linear, lin_p: nn.Linear, calib: list[Any],
           target: str, rows: torch.Tensor | None, ridge: float) -> None:
    residual = target == "residual"
    a = c = None
    for (xd, rd), (xp, rp) in zip(_inputs(dense, path, calib, residual), _inputs(pruned, path, calib, residual), strict=True):
        t = lin_d(xd)
        t = t[..., rows] if rows is not None else t
        if residual:
            t = t + rd - rp
        z = torch.cat([xp.reshape(-1, xp.shape[-1]), torch.ones(xp.shape[0] * xp.shape[1], 1)], 1).double()
        tt = t.reshape(-1, t.shape[-1]).double()
        a = z.T @ z if a is None else a + z.T @ z
        c = z.T @ tt if c is None else c + z.T @ tt
    assert a is not None and c is not None
    n = a.shape[0] - 1
    a.diagonal()[:n] += ridge * a.diagonal()[:n].mean()
    sol = torch.linalg.solve(a, c).T
    lin_p.weight.copy_(sol[:, :-1].to(lin_p.weight.dtype))
    lin_p.bias.copy_(sol[:, -1].to(lin_p.bias.dtype))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flops", type=float, default=0.5)
    p.add_argument("--target", choices=["sublayer", "residual"], default="residual")
    p.add_argument("--linears", default="o,down", help="comma list of q,k,v,o,up,down (qkv = q,k,v)")
    p.add_argument("--last", choices=["same", "sublayer", "none"], default="same",
                   help="the last layer's target: as --target, sublayer, or none (left as the default refit left it)")
    p.add_argument("--ridge", type=float, default=1e-2)
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--eval", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    which = set(args.linears.replace("qkv", "q,k,v").split(","))
    load_before = os.getloadavg()
    model, tok = load()
    sents = sentences()
    evb, calib = eval_batches(tok, sents[: args.eval]), calib_batches(tok, sents[args.eval :], args.calib, "packed")
    ref = embed(model, evb)
    t0 = time.perf_counter()
    pruned = gp.prune(model, calib[0], flops=args.flops, calib=calib).model
    prune_s = time.perf_counter() - t0
    rows = [{"after_layer": None, **fidelity(embed(pruned, evb), ref), "seconds": 0.0}]
    print(f"default prune: cos {rows[0]['cosine']:.4f} nn@1 {rows[0]['nn@1']:.3f} ({prune_s:.0f}s)", flush=True)
    t0 = time.perf_counter()
    layers = pruned.bert.encoder.layer
    for i, (ld, lp) in enumerate(zip(model.bert.encoder.layer, layers, strict=True)):
        last = i == len(layers) - 1
        if last and args.last == "none":
            break
        target = "sublayer" if last and args.last == "sublayer" else args.target
        base = f"bert.encoder.layer.{i}"
        for name in ("query", "key", "value"):
            if name[0] in which:
                lin_d, lin_p = getattr(ld.attention.self, name), getattr(lp.attention.self, name)
                _refit(model, pruned, f"{base}.attention.self.{name}", lin_d, lin_p, calib, "sublayer",
                       _kept_rows(lin_d.weight, lin_p.weight), args.ridge)
        if "o" in which:
            _refit(model, pruned, f"{base}.attention.output", ld.attention.output.dense, lp.attention.output.dense,
                   calib, target, None, args.ridge)
        if "up" in which:
            _refit(model, pruned, f"{base}.intermediate.dense", ld.intermediate.dense, lp.intermediate.dense, calib,
                   "sublayer", _kept_rows(ld.intermediate.dense.weight, lp.intermediate.dense.weight), args.ridge)
        if "down" in which:
            _refit(model, pruned, f"{base}.output", ld.output.dense, lp.output.dense, calib, target, None, args.ridge)
        rows.append({"after_layer": i, **fidelity(embed(pruned, evb), ref), "seconds": round(time.perf_counter() - t0, 1)})
        print(f"after layer {i}: cos {rows[-1]['cosine']:.4f} nn@1 {rows[-1]['nn@1']:.3f} ({rows[-1]['seconds']}s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": "python tools/bench_minilm_sequential.py " + " ".join(sys.argv[1:]), "flops": args.flops,
            "target": args.target, "last": args.last, "linears": sorted(which), "ridge": args.ridge, "calib_sequences": args.calib,
            "eval_sentences": args.eval, "threads": args.threads, "default_prune_seconds": round(prune_s, 1),
            "load_average_1_5_15_before": [round(v, 2) for v in load_before],
            "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
