"""Shared helpers for the reference-model factories.

Every factory in this package follows one recipe:

1. build the model inside :func:`seeded` (a forked RNG seeded with a fixed value, so the caller's
   global RNG state is left untouched and two builds give bit-identical weights);
2. perturb the affine parameters of normalization layers (:func:`randomize_norm_affine`) so that
   per-channel scales differ: ``gamma ~ U(0.5, 1.5)``, ``beta ~ N(0, 0.1^2)``. With the default
   init (``gamma = 1, beta = 0``) every channel ties under a BN-scale criterion;
3. for BatchNorm models, estimate running statistics on random data (:func:`calibrate_batchnorm`):
   the cumulative average over a few train-mode forward passes, so eval-mode BN is a real affine map
   ``y = gamma * (x - mu) / sqrt(var + eps) + beta`` and not the identity;
4. return ``(model.eval(), example_inputs)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = [
    "ExampleInputs",
    "ModelFactory",
    "calibrate_batchnorm",
    "finish_cnn",
    "make_divisible",
    "randomize_norm_affine",
    "seeded",
]

ExampleInputs = tuple[torch.Tensor, ...]
ModelFactory = Callable[..., tuple[nn.Module, ExampleInputs]]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_AFFINE_NORMS = (*_BATCH_NORMS, nn.GroupNorm, nn.LayerNorm)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with the CPU RNG forked and seeded with ``seed``; restore it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without going below 90% of it.

    The torchvision/MobileNet rule, used to scale channel counts by a width multiplier.
    """
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@torch.no_grad()
def randomize_norm_affine(model: nn.Module, extra: tuple[type[nn.Module], ...] = ()) -> None:
    """Draw ``weight ~ U(0.5, 1.5)`` and ``bias ~ N(0, 0.1^2)`` for every affine norm layer.

    ``extra`` names additional norm classes (e.g. a custom RMSNorm) whose ``weight``/``bias``
    attributes, where present, are perturbed the same way.
    """
    kinds = _AFFINE_NORMS + extra
    for module in model.modules():
        if not isinstance(module, kinds):
            continue
        weight = getattr(module, "weight", None)
        bias = getattr(module, "bias", None)
        if isinstance(weight, torch.Tensor):
            weight.uniform_(0.5, 1.5)
        if isinstance(bias, torch.Tensor):
            bias.normal_(0.0, 0.1)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, make_batch: Callable[[], ExampleInputs], steps: int = 3) -> None:
    """Set BatchNorm running stats to the cumulative average over ``steps`` train-mode passes.

    Only BatchNorm buffers change (momentum is temporarily ``None``: a plain average); the model is
    left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, _BATCH_NORMS)]
    if not norms:
        model.eval()
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for _ in range(steps):
            model(*make_batch())
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()


def finish_cnn(
    model: nn.Module, batch_size: int, image_size: int, channels: int = 3
) -> tuple[nn.Module, ExampleInputs]:
    """Randomize norm affines, calibrate BN on ``N(0, 1)`` images, return ``(model.eval(), (x,))``.

    Must be called inside :func:`seeded` so the calibration data and example input are fixed.
    """
    randomize_norm_affine(model)
    shape = (max(4, batch_size), channels, image_size, image_size)
    calibrate_batchnorm(model, lambda: (torch.randn(shape),))
    example = torch.randn(batch_size, channels, image_size, image_size)
    return model.eval(), (example,)
