"""Whole MoE experts as pruning units (#12 item 5): an expert goes with its router row.

Oracle: the masked original gives a removed expert the router logit -inf (a zeroed row would give
0, and exp(0) stays in the softmax), so the pruned model with E' experts and E' router rows must
equal it at two input sizes; a zeroed row alone must NOT (it shows the -inf is needed). The config's
expert count follows and stock ``from_pretrained`` reloads the result to identical outputs.
Tiny random Mixtral and Qwen3-MoE configs (tests/hf/test_families.py builders), no hub.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from test_families import VOCAB, build, logits  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.rules.moe import removed_router_rows  # noqa: E402
from graphprune.verification import masked_original  # noqa: E402

COUNT = {"mixtral": "num_local_experts", "qwen3_moe": "num_experts"}


@functools.cache
def pruned(name: str) -> tuple[torch.nn.Module, dict[str, Any], gp.PruneResult]:
    model, x = build(name)
    return model, x, gp.prune(model, x, params=0.3, uniform=True)


def batch(seed: int, b: int, n: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, VOCAB, (b, n), generator=g), "use_cache": False}


@pytest.mark.parametrize("name", list(COUNT))
def test_removed_experts_equal_the_masked_original(name: str) -> None:
    model, x, res = pruned(name)
    kept = [layer.mlp.experts.num_experts for layer in res.model.model.layers]
    assert all(2 <= k < 4 for k in kept), kept  # experts removed, at least top-k (2) kept
    for layer, k in zip(res.model.model.layers, kept, strict=True):
        assert layer.mlp.gate.weight.shape == (k, 64)
        assert layer.mlp.experts.gate_up_proj.shape[0] == layer.mlp.experts.down_proj.shape[0] == k
    assert getattr(res.model.config, COUNT[name]) == kept[0]
    masked = masked_original(model, res.coupling, res.removed)
    for xb in (x, batch(7, 2, 19)):
        torch.testing.assert_close(logits(res.model, xb), logits(masked, xb), atol=1e-5, rtol=1e-5)
    # the -inf logit is what makes it exact: rows removed, logits of zeroed rows (0) differ
    rows = removed_router_rows(res.coupling, res.removed)
    assert sorted(rows) == [f"model.layers.{i}.mlp.gate.weight" for i in range(len(kept))]
    zeroed = masked_original(model, res.coupling, res.removed)
    zeroed._forward_pre_hooks.clear()
    zeroed._forward_hooks.clear()
    with torch.no_grad():
        for src, r in rows.items():
            zeroed.get_parameter(src)[r] = 0.0
    assert (logits(zeroed, x) - logits(res.model, x)).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(COUNT))
def test_expert_removal_reloads_with_stock_from_pretrained(name: str, tmp_path: Path) -> None:
    model, x, res = pruned(name)
    res.model.save_pretrained(tmp_path / "m")
    back = type(model).from_pretrained(tmp_path / "m").eval()
    assert getattr(back.config, COUNT[name]) == res.model.model.layers[0].mlp.experts.num_experts
    assert back.config.num_experts_per_tok == 2
    torch.testing.assert_close(logits(back, x), logits(res.model, x), atol=0, rtol=0)


def test_a_topk_that_is_not_a_router_keeps_its_axis() -> None:
    class TopK(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(8, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.topk(self.lin(x), 2, dim=-1).values  # its indices count no experts

    a = gp.analyze(TopK().eval(), torch.randn(3, 8))
    w = next(v for v in a.graph.values if v.source == "lin.weight")
    assert not a.coupling.prunable(w, 0)
    assert "not an MoE router" in " ".join(a.coupling.explain(w, 0))


def test_fx_route_counts_the_kept_experts() -> None:
    """The fx route keeps the captured histc: its bins follow the kept experts (rewrite/to_fx.py)."""
    from graphprune.frontends import capture
    from graphprune.rewrite import rewrite_fx

    model, x, res = pruned("qwen3_moe")
    cap = capture(model, x)
    gm = rewrite_fx(cap.program, cap.graph, res.coupling, res.removed)
    bins = [n.args[1] for n in gm.graph.nodes if getattr(n.target, "__name__", "").startswith("histc")]
    assert bins == [layer.mlp.experts.num_experts for layer in res.model.model.layers]
    with torch.no_grad():
        got = gm(**x)
    got = got[0] if isinstance(got, (tuple, list)) else got
    got = got.logits if hasattr(got, "logits") else got
    torch.testing.assert_close(got, logits(res.model, x), atol=1e-5, rtol=1e-5)


def test_experts_stay_whole_by_default_under_a_flops_budget() -> None:
    """An expert removed saves parameters, not FLOPs (each token still runs k experts): under a
    FLOPs budget the default keeps every expert (the router's axis pinned with that reason) and
    prunes their channels; experts=True removes whole experts there too."""
    model, x = build("mixtral")
    e0 = model.config.num_local_experts
    res = gp.prune(model, x, flops=0.5, uniform=True)
    assert all(layer.mlp.gate.weight.shape[0] == e0 for layer in res.model.model.layers)
    assert res.model.config.num_local_experts == e0 and res.report["achieved"]["flops"] <= 0.51
    forced = gp.prune(model, x, flops=0.5, uniform=True, experts=True)
    assert forced.model.config.num_local_experts < e0
