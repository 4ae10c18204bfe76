"""Every registered reference model builds, runs, has the documented output shape and exports.

Oracles: exact output shapes from the model docstrings; the exported program reproduces the eager
output; two builds with the same seed are bit-identical; BatchNorm running stats are calibrated
(not the identity init); the LLaMA head shares the embedding Parameter.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from graphprune.models import MODELS, build
from torch import nn

EXPECTED_OUTPUT: dict[str, tuple[int, ...]] = {
    "resnet18_w050": (1, 1000),
    "resnet50_w025": (1, 1000),
    "mobilenet_v2": (1, 1000),
    "densenet": (1, 1000),
    "inception": (1, 1000),
    "shufflenet": (1, 1000),
    "unet": (1, 2, 64, 64),
    "vit_tiny": (1, 1000),
    "llama_tiny": (2, 16, 256),
    "bert_tiny": (2, 2),
}
BATCHNORM_MODELS = ("resnet18_w050", "resnet50_w025", "mobilenet_v2", "densenet", "inception", "shufflenet")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """These models are tiny: intra-op threads only add spin-wait stalls on a busy CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_registry_names() -> None:
    assert set(MODELS) == set(EXPECTED_OUTPUT)


def test_unknown_name_lists_available() -> None:
    with pytest.raises(KeyError, match="available: .*resnet18.*vit_tiny"):
        build("resnet9000")


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUT))
def test_build_forward_export(name: str) -> None:
    rng_before = torch.get_rng_state()
    model, inputs = build(name)
    assert torch.equal(torch.get_rng_state(), rng_before), "factory must not disturb the global RNG"
    assert isinstance(inputs, tuple) and all(isinstance(t, torch.Tensor) for t in inputs)
    assert not any(m.training for m in model.modules()), "factory must return an eval() model"

    with torch.no_grad():
        out = model(*inputs)
    assert tuple(out.shape) == EXPECTED_OUTPUT[name]
    assert torch.isfinite(out).all()
    assert out.std() > 0

    exported = torch.export.export(model, inputs, strict=False)
    with torch.no_grad():
        replay = exported.module()(*inputs)
    torch.testing.assert_close(replay, out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet50_w025", "llama_tiny", "unet"])
def test_build_is_deterministic(name: str) -> None:
    first, inputs_a = build(name)
    second, inputs_b = build(name)
    for a, b in zip(inputs_a, inputs_b, strict=True):
        assert torch.equal(a, b)
    sd_a, sd_b = first.state_dict(), second.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for key in sd_a:
        assert torch.equal(sd_a[key], sd_b[key]), key


@pytest.mark.parametrize("name", BATCHNORM_MODELS)
def test_batchnorm_is_calibrated(name: str) -> None:
    model, _ = build(name)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    for bn in norms:
        assert bn.running_mean is not None and bn.running_var is not None
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert bn.num_batches_tracked.item() > 0
        assert bn.weight.std() > 0, "affine scales are perturbed so channels do not tie"


def test_llama_structure() -> None:
    model, (input_ids,) = build("llama_tiny")
    assert model.lm_head.weight is model.embed.weight
    buffers = dict(model.named_buffers())
    assert {"rotary.cos", "rotary.sin"} <= buffers.keys()
    assert input_ids.dtype == torch.long and tuple(input_ids.shape) == (2, 16)
    attn = model.layers[0].attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features) == (4 * 16, 2 * 16)


def test_llama_is_causal() -> None:
    model, (input_ids,) = build("llama_tiny")
    changed = input_ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 256
    with torch.no_grad():
        a, b = model(input_ids), model(changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_bert_mask_hides_padding() -> None:
    model, (input_ids, mask) = build("bert_tiny")
    assert mask[1, -1] == 0
    changed = input_ids.clone()
    changed[1, -1] = (changed[1, -1] + 1) % 1000
    with torch.no_grad():
        torch.testing.assert_close(model(changed, mask), model(input_ids, mask))
        assert not torch.allclose(model(input_ids), model(input_ids, mask))


@pytest.mark.parametrize(
    ("name", "overrides", "shape"),
    [
        ("resnet50_w025", {"width": 0.5, "num_classes": 10}, (1, 10)),
        ("unet", {"norm": "batch", "base": 8}, (1, 2, 64, 64)),
        ("llama_tiny", {"num_heads": 8, "num_kv_heads": 2, "num_layers": 1}, (2, 16, 256)),
        ("vit_tiny", {"depth": 2, "dim": 48}, (1, 1000)),
    ],
)
def test_overrides(name: str, overrides: dict[str, object], shape: tuple[int, ...]) -> None:
    model, inputs = build(name, **overrides)
    with torch.no_grad():
        out = model(*inputs)
    assert tuple(out.shape) == shape
    torch.export.export(model, inputs, strict=False)


def test_renamed_builtin_names_point_to_the_width_in_the_name() -> None:
    from graphprune.cli import main

    with pytest.raises(KeyError, match="resnet50_w025"):
        build("resnet50")
    assert main(["prune", "resnet18", "--flops", "0.5", "-o", "unused.onnx"]) == 2
