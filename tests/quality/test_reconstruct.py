"""Reconstruction passes: they reduce the pruned layer's output error, keep the structure oracle,
compose, and fail with named errors on bad calibration input.

Oracles: output error of the pruned model vs the dense one on held-out inputs, with and without
reconstruction; exact BatchNorm statistics recomputed by hand; composed plan indices against the
original weights; the masked-original check recorded in the report before reconstruction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune as gp
from graphprune.errors import CalibrationError
from graphprune.frontends.calib import load_calib_file


class MLP(nn.Module):
    def __init__(self, bias2: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 24)
        self.fc2 = nn.Linear(24, 5, bias=bias2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def _data(n: int, seed: int) -> list[torch.Tensor]:
    """Correlated inputs with a non-zero mean (low-rank mixing + offset)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    return [torch.randn(32, 3, generator=g) @ mix + 0.5 + 0.1 * torch.randn(32, 8, generator=g) for _ in range(n)]


def _err(model: nn.Module, dense: nn.Module, xs: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return float(sum(((model(x) - dense(x)) ** 2).mean() for x in xs))


@pytest.mark.parametrize("bias2", [True, False])
@pytest.mark.parametrize("method", ["bias", "lsq"])
def test_reconstruction_reduces_the_output_error(method: str, bias2: bool) -> None:
    torch.manual_seed(0)
    dense = MLP(bias2).eval()
    calib, held_out = _data(16, 1), _data(4, 2)
    plain = gp.prune(dense, calib[0], flops=0.5, criterion="l2")
    recon = gp.prune(dense, calib[0], flops=0.5, criterion="l2", calib=calib, reconstruct=(method,))
    assert recon.plan.kept == plain.plan.kept  # same structure
    assert recon.report["verification"]["ok"] is True  # oracle checked before reconstruction
    assert recon.report["reconstruction"] == [f"reconstruct-{method}"]
    assert _err(recon.model, dense, held_out) < 0.7 * _err(plain.model, dense, held_out)
    assert (recon.model.fc2.bias is not None) and recon.model.fc2.bias.shape == (5,)


def test_lsq_beats_bias_compensation_and_they_compose() -> None:
    torch.manual_seed(0)
    dense = MLP().eval()
    calib, held_out = _data(16, 1), _data(4, 2)
    bias = gp.prune(dense, calib[0], flops=0.5, calib=calib, reconstruct="bias")
    both = gp.prune(dense, calib[0], flops=0.5, calib=calib, reconstruct=("bias", "lsq"))
    assert _err(both.model, dense, held_out) < _err(bias.model, dense, held_out)
    assert both.report["reconstruction"] == ["reconstruct-lsq"]  # lsq refit the bias; nothing left for bias


def test_conv_lsq_and_bias_reduce_error() -> None:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 3, padding=1)).eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, 3, 8, 8, generator=g) + 0.3 for _ in range(8)]
    held = [torch.randn(4, 3, 8, 8, generator=g) + 0.3 for _ in range(2)]
    plain = gp.prune(dense, calib[0], flops=0.5)
    e0 = _err(plain.model, dense, held)
    for method in ("bias", "lsq"):
        res = gp.prune(dense, calib[0], flops=0.5, calib=calib, reconstruct=(method,))
        assert _err(res.model, dense, held) < e0, method


def test_bn_recalibration_matches_the_pruned_models_own_statistics() -> None:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4)).eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(2, 3, 5, 5, generator=g) for _ in range(3)]
    res = gp.prune(dense, calib[0], flops=0.6, calib=calib, reconstruct=("bn",))
    m = res.model
    assert not m.training
    with torch.no_grad():
        feats = [m[2](m[1](m[0](x))) for x in calib]
    # momentum=None: cumulative average of the per-batch mean and unbiased variance
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(m[3].running_mean, mean, atol=1e-6)
    assert torch.allclose(m[3].running_var, var, atol=1e-6)


def test_verify_after_reconstruction_checks_structure_only() -> None:
    torch.manual_seed(0)
    dense = MLP().eval()
    calib = _data(4, 1)
    text = "couple,score{criterion=wanda},allocate{flops=0.5},rewrite,reconstruct-lsq{ridge=0.01},verify"
    res = gp.prune(dense, calib[0], pipeline=text, calib=calib)
    assert res.report["verification"]["ok"] is True
    assert "structure only" in res.report["verification"]["detail"]


def test_steps_compose_plans_and_call_back_between_steps() -> None:
    torch.manual_seed(0)
    dense = MLP().eval()
    seen: list[int] = []
    res = gp.prune(dense, _data(1, 1)[0], flops=0.5, steps=3, callback=lambda m, i: seen.append(i))
    assert seen == [1, 2]
    assert abs(res.report["achieved"]["flops"] - 0.5) < 0.06
    kept = np.asarray(res.plan.kept["fc1.weight"][0])
    assert len(kept) == res.model.fc1.out_features
    assert torch.equal(res.model.fc1.weight, dense.fc1.weight[torch.as_tensor(kept)])
    assert torch.equal(res.model.fc2.weight, dense.fc2.weight[:, torch.as_tensor(kept)])


def test_calib_files(tmp_path: Path) -> None:
    x = torch.randn(4, 8)
    torch.save(torch.randn(10, 8), tmp_path / "c.pt")
    assert [b.shape for b in load_calib_file(tmp_path / "c.pt", x)] == [(4, 8), (4, 8)]
    np.savez(tmp_path / "c.npz", x=np.random.randn(8, 8).astype(np.float32))
    assert len(load_calib_file(tmp_path / "c.npz", x)) == 2
    (tmp_path / "c.txt").write_text("nope")
    with pytest.raises(CalibrationError, match="--calib .*c.txt"):
        load_calib_file(tmp_path / "c.txt", x)
    with pytest.raises(CalibrationError, match="no such file"):
        load_calib_file(tmp_path / "missing.pt", x)
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(CalibrationError, match="cannot read"):
        load_calib_file(tmp_path / "bad.pt", x)
    torch.save(torch.randn(10, 7), tmp_path / "wrong.pt")
    with pytest.raises(CalibrationError, match="shapes"):
        load_calib_file(tmp_path / "wrong.pt", x)


FACTORY = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 5)).eval(), torch.randn(4, 8)
"""


def test_cli_calib_and_reconstruct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from graphprune.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpq_factory.py").write_text(FACTORY)
    torch.save(torch.randn(16, 8), tmp_path / "calib.pt")
    rc = main(["prune", "gpq_factory:build", "--flops", "0.5", "--criterion", "wanda", "--calib", "calib.pt",
               "--reconstruct", "lsq,bias", "-o", "out.pt", "--report", "r.json"])
    assert rc == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["criterion"] == "wanda" and rep["reconstruction"] == ["reconstruct-lsq"]
    assert main(["prune", "gpq_factory:build", "--flops", "0.5", "--criterion", "flap", "-o", "o.pt"]) == 2
    assert main(["prune", "gpq_factory:build", "--flops", "0.5", "--calib", "nope.npz", "-o", "o.pt"]) == 2
