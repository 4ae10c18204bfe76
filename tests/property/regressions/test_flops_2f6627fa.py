"""Regression found by tools/fuzz.py --seed 13 and shrunk by hypothesis.

Failed property 'flops': graphprune 192 (+ sdpa 144) vs flop_counter 0 (matmul-like ops, pruned)
"""

from __future__ import annotations

from propcheck import check

SPEC = {'input': 'tokens', 'c': 2, 'blocks': [['attn', {'style': 'mha', 'heads': 2, 'hd': 1, 'residual': False}]], 'vocab': 6, 'len': 3, 'head': 'none', 'extra_output': False}
BUDGET = 0.9


def test_flops_2f6627fa() -> None:
    out = check(SPEC, BUDGET)
    assert out.failures == [], out.failures
