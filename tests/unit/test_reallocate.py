"""Re-running allocate on the same context (the latency loop does) must not reuse the previous
allocation's masked original, pruned model or verification."""

from __future__ import annotations

from graphprune.models import build
from graphprune.passes import PassContext, parse_pipeline, run_pipeline

from graphprune.frontends import capture


def test_second_allocation_is_verified_against_its_own_mask() -> None:
    model, x = build("resnet18_w050")
    cap = capture(model, x)
    ctx = PassContext(model=model, example_inputs=x, program=cap.program)
    graph = run_pipeline(parse_pipeline("couple,score,allocate{flops=0.8},rewrite,verify"), cap.graph, ctx)
    first = ctx.allocation.removed.copy()
    assert ctx.verification.ok
    run_pipeline(parse_pipeline("allocate{flops=0.4},rewrite,verify"), graph, ctx)
    assert ctx.allocation.removed.sum() > first.sum()
    assert ctx.verification.ok, ctx.verification
