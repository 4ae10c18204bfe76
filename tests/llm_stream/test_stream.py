"""A transformers checkpoint directory pruned layer by layer (graphprune.stream) gives the SAME
plan and the same tensors as the in-memory path, and what it writes reloads.

Oracles: the in-memory ``gp.prune(model, ...)`` of the same random checkpoint (kept indices of
every tensor equal; every written tensor equal to the in-memory pruned model's); the reloaded
directory's logits equal the in-memory pruned model's; with ``uniform=True`` and no
reconstruction stock ``from_pretrained`` reloads it and its logits equal the masked original's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _stream_ckpt import calib_ids, make_checkpoint
from safetensors.torch import load_file

import graphprune as gp
from graphprune.cli import main
from graphprune.verification import masked_original


def _written(d: Path) -> dict[str, torch.Tensor]:
    idx = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    out: dict[str, torch.Tensor] = {}
    for f in sorted(set(idx.values())):
        out.update(load_file(str(d / f)))
    assert set(out) == set(idx)
    return out


def _batches(ids: list[torch.Tensor]) -> list[dict[str, object]]:
    return [{"input_ids": i, "use_cache": False} for i in ids]


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_streamed_equals_in_memory(tmp_path: Path) -> None:
    model = make_checkpoint(tmp_path / "ckpt", "llama")  # qwen2 (q/k/v biases): test_dtypes.py
    ids = calib_ids()
    res = gp.prune(tmp_path / "ckpt", flops=0.7, calib=ids)  # the default recipe: wanda + lsq,bias + global
    res.save_pretrained(tmp_path / "out")
    mem = gp.prune(model, _batches(ids)[0], flops=0.7, calib=_batches(ids))
    assert res.plan.kept == mem.plan.kept
    assert res.plan.removed_units == mem.plan.removed_units and res.plan.removed_units
    assert res.report["reconstruction"] == ["lsq", "bias"] and res.report["refit"]
    assert res.report["verification"]["ok"] and res.report["verification"]["checks"] == 2 * len(ids)
    state = mem.model.state_dict()
    written = _written(tmp_path / "out")
    assert set(written) == set(state) - ({"lm_head.weight"} if model.config.tie_word_embeddings else set())
    for k, t in written.items():
        torch.testing.assert_close(t, state[k], rtol=1e-5, atol=1e-6, msg=k)
    back = gp.load_pretrained(tmp_path / "out")  # per-layer widths and refit biases: graphprune's loader
    torch.testing.assert_close(_logits(back, ids[0]), _logits(mem.model, ids[0]), rtol=1e-5, atol=1e-5)
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) == model.config.num_hidden_layers + 1
    # the in-memory directory keeps the refit biases too (stock from_pretrained would drop them)
    assert mem.save_pretrained(tmp_path / "mem")["loader"] == "graphprune.load_pretrained"
    back = gp.load_pretrained(tmp_path / "mem")
    torch.testing.assert_close(_logits(back, ids[0]), _logits(mem.model, ids[0]), rtol=1e-5, atol=1e-5)


def test_uniform_stock_reload_equals_masked_original(tmp_path: Path) -> None:
    import transformers

    model = make_checkpoint(tmp_path / "ckpt", "llama")
    ids = calib_ids(n=2)
    res = gp.prune(str(tmp_path / "ckpt"), flops=0.6, calib=ids, uniform=True, reconstruct=())
    assert res.report["loader"] == "stock"
    res.save_pretrained(tmp_path / "out")
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert back.config.intermediate_size < model.config.intermediate_size
    masked = masked_original(model, res.coupling, res.removed)
    for x in [*ids, torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(5))]:
        torch.testing.assert_close(_logits(back, x), _logits(masked, x), rtol=1e-4, atol=1e-4)


def test_cli_checkpoint_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_checkpoint(tmp_path / "ckpt", "llama")
    torch.save(torch.cat(calib_ids(n=2)), tmp_path / "ids.pt")
    rc = main(["prune", str(tmp_path / "ckpt"), "--flops", "0.7", "--calib", str(tmp_path / "ids.pt"),
               "--criterion", "l2", "-o", str(tmp_path / "out"), "--report", str(tmp_path / "r.json")])
    assert rc == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["streamed"] and rep["criterion"] == "l2" and rep["verification"]["ok"] and rep["kept"]["flops"] <= 0.7
    assert "streamed layer by layer" in capsys.readouterr().out
    back = gp.load_pretrained(tmp_path / "out")
    widths = [layer.mlp.down_proj.in_features for layer in back.model.layers]
    assert widths == [rep["widths"][f"model.layers.{i}.mlp.down_proj.weight"]["after"][1] for i in range(2)]
    assert sum(widths) < 2 * 96


def test_heads_that_do_not_divide_hidden_reload_with_graphprune_loader(tmp_path: Path) -> None:
    """transformers 5 refuses a LLaMA config whose hidden_size the head count does not divide (7
    heads of 8 here), even with head_dim set: the directory is written for load_pretrained (the
    original counts restored, the tensors taking their written shapes), never a refused config."""
    model = make_checkpoint(tmp_path / "ckpt", "llama", num_attention_heads=8, num_key_value_heads=8,
                            num_hidden_layers=1)
    ids = calib_ids(n=2)
    res = gp.prune(tmp_path / "ckpt", flops=0.75, calib=ids, round_to=1, reconstruct=())
    assert res.report["widths"]["model.layers.0.self_attn.q_proj.weight"]["after"] == [56, 64]
    assert res.report["loader"] == "graphprune.load_pretrained"
    res.save_pretrained(tmp_path / "out")
    back = gp.load_pretrained(tmp_path / "out")
    assert back.model.layers[0].self_attn.q_proj.out_features == 56
    masked = masked_original(model, res.coupling, res.removed)
    torch.testing.assert_close(_logits(back, ids[1]), _logits(masked, ids[1]), rtol=1e-4, atol=1e-4)


def test_in_memory_heads_that_do_not_divide_hidden_save_for_graphprune_loader(tmp_path: Path) -> None:
    """The in-memory result of the same case: res.save_pretrained restores the refused config
    fields from the config before pruning (never a raw transformers validation error), and the
    reloaded model equals the pruned one; saving the bare pruned model, whose original config is
    unknown, is one ExportError line."""
    from graphprune.errors import ExportError
    from graphprune.hf import save_pretrained

    model = make_checkpoint(tmp_path / "ckpt", "llama", num_attention_heads=8, num_key_value_heads=8,
                            num_hidden_layers=1)
    ids = calib_ids(n=1)
    res = gp.prune(model, {"input_ids": ids[0], "use_cache": False}, flops=0.75, round_to=1)
    heads = res.model.model.layers[0].self_attn.q_proj.out_features // 8
    assert heads < 8 and 64 % heads != 0  # a head count transformers' LlamaConfig refuses
    assert res.save_pretrained(tmp_path / "out")["loader"] == "graphprune.load_pretrained"
    back = gp.load_pretrained(tmp_path / "out")
    torch.testing.assert_close(_logits(back, ids[0]), _logits(res.model, ids[0]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ExportError, match="transformers refuses the pruned LlamaConfig") as err:
        save_pretrained(res.model, tmp_path / "bare")
    assert "\n" not in str(err.value) and not (tmp_path / "bare").exists()


def test_cli_checkpoint_plan_out_replays_in_memory(tmp_path: Path) -> None:
    """--plan-out on a checkpoint directory writes the streamed run's plan; gp.apply of it to the
    same model in memory keeps exactly the same channels."""
    model = make_checkpoint(tmp_path / "ckpt", "llama")
    torch.save(torch.cat(calib_ids(n=2)), tmp_path / "ids.pt")
    rc = main(["prune", str(tmp_path / "ckpt"), "--flops", "0.7", "--calib", str(tmp_path / "ids.pt"),
               "--criterion", "wanda", "-o", str(tmp_path / "out"), "--plan-out", str(tmp_path / "plan.json")])
    assert rc == 0
    plan = gp.PruningPlan.load(tmp_path / "plan.json")
    res = gp.apply(model, plan, {"input_ids": calib_ids(n=1)[0], "use_cache": False})
    assert res.plan.kept == plan.kept and plan.removed_units
    assert res.report["verification"]["ok"]


def test_gram_criterion_is_refused_on_a_checkpoint_directory(tmp_path: Path) -> None:
    """obs scores from every consumer's Gram, which the streamed route never holds all at once:
    refused by name (it used to fall back to l2 scores without a word)."""
    from graphprune.errors import OptionError

    make_checkpoint(tmp_path / "ckpt", "llama")
    with pytest.raises(OptionError, match=r"criterion 'obs' needs every consumer's Gram matrix"):
        gp.prune(tmp_path / "ckpt", flops=0.7, calib=calib_ids(), criterion="obs")
    assert not (tmp_path / "out").exists()
