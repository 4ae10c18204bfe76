"""End-to-end: every reference model prunes to several FLOPs budgets with no per-model option.

Oracles (DESIGN.md "Verification"): the pruned model equals the masked original on the example
inputs and on random inputs (checked inside prune and re-checked here independently); output
shapes are unchanged; achieved FLOPs are within 3% of the target; the weights really shrank;
a budget of 1.0 is the identity; the saved .onnx runs in onnxruntime and matches the module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from graphprune.models import MODELS, build

import graphprune as gp
from graphprune.frontends import call_model
from graphprune.verification import masked_original, random_like_inputs

NAMES = sorted(MODELS)


def _outputs(model: torch.nn.Module, x: object) -> torch.Tensor:
    out = call_model(model, x)
    return out if isinstance(out, torch.Tensor) else out[0]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("flops", [0.3, 0.6])
def test_prune_matches_masked_original(name: str, flops: float) -> None:
    model, x = build(name)
    ref = _outputs(model, x)
    res = gp.prune(model, x, flops=flops)
    rep = res.report
    assert rep["verification"]["ok"], rep["verification"]
    assert abs(rep["achieved"]["flops"] - flops) <= 0.03, (rep["achieved"], rep["barriers"])
    assert rep["units_removed"] > 0
    # independent re-check of the oracle, on a fresh random input
    assert res.coupling is not None and res.removed is not None
    masked = masked_original(model, res.coupling, res.removed)
    xr = random_like_inputs(x, seed=123)
    got = _outputs(res.model, xr)
    assert got.shape == ref.shape
    want = _outputs(masked, xr)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(want.abs().max())))
    # the input model is untouched
    torch.testing.assert_close(_outputs(model, x), ref, rtol=0, atol=0)
    n_before = sum(p.numel() for p in model.parameters())
    n_after = sum(p.numel() for p in res.model.parameters())
    assert n_after < n_before


@pytest.mark.parametrize("name", NAMES)
def test_budget_one_is_identity(name: str) -> None:
    model, x = build(name)
    res = gp.prune(model, x, flops=1.0)
    assert res.report["units_removed"] == 0
    torch.testing.assert_close(_outputs(res.model, x), _outputs(model, x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["resnet18_w050", "vit_tiny", "llama_tiny", "shufflenet"])
def test_saved_onnx_runs_in_onnxruntime(name: str, tmp_path: Path) -> None:
    model, x = build(name)
    res = gp.prune(model, x, flops=0.5)
    path = tmp_path / f"{name}.onnx"
    info = res.save(path)
    assert path.exists() and info["format"] == "onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), x, strict=False)}
    got = sess.run(None, feeds)[0]
    want = _outputs(res.model, x).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_saved_pt_roundtrip(tmp_path: Path) -> None:
    model, x = build("resnet18_w050")
    res = gp.prune(model, x, flops=0.5)
    path = tmp_path / "r.pt"
    res.save(path)
    loaded = torch.load(path, weights_only=False)
    torch.testing.assert_close(_outputs(loaded, x), _outputs(res.model, x))


@pytest.mark.parametrize("name", ["vit_tiny", "shufflenet"])
def test_fx_route_model_is_a_plain_module(name: str, tmp_path: Path) -> None:
    """The fx route returns a GraphModule a user can .eval(), save as .pt and load back."""
    model, x = build(name)
    res = gp.prune(model, x, flops=0.5)
    assert res.report["route"] == "fx"
    res.model.eval().train(False)
    path = tmp_path / "m.pt"
    res.save(path)
    loaded = torch.load(path, weights_only=False)
    torch.testing.assert_close(_outputs(loaded, x), _outputs(res.model, x), rtol=0, atol=0)
