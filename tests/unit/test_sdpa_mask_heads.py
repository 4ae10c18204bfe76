"""A per-head attention mask (T5's relative position bias, ALiBi) follows the pruned heads.

Found by tools/zoo_check.py on transformers' T5EncoderModel: the sdpa rule tied nothing to the mask,
so pruning heads left a [1, 4, L, L] bias against 2 heads and the fx route crashed in forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import graphprune as gp
from graphprune.verification import verify_pruned


class BiasedAttention(nn.Module):
    def __init__(self, d: int = 16, heads: int = 4, seq: int = 6) -> None:
        super().__init__()
        self.h, self.hd = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.pos = nn.Embedding(2 * seq, heads)  # relative-position buckets -> one bias per head
        self.register_buffer("buckets", (torch.arange(seq)[None, :] - torch.arange(seq)[:, None]) + seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s, _ = x.shape
        q, k, v = (p(x).view(n, s, self.h, self.hd).transpose(1, 2) for p in (self.q, self.k, self.v))
        bias = self.pos(self.buckets).permute(2, 0, 1).unsqueeze(0)  # [1, H, S, S]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.o(a.transpose(1, 2).reshape(n, s, self.h * self.hd))


def test_per_head_mask_ties_to_heads_and_prunes_exactly() -> None:
    torch.manual_seed(0)
    model, x = BiasedAttention().eval(), torch.randn(2, 6, 16)
    a = gp.analyze(model, x)
    heads = [g for g in a.report["groups"] if "pos.weight[1]" in g["weights"]]
    assert len(heads) == 1 and {"q.weight[0]", "k.weight[0]", "v.weight[0]", "o.weight[1]"} <= set(heads[0]["weights"])
    res = gp.prune(model, x, flops=0.5)
    assert res.report["pinned_after_check"] == []
    assert verify_pruned(model, res.model, res.coupling, res.removed, x, random_trials=2).ok
    kept_heads = res.plan.kept["pos.weight"][1]
    assert 0 < len(kept_heads) < 4
    # the bias rows kept are exactly the heads whose o_proj columns are kept
    assert res.plan.kept["o.weight"][1] == tuple(h * model.hd + j for h in kept_heads for j in range(model.hd))
