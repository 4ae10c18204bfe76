"""Regression from the generated sample after the reports merge: the report's --why chains for
barriers asked for channel 0 of a weight (or a barrier's input) with an empty axis and raised
IndexError, so the whole prune failed on a model with nothing to prune."""

from __future__ import annotations

from propcheck import check

SPEC = {'input': 'image', 'c': 2, 'blocks': [['dw', {'mult': 1}], ['skip', {'j': 0, 'fn': 'add'}], ['flip', {}]],
        'hw': 4, 'head': 'none', 'extra_output': False}
BUDGET = 0.3


def test_barrier_why_skips_empty_axes() -> None:
    out = check(SPEC, BUDGET)
    assert out.failures == [], out.failures
