"""DeepSeek-V2 (multi-head latent attention + MoE) and Mamba (selective scan, torch fallback) at
flops=0.5 from tiny random configs (issue #12 item 5; no hub), and the MoE decoders' ``.onnx``.

Oracles: the pruned model equals the masked original at two input sizes; exact structure (whole
MLA heads, every expert kept under a FLOPs budget, Mamba's d_inner channels shared by in_proj's
two halves, conv1d, x_proj, dt_proj, A_log, D and out_proj); the saved directory reloads to
identical logits (Mamba with stock ``from_pretrained``, DeepSeek-V2 with ``gp.load_pretrained``:
its dense MLP and shared expert widths have no config field of their own); a pruned Mixtral's
``.onnx`` runs in onnxruntime and matches (the experts' grouped matmul lowered by transformers' own
ONNX translation); DeepSeek-V2's complex rotary table has no ONNX lowering: one ExportError line
naming it, nothing written.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

import graphprune as gp  # noqa: E402
from graphprune.errors import ExportError  # noqa: E402
from graphprune.rules.moe import removed_router_rows  # noqa: E402
from graphprune.verification import masked_original  # noqa: E402

VOCAB = 97
CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # MLA expands its one latent KV to every query head: num_key_value_heads = num_attention_heads
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                    dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2,
                         intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=64, n_routed_experts=4,
                         num_experts_per_tok=2, moe_intermediate_size=48, n_shared_experts=1,
                         first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8,
                         qk_nope_head_dim=8, v_head_dim=16, n_group=1, topk_group=1)),
    "mamba": ("MambaConfig", "MambaForCausalLM",
              dict(hidden_size=64, num_hidden_layers=2, vocab_size=VOCAB, state_size=8, intermediate_size=128)),
}


def build(name: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    import transformers

    config_cls, model_cls, kwargs = CONFIGS[name]
    torch.manual_seed(0)
    cfg = getattr(transformers, config_cls)(**kwargs)
    cfg._attn_implementation = "eager" if name == "mamba" else "sdpa"  # Mamba has no attention
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights and biases so a wrong slice shows
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape))
    return model, batch(1, 1, 12)


def batch(seed: int, b: int, n: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, VOCAB, (b, n), generator=g), "use_cache": False}


@functools.cache
def pruned(name: str, **opts: Any) -> tuple[torch.nn.Module, dict[str, Any], gp.PruneResult]:
    model, x = build(name)
    return model, x, gp.prune(model, x, uniform=True, **(opts or {"flops": 0.5}))


def logits(model: torch.nn.Module, x: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return model(**x).logits


def equals_masked(model: torch.nn.Module, x: dict[str, Any], res: gp.PruneResult) -> None:
    masked = masked_original(model, res.coupling, res.removed)
    for xb in (x, batch(7, 2, 19)):  # the captured input and another batch and length
        torch.testing.assert_close(logits(res.model, xb), logits(masked, xb), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prunes_to_half_and_equals_masked_original(name: str) -> None:
    model, x, res = pruned(name)
    assert res.report["route"] == "module", res.report["route_reason"]
    assert type(res.model) is type(model)
    assert abs(res.report["achieved"]["flops"] - 0.5) <= 0.03, res.report["achieved"]
    assert res.report["pinned_after_check"] == []  # the rules were right: verify had nothing to repair
    equals_masked(model, x, res)
    assert model.config.to_dict() == build(name)[0].config.to_dict()  # the input's config is untouched


def test_deepseek_v2_prunes_whole_mla_heads_and_keeps_every_expert() -> None:
    """Heads: q_proj, kv_b_proj and o_proj lose whole heads together (keys are built by copy_
    into a new_empty buffer, rope in complex form); under a FLOPs budget the experts stay whole
    (their histc bins were left free before, and removing them broke the oracle)."""
    model, _, res = pruned("deepseek_v2")
    cfg = model.config
    heads = []
    for layer in res.model.model.layers:
        a = layer.self_attn
        h = a.o_proj.in_features // cfg.v_head_dim
        assert a.q_proj.out_features == h * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)
        assert a.kv_b_proj.out_features == h * (cfg.qk_nope_head_dim + cfg.v_head_dim)
        assert a.kv_a_proj_with_mqa.out_features == cfg.kv_lora_rank + cfg.qk_rope_head_dim  # latent kept
        assert a.num_heads == h
        heads.append(h)
    assert min(heads) < 4 and res.model.config.num_attention_heads == res.model.config.num_key_value_heads == heads[0]
    moe = res.model.model.layers[1].mlp
    assert moe.gate.weight.shape == (4, 64) and moe.experts.num_experts == 4
    assert moe.experts.down_proj.shape[2] == res.model.config.moe_intermediate_size < 48


def test_deepseek_v2_whole_experts_with_the_router_behind_its_cast() -> None:
    """DeepSeek's router computes linear(x.float(), weight.float()): the removed experts' rows are
    found through the cast, so the masked original gives them -inf and the pruned model equals it."""
    model, x, res = pruned("deepseek_v2", params=0.5, experts=True)
    moe = res.model.model.layers[1].mlp
    k = moe.experts.num_experts
    assert 2 <= k < 4 and moe.gate.weight.shape == (k, 64) and res.model.config.n_routed_experts == k
    rows = removed_router_rows(res.coupling, res.removed)
    assert list(rows) == ["model.layers.1.mlp.gate.weight"] and len(rows["model.layers.1.mlp.gate.weight"]) == 4 - k
    equals_masked(model, x, res)


def test_deepseek_v2_reloads_with_the_graphprune_loader(tmp_path: Path) -> None:
    model, x, res = pruned("deepseek_v2")
    info = res.save_pretrained(tmp_path / "m")
    assert info["loader"] == "graphprune.load_pretrained"
    with pytest.raises(Exception, match="graphprune.load_pretrained"):
        type(model).from_pretrained(tmp_path / "m")
    back = gp.load_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(logits(back, x), logits(res.model, x), atol=0, rtol=0)


def test_mamba_prunes_d_inner_everywhere_and_reloads_stock(tmp_path: Path) -> None:
    """The zero scan state (torch.zeros of d_inner) no longer pins d_inner: every tensor that holds
    it shrinks together, the dt rank too, and the config follows (stock reload, KV-free cache)."""
    model, x, res = pruned("mamba")
    cfg = res.model.config
    for layer in res.model.backbone.layers:
        m = layer.mixer
        d = m.out_proj.in_features
        assert d == cfg.intermediate_size < 128 and m.in_proj.out_features == 2 * d
        assert m.conv1d.weight.shape == (d, 1, 4) and m.conv1d.groups == d
        assert m.x_proj.weight.shape == (m.time_step_rank + 16, d) and m.dt_proj.weight.shape == (d, m.time_step_rank)
        assert m.A_log.shape == (d, 8) and m.D.shape == (d,) and m.time_step_rank == cfg.time_step_rank
    res.model.save_pretrained(tmp_path / "m")
    back = type(model).from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(logits(back, x), logits(res.model, x), atol=0, rtol=0)
    masked = masked_original(model, res.coupling, res.removed)
    ids = x["input_ids"][:, :5]
    with torch.no_grad():  # generation with the recurrent cache, sized from the pruned config
        got = res.model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
        torch.testing.assert_close(got, masked.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True),
                                   atol=0, rtol=0)


def test_pruned_mixtral_writes_an_onnx_that_onnxruntime_runs(tmp_path: Path) -> None:
    import onnxruntime as ort
    from test_families import pruned as family_pruned  # shares test_families' pruned Mixtral

    _, x, res = family_pruned("mixtral", True)
    info = res.save(tmp_path / "mixtral.onnx")
    assert info["exporter"] == "dynamo" and info["onnxruntime_max_abs_err"] < 1e-4
    sess = ort.InferenceSession(str(tmp_path / "mixtral.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids"]
    got = sess.run(None, {"input_ids": x["input_ids"].numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), logits(res.model, x), atol=1e-4, rtol=1e-4)


def test_deepseek_v2_onnx_names_the_complex_rope(tmp_path: Path) -> None:
    _, _, res = pruned("deepseek_v2")
    with pytest.raises(ExportError) as info:
        res.save(tmp_path / "ds.onnx")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("ONNX export failed: ")
    assert "complex-valued input" in msg
    assert list(tmp_path.iterdir()) == []
