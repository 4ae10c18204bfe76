"""A tiny BERT encoder with a pooled-output classifier.

Embeddings: ``LN(word[ids] + position[pos] + token_type[tt])``; position ids and default
token-type ids (all zero) are buffers. Each of ``num_layers`` post-norm layers computes

    a = softmax(Q K^T / sqrt(d) + mask) V         # per head; Q, K, V from separate Linears
    x = LN(x + out_proj(concat_heads(a)))
    x = LN(x + fc2(GELU(fc1(x))))

with the heads formed by ``view(b, s, -1, head_dim).transpose(1, 2)`` and the attention written
with ``torch.matmul`` (no fused SDPA). ``mask`` is ``0`` for attended and ``finfo.min`` for padded
keys, built from ``attention_mask`` (1 = token, 0 = padding) when it is given. The pooler is
``tanh(Linear(x[:, 0]))`` and the classifier a ``Linear(hidden, num_labels)`` on it; the model
returns the logits ``(B, num_labels)``.

Couplings this model exercises: the hidden size through post-norm LayerNorms (statistics over the
pruned axis); heads (q/k/v rows, out_proj columns); FFN intermediate size.

``build_bert_tiny`` follows google/bert_uncased_L-2_H-128_A-2 (2 layers, hidden 128, 2 heads,
FFN 512) with a 1000-token vocabulary, LayerNorm affines and Linear biases perturbed so they are
not all ones/zeros; example inputs are token ids and an attention mask of shape
``(2, 16)`` whose second row has its last 4 positions masked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from ._common import ExampleInputs, randomize_norm_affine, seeded

__all__ = [
    "Bert",
    "BertConfig",
    "BertEmbeddings",
    "BertLayer",
    "BertSelfAttention",
    "build_bert_tiny",
    "bert_tiny",
]


@dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT encoder; the defaults are BERT-tiny with a small vocabulary."""

    vocab_size: int = 1000
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 512
    max_position: int = 64
    type_vocab_size: int = 2
    num_labels: int = 2
    ln_eps: float = 1e-12
    init_std: float = 0.02


class BertEmbeddings(nn.Module):
    """``LN(word + position + token_type)`` embeddings."""

    position_ids: torch.Tensor
    token_type_ids: torch.Tensor

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.ln_eps)
        self.register_buffer("position_ids", torch.arange(cfg.max_position)[None], persistent=False)
        self.register_buffer(
            "token_type_ids", torch.zeros(1, cfg.max_position, dtype=torch.long), persistent=False
        )

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        if token_type_ids is None:
            token_type_ids = self.token_type_ids[:, :seq_len]
        x = self.word(input_ids) + self.position(self.position_ids[:, :seq_len])
        return self.norm(x + self.token_type(token_type_ids))


class BertSelfAttention(nn.Module):
    """Multi-head attention ``softmax(QK^T / sqrt(d) + mask) V`` with matmuls, then out_proj."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(
                f"BertSelfAttention: hidden {cfg.hidden_size} not divisible by {cfg.num_heads} heads"
            )
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, -1, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        if mask is not None:
            scores = scores + mask
        context = torch.matmul(scores.softmax(dim=-1), v)
        return self.out_proj(context.transpose(1, 2).reshape(b, s, -1))


class BertLayer(nn.Module):
    """Post-norm encoder layer: ``LN(x + attn(x))`` then ``LN(x + FFN(x))``."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attn = BertSelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.ln_eps)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.ln_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, mask))
        return self.ffn_norm(x + self.fc2(self.act(self.fc1(x))))


class Bert(nn.Module):
    """Embeddings, encoder layers, tanh pooler on the first token, linear classifier."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_layers))
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=cfg.init_std)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)
        mask = None
        if attention_mask is not None:
            keep = attention_mask[:, None, None, :].to(x.dtype)
            mask = (1.0 - keep) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, mask)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return self.classifier(pooled)


def bert_tiny(**overrides: int | float) -> Bert:
    """BERT with :class:`BertConfig` defaults, fields replaced by ``overrides``."""
    return Bert(replace(BertConfig(), **overrides))


def build_bert_tiny(
    *, batch_size: int = 2, seq_len: int = 16, seed: int = 0, **overrides: int | float
) -> tuple[nn.Module, ExampleInputs]:
    """BERT-tiny; example inputs ``(input_ids, attention_mask)``, both ``(batch_size, seq_len)`` int64."""
    with seeded(seed):
        cfg = replace(BertConfig(), **overrides)
        if seq_len > cfg.max_position:
            raise ValueError(f"build_bert_tiny: seq_len {seq_len} exceeds max_position {cfg.max_position}")
        model = Bert(cfg)
        randomize_norm_affine(model)
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.bias, std=0.02)
        input_ids = torch.randint(0, cfg.vocab_size, (batch_size, seq_len))
        attention_mask = torch.ones(batch_size, seq_len, dtype=torch.long)
        attention_mask[1:, seq_len - seq_len // 4 :] = 0
    return model.eval(), (input_ids, attention_mask)
