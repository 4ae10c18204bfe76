"""Whole decoder layers (issue #12 item 2): block influence on calib=, the config and layer
indices after removal, stock reload and generate() with the KV cache.

Oracles: block influence recomputed from ``output_hidden_states`` (1 - cos between consecutive
hidden states); the pruned model equals the original with those layers skipped by hand; stock
``from_pretrained`` of the saved directory gives the same logits; generation with the cache equals
generation without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import graphprune as gp  # noqa: E402
from graphprune.analysis.depth import layer_influence  # noqa: E402
from graphprune.errors import OptionError  # noqa: E402

VOCAB, SEQ = 61, 10


def build(cls: str = "Qwen2", layers: int = 4) -> tuple[torch.nn.Module, dict, list[dict]]:
    torch.manual_seed(0)
    cfg = getattr(transformers, f"{cls}Config")(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=layers, intermediate_size=48,
        vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    model = getattr(transformers, f"{cls}ForCausalLM")(cfg).eval()
    g = torch.Generator().manual_seed(1)
    x = {"input_ids": torch.randint(3, VOCAB, (1, SEQ), generator=g), "use_cache": False}
    calib = [{"input_ids": torch.randint(3, VOCAB, (1, SEQ), generator=g), "use_cache": False} for _ in range(2)]
    return model, x, calib


def influence_by_hand(model: torch.nn.Module, calib: list[dict]) -> list[float]:
    n = model.config.num_hidden_layers
    sums = torch.zeros(n, dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for b in calib:
            hs = model(**b, output_hidden_states=True).hidden_states
            for i in range(n):  # hidden_states[n] is after the final norm: use the last layer's own output
                out = hs[i + 1] if i + 1 < n else None
                if out is None:
                    continue
                cos = torch.nn.functional.cosine_similarity(hs[i].double(), out.double(), dim=-1)
                sums[i] += (1 - cos).sum()
            count += hs[0].shape[0] * hs[0].shape[1]
    return (sums / count).tolist()[: n - 1]


def test_influence_matches_hidden_states() -> None:
    model, _, calib = build()
    got = layer_influence(model, list(model.model.layers), calib)
    want = influence_by_hand(model, calib)
    assert got[: len(want)] == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_drop_layers_config_reload_generate(tmp_path: Path) -> None:
    model, x, calib = build()
    scores = layer_influence(model, list(model.model.layers), calib)
    res = gp.prune(model, x, flops=1.0, layers=2, calib=calib, criterion="wanda")
    removed = res.report["layers_removed"]["removed"]
    assert removed == sorted(sorted(range(4), key=lambda i: (scores[i], i))[:2])
    new = res.model
    cfg = new.config
    assert cfg.num_hidden_layers == 2 and len(new.model.layers) == 2
    assert len(cfg.layer_types) == 2
    assert [layer.self_attn.layer_idx for layer in new.model.layers] == [0, 1]
    assert model.config.num_hidden_layers == 4 and len(model.model.layers) == 4  # input untouched
    # the oracle: the original with the removed layers skipped by hand
    ref = build()[0]
    ref.model.layers = torch.nn.ModuleList([layer for i, layer in enumerate(ref.model.layers) if i not in removed])
    with torch.no_grad():
        torch.testing.assert_close(new(**x).logits, ref(**x).logits, rtol=0, atol=0)
        new.save_pretrained(tmp_path)
        back = type(model).from_pretrained(tmp_path).eval()
        torch.testing.assert_close(back(**x).logits, new(**x).logits, rtol=0, atol=0)
        ids = x["input_ids"]
        cached = back.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True)
        plain = back.generate(ids, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain)


def test_layers_then_widths_meet_the_budget() -> None:
    model, x, calib = build("Llama")
    full = gp.count_flops(model, x)[0]
    res = gp.prune(model, x, flops=0.5, layers=1, calib=calib, criterion="wanda", round_to=1)
    assert res.model.config.num_hidden_layers == 3
    assert res.report["layers_removed"]["removed"] and res.report["units_removed"] > 0
    assert gp.count_flops(res.model, x)[0] <= 0.5 * full * 1.01


@pytest.mark.parametrize("layers, msg", [
    (4, "layers=4: give a number of decoder layers to remove (0..3) or a fraction in [0, 1)"),
    (1.5, "layers=1.5: give a number of decoder layers to remove (0..3) or a fraction in [0, 1)"),
])
def test_bad_layers_option(layers: float, msg: str) -> None:
    model, x, _ = build()
    with pytest.raises(OptionError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace(".", r"\.")):
        gp.prune(model, x, flops=0.8, layers=layers)


def test_layers_needs_a_decoder() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    with pytest.raises(OptionError, match="layers= needs a transformers decoder with a list of decoder layers"):
        gp.prune(net, (torch.randn(2, 4),), flops=0.8, layers=1)


def test_plan_with_removed_layers_replays_on_the_original(tmp_path: Path) -> None:
    """A plan made with layers= records the decoder layers it removed; gp.apply on the original
    model removes the same layers, then keeps the same channels: the replayed model equals the
    pruned one. On an ONNX file such a plan is one PlanError line."""
    from graphprune.errors import PlanError

    model, x, calib = build()
    res = gp.prune(model, x, flops=0.6, calib=calib, layers=1)
    assert res.report["layers_removed"]["removed"]
    res.plan.save(tmp_path / "plan.json")
    again = gp.apply(model, tmp_path / "plan.json", x)
    assert again.model.config.num_hidden_layers == res.model.config.num_hidden_layers == 3
    assert again.plan.kept == res.plan.kept
    with torch.no_grad():
        ids = x["input_ids"]
        want = res.model(input_ids=ids, use_cache=False).logits
        got = again.model(input_ids=ids, use_cache=False).logits
    # res was refit by reconstruction (lsq,bias with calib=); apply replays structure only: compare
    # structure (every tensor's shape) and the masked-original check that apply ran
    assert {k: v.shape for k, v in again.model.state_dict().items()} == {
        k: v.shape for k, v in res.model.state_dict().items() if k in again.model.state_dict()}
    assert again.report["verification"]["ok"] and got.shape == want.shape
    with pytest.raises(PlanError, match="removes decoder layers"):
        gp.apply(tmp_path / "missing.onnx", tmp_path / "plan.json")
