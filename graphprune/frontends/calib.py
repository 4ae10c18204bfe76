"""Calibration batches: the ``calib=`` option and the CLI's ``--calib FILE``.

A calibration set is an iterable of example inputs in the same forms as ``example_inputs`` (a
tensor, a tuple of tensors, a dict of keyword tensors). Batches may differ from the example in
the dims the capture asks to keep symbolic (``torch_export.VARYING``: the batch dim, and the
sequence dim of token-like inputs) and must match it elsewhere (:func:`check_batches`, before
capture); once captured, each batch must fit the program's dims -- a dim the model specialized
must have its example size (:func:`check_program_batch`). Files: ``.pt`` holding a list of batches, or one tensor / dict of tensors
that is split along dim 0 into chunks of the example batch size; ``.npz`` holding one array
(positional input) or several (keyword inputs by name), split the same way.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx._pytree as fx_pytree
from torch.export.graph_signature import InputKind
from torch.utils._pytree import tree_flatten

from ..errors import CalibrationError
from .inputs import ExampleInputs, as_args_kwargs
from .torch_export import hint, is_symbolic, varying_dims

__all__ = ["check_batches", "check_program_batch", "load_calib_file", "materialize"]


def _shapes(x: ExampleInputs) -> list[tuple[int, ...]]:
    leaves, _ = tree_flatten(x)
    return [tuple(t.shape) for t in leaves if isinstance(t, torch.Tensor)]


def _pattern(x: ExampleInputs) -> list[tuple[Any, ...]]:
    """Per tensor: its shape with every dim that may vary (see the module docstring) as ``*``."""
    leaves, _ = tree_flatten(x)
    out = []
    for t in leaves:
        if isinstance(t, torch.Tensor):
            vary = varying_dims(t)
            out.append(tuple("*" if ax in vary else int(n) for ax, n in enumerate(t.shape)))
    return out


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
    """Every batch must have the example inputs' structure, and their shapes except in the dims
    that may vary (batch; sequence for token-like inputs)."""
    want = _pattern(example_inputs)
    shown = ", ".join(f"[{', '.join(str(d) for d in p)}]" for p in want)
    for i, b in enumerate(batches):
        got = _shapes(b)
        if len(got) != len(want) or any(
            len(g) != len(w) or any(d != "*" and d != n for d, n in zip(w, g, strict=True)) for g, w in zip(got, want, strict=False)
        ):
            raise CalibrationError(
                f"{option}= batch {i} has tensor shapes {got}, but calibration batches must have the example "
                f"inputs' shapes {shown} (* = any size: batch, and sequence for token inputs)"
            )


def check_program_batch(program: Any, batch: ExampleInputs, index: int, option: str = "calib") -> None:
    """The batch fits the captured program: every input dim the capture kept static (the model
    specialized it) has its example size."""
    args, kwargs = as_args_kwargs(batch)
    try:
        flat = fx_pytree.tree_flatten_spec((args, kwargs), program.call_spec.in_spec)
    except Exception as exc:  # pytree raises several types for a structure mismatch
        raise CalibrationError(f"{option}= batch {index} does not have the example inputs' structure ({exc})") from exc
    users = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    metas = {n.name: n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"}
    ranges = dict(program.range_constraints)
    for name, t in zip(users, flat, strict=False):
        meta = metas.get(name)
        if not isinstance(t, torch.Tensor) or not isinstance(meta, torch.Tensor):
            continue
        for ax, (got, want) in enumerate(zip(t.shape, meta.shape, strict=False)):
            if not is_symbolic(want):
                if int(got) != hint(want):
                    raise CalibrationError(
                        f"{option}= batch {index}: input {name!r} has size {int(got)} in dim {ax}, but the model was "
                        f"captured with that dim fixed at {hint(want)} (the model's code specializes it); "
                        f"give batches of size {hint(want)} in that dim"
                    )
                continue
            lo, hi = _bounds(ranges.get(want.node.expr))
            if not lo <= int(got) <= hi:
                raise CalibrationError(
                    f"{option}= batch {index}: input {name!r} has size {int(got)} in dim {ax}, outside the range "
                    f"[{lo}, {'inf' if hi == sys.maxsize else hi}] the model was captured for; give batches within it"
                )


def _bounds(vr: Any) -> tuple[int, int]:
    """(lower, upper) of a torch.export value range; an unbounded side as 0 / sys.maxsize."""
    if vr is None:
        return 0, sys.maxsize
    out = []
    for side, default in ((vr.lower, 0), (vr.upper, sys.maxsize)):
        try:
            out.append(int(side) if bool(side.is_finite) else default)
        except (TypeError, ValueError, AttributeError, OverflowError):
            out.append(default)
    return out[0], out[1]


def _split(t: torch.Tensor, n: int) -> list[torch.Tensor]:
    return [c for c in torch.split(t, n, dim=0) if c.shape[0] == n]


def read_calib_file(path: str | Path, option: str = "--calib", what: str = "input batches") -> Any:
    """The payload of a ``.pt`` (``torch.load``, weights only) or ``.npz`` (one array, or a dict of
    arrays by name) calibration file; a missing, unknown or unreadable file is one
    CalibrationError line naming it."""
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"{option} {p}: no such file")
    try:
        if p.suffix == ".pt":
            return torch.load(p, map_location="cpu", weights_only=True)
        if p.suffix == ".npz":
            with np.load(p) as z:
                arrays = {k: torch.from_numpy(z[k]) for k in z.files}
            return next(iter(arrays.values())) if len(arrays) == 1 else arrays
    except Exception as exc:  # torch/numpy raise many types for a corrupt file
        # the exception's text (torch's weights_only advice, pickle internals) is not the user's concern
        kind = "a torch.save file" if p.suffix == ".pt" else "a numpy .npz file"
        raise CalibrationError(
            f"{option} {p}: cannot read it as {kind} of tensors ({type(exc).__name__}); "
            "is it truncated, or does it hold objects other than tensors?"
        ) from exc
    raise CalibrationError(f"{option} {p}: use a .pt or .npz file of {what}")


def load_calib_file(path: str | Path, example_inputs: ExampleInputs, option: str = "--calib") -> list[ExampleInputs]:
    """Read calibration batches from ``.pt`` or ``.npz`` (see the module docstring)."""
    p = Path(path)
    data = read_calib_file(p, option)
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
