"""The pass pipeline string: parsing into frozen pass objects, errors naming pass and option,
and a pipeline with the IR verifier (``lint``) after every pass producing a verified model.
"""

from __future__ import annotations

import pytest
import torch
from graphprune.passes import PASSES, default_pipeline, parse_pipeline
from torch import nn

import graphprune as gp
from graphprune.errors import OptionError


def test_parse_full_pipeline() -> None:
    passes = parse_pipeline("couple,score{criterion=l1},allocate{flops=0.5,round-to=8},rewrite,verify")
    assert [p.name for p in passes] == ["couple", "score", "allocate", "rewrite", "verify"]
    assert passes[1].criterion == "l1"
    alloc = passes[2]
    assert alloc.flops == 0.5 and alloc.round_to == 8 and alloc.params is None
    assert isinstance(alloc.flops, float) and isinstance(alloc.round_to, int)
    assert passes[3].route == "auto"
    assert passes[4].strict is True
    assert all(type(p) is PASSES[p.name] for p in passes)


def test_parse_tolerates_spaces_and_bool_options() -> None:
    passes = parse_pipeline(" couple , verify{strict=false, rtol=0.001} ")
    assert [p.name for p in passes] == ["couple", "verify"]
    assert passes[1].strict is False and passes[1].rtol == 0.001


def test_default_pipeline_round_trips() -> None:
    text = default_pipeline("params", 0.3, "l1", "global", 4, strict=False)
    passes = parse_pipeline(text)
    alloc = next(p for p in passes if p.name == "allocate")
    assert (alloc.params, alloc.flops, alloc.policy, alloc.round_to) == (0.3, None, "global", 4)
    assert next(p for p in passes if p.name == "verify").strict is False


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("couple,frobnicate", ["'frobnicate'", "allocate"]),  # names the pass and lists the known ones
        ("allocate{flopz=0.5}", ["'allocate'", "flopz", "round-to"]),
        ("allocate{flops=abc}", ["'allocate'", "'flops'", "'abc'"]),
        ("verify{strict=maybe}", ["'verify'", "'strict'", "'maybe'"]),
        ("couple,,", ["','"]),
    ],
)
def test_parse_rejects_with_named_errors(text: str, needles: list[str]) -> None:
    with pytest.raises(OptionError) as info:
        parse_pipeline(text)
    for n in needles:
        assert n in str(info.value), (n, str(info.value))


def test_lint_after_every_pass_gives_a_verified_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(1, 3, 6, 6)
    text = "lint,couple,lint,score{criterion=l1},lint,allocate{flops=0.5},lint,rewrite,lint,verify,lint"
    res = gp.prune(model, x, pipeline=text)
    assert res.report["verification"]["ok"] is True
    assert res.report["units_removed"] > 0
    assert res.model[0].out_channels < 16 and res.model[2].in_channels == res.model[0].out_channels
    with torch.no_grad():
        assert res.model(x).shape == model(x).shape


def test_pipeline_without_rewrite_is_rejected() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with pytest.raises(OptionError, match="rewrite"):
        gp.prune(model, torch.randn(1, 3, 4, 4), pipeline="couple,score,allocate{flops=0.5}")
