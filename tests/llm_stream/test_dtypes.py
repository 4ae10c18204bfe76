"""bf16 and fp16 models are pruned (in memory and streamed) and written in their dtype; the
oracle's tolerance follows the dtype (graphprune.verification.DTYPE_RTOL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _stream_ckpt import calib_ids, make_checkpoint
from safetensors import safe_open
from torch import nn

import graphprune as gp
from graphprune.verification import DTYPE_RTOL, compare_outputs, dtype_rtol


def _file_dtypes(d: Path) -> set[str]:
    files = set(json.loads((d / "model.safetensors.index.json").read_text())["weight_map"].values()) \
        if (d / "model.safetensors.index.json").is_file() else {"model.safetensors"}
    out = set()
    for f in files:
        with safe_open(str(d / f), "pt") as sf:
            out |= {sf.get_slice(k).get_dtype() for k in sf.keys()}
    return out


@pytest.mark.parametrize(("dtype", "tag", "family"), [(torch.bfloat16, "BF16", "llama"), (torch.float16, "F16", "qwen2")])
def test_half_precision_in_memory_and_streamed(tmp_path: Path, dtype: torch.dtype, tag: str, family: str) -> None:
    model = make_checkpoint(tmp_path / "ckpt", family, dtype=dtype)
    ids = calib_ids(n=2)
    batches = [{"input_ids": i, "use_cache": False} for i in ids]
    mem = gp.prune(model, batches[0], flops=0.7, calib=batches)
    assert {p.dtype for p in mem.model.parameters()} == {dtype}
    v = mem.report["verification"]
    assert v["ok"] and v["tolerance"] == pytest.approx(DTYPE_RTOL[dtype] * max(1.0, v["max_ref"]))
    mem.save(tmp_path / "m.pt")
    assert {p.dtype for p in torch.load(tmp_path / "m.pt", weights_only=False).parameters()} == {dtype}
    mem.save_pretrained(tmp_path / "mem")
    assert _file_dtypes(tmp_path / "mem") == {tag}
    res = gp.prune(tmp_path / "ckpt", flops=0.7, calib=ids)
    assert res.plan.kept == mem.plan.kept
    assert res.report["dtype"] == str(dtype).removeprefix("torch.") and res.report["verification"]["ok"]
    res.save_pretrained(tmp_path / "out")
    assert _file_dtypes(tmp_path / "out") == {tag}
    back = gp.load_pretrained(tmp_path / "out")
    with torch.no_grad():
        got = back(input_ids=ids[0], use_cache=False).logits
        want = mem.model(input_ids=ids[0], use_cache=False).logits
    assert got.dtype == dtype
    # the refit consumers differ by bf16/fp16 roundings: the in-memory Grams come from the exported
    # program's activations, the streamed ones from the eager layer's (equal in float32:
    # test_stream.py); every other tensor is bit-equal
    state = mem.model.state_dict()
    refit = {k for k in state if any(k.startswith(w.rpartition(".")[0]) for w in _refit_weights(res))}
    for k, t in back.state_dict().items():
        if k not in refit:
            assert torch.equal(t, state[k]), k
    tol = DTYPE_RTOL[dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * float(want.abs().max()))


def _refit_weights(res: object) -> list[str]:
    return [w for w, sh in res.report["widths"].items() if sh["before"][1:] != sh["after"][1:]]


def test_tolerance_table_by_dtype() -> None:
    ref = torch.full((4,), 2.0)
    near = ref + 0.02  # 1% of the scale: a few bf16/fp16 roundings, far too much for float32
    assert not compare_outputs([ref], [near])[0]
    assert compare_outputs([ref.half()], [near.half()])[0] and compare_outputs([ref.bfloat16()], [near.bfloat16()])[0]
    far = ref + 0.06  # 3%: beyond fp16's floor (1% of max(1, 2)), within bf16's (5%)
    assert not compare_outputs([ref.half()], [far.half()])[0] and compare_outputs([ref.bfloat16()], [far.bfloat16()])[0]
    assert not compare_outputs([ref.bfloat16()], [(ref + 0.2).bfloat16()])[0]
    assert dtype_rtol(torch.float32) == 1e-4 and dtype_rtol(torch.bfloat16, rtol=0.1) == 0.1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_mlp_is_verified_in_its_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 16)).to(dtype).eval()
    x = torch.randn(8, 32).to(dtype)
    res = gp.prune(net, x, flops=0.5, round_to=1)
    assert res.report["verification"]["ok"]
    assert res.model[0].out_features < 128 and res.model[0].weight.dtype == dtype
    res.save(tmp_path / "m.pt")
    assert torch.load(tmp_path / "m.pt", weights_only=False)[2].weight.dtype == dtype
