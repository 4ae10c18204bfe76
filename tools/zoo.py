"""A zoo of third-party architectures to try graphprune (and Torch-Pruning) on.

Every entry of :data:`ZOO` is a zero-argument factory returning ``(model.eval(), example_inputs)``
where ``example_inputs`` is a tuple of tensors. All models are built from code or config with
random weights (torchvision ``weights=None``, timm ``pretrained=False``, transformers config
classes): nothing is fetched from a model hub. Each factory imports its library lazily, so this
module imports with only ``torch`` installed; a factory whose library is missing raises
``ImportError`` when called.

Input sizes are small for a 2-core CPU: images are 1x3x128x128 wherever the architecture accepts
it (torchvision ViT and timm DeiT are built with ``image_size``/``img_size=128``, which resizes the
position embedding), and transformers models take ``input_ids`` of shape 1x16.

transformers models are wrapped in :class:`HFTensorOutput` so that ``forward(input_ids)`` returns
one tensor (logits or last hidden state) instead of a ``ModelOutput``, with ``use_cache=False`` and
``return_dict=False``; the wrapped model is the attribute ``hf``.

Weights are as the libraries initialise them (BatchNorm gamma = 1, beta = 0, running stats 0/1), so
magnitude criteria that read BN scales see ties; this zoo is for coverage and timing, not for
ranking quality.

Run it (in the zoo venv) to check that every entry runs forward and captures with
``torch.export.export(model, args, strict=False)``::

    /work/venv-zoo/bin/python tools/zoo.py                  # all of ZOO
    /work/venv-zoo/bin/python tools/zoo.py resnet50 llama   # some
    /work/venv-zoo/bin/python tools/zoo.py --deep --json zoo.json

This file lives in tools/: it is never imported by the graphprune package.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["DEEP", "ZOO", "HFFeatureOutput", "HFTensorOutput", "check_entry", "get"]

Inputs = tuple[torch.Tensor, ...]
Factory = Callable[[], tuple[nn.Module, Inputs]]

IMAGE = (1, 3, 128, 128)
SEQ_LEN = 16
# attention backend for transformers models; "sdpa" exports with torch.export on torch 2.14
HF_ATTN = "sdpa"


def _image(shape: tuple[int, ...] = IMAGE, seed: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g),)


def _ids(vocab: int, seq: int = SEQ_LEN, seed: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, vocab, (1, seq), generator=g),)


# ----------------------------------------------------------------------------------- torchvision


def _tv(name: str, shape: tuple[int, ...] = IMAGE, **kwargs: Any) -> Factory:
    def factory() -> tuple[nn.Module, Inputs]:
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None, **kwargs)
        return model.eval(), _image(shape)

    factory.__name__ = f"torchvision_{name}"
    factory.__doc__ = f"torchvision.models.{name}(weights=None, {kwargs}) on {shape}"
    return factory


# ------------------------------------------------------------------------------------------ timm


def _timm(name: str, shape: tuple[int, ...] = IMAGE, **kwargs: Any) -> Factory:
    def factory() -> tuple[nn.Module, Inputs]:
        import timm

        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, **kwargs)
        return model.eval(), _image(shape)

    factory.__name__ = f"timm_{name}"
    factory.__doc__ = f"timm.create_model({name!r}, pretrained=False, {kwargs}) on {shape}"
    return factory


# ---------------------------------------------------------------------------------- transformers


class HFTensorOutput(nn.Module):
    """Make a transformers model a tensor-in, tensor-out module: ``forward(input_ids) -> Tensor``.

    Calls the wrapped model with ``use_cache=False, return_dict=False`` and returns the first
    element of the output tuple (``logits`` for ``*ForCausalLM``/``*LMHeadModel``,
    ``last_hidden_state`` for ``BertModel``).
    """

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = {"return_dict": False}
        if "use_cache" in inspect.signature(self.hf.forward).parameters:
            kwargs["use_cache"] = False
        out = self.hf(input_ids=input_ids, **kwargs)
        return out[0]


TINY_GQA = dict(
    hidden_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    intermediate_size=256,
    vocab_size=1000,
    max_position_embeddings=256,
)


def _hf(config_cls: str, model_cls: str, config: dict[str, Any], attn: str = HF_ATTN) -> Factory:
    def factory() -> tuple[nn.Module, Inputs]:
        import transformers

        torch.manual_seed(0)
        cfg = getattr(transformers, config_cls)(**config)
        cfg._attn_implementation = attn
        hf = getattr(transformers, model_cls)(cfg)
        return HFTensorOutput(hf).eval(), _ids(cfg.vocab_size)

    factory.__name__ = f"hf_{model_cls}"
    factory.__doc__ = f"transformers.{model_cls}({config_cls}({config})) on input_ids 1x{SEQ_LEN}"
    return factory


class HFFeatureOutput(nn.Module):
    """A transformers encoder that takes features (Whisper's log-mel ``input_features``, CLIP's
    ``pixel_values``) as a tensor-in, tensor-out module returning ``last_hidden_state``."""

    def __init__(self, hf: nn.Module, key: str) -> None:
        super().__init__()
        self.hf = hf
        self.key = key

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.hf(**{self.key: features}, return_dict=False)[0]


def _hf_whisper_encoder() -> Factory:
    def factory() -> tuple[nn.Module, Inputs]:
        import transformers

        torch.manual_seed(0)
        cfg = transformers.WhisperConfig(d_model=128, encoder_attention_heads=4, encoder_layers=2, encoder_ffn_dim=256,
                                         decoder_attention_heads=4, decoder_layers=1, decoder_ffn_dim=256,
                                         num_mel_bins=16, max_source_positions=32)
        cfg._attn_implementation = HF_ATTN
        hf = transformers.WhisperModel(cfg).encoder
        return HFFeatureOutput(hf, "input_features").eval(), _image((1, 16, 64))

    factory.__name__ = "hf_WhisperEncoder"
    factory.__doc__ = "transformers.WhisperModel(WhisperConfig(d_model=128, 2 layers)).encoder on 1x16x64 features"
    return factory


def _hf_clip_vision() -> Factory:
    def factory() -> tuple[nn.Module, Inputs]:
        import transformers

        torch.manual_seed(0)
        cfg = transformers.CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_attention_heads=4,
                                            num_hidden_layers=2, image_size=32, patch_size=8)
        cfg._attn_implementation = HF_ATTN
        hf = transformers.CLIPVisionModel(cfg)
        return HFFeatureOutput(hf, "pixel_values").eval(), _image((1, 3, 32, 32))

    factory.__name__ = "hf_CLIPVisionModel"
    factory.__doc__ = "transformers.CLIPVisionModel(CLIPVisionConfig(hidden 128, 2 layers)) on 1x3x32x32"
    return factory


# -------------------------------------------------------------------------------------- registry

ZOO: dict[str, Factory] = {
    # torchvision CNNs
    "resnet50": _tv("resnet50"),
    "resnext50_32x4d": _tv("resnext50_32x4d"),
    "mobilenet_v2": _tv("mobilenet_v2"),
    "mobilenet_v3_large": _tv("mobilenet_v3_large"),
    "efficientnet_b0": _tv("efficientnet_b0"),
    "densenet121": _tv("densenet121"),
    # inception_v3 needs >= 75x75; 128 works with aux_logits off
    "inception_v3": _tv("inception_v3", aux_logits=False, init_weights=False),
    "shufflenet_v2_x1_0": _tv("shufflenet_v2_x1_0"),
    "regnet_y_400mf": _tv("regnet_y_400mf"),
    "convnext_tiny": _tv("convnext_tiny"),
    # torchvision transformers
    "swin_t": _tv("swin_t"),
    "vit_b_16": _tv("vit_b_16", image_size=128),
    # timm
    "deit_tiny_patch16_224": _timm("deit_tiny_patch16_224", img_size=128),
    "mobilevit_s": _timm("mobilevit_s"),
    # transformers (tiny configs, random weights)
    "llama": _hf("LlamaConfig", "LlamaForCausalLM", TINY_GQA),
    "qwen2": _hf("Qwen2Config", "Qwen2ForCausalLM", TINY_GQA),
    "mistral": _hf("MistralConfig", "MistralForCausalLM", {**TINY_GQA, "sliding_window": None}),
    "gpt2": _hf(
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(
            n_embd=128, n_head=4, n_layer=2, vocab_size=1000, n_positions=256, bos_token_id=0, eos_token_id=0
        ),
    ),
    "bert": _hf(
        "BertConfig",
        "BertModel",
        dict(
            hidden_size=128,
            num_attention_heads=4,
            num_hidden_layers=2,
            intermediate_size=256,
            vocab_size=1000,
            max_position_embeddings=256,
        ),
    ),
    # -- issue #11: more architectures (torchvision, timm, transformers), at least 60 in all ----------
    "resnet18": _tv("resnet18"),
    "resnet34": _tv("resnet34"),
    "resnet101": _tv("resnet101"),
    "wide_resnet50_2": _tv("wide_resnet50_2"),
    "mobilenet_v3_small": _tv("mobilenet_v3_small"),
    "efficientnet_b1": _tv("efficientnet_b1"),
    "efficientnet_v2_s": _tv("efficientnet_v2_s"),
    "mnasnet1_0": _tv("mnasnet1_0"),
    "squeezenet1_1": _tv("squeezenet1_1"),
    "googlenet": _tv("googlenet", aux_logits=False, init_weights=False),
    "vgg11_bn": _tv("vgg11_bn"),
    "alexnet": _tv("alexnet"),
    "regnet_x_400mf": _tv("regnet_x_400mf"),
    "shufflenet_v2_x0_5": _tv("shufflenet_v2_x0_5"),
    "swin_v2_t": _tv("swin_v2_t"),
    "vit_b_32": _tv("vit_b_32", image_size=128),
    # timm: weight-standardized convs (NFNet, BiT), MLP mixers, pooling/poly-attention hybrids
    "nfnet_l0": _timm("nfnet_l0"),
    "eca_nfnet_l0": _timm("eca_nfnet_l0"),
    "resnetv2_50x1_bit": _timm("resnetv2_50x1_bit"),
    "ghostnet_100": _timm("ghostnet_100"),
    "rexnet_100": _timm("rexnet_100"),
    "dla34": _timm("dla34"),
    "cspresnet50": _timm("cspresnet50"),
    "repvgg_a2": _timm("repvgg_a2"),
    "dpn68": _timm("dpn68"),
    "hrnet_w18_small": _timm("hrnet_w18_small"),
    "poolformer_s12": _timm("poolformer_s12"),
    "mixer_b16_224": _timm("mixer_b16_224", img_size=128),
    "resmlp_12_224": _timm("resmlp_12_224", img_size=128),
    "pvt_v2_b0": _timm("pvt_v2_b0"),
    "edgenext_xx_small": _timm("edgenext_xx_small"),
    "mobilevitv2_050": _timm("mobilevitv2_050"),
    "gernet_s": _timm("gernet_s"),
    "selecsls42b": _timm("selecsls42b"),
    # transformers: more decoder, encoder and weight-sharing (ALBERT) families, tiny configs
    "phi": _hf("PhiConfig", "PhiForCausalLM", {**TINY_GQA, "num_key_value_heads": 4}),
    "gemma": _hf("GemmaConfig", "GemmaForCausalLM", {**TINY_GQA, "head_dim": 32}),
    "qwen3": _hf("Qwen3Config", "Qwen3ForCausalLM", {**TINY_GQA, "head_dim": 32}),
    "olmo": _hf("OlmoConfig", "OlmoForCausalLM", TINY_GQA),
    "stablelm": _hf("StableLmConfig", "StableLmForCausalLM", TINY_GQA),
    "starcoder2": _hf("Starcoder2Config", "Starcoder2ForCausalLM", {**TINY_GQA, "sliding_window": None}),
    "gpt_neox": _hf("GPTNeoXConfig", "GPTNeoXForCausalLM",
                    dict(hidden_size=128, num_attention_heads=4, num_hidden_layers=2, intermediate_size=256,
                         vocab_size=1000, max_position_embeddings=256)),
    "opt": _hf("OPTConfig", "OPTForCausalLM",
               dict(hidden_size=128, num_attention_heads=4, num_hidden_layers=2, ffn_dim=256, vocab_size=1000,
                    max_position_embeddings=256, word_embed_proj_dim=128)),
    "granite": _hf("GraniteConfig", "GraniteForCausalLM", TINY_GQA),
    "distilbert": _hf("DistilBertConfig", "DistilBertModel",
                      dict(dim=128, n_heads=4, n_layers=2, hidden_dim=256, vocab_size=1000,
                           max_position_embeddings=256)),
    "roberta": _hf("RobertaConfig", "RobertaModel",
                   dict(hidden_size=128, num_attention_heads=4, num_hidden_layers=2, intermediate_size=256,
                        vocab_size=1000, max_position_embeddings=256)),
    "albert": _hf("AlbertConfig", "AlbertModel",
                  dict(hidden_size=128, embedding_size=64, num_attention_heads=4, num_hidden_layers=2,
                       intermediate_size=256, vocab_size=1000, max_position_embeddings=256)),
    "electra": _hf("ElectraConfig", "ElectraModel",
                   dict(hidden_size=128, embedding_size=64, num_attention_heads=4, num_hidden_layers=2,
                        intermediate_size=256, vocab_size=1000, max_position_embeddings=256)),
    "t5_encoder": _hf("T5Config", "T5EncoderModel",
                      dict(d_model=128, d_kv=32, d_ff=256, num_heads=4, num_layers=2, vocab_size=1000)),
    # -- issue #12 item 5: more transformers families, mixture-of-experts included (tiny configs) ------
    "falcon": _hf("FalconConfig", "FalconForCausalLM",
                  dict(hidden_size=128, num_attention_heads=4, num_kv_heads=2, new_decoder_architecture=True,
                       num_hidden_layers=2, vocab_size=1000)),
    "bloom": _hf("BloomConfig", "BloomForCausalLM", dict(hidden_size=128, n_head=4, n_layer=2, vocab_size=1000),
                 attn="eager"),  # BLOOM has no sdpa path
    "mixtral": _hf("MixtralConfig", "MixtralForCausalLM", {**TINY_GQA, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2_moe": _hf("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                     {**TINY_GQA, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 128,
                      "shared_expert_intermediate_size": 256}),
    "qwen3_moe": _hf("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                     {**TINY_GQA, "head_dim": 32, "num_experts": 4, "num_experts_per_tok": 2,
                      "moe_intermediate_size": 128}),
    "olmoe": _hf("OlmoeConfig", "OlmoeForCausalLM", {**TINY_GQA, "num_experts": 4, "num_experts_per_tok": 2,
                                                     "eos_token_id": 2, "pad_token_id": 1}),
    "phimoe": _hf("PhimoeConfig", "PhimoeForCausalLM", {**TINY_GQA, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "deepseek_v2": _hf("DeepseekV2Config", "DeepseekV2ForCausalLM",
                       # MLA expands its one latent KV to every query head: num_key_value_heads must equal
                       # num_attention_heads (as in the released configs), else sdpa's repeat_kv doubles the heads
                       {**TINY_GQA, "num_key_value_heads": 4, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 128,
                        "n_shared_experts": 1, "first_k_dense_replace": 1, "kv_lora_rank": 32, "q_lora_rank": None,
                        "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 32, "n_group": 1,
                        "topk_group": 1}),
    "gptj": _hf("GPTJConfig", "GPTJForCausalLM", dict(n_embd=128, n_head=4, n_layer=2, vocab_size=1000, rotary_dim=16,
                                                      n_positions=256)),
    "codegen": _hf("CodeGenConfig", "CodeGenForCausalLM",
                   dict(n_embd=128, n_head=4, n_layer=2, vocab_size=1000, rotary_dim=16, n_positions=256, n_ctx=256)),
    "mpt": _hf("MptConfig", "MptForCausalLM", dict(d_model=128, n_heads=4, n_layers=2, vocab_size=1000, max_seq_len=256),
               attn="eager"),
    "cohere": _hf("CohereConfig", "CohereForCausalLM", TINY_GQA),
    "gemma2": _hf("Gemma2Config", "Gemma2ForCausalLM", {**TINY_GQA, "head_dim": 32}, attn="eager"),
    "gemma3": _hf("Gemma3TextConfig", "Gemma3ForCausalLM", {**TINY_GQA, "head_dim": 32}),
    "mamba": _hf("MambaConfig", "MambaForCausalLM",
                 dict(hidden_size=128, num_hidden_layers=2, vocab_size=1000, state_size=8, intermediate_size=256),
                 attn="eager"),
    "deberta_v2": _hf("DebertaV2Config", "DebertaV2Model",
                      dict(hidden_size=128, num_attention_heads=4, num_hidden_layers=2, intermediate_size=256,
                           vocab_size=1000, max_position_embeddings=256), attn="eager"),
    "whisper_encoder": _hf_whisper_encoder(),
    "clip_vision": _hf_clip_vision(),
    # deep graphs, for timing graph capture/analysis on many nodes
    "resnet152": _tv("resnet152"),
    "densenet201": _tv("densenet201"),
    "inception_v4": _timm("inception_v4"),
}

DEEP: list[str] = ["resnet152", "densenet201", "inception_v4"]


def get(name: str) -> tuple[nn.Module, Inputs]:
    """Build zoo entry ``name``; raise ``KeyError`` naming the known entries if it is unknown."""
    try:
        factory = ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}") from None
    return factory()


# ----------------------------------------------------------------------------------------- check


def _shape(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return list(out.shape)
    if isinstance(out, (tuple, list)):
        return [_shape(o) for o in out]
    return type(out).__name__


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return " ".join(line.strip() for line in text[:3])[:400]


def check_entry(name: str) -> dict[str, Any]:
    """Build ``name``, run forward, run ``torch.export.export(strict=False)``; time each step."""
    row: dict[str, Any] = {"model": name, "build_ok": False, "forward_ok": False, "export_ok": False}
    try:
        t0 = time.perf_counter()
        model, args = get(name)
        row["build_s"] = round(time.perf_counter() - t0, 3)
        row["build_ok"] = True
        row["inputs"] = [list(a.shape) for a in args]
        row["params"] = sum(p.numel() for p in model.parameters())
    except Exception as exc:  # noqa: BLE001 - record and go on with the next model
        row["error"] = "build: " + _short(exc)
        return row
    try:
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(*args)
        row["forward_s"] = round(time.perf_counter() - t0, 3)
        row["output"] = _shape(out)
        row["forward_ok"] = True
    except Exception as exc:  # noqa: BLE001
        row["error"] = "forward: " + _short(exc)
        return row
    try:
        t0 = time.perf_counter()
        ep = torch.export.export(model, args, strict=False)
        row["export_s"] = round(time.perf_counter() - t0, 3)
        row["export_ok"] = True
        row["export_nodes"] = len(ep.graph.nodes)
    except Exception as exc:  # noqa: BLE001
        row["export_s"] = round(time.perf_counter() - t0, 3)
        row["error"] = "export: " + _short(exc)
        row["traceback"] = traceback.format_exc(limit=6)
    return row


def _print_table(rows: list[dict[str, Any]]) -> None:
    cols = ["model", "params", "inputs", "forward_ok", "export_ok", "export_s", "export_nodes", "error"]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="graphprune zoo: forward + torch.export(strict=False)")
        for c in cols:
            table.add_column(c, overflow="fold")
        for r in rows:
            table.add_row(*[str(r.get(c, "")) for c in cols])
        Console(width=200).print(table)
    except ImportError:
        print(" | ".join(cols))
        for r in rows:
            print(" | ".join(str(r.get(c, "")) for c in cols))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="zoo names (default: all)")
    parser.add_argument("--deep", action="store_true", help="only the DEEP entries")
    parser.add_argument("--list", action="store_true", help="list the entries and exit")
    parser.add_argument("--json", help="write the rows as JSON to this path")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ns = parser.parse_args(argv)
    if ns.list:
        for name, f in ZOO.items():
            print(f"{name:24s} {'DEEP ' if name in DEEP else ''}{f.__doc__}")
        return 0
    torch.set_num_threads(ns.threads)
    names = ns.models or (DEEP if ns.deep else list(ZOO))
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        parser.error(f"unknown zoo models: {unknown}; known: {list(ZOO)}")
    rows = []
    for name in names:
        row = check_entry(name)
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)
        rows.append(row)
    _print_table(rows)
    if ns.json:
        with open(ns.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0 if all(r["export_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
