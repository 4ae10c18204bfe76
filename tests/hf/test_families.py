"""transformers families of issue #12 item 5: Falcon, MoE decoders (Mixtral, Qwen3-MoE), T5's
shared position bias, BLOOM's ONNX inputs, and graphprune's own errors at the API boundary.

Each family: prune at flops=0.5 from a tiny random config, the pruned model equals the masked
original, and (where the class saves and loads) the uniform result reloads with stock
``from_pretrained`` to identical outputs. Everything is built from configs in code (no hub).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

import graphprune as gp  # noqa: E402
from graphprune.boundary import own_errors, where  # noqa: E402
from graphprune.errors import InternalError  # noqa: E402
from graphprune.rewrite.hf_attrs import layer_widths  # noqa: E402
from graphprune.verification import masked_original  # noqa: E402

VOCAB = 97
_GQA = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=96,
            vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)

FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "falcon": ("FalconConfig", "FalconForCausalLM",
               dict(hidden_size=64, num_attention_heads=4, num_kv_heads=2, new_decoder_architecture=True,
                    num_hidden_layers=2, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(_GQA, num_local_experts=4, num_experts_per_tok=2)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(_GQA, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48)),
}
# the config field that holds each family's (expert) MLP width
MLP_FIELD = {"falcon": "ffn_hidden_size", "mixtral": "intermediate_size", "qwen3_moe": "moe_intermediate_size"}


def build(name: str, seed: int = 0, attn: str = "sdpa") -> tuple[torch.nn.Module, dict[str, Any]]:
    import transformers

    config_cls, model_cls, kwargs = FAMILIES[name]
    torch.manual_seed(seed)
    cfg = getattr(transformers, config_cls)(**kwargs)
    cfg._attn_implementation = attn
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights and biases so a wrong slice shows
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape))
    g = torch.Generator().manual_seed(1)
    return model, {"input_ids": torch.randint(0, VOCAB, (1, 12), generator=g), "use_cache": False}


@functools.cache
def pruned(name: str, uniform: bool) -> tuple[torch.nn.Module, dict[str, Any], gp.PruneResult]:
    model, x = build(name)
    return model, x, gp.prune(model, x, flops=0.5, uniform=uniform)


def logits(model: torch.nn.Module, x: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return model(**x).logits


@pytest.mark.parametrize(("name", "uniform"), [("falcon", False), ("falcon", True), ("mixtral", True),
                                               ("qwen3_moe", True)])
def test_prunes_to_half_and_equals_masked_original(name: str, uniform: bool) -> None:
    model, x, res = pruned(name, uniform)
    rep = res.report
    assert rep["route"] == "module", rep["route_reason"]
    assert type(res.model) is type(model)
    assert abs(rep["achieved"]["flops"] - 0.5) <= 0.03, rep["achieved"]
    masked = masked_original(model, res.coupling, res.removed)
    torch.testing.assert_close(logits(res.model, x), logits(masked, x), atol=1e-4, rtol=1e-4)
    g = torch.Generator().manual_seed(7)  # a second batch and length than the one captured
    x2 = {"input_ids": torch.randint(0, VOCAB, (2, 19), generator=g), "use_cache": False}
    torch.testing.assert_close(logits(res.model, x2), logits(masked, x2), atol=1e-4, rtol=1e-4)
    assert model.config.to_dict() == build(name)[0].config.to_dict()  # the input's config is untouched


@pytest.mark.parametrize("name", list(FAMILIES))
def test_uniform_reloads_with_stock_from_pretrained(name: str, tmp_path: Path) -> None:
    model, x, res = pruned(name, True)
    field = MLP_FIELD[name]
    widths = layer_widths(res.model)
    assert widths is not None and len(set(widths[field])) == 1, widths
    assert getattr(res.model.config, field) == widths[field][0] < getattr(model.config, field)
    res.model.save_pretrained(tmp_path / "m")
    back = type(model).from_pretrained(tmp_path / "m").eval()
    assert getattr(back.config, field) == widths[field][0]
    torch.testing.assert_close(logits(back, x), logits(res.model, x), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe"])
def test_moe_experts_keep_one_width_in_16_byte_blocks(name: str) -> None:
    """A unit is channel j of every expert at once; kept widths are multiples of 4 fp32 channels
    (torch's grouped_mm kernel needs 16-byte strides); whole experts go with their router rows
    (tests/hf/test_experts.py), at least top-k of them stay."""
    model, x, res = pruned(name, True)
    for layer, before in zip(res.model.model.layers, model.model.layers, strict=True):
        e, e0 = layer.mlp.experts, before.mlp.experts
        inter = e.down_proj.shape[2]
        assert e.gate_up_proj.shape == (e.num_experts, 2 * inter, 64) and inter % 4 == 0
        assert e.intermediate_dim == inter < e0.intermediate_dim
        assert layer.mlp.gate.weight.shape == (e.num_experts, 64) and 2 <= e.num_experts <= e0.num_experts


def test_falcon_heads_follow_the_fused_projection() -> None:
    """Falcon (new decoder architecture) reshapes with self.num_heads: per-layer KV groups removed
    leave num_heads / num_kv_heads equal to what query_key_value and dense hold."""
    model, x, res = pruned("falcon", False)
    heads = []
    for block in res.model.transformer.h:
        a = block.self_attention
        assert a.dense.in_features == a.num_heads * a.head_dim
        assert a.query_key_value.out_features == (a.num_heads + 2 * a.num_kv_heads) * a.head_dim
        heads.append(a.num_heads)
    assert min(heads) < 4  # attention was pruned, not only the MLPs
    masked = masked_original(model, res.coupling, res.removed)
    ids = x["input_ids"][:, :5]
    with torch.no_grad():  # generation with the KV cache follows each layer's own head count
        got = res.model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
        torch.testing.assert_close(got, masked.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True),
                                   atol=0, rtol=0)


def test_t5_encoder_prunes_heads_with_the_shared_position_bias() -> None:
    """T5's layer 0 owns the relative position bias [buckets, heads] that every layer adds to its
    scores: the heads of all layers and the bias columns are one group, removed together."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.T5Config(d_model=64, d_kv=16, d_ff=96, num_heads=4, num_layers=2, vocab_size=VOCAB)
    cfg._attn_implementation = "sdpa"
    model = transformers.T5EncoderModel(cfg).eval()
    x = {"input_ids": torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(1))}
    res = gp.prune(model, x, flops=0.2)
    bias = res.model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    q = [b.layer[0].SelfAttention.q.out_features // 16 for b in res.model.encoder.block]
    assert bias.shape[1] == q[0] == q[1] < 4
    masked = masked_original(model, res.coupling, res.removed)
    with torch.no_grad():
        torch.testing.assert_close(res.model(**x)[0], masked(**x)[0], atol=1e-4, rtol=1e-4)


def test_bloom_onnx_asks_only_for_the_example_inputs(tmp_path: Path) -> None:
    """The TorchScript exporter makes BLOOM's int keyword default logits_to_keep an input; such a
    file is refused and the dynamo exporter writes one that asks for input_ids only."""
    import onnx
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BloomConfig(hidden_size=64, n_head=4, n_layer=2, vocab_size=VOCAB)
    cfg._attn_implementation = "eager"  # BLOOM has no sdpa path
    model = transformers.BloomForCausalLM(cfg).eval()
    x = {"input_ids": torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(1)), "use_cache": False}
    res = gp.prune(model, x, flops=0.5)
    assert abs(res.report["achieved"]["flops"] - 0.5) <= 0.03 and res.report["verification"]["ok"]
    info = res.save(tmp_path / "bloom.onnx")
    assert [i.name for i in onnx.load(str(tmp_path / "bloom.onnx")).graph.input] == ["input_ids"]
    assert info["onnxruntime_max_abs_err"] < 1e-4


def test_foreign_errors_leave_the_api_as_internal_error() -> None:
    def forward_breaks() -> None:
        torch.zeros(768).reshape(1, 2, 12, 16)

    wrapped = own_errors("graphprune.prune")(forward_breaks)
    with pytest.raises(InternalError) as info:
        wrapped()
    msg = str(info.value)
    assert msg.startswith("graphprune.prune failed: RuntimeError: shape '[1, 2, 12, 16]' is invalid for input of "
                          "size 768 (at test_families.py:")
    assert "in forward_breaks: torch.zeros(768).reshape(1, 2, 12, 16)" in msg
    assert isinstance(info.value.__cause__, RuntimeError)
    assert where(info.value.__cause__).startswith("test_families.py:")


def test_prune_wraps_a_foreign_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever breaks inside prune (here: the pruning run itself raising a RuntimeError, as a
    rewritten model's forward would) reaches the caller as graphprune's InternalError."""
    import graphprune.api

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("size mismatch, 2 vs 4")

    monkeypatch.setattr(graphprune.api, "_prune_once", boom)
    with pytest.raises(InternalError, match=r"^graphprune.prune failed: RuntimeError: size mismatch, 2 vs 4 "
                                            r"\(at test_families.py:\d+ in boom: raise RuntimeError"):
        gp.prune(torch.nn.Linear(4, 4), torch.randn(2, 4), flops=0.5)


def test_custom_op_keeps_its_library_name() -> None:
    """A custom op without a rule is a barrier named by its own library (issue #11), and an op
    that shares an ATen name (mylib::linear) is not lowered as ATen's."""
    lib = torch.library.Library("gpfam", "FRAGMENT")  # noqa: TOR901
    lib.define("linear(Tensor x, Tensor w) -> Tensor")
    lib.impl("linear", lambda x, w: x @ w.t() * 2, "CompositeExplicitAutograd")
    lib.impl("linear", lambda x, w: x.new_empty(*x.shape[:-1], w.shape[0]), "Meta")

    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.gpfam.linear(torch.relu(self.a(x)), self.b.weight)

    a = gp.analyze(M(), torch.randn(2, 8))
    assert a.report["barriers"] == {"gpfam.linear.default": ["linear_1"]}
    assert [n.op for n in a.graph.nodes if n.name == "linear_1"] == ["gpfam.linear"]
