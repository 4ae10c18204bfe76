"""A tiny LLaMA-style decoder-only language model.

Token embedding ``E (V, D)``; ``num_layers`` pre-norm decoder layers; final RMSNorm; ``lm_head``
whose weight IS ``E`` (one shared Parameter: weight tying). A layer computes

    x = x + o_proj(attn(RMSNorm(x)))
    x = x + down_proj(silu(gate_proj(h)) * up_proj(h)),  h = RMSNorm(x)   # SwiGLU MLP

with ``RMSNorm(x) = w * x / sqrt(mean(x^2, -1) + eps)``.

Attention is grouped-query: ``q`` has ``num_heads`` heads, ``k``/``v`` have ``num_kv_heads``, each
``head_dim`` wide, reshaped with ``view(b, s, -1, head_dim)`` so the code infers the head count
from the projection widths. Rotary embeddings rotate the pairs ``(i, i + head_dim/2)`` of q and k:
``rope(x) = x * cos + rotate_half(x) * sin`` with ``rotate_half([x1, x2]) = [-x2, x1]`` and
``cos/sin[p, i] = cos/sin(p * theta^(-2(i mod head_dim/2) / head_dim))`` taken from buffers.
``repeat_kv`` expands each kv head to ``num_heads / num_kv_heads`` query heads
(``expand + reshape``), then ``F.scaled_dot_product_attention(q, k, v, is_causal=True)``.

Couplings this model exercises: the residual hidden size ``D`` (embedding, every norm, o_proj and
down_proj outputs, lm_head via the tied weight); the MLP intermediate size per layer (gate/up rows,
down columns); kv groups (a kv head and its ``num_heads / num_kv_heads`` query heads); rotary pairs
within a head.

``build_llama_tiny`` uses ``vocab=256, D=64, heads=4, kv_heads=2, head_dim=16, intermediate=176,
layers=4`` and token ids of shape ``(2, 16)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ._common import ExampleInputs, randomize_norm_affine, seeded

__all__ = [
    "Llama",
    "LlamaAttention",
    "LlamaConfig",
    "LlamaLayer",
    "LlamaMLP",
    "RMSNorm",
    "RotaryEmbedding",
    "apply_rotary",
    "build_llama_tiny",
    "llama_tiny",
    "repeat_kv",
    "rotate_half",
]


@dataclass(frozen=True)
class LlamaConfig:
    """Shape of a LLaMA-style model; the defaults are the CPU-test size."""

    vocab_size: int = 256
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 176
    max_position: int = 128
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    init_std: float = 0.02


class RMSNorm(nn.Module):
    """``w * x / sqrt(mean(x^2, -1) + eps)`` (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


class RotaryEmbedding(nn.Module):
    """Holds ``cos``/``sin`` tables ``(max_position, head_dim)`` as non-persistent buffers."""

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, head_dim: int, max_position: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[:seq_len], self.sin[:seq_len]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last axis split in two halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x (b, h, s, d)`` by position with ``cos``/``sin`` of shape ``(s, d)``."""
    return x * cos + rotate_half(x) * sin


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(b, h_kv, s, d) -> (b, h_kv * n_rep, s, d)``, each kv head repeated ``n_rep`` times."""
    b, h_kv, s, d = x.shape
    return x[:, :, None].expand(b, h_kv, n_rep, s, d).reshape(b, h_kv * n_rep, s, d)


class LlamaAttention(nn.Module):
    """Causal grouped-query attention with rotary position embeddings."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        if cfg.num_heads % cfg.num_kv_heads:
            raise ValueError(
                f"LlamaAttention: num_heads {cfg.num_heads} not a multiple of {cfg.num_kv_heads}"
            )
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        n_rep = q.shape[1] // k.shape[1]
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class LlamaMLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaLayer(nn.Module):
    """Pre-norm decoder layer: attention and MLP residual branches."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.attn = LlamaAttention(cfg)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.input_norm(x), cos, sin)
        return x + self.mlp(self.post_attn_norm(x))


class Llama(nn.Module):
    """Embedding, decoder layers, final RMSNorm, lm_head tied to the embedding."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_position, cfg.rope_theta)
        self.layers = nn.ModuleList(LlamaLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=cfg.init_std)
        self.lm_head.weight = self.embed.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        cos, sin = self.rotary(input_ids.shape[1])
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


def llama_tiny(**overrides: int | float) -> Llama:
    """LLaMA with :class:`LlamaConfig` defaults, fields replaced by ``overrides``."""
    return Llama(replace(LlamaConfig(), **overrides))


def build_llama_tiny(
    *, batch_size: int = 2, seq_len: int = 16, seed: int = 0, **overrides: int | float
) -> tuple[nn.Module, ExampleInputs]:
    """Tiny LLaMA; example input: token ids ``(batch_size, seq_len)`` int64 in ``[0, vocab)``."""
    with seeded(seed):
        cfg = replace(LlamaConfig(), **overrides)
        if seq_len > cfg.max_position:
            raise ValueError(f"build_llama_tiny: seq_len {seq_len} exceeds max_position {cfg.max_position}")
        model = Llama(cfg)
        randomize_norm_affine(model, extra=(RMSNorm,))
        input_ids = torch.randint(0, cfg.vocab_size, (batch_size, seq_len))
    return model.eval(), (input_ids,)
