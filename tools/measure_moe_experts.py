"""Measurement for docs/HF.md (whole experts): ``flops=0.5``, ``uniform=True`` on the tiny random
Mixtral and Qwen3-MoE of tests/hf/test_families.py, whole experts as units vs experts pinned (the
``aten.topk`` rule swapped, in this process only, for one that pins the expert axis).

Run from the repository root: ``python tools/measure_moe_experts.py``.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

sys.path.insert(0, "tests/hf")

from test_families import build, logits  # noqa: E402

import graphprune as gp  # noqa: E402
import graphprune.rules.moe as moe  # noqa: E402
from graphprune.rules import COUPLING  # noqa: E402

RULE, FIND = COUPLING["aten.topk"], moe.expert_histc


def pinned(node: Any, b: Any) -> None:
    x, vals, idx = node.inputs[0], *node.outputs
    for ax in range(x.rank - 1):
        b.same(x, ax, vals, ax)
        b.same(x, ax, idx, ax)
    for v in (vals, idx, x):
        b.pin(v, v.rank - 1, "experts pinned (measurement)")


def main() -> None:
    g = torch.Generator().manual_seed(3)
    xx = {"input_ids": torch.randint(0, 97, (4, 32), generator=g), "use_cache": False}
    for name in ("mixtral", "qwen3_moe"):
        for mode in ("experts", "pinned"):
            COUPLING["aten.topk"] = RULE if mode == "experts" else pinned
            moe.expert_histc = FIND if mode == "experts" else (lambda n: None)
            m, x = build(name)
            r = gp.prune(m, x, flops=0.5, uniform=True)
            d, p = logits(m, xx), logits(r.model, xx)
            rel = float((d - p).norm() / d.norm())
            agree = float((d.argmax(-1) == p.argmax(-1)).float().mean())
            print(name, mode, "flops", round(r.report["achieved"]["flops"], 3),
                  "experts", r.model.model.layers[0].mlp.experts.down_proj.shape[0],
                  "rel_err_vs_dense", round(rel, 3), "top1_agree", round(agree, 3))


if __name__ == "__main__":
    main()
