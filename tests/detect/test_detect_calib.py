"""calib= on a model captured as fragments (models/yolo.py): the model runs itself on each batch
and every fragment's program gathers the statistics of the inputs it is really called with.

Oracles: each conv's channel sums and Gram against sums taken by plain hooks on the conv modules'
inputs over the same batches; the default recipe's pruned model is verified (before
reconstruction) and its head outputs are closer to the dense model's than the no-calibration
default's at the same FLOPs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from graphprune.models.yolo import YOLO, build_yolo
from torch import nn

import graphprune as gp
from graphprune.analysis.calibration import reader_sites
from graphprune.analysis.coupling import couple
from graphprune.analysis.fragment_calibration import collect_fragment_stats
from graphprune.errors import CalibrationError, OptionError
from graphprune.frontends import capture


def _calib(n: int = 4, size: int = 64) -> list[tuple[list[torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    return [([torch.rand(3, size, size, generator=g)],) for _ in range(n)]


def _head_outputs(model: YOLO, images: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        outs = model.head(model.neck(model.backbone(model.batch_images(images))))
        return torch.cat([t.flatten() for pair in outs for t in pair])


def test_fragment_statistics_are_those_of_each_modules_real_inputs() -> None:
    model, example = build_yolo(image_size=64, width=0.5)
    cap = capture(model, example)
    assert cap.fragments is not None and cap.program is None
    sites = [s for s in reader_sites(couple(cap.graph)) if s.op == "conv"]
    calib = _calib()
    stats = collect_fragment_stats(model, cap.fragments, sites, calib, frozenset(s.node for s in sites))
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, a, name=name: seen.setdefault(name, []).append(a[0].detach()))
             for name, m in convs.items()]
    with torch.no_grad():
        for (images,) in calib:
            model(images)
    for h in hooks:
        h.remove()
    checked = 0
    for s in sites:
        mod = s.weight.source.rsplit(".", 1)[0]
        if mod not in convs or len(seen.get(mod, [])) != len(calib):
            continue
        x = torch.cat([t.double().movedim(1, -1).reshape(-1, t.shape[1]) for t in seen[mod]])
        st = stats[s.node]
        assert st.n == x.shape[0]
        np.testing.assert_allclose(st.sum, x.sum(0).numpy(), rtol=1e-4, atol=1e-4)  # conv summation order
        np.testing.assert_allclose(st.sumsq, x.square().sum(0).numpy(), rtol=1e-4, atol=1e-4)
        checked += 1
    assert checked >= 10


def test_fragment_grams_equal_the_whole_program_grams_of_that_module() -> None:
    """The backbone fragment's statistics, Grams included (sampled conv rows: same seeds), equal
    those of the backbone captured whole and calibrated on the same batched images."""
    from graphprune.analysis.calibration import collect_stats

    model, example = build_yolo(image_size=64, width=0.5)
    calib = _calib()
    cap = capture(model, example)
    sites = reader_sites(couple(cap.graph))
    got = collect_fragment_stats(model, cap.fragments, sites, calib, frozenset(s.node for s in sites))
    with torch.no_grad():
        batched = [(model.batch_images(images),) for (images,) in calib]
    whole = capture(model.backbone, batched[0])
    assert whole.program is not None
    bsites = reader_sites(couple(whole.graph))
    ref = collect_stats(whole.program, bsites, batched, frozenset(s.node for s in bsites))
    by_source = {s.weight.source: s for s in sites if s.node.startswith(cap.fragments.fragments[0].prefix)}
    assert cap.fragments.fragments[0].path == "backbone"
    compared = 0
    for s in bsites:
        mine = by_source.get(f"backbone.{s.weight.source}")
        if mine is None or ref[s.node].gram is None:
            continue
        a, b = got[mine.node], ref[s.node]
        assert a.n == b.n and a.gn == b.gn
        np.testing.assert_allclose(a.sum, b.sum, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(a.gram, b.gram, rtol=1e-6, atol=1e-6)
        compared += 1
    assert compared >= 5


def test_default_recipe_prunes_a_detector_with_calibration() -> None:
    model, example = build_yolo(image_size=64, width=0.5)
    calib = _calib(6)
    res = gp.prune(model, example, flops=0.5, calib=calib)
    rep = res.report
    assert rep["verification"]["ok"] and rep["capture"]["pre_barrier_check"]["ok"]
    assert "reconstruct-lsq" in rep["reconstruction"]
    assert abs(rep["achieved"]["flops"] - 0.5) < 0.01
    plain = gp.prune(model, example, flops=0.5)
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    ref = _head_outputs(model, images)
    err = [float((_head_outputs(m, images) - ref).norm() / ref.norm()) for m in (res.model, plain.model)]
    assert err[0] < err[1]  # calibrated default recipe vs magnitude without calibration
    assert type(res.model) is YOLO and isinstance(res.model(images), list)


def test_gradient_criteria_and_correction_rounds_are_refused_on_fragments() -> None:
    model, example = build_yolo(image_size=64, width=0.5)
    with pytest.raises(OptionError, match="criterion 'taylor' backpropagates through one captured program"):
        gp.prune(model, example, flops=0.6, calib=_calib(2), criterion="taylor")
    from graphprune.passes import default_pipeline

    text = default_pipeline("flops", 0.6, "wanda", "global", reconstruct=("lsq",)).replace(
        "reconstruct-lsq", "reconstruct-lsq{rounds=1}")
    with pytest.raises(OptionError, match="rounds=1 runs the dense model as one captured program"):
        gp.prune(model, example, pipeline=text, calib=_calib(2))


def test_a_batch_the_model_refuses_is_one_line() -> None:
    model, example = build_yolo(image_size=64, width=0.5)
    bad: list[Any] = [([torch.rand(3, 64, 64)],), ([torch.rand(2, 64, 64)],)]  # 2 channels: the model's own error
    with pytest.raises(CalibrationError, match=r"^calib= batch 1"):
        gp.prune(model, example, flops=0.6, calib=bad)
