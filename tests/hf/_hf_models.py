"""Tiny random transformers models for the Hugging Face round-trip tests (no hub access).

Each entry builds a model from a config in code (seeded) and its example inputs as keyword
arguments (``use_cache=False`` for decoders so the forward returns tensors only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["DECODERS", "HF_MODELS", "HFCase", "build"]

VOCAB = 97
SEQ = 12


@dataclass(frozen=True)
class HFCase:
    name: str
    config_cls: str
    model_cls: str
    config: dict[str, Any]
    decoder: bool
    inputs: Callable[[], dict[str, Any]]


def _ids() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, VOCAB, (1, SEQ), generator=g)}


def _decoder_ids() -> dict[str, Any]:
    return {**_ids(), "use_cache": False}


def _pixels() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(1, 3, 16, 16, generator=g)}


_GQA = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, bos_token_id=1, eos_token_id=2,
            intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=64)

HF_MODELS: dict[str, HFCase] = {c.name: c for c in (
    HFCase("llama", "LlamaConfig", "LlamaForCausalLM", dict(_GQA), True, _decoder_ids),
    HFCase("qwen2", "Qwen2Config", "Qwen2ForCausalLM", dict(_GQA), True, _decoder_ids),
    HFCase("mistral", "MistralConfig", "MistralForCausalLM", {**_GQA, "sliding_window": None}, True, _decoder_ids),
    HFCase("gemma", "GemmaConfig", "GemmaForCausalLM", {**_GQA, "head_dim": 16}, True, _decoder_ids),
    HFCase("phi3", "Phi3Config", "Phi3ForCausalLM", {**_GQA, "pad_token_id": 0}, True, _decoder_ids),
    HFCase("gpt2", "GPT2Config", "GPT2LMHeadModel",
           dict(n_embd=64, n_head=4, n_layer=2, n_inner=96, vocab_size=VOCAB, n_positions=64, bos_token_id=1,
                eos_token_id=2), True, _decoder_ids),
    HFCase("bert", "BertConfig", "BertModel",
           dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96, vocab_size=VOCAB,
                max_position_embeddings=64), False, _ids),
    HFCase("vit", "ViTConfig", "ViTModel",
           dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96, image_size=16,
                patch_size=4, num_channels=3), False, _pixels),
    # the transformers classes tools/zoo.py builds beyond the eight above (issue #9)
    HFCase("phi", "PhiConfig", "PhiForCausalLM", {**_GQA, "num_key_value_heads": 4}, True, _decoder_ids),
    HFCase("qwen3", "Qwen3Config", "Qwen3ForCausalLM", {**_GQA, "head_dim": 16}, True, _decoder_ids),
    HFCase("olmo", "OlmoConfig", "OlmoForCausalLM", dict(_GQA), True, _decoder_ids),
    HFCase("stablelm", "StableLmConfig", "StableLmForCausalLM", dict(_GQA), True, _decoder_ids),
    HFCase("starcoder2", "Starcoder2Config", "Starcoder2ForCausalLM", {**_GQA, "sliding_window": None}, True,
           _decoder_ids),
    HFCase("gpt_neox", "GPTNeoXConfig", "GPTNeoXForCausalLM",
           dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96, vocab_size=VOCAB,
                max_position_embeddings=64, bos_token_id=1, eos_token_id=2), True, _decoder_ids),
    HFCase("opt", "OPTConfig", "OPTForCausalLM",
           dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, ffn_dim=96, vocab_size=VOCAB,
                max_position_embeddings=64, word_embed_proj_dim=64, bos_token_id=1, eos_token_id=2, pad_token_id=0),
           True, _decoder_ids),
    HFCase("granite", "GraniteConfig", "GraniteForCausalLM", dict(_GQA), True, _decoder_ids),
    HFCase("distilbert", "DistilBertConfig", "DistilBertModel",
           dict(dim=64, n_heads=4, n_layers=2, hidden_dim=96, vocab_size=VOCAB, max_position_embeddings=64), False,
           _ids),
    HFCase("roberta", "RobertaConfig", "RobertaModel",
           dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96, vocab_size=VOCAB,
                max_position_embeddings=64), False, _ids),
    HFCase("albert", "AlbertConfig", "AlbertModel",
           dict(hidden_size=64, embedding_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96,
                vocab_size=VOCAB, max_position_embeddings=64), False, _ids),
    HFCase("electra", "ElectraConfig", "ElectraModel",
           dict(hidden_size=64, embedding_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96,
                vocab_size=VOCAB, max_position_embeddings=64), False, _ids),
    HFCase("t5_encoder", "T5Config", "T5EncoderModel",
           dict(d_model=64, d_kv=16, d_ff=96, num_heads=4, num_layers=2, vocab_size=VOCAB), False, _ids),
)}

DECODERS = [n for n, c in HF_MODELS.items() if c.decoder]

# the MLP's reading weight in layer 0 and its intermediate axis: build(skew=True) shrinks half of
# those channels so any ranking across layers prunes layer 0's MLP harder (per-layer widths differ)
_MLP_READER = {
    **{n: ("layers.0.mlp.down_proj.weight", 1) for n in ("llama", "qwen2", "mistral", "gemma", "phi3")},
    "gpt2": ("h.0.mlp.c_proj.weight", 0),
    "bert": ("layer.0.output.dense.weight", 1),
    "vit": ("layers.0.mlp.fc2.weight", 1),
    **{n: ("layers.0.mlp.down_proj.weight", 1) for n in ("qwen3", "olmo", "stablelm", "granite")},
    "phi": ("layers.0.mlp.fc2.weight", 1),
    "starcoder2": ("layers.0.mlp.c_proj.weight", 1),
    "gpt_neox": ("layers.0.mlp.dense_4h_to_h.weight", 1),
    "opt": ("layers.0.fc2.weight", 1),
    "distilbert": ("layer.0.ffn.lin2.weight", 1),
    "roberta": ("layer.0.output.dense.weight", 1),
    "albert": ("albert_layers.0.ffn_output.weight", 1),  # one layer group shared by every layer
    "electra": ("layer.0.output.dense.weight", 1),
    "t5_encoder": ("block.0.layer.1.DenseReluDense.wo.weight", 1),
}


def build(name: str, seed: int = 0, skew: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The model (eval mode, sdpa attention, random weights from ``seed``) and its example inputs.
    ``skew``: half of layer 0's MLP channels read with weights scaled by 0.01."""
    import transformers

    case = HF_MODELS[name]
    torch.manual_seed(seed)
    cfg = getattr(transformers, case.config_cls)(**case.config)
    cfg._attn_implementation = "sdpa"
    model = getattr(transformers, case.model_cls)(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights and biases so a wrong slice shows
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape))
        if skew:
            suffix, axis = _MLP_READER[name]
            w = next(p for n, p in model.named_parameters() if n == suffix or n.endswith("." + suffix))
            w.narrow(axis, 0, w.shape[axis] // 2).mul_(0.01)
    return model, case.inputs()
