"""Hidden-size (residual-stream) pruning (issue #12 item 1; rules/hidden.py, rewrite/hidden.py).

Oracles: the RMSNorm rescale identity itself; the pruned model against the masked original (all
weight slices of removed stream channels zeroed, writers included); stock transformers
``save_pretrained`` -> ``from_pretrained`` giving identical logits; the exact rescaled eps in the
config; the named LayerNorm barrier.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import graphprune as gp  # noqa: E402
from graphprune.analysis import couple  # noqa: E402
from graphprune.frontends import capture  # noqa: E402
from graphprune.verification import masked_original  # noqa: E402

VOCAB, SEQ, D = 61, 10, 64
_BASE = dict(hidden_size=D, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=96,
             vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 16}),  # (1 + w) norms, scaled tied embedding
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0}),
}


def build(name: str) -> tuple[nn.Module, dict]:
    cfg_cls, model_cls, extra = FAMILIES[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**_BASE, **extra)).eval()
    with torch.no_grad():  # norms away from their init so a wrong rescale shows
        for p in model.parameters():
            if p.ndim == 1:  # Gemma's norms multiply by (1 + w)
                p.uniform_(-0.5, 0.5) if name == "gemma" else p.uniform_(0.5, 1.5)
    ids = torch.randint(3, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(1))
    return model, {"input_ids": ids, "use_cache": False}


def test_rms_norm_rescale_identity() -> None:
    """mean over d channels, d - d' of them zero == mean over the d' kept ones, with
    eps' = eps d/d' and scale' = scale sqrt(d/d') (both conventions: w and 1 + w)."""
    g = torch.Generator().manual_seed(0)
    d, kept = 48, torch.arange(0, 48, 3)
    x = torch.zeros(5, d, dtype=torch.float64)
    x[:, kept] = torch.randn(5, len(kept), generator=g, dtype=torch.float64)
    w, eps = torch.randn(d, generator=g, dtype=torch.float64), 1e-2
    ratio = d / len(kept)

    def rms(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
        return scale * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    full = rms(x, w, eps)[:, kept]
    torch.testing.assert_close(rms(x[:, kept], w[kept] * math.sqrt(ratio), eps * ratio), full, rtol=1e-12, atol=1e-12)
    one_plus = rms(x, 1 + w, eps)[:, kept]
    w_gemma = (1 + w[kept]) * math.sqrt(ratio) - 1
    torch.testing.assert_close(rms(x[:, kept], 1 + w_gemma, eps * ratio), one_plus, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_hidden_exact_and_stock_reload(name: str, tmp_path: Path) -> None:
    model, x = build(name)
    eps0 = model.config.rms_norm_eps
    res = gp.prune(model, x, flops=0.6, hidden=True, uniform=True, round_to=1)
    cfg = res.model.config
    assert res.report["route"] == "module", res.report["route_reason"]
    assert type(res.model) is type(model)
    d2 = cfg.hidden_size
    assert d2 < D and d2 % model.config.num_attention_heads == 0
    assert model.config.hidden_size == D  # the input model is untouched
    assert res.model.get_input_embeddings().weight.shape[1] == d2
    assert res.model.get_output_embeddings().weight.shape[1] == d2
    assert cfg.rms_norm_eps == pytest.approx(eps0 * D / d2, rel=1e-12)
    masked = masked_original(model, res.coupling, res.removed)
    with torch.no_grad():
        ref, got = masked(**x).logits, res.model(**x).logits
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
        res.model.save_pretrained(tmp_path)
        back = type(model).from_pretrained(tmp_path).eval()
        torch.testing.assert_close(back(**x).logits, got, rtol=0, atol=0)
        ids = x["input_ids"]
        kw = dict(max_new_tokens=4, do_sample=False)
        assert torch.equal(back.generate(ids, **kw), masked.generate(ids, **kw))


def test_hidden_off_by_default_keeps_the_stream() -> None:
    model, x = build("llama")
    res = gp.prune(model, x, flops=0.6, uniform=True, round_to=1)
    assert res.model.config.hidden_size == D
    assert gp.api.HIDDEN_DEFAULT is False


def test_graphprune_llama_module_route() -> None:
    """models/llama.py: tied lm_head, its own RMSNorm class (eps attribute rescaled in place)."""
    from graphprune.models.llama import RMSNorm, llama_tiny

    torch.manual_seed(0)
    model = llama_tiny().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RMSNorm):
                m.weight.uniform_(0.5, 1.5)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(2))
    res = gp.prune(model, (ids,), flops=0.7, hidden=True, round_to=8, allocation="uniform")
    assert res.report["route"] == "module", res.report["route_reason"]
    d2 = res.model.embed.weight.shape[1]
    assert d2 < 64 and res.model.lm_head.weight is res.model.embed.weight
    assert res.model.norm.eps == pytest.approx(1e-6 * 64 / d2, rel=1e-12)
    masked = masked_original(model, res.coupling, res.removed)
    with torch.no_grad():
        torch.testing.assert_close(res.model(ids), masked(ids), rtol=1e-4, atol=1e-5)


class _OwnNorm(nn.Module):
    """An RMSNorm class graphprune does not know: the module route cannot rescale it."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-3)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.norm, self.mid, self.out = nn.Linear(8, 32), _OwnNorm(32), nn.Linear(32, 32), nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + self.mid(self.norm(h))
        return self.out(self.norm(h))


def test_unknown_norm_takes_the_fx_route_and_stays_exact() -> None:
    torch.manual_seed(0)
    model = _Net().eval()
    x = torch.randn(4, 8)
    res = gp.prune(model, (x,), flops=0.6, hidden=True, round_to=4, allocation="uniform")
    assert res.report["route"] == "fx"
    assert "_OwnNorm" in res.report["route_reason"] and "not a known RMSNorm class" in res.report["route_reason"]
    assert res.model.get_parameter("inp.weight").shape[0] < 32  # the stream shrank
    masked = masked_original(model, res.coupling, res.removed)
    x2 = torch.randn(4, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(res.model(x2), masked(x2), rtol=1e-4, atol=1e-5)


def test_layer_norm_is_a_named_barrier() -> None:
    class LN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.ln, self.b = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.b(self.ln(h + self.a(x).relu()))

    graph = capture(LN().eval(), (torch.randn(2, 8),)).graph
    c = couple(graph, hidden=True)
    w = next(v for v in graph.values if v.source == "a.weight")
    why = "\n".join(c.explain(w, 0, 0))
    assert "subtracts the mean before its variance" in why and "SliceGPT" in why
    assert not c.prunable(w, 0)


def test_hidden_refused_for_onnx(tmp_path: Path) -> None:
    from graphprune.errors import OptionError

    with pytest.raises(OptionError, match="hidden=True needs the PyTorch model for now"):
        gp.prune(str(tmp_path / "m.onnx"), flops=0.5, hidden=True)
