"""Vision Transformer (ViT) with pre-norm blocks built on ``nn.MultiheadAttention``.

Patch embedding ``conv(k=p, s=p): (B, 3, H, W) -> (B, D, H/p, W/p)``, flattened to
``(B, N, D)`` tokens (``N = HW / p^2``); a learned class token is prepended and a learned position
embedding ``(1, N + 1, D)`` added. Each of ``depth`` blocks computes

    x = x + MHA(LN1(x))             # nn.MultiheadAttention(batch_first=True), self-attention
    x = x + fc2(GELU(fc1(LN2(x))))  # MLP with hidden size mlp_ratio * D

and the head is ``Linear(LN(x)[:, 0])`` on the class token. The residual stream ties the hidden
size ``D`` across all blocks; heads are ``D / num_heads`` wide.

ViT-Ti/16 is ``dim=192, depth=12, num_heads=3, patch=16`` at 224x224. ``build_vit_tiny`` keeps
``depth=12, num_heads=3`` with ``dim=96, patch_size=8`` on 64x64 images (64 patches + class token).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ._common import ExampleInputs, randomize_norm_affine, seeded

__all__ = ["ViT", "ViTBlock", "ViTConfig", "build_vit_tiny", "vit_tiny"]


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a ViT; the defaults are the CPU-test size used by ``build_vit_tiny``."""

    image_size: int = 64
    patch_size: int = 8
    in_channels: int = 3
    dim: int = 96
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: int = 4
    num_classes: int = 1000
    ln_eps: float = 1e-6


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + MHA(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.attn = nn.MultiheadAttention(cfg.dim, cfg.num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Patch embedding, class token, position embedding, pre-norm blocks, final LN, linear head."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"ViT: image_size {cfg.image_size} not divisible by patch_size {cfg.patch_size}")
        num_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, cfg.dim))
        self.blocks = nn.Sequential(*(ViTBlock(cfg) for _ in range(cfg.depth)))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit_tiny(**overrides: int | float) -> ViT:
    """ViT with :class:`ViTConfig` defaults, fields replaced by ``overrides``."""
    return ViT(replace(ViTConfig(), **overrides))


def build_vit_tiny(
    *, batch_size: int = 1, seed: int = 0, **overrides: int | float
) -> tuple[nn.Module, ExampleInputs]:
    """ViT (``dim=96, depth=12, heads=3, patch=8``); example input ``(batch_size, 3, 64, 64)``."""
    with seeded(seed):
        cfg = replace(ViTConfig(), **overrides)
        model = ViT(cfg)
        randomize_norm_affine(model)
        images = torch.randn(batch_size, cfg.in_channels, cfg.image_size, cfg.image_size)
    return model.eval(), (images,)
