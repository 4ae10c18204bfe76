"""Calibration batches: the ``calib=`` option and the CLI's ``--calib FILE``.

A calibration set is an iterable of example inputs in the same forms as ``example_inputs`` (a
tensor, a tuple of tensors, a dict of keyword tensors). The captured graph is specialized to the
example inputs' shapes, so every batch must have exactly those shapes (pad or pack sequences to
the example length). Files: ``.pt`` holding a list of batches, or one tensor / dict of tensors
that is split along dim 0 into chunks of the example batch size; ``.npz`` holding one array
(positional input) or several (keyword inputs by name), split the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_flatten

from ..errors import CalibrationError
from .inputs import ExampleInputs

__all__ = ["check_batches", "load_calib_file", "materialize"]


def _shapes(x: ExampleInputs) -> list[tuple[int, ...]]:
    leaves, _ = tree_flatten(x)
    return [tuple(t.shape) for t in leaves if isinstance(t, torch.Tensor)]


def materialize(calib: Iterable[ExampleInputs] | None, option: str = "calib") -> list[ExampleInputs] | None:
    """A re-iterable list of batches (a generator is read once); ``None`` stays ``None``."""
    if calib is None:
        return None
    if isinstance(calib, (torch.Tensor, Mapping)):
        raise CalibrationError(
            f"{option}= must be an iterable of example inputs (e.g. a list of batches), not one "
            f"{type(calib).__name__}; wrap a single batch in a list"
        )
    try:
        batches = list(calib)
    except TypeError:
        raise CalibrationError(f"{option}= must be an iterable of example inputs, not {type(calib).__name__}") from None
    if not batches:
        raise CalibrationError(f"{option}= is empty: give at least one batch of example inputs")
    return batches


def check_batches(batches: list[ExampleInputs], example_inputs: ExampleInputs, option: str = "calib") -> None:
    """Every batch must have the example inputs' structure and shapes (the graph is static)."""
    want = _shapes(example_inputs)
    for i, b in enumerate(batches):
        got = _shapes(b)
        if got != want:
            raise CalibrationError(
                f"{option}= batch {i} has tensor shapes {got}, but the model was captured with {want}; "
                "calibration batches must have the example inputs' shapes (pad or pack to that size)"
            )


def _split(t: torch.Tensor, n: int) -> list[torch.Tensor]:
    return [c for c in torch.split(t, n, dim=0) if c.shape[0] == n]


def load_calib_file(path: str | Path, example_inputs: ExampleInputs, option: str = "--calib") -> list[ExampleInputs]:
    """Read calibration batches from ``.pt`` or ``.npz`` (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"{option} {p}: no such file")
    try:
        if p.suffix == ".pt":
            data: Any = torch.load(p, map_location="cpu", weights_only=True)
        elif p.suffix == ".npz":
            with np.load(p) as z:
                arrays = {k: torch.from_numpy(z[k]) for k in z.files}
            data = next(iter(arrays.values())) if len(arrays) == 1 else arrays
        else:
            raise CalibrationError(f"{option} {p}: use a .pt or .npz file of input batches")
    except CalibrationError:
        raise
    except Exception as exc:  # torch/numpy raise many types for a corrupt file
        raise CalibrationError(f"{option} {p}: cannot read it ({type(exc).__name__}: {str(exc)[:200]})") from exc
    leaves = [t for t in tree_flatten(example_inputs)[0] if isinstance(t, torch.Tensor)]
    n = int(leaves[0].shape[0]) if leaves and leaves[0].dim() else 1
    if isinstance(data, torch.Tensor):
        batches: list[Any] = _split(data, n)
    elif isinstance(data, Mapping) and all(isinstance(v, torch.Tensor) for v in data.values()):
        parts = {k: _split(v, n) for k, v in data.items()}
        count = min((len(v) for v in parts.values()), default=0)
        batches = [{k: v[i] for k, v in parts.items()} for i in range(count)]
        if not isinstance(example_inputs, Mapping):  # positional inputs: arrays in file order
            batches = [tuple(b.values()) for b in batches]
    elif isinstance(data, (list, tuple)):
        batches = list(data)
    else:
        raise CalibrationError(f"{option} {p}: expected a tensor, a dict of tensors or a list of batches, got {type(data).__name__}")
    if not batches:
        raise CalibrationError(f"{option} {p}: holds no complete batch of {n} samples")
    check_batches(batches, example_inputs, option)
    return batches
