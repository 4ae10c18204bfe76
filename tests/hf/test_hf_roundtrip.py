"""Hugging Face round trip: class kept, oracle, generate with the KV cache, stock reload of
uniform widths, one-line reload of per-layer widths, stock loading refused (docs/HF.md).

Tiny random configs built in code (tests/hf/_hf_models.py); each model is pruned once per mode.
The stock reload runs in a subprocess that never imports graphprune.
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")  # the `test` extra installs it; the core does not need it

from _hf_models import DECODERS, HF_MODELS, build  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.errors import ExportError, OptionError  # noqa: E402
from graphprune.rewrite.hf_attrs import layer_widths  # noqa: E402
from graphprune.verification import masked_original  # noqa: E402

NAMES = list(HF_MODELS)
FLOPS = 0.5  # uniform: low enough that every mapped decoder and ViT loses attention heads too
ROUND_TO = 1  # any width: the tiny layers (96 channels) would move in coarse runtime-sized steps


@functools.cache
def pruned(name: str, uniform: bool) -> tuple[torch.nn.Module, dict, gp.PruneResult]:
    """uniform=True at 50% FLOPs; per-layer widths from the global ranking at 60% on a model whose
    layer-0 MLP has half its channels nearly unused (layers then get different widths, checked in
    test_per_layer_one_line_reload)."""
    model, x = build(name, skew=not uniform)
    if uniform:
        return model, x, gp.prune(model, x, flops=FLOPS, uniform=True, round_to=ROUND_TO)
    return model, x, gp.prune(model, x, flops=0.6, allocation="global", round_to=ROUND_TO)


def first(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else next(iter(out.values()))  # type: ignore[union-attr]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("uniform", [False, True])
def test_class_kept_and_oracle(name: str, uniform: bool) -> None:
    model, x, res = pruned(name, uniform)
    assert type(res.model) is type(model)
    assert res.report["route"] == "module", res.report["route_reason"]
    assert res.report["units_removed"] > 0
    for key, value in HF_MODELS[name].config.items():  # the input model's config is untouched
        assert getattr(model.config, key) == value, key
    assert not hasattr(model.config, "graphprune")
    masked = masked_original(model, res.coupling, res.removed)
    with torch.no_grad():
        torch.testing.assert_close(first(res.model(**x)), first(masked(**x)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", DECODERS)
def test_generate_with_kv_cache(name: str) -> None:
    model, x, res = pruned(name, False)
    masked = masked_original(model, res.coupling, res.removed)
    ids = x["input_ids"][:, :5]
    kw = dict(max_new_tokens=5, do_sample=False, use_cache=True)
    with torch.no_grad():
        got = res.model.generate(ids, **kw)
        torch.testing.assert_close(got, masked.generate(ids, **kw), rtol=0, atol=0)
        out = res.model(input_ids=ids, use_cache=True)
    assert got.shape == (1, 10)
    # the cache holds each layer's own KV head count
    widths = layer_widths(res.model)
    for i, layer in enumerate(out.past_key_values.layers):
        if "num_key_value_heads" in widths:
            assert layer.keys.shape[1] == widths["num_key_value_heads"][i]
        assert layer.keys.shape[2] == 5


@pytest.mark.parametrize("name", NAMES)
def test_uniform_gives_equal_widths_and_meets_target(name: str) -> None:
    model, x, res = pruned(name, True)
    widths = layer_widths(res.model)
    assert widths and all(len(set(v)) == 1 for v in widths.values()), widths
    for key, v in widths.items():
        assert getattr(res.model.config, key) == v[0]
    assert not hasattr(res.model.config, "graphprune")
    heads = next((k for k in ("num_attention_heads", "num_heads") if k in widths), None)
    if heads:  # heads pruned too, and the config says so
        assert widths[heads][0] < HF_MODELS[name].config[heads]
    else:  # GPT-2, BERT-likes, OPT, GPT-NeoX, StableLM: head_dim = hidden // heads, so the heads stay
        assert res.model.config.num_attention_heads == 4  # whole for a stock config
    if res.report["target_reachable"]:
        assert abs(res.report["achieved"]["flops"] - FLOPS) <= 0.03, res.report["achieved"]


@pytest.mark.parametrize("name", NAMES)
def test_per_layer_one_line_reload(name: str, tmp_path: Path) -> None:
    model, x, res = pruned(name, False)
    widths = layer_widths(res.model)
    assert any(len(set(v)) > 1 for v in widths.values()) or res.model.config.graphprune["fixed_changed"], widths
    info = res.save_pretrained(tmp_path / "m")
    assert info["loader"] == "graphprune.load_pretrained" and info["mismatched"] > 0
    back = gp.load_pretrained(tmp_path / "m")
    assert type(back) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(first(back(**x)), first(res.model(**x)), rtol=0, atol=0)
    assert layer_widths(back) == layer_widths(res.model)


_STOCK = """
import json, sys, torch, transformers
assert "graphprune" not in sys.modules
out = {}
for item in json.loads(sys.argv[1]):
    cls = getattr(transformers, item["cls"])
    try:
        m = cls.from_pretrained(item["dir"]).eval()
    except Exception as exc:
        out[item["dir"]] = {"error": type(exc).__name__ + ": " + str(exc)}
        continue
    x = torch.load(item["dir"] + "/inputs.pt")
    with torch.no_grad():
        y = m(**x)
    y = y[0] if isinstance(y, tuple) else next(iter(y.values()))
    ref = torch.load(item["dir"] + "/ref.pt")
    out[item["dir"]] = {"equal": bool(torch.equal(y, ref)), "cls": type(m).__name__}
assert "graphprune" not in sys.modules
print(json.dumps(out))
"""


def test_stock_from_pretrained(tmp_path: Path) -> None:
    """Uniform widths: stock save_pretrained + stock from_pretrained (no graphprune) reload identical
    outputs. Per-layer widths: stock from_pretrained (the concrete class and AutoModel) refuses the
    directory, naming graphprune.load_pretrained."""
    items = []
    for name in NAMES:
        model, x, res = pruned(name, True)
        d = tmp_path / f"{name}-uniform"
        res.model.save_pretrained(d)
        with torch.no_grad():
            torch.save(first(res.model(**x)), d / "ref.pt")
        torch.save(x, d / "inputs.pt")
        items.append({"dir": str(d), "cls": HF_MODELS[name].model_cls})
        _, _, res_pl = pruned(name, False)
        d = tmp_path / f"{name}-per-layer"
        res_pl.save_pretrained(d)
        items.append({"dir": str(d), "cls": HF_MODELS[name].model_cls})
        items.append({"dir": str(d), "cls": "AutoModelForCausalLM" if HF_MODELS[name].decoder else "AutoModel"})
    proc = subprocess.run([sys.executable, "-c", _STOCK, json.dumps(items)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in NAMES:
        ok = got[str(tmp_path / f"{name}-uniform")]
        assert ok == {"equal": True, "cls": HF_MODELS[name].model_cls}, (name, ok)
        refused = got[str(tmp_path / f"{name}-per-layer")]
        assert "graphprune.load_pretrained" in refused.get("error", ""), (name, refused)


def test_uniform_rejects_other_allocations() -> None:
    model, x = build("llama")
    with pytest.raises(OptionError, match="uniform=True needs allocation='uniform'"):
        gp.prune(model, x, flops=0.7, uniform=True, allocation="global")


def test_save_pretrained_refuses_non_transformers(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    res = gp.prune(model, torch.randn(2, 8), flops=0.5)
    with pytest.raises(ExportError, match="save_pretrained needs a transformers PreTrainedModel; the pruned model is a Sequential"):
        res.save_pretrained(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_save_pretrained_over_a_file_writes_nothing(tmp_path: Path) -> None:
    _, _, res = pruned("llama", False)
    target = tmp_path / "m"
    target.write_text("keep me")
    with pytest.raises(ExportError, match=f"save_pretrained: {target} exists and is not a directory"):
        res.save_pretrained(target)
    assert target.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_save_pretrained_replaces_a_directory(tmp_path: Path) -> None:
    _, x, res = pruned("gpt2", False)
    d = tmp_path / "m"
    d.mkdir()
    (d / "stale.txt").write_text("old")
    res.save_pretrained(d)
    assert not (d / "stale.txt").exists() and (d / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_unmapped_class_prunes_and_explains_the_loader(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A transformers class without a config mapping (Helium) still takes the module route; its
    per-layer widths are saved for the one-line loader, which reloads identical outputs."""
    import transformers

    from graphprune.rewrite.hf_attrs import SPECS

    assert "helium" not in SPECS  # pick another unmapped class if Helium gets a mapping
    torch.manual_seed(0)
    cfg = transformers.HeliumConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                                   intermediate_size=96, vocab_size=97, max_position_embeddings=64, head_dim=16,
                                   bos_token_id=1, eos_token_id=2)
    cfg._attn_implementation = "sdpa"
    model = transformers.HeliumForCausalLM(cfg).eval()
    x = {"input_ids": torch.randint(0, 97, (1, 12)), "use_cache": False}
    res = gp.prune(model, x, flops=0.7, round_to=1)
    assert type(res.model) is type(model) and res.report["route"] == "module"
    with caplog.at_level(logging.INFO, logger="graphprune.hf"):
        info = res.save_pretrained(tmp_path / "he")
    assert info["loader"] == "graphprune.load_pretrained"
    assert f"graphprune.load_pretrained('{tmp_path / 'he'}')" in caplog.text
    assert info["note"] in caplog.text
    data = json.loads((tmp_path / "he" / "config.json").read_text())
    assert "graphprune.load_pretrained" in data["num_hidden_layers"]
    back = gp.load_pretrained(tmp_path / "he")
    with torch.no_grad():
        torch.testing.assert_close(back(**x)[0], res.model(**x)[0], rtol=0, atol=0)


def test_stock_save_of_per_layer_widths_is_refused_by_both_loaders(tmp_path: Path) -> None:
    """res.model.save_pretrained (transformers' own) on per-layer widths: the config cannot describe
    the weights; transformers refuses the size mismatch and load_pretrained says what to do."""
    import transformers

    _, _, res = pruned("llama", False)
    res.model.save_pretrained(tmp_path / "m")
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        transformers.LlamaForCausalLM.from_pretrained(tmp_path / "m")
    with pytest.raises(gp.GraphpruneError, match="write it with res.save_pretrained"):
        gp.load_pretrained(tmp_path / "m")
