"""Tiny random decoder checkpoints written to a directory (sharded safetensors + config.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["CONFIGS", "VOCAB", "calib_ids", "make_checkpoint"]

VOCAB = 97
_BASE = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=96,
             vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(_BASE)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(_BASE)),
}


def make_checkpoint(d: Path, family: str = "llama", dtype: torch.dtype = torch.float32, seed: int = 0,
                    shard: str = "20KB", **overrides: Any) -> torch.nn.Module:
    """Build the family's model with seeded random weights, write it to ``d`` in ``dtype`` with
    small shards (so the index and several files are exercised) and return it (in ``dtype``)."""
    import transformers

    cfg_name, cls_name, cfg = CONFIGS[family]
    torch.manual_seed(seed)
    config = getattr(transformers, cfg_name)(**{**cfg, **overrides})
    model = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():  # norms away from 1 so a wrong norm weight would show
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    model = model.to(dtype)
    model.save_pretrained(d, max_shard_size=shard)
    return model


def calib_ids(n: int = 3, batch: int = 2, seq: int = 12, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, seq), generator=g) for _ in range(n)]
