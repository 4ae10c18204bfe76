"""Torch-Pruning magnitude pruning on all-MiniLM-L6-v2, same sentences and metric as bench_quality_minilm.

Reuses ``tools/bench_quality_minilm.py`` (model wrapper, sentences, evaluation batches, fidelity metric).
Evaluation: the first ``--eval`` (256) shuffled sentences, exactly the split of ``bench_quality_minilm``.
Example input for tracing and FLOPs counting: the first packed calibration batch (16 x 64), as
``bench_quality_minilm`` passes to ``gp.prune``. FLOPs of dense and pruned models are both counted with
``graphprune.count_flops``.

Torch-Pruning (MetaPruner, GroupMagnitudeImportance(p=2), global_pruning=False) removes whole attention
heads (num_heads for query/key/value, prune_num_heads=True, prune_head_dims=False,
head_pruning_ratio = pruning_ratio) and FFN intermediate channels; the hidden size is kept by ignoring
attention.output.dense, output.dense, the embeddings and the pooler. For each FLOPs target
``pruning_ratio`` is bisected on a fresh deep copy (stopping within 0.005, else the closest of 20 steps is
kept); a point counts as reached when the counted FLOPs ratio is within 0.02.

    HF_HUB_OFFLINE=1 python tools/bench_tp_minilm.py --json docs/bench/quality_minilm_tp.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_quality_minilm as bq  # noqa: E402
import torch  # noqa: E402

import graphprune as gp  # noqa: E402


def tp_prune(dense: torch.nn.Module, example: tuple, ratio: float) -> torch.nn.Module:
    import torch_pruning as tp
    from transformers.models.bert.modeling_bert import BertSelfAttention

    model = copy.deepcopy(dense)
    bert = model.bert
    num_heads = {}
    ignored = [bert.embeddings]
    if getattr(bert, "pooler", None) is not None:
        ignored.append(bert.pooler)
    for m in model.modules():
        if isinstance(m, BertSelfAttention):
            for lin in (m.query, m.key, m.value):
                num_heads[lin] = m.num_attention_heads
    for layer in bert.encoder.layer:
        ignored += [layer.attention.output.dense, layer.output.dense]
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), global_pruning=False,
        pruning_ratio=ratio, ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True,
        prune_head_dims=False, head_pruning_ratio=ratio,
    )
    pruner.step()
    for m in model.modules():  # as Torch-Pruning's examples/transformers/prune_hf_bert.py
        if isinstance(m, BertSelfAttention):
            m.num_attention_heads = pruner.num_heads[m.query]
            m.attention_head_size = m.query.out_features // m.num_attention_heads
            m.all_head_size = m.query.out_features
    return model.eval()


def shape(model: torch.nn.Module) -> str:
    lay = model.bert.encoder.layer
    return " ".join(f"{layer.attention.self.num_attention_heads}h/{layer.intermediate.dense.out_features}" for layer in lay)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flops", type=float, nargs="+", default=[0.8, 0.65, 0.5])
    p.add_argument("--eval", type=int, default=256)
    p.add_argument("--tol", type=float, default=0.02)
    p.add_argument("--stop", type=float, default=0.005, help="stop bisecting once this close (else keep the closest)")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    import torch_pruning as tp
    import transformers

    model, tok = bq.load()
    sents = bq.sentences()
    ev, rest = sents[: args.eval], sents[args.eval :]
    evb = bq.eval_batches(tok, ev)
    example = bq.calib_batches(tok, rest, bq.BATCH)[0]
    ref = bq.embed(model, evb)
    dense_flops = gp.count_flops(model, example)[0]
    rows: list[dict[str, object]] = []
    for target in args.flops:
        t0 = time.perf_counter()
        row: dict[str, object] = {"flops": target, "criterion": "tp-magnitude-l2", "allocation": "uniform"}
        try:
            lo, hi, best = 0.0, 1.0, None
            for _ in range(20):
                r = (lo + hi) / 2
                pm = tp_prune(model, example, r)
                ach = gp.count_flops(pm, example)[0] / dense_flops
                if best is None or abs(ach - target) < abs(best[1] - target):
                    best = (r, ach, pm)
                if abs(ach - target) <= args.stop:
                    break
                lo, hi = (r, hi) if ach > target else (lo, r)
            r, ach, pm = best
            cos, agree = bq.fidelity(bq.embed(pm, evb), ref)
            row.update(pruning_ratio=round(r, 5), achieved=round(ach, 4), cosine=round(cos, 4), nn1=round(agree, 4),
                       shape=shape(pm), error=None if abs(ach - target) <= args.tol else "tolerance not reached")
        except Exception as e:  # noqa: BLE001
            row.update(achieved=None, cosine=None, nn1=None, error=f"{type(e).__name__}: {e}")
        row["seconds"] = round(time.perf_counter() - t0, 1)
        row["nn@1"] = row.pop("nn1")
        rows.append(row)
        print(row, flush=True)
    print("\n| FLOPs | method | pruning_ratio | achieved | cosine | nn@1 | s | error |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['flops']} | {r['criterion']} | {r.get('pruning_ratio')} | {r['achieved']} | {r['cosine']} "
              f"| {r['nn@1']} | {r['seconds']} | {r['error'] or '-'} |")
    out = {"command": "HF_HUB_OFFLINE=1 python tools/bench_tp_minilm.py " + " ".join(sys.argv[1:]),
           "eval_sentences": args.eval, "seq_len": bq.SEQ, "dense_flops": dense_flops,
           "versions": {"torch": torch.__version__, "torch_pruning": metadata.version("torch-pruning"),
                        "torch_pruning.__version__": tp.__version__,
                        "transformers": transformers.__version__},
           "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
