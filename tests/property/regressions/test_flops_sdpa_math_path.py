"""Regression found by tools/fuzz.py --n 1000 --seed 13 (docs/bench/fuzz_1000_seed13.json).

Failed property 'flops': graphprune 7620 (+ sdpa 900) vs flop_counter 7800. Two SDPA calls: pruning
left the first with v's head dim (1) below q/k's (4), so torch ran its math path there (180 counted
by flop_counter), while the second stayed on the fused kernel (counted as 0). The check assumed all
SDPA calls took the same path; graphprune's count was right.
"""

from __future__ import annotations

from propcheck import check

SPEC = {"input": "tokens", "c": 8, "vocab": 11, "len": 3, "head": "none", "extra_output": False,
        "blocks": [["rms", {"residual": False}],
                   ["attn", {"hd": 4, "heads": 1, "residual": False, "style": "sdpa"}],
                   ["split", {"chunks": 3, "mode": "chunk", "rotate": False}],
                   ["split", {"a": 4, "mode": "split", "out": 6}],
                   ["attn", {"hd": 5, "heads": 2, "residual": True, "style": "mha"}],
                   ["flip", {}],
                   ["mix", {}],
                   ["attn", {"hd": 4, "heads": 1, "residual": False, "style": "bmm"}]]}
BUDGET = 0.5


def test_flops_sdpa_math_path() -> None:
    out = check(SPEC, BUDGET)
    assert out.failures == [], out.failures
