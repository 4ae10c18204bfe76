"""Writing results: ``.pt`` (pickled module) and ``.onnx`` (exported, then checked in onnxruntime
against the pruned PyTorch module). Every write goes to a temporary file that replaces the target
only after the checks pass, so a failed save never leaves a half-written file."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from .errors import ExportError
from .frontends.inputs import ExampleInputs, as_args_kwargs

__all__ = ["check_onnx", "save_model"]

log = logging.getLogger(__name__)


def _tmp_beside(path: Path, suffix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def save_model(model: Any, path: str | os.PathLike[str], example_inputs: ExampleInputs, opset: int | None = None) -> dict[str, Any]:
    """Save to ``.pt`` or ``.onnx`` (by suffix) atomically; returns what was checked.

    An ``onnx.ModelProto`` (from pruning an ONNX model, already verified in onnxruntime) can only
    be written as ``.onnx``.
    """
    import onnx

    target = Path(path)
    suffix = target.suffix.lower()
    if isinstance(model, onnx.ModelProto):
        if suffix != ".onnx":
            raise ExportError(f"cannot save an ONNX model as {str(target)!r}: use a .onnx file name")
        tmp = _tmp_beside(target, suffix)
        try:
            tmp.write_bytes(model.SerializeToString())
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        return {"format": "onnx"}
    if suffix not in (".pt", ".pth", ".onnx"):
        raise ExportError(f"cannot save to {str(target)!r}: use a .pt or .onnx file name")
    tmp = _tmp_beside(target, suffix)
    try:
        if suffix == ".onnx":
            info = _export_onnx(model, tmp, example_inputs, opset)
        else:
            with open(tmp, "wb") as fh:  # a file object: the zip's record prefix is "archive", not the temp name
                torch.save(model, fh)
            info = {"format": "pt"}
        os.replace(tmp, target)
        return info
    finally:
        for leftover in (tmp, tmp.with_suffix(tmp.suffix + ".data")):
            if leftover.exists():
                leftover.unlink()


def _export_onnx(model: nn.Module, path: Path, example_inputs: ExampleInputs, opset: int | None) -> dict[str, Any]:
    args, kwargs = as_args_kwargs(example_inputs)
    errors = []
    for dynamo in (False, True):  # the TorchScript exporter is ~8x faster where it works
        try:
            # the exporters print whole graphs on failure (from C++ too); keep them off the terminal
            with warnings.catch_warnings(), torch.no_grad(), _quiet_onnx_logs(), _silenced_fds():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model, args, str(path), kwargs=kwargs or None, dynamo=dynamo,
                    external_data=False, opset_version=opset, **({"verbose": False} if dynamo else {}),
                )
            break
        except Exception as exc:  # exporter failures come in many types
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}")
    else:
        raise ExportError("ONNX export failed: " + "; ".join(errors))
    err = check_onnx(path, model, example_inputs)
    return {"format": "onnx", "onnxruntime_max_abs_err": err}


@contextlib.contextmanager
def _silenced_fds() -> Iterator[None]:
    """Send file descriptors 1 and 2 to /dev/null for the duration (Python and C++ writes alike)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


@contextlib.contextmanager
def _quiet_onnx_logs() -> Iterator[None]:
    """The exporters log registry chatter at WARNING; keep the user's terminal clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


def check_onnx(path: Path, model: nn.Module, example_inputs: ExampleInputs, rtol: float = 1e-3) -> float:
    """Run the .onnx in onnxruntime and compare with the module; raise ExportError on mismatch."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    args, kwargs = as_args_kwargs(example_inputs)
    flat, _ = tree_flatten((args, kwargs))
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    feeds = {}
    for inp, t in zip(sess.get_inputs(), tensors, strict=False):
        feeds[inp.name] = t.detach().cpu().numpy()
    got = sess.run(None, feeds)
    with torch.no_grad():
        ref_out = model(*args, **kwargs)
    ref = [t.detach().cpu().numpy() for t in tree_flatten(ref_out)[0] if isinstance(t, torch.Tensor)]
    worst = 0.0
    for r, g in zip(ref, got, strict=False):
        if r.shape != g.shape:
            raise ExportError(f"onnxruntime output shape {g.shape} differs from the module's {r.shape}")
        if r.dtype.kind == "f":
            err = float(np.abs(r.astype(np.float64) - g.astype(np.float64)).max()) if r.size else 0.0
            scale = max(1.0, float(np.abs(r).max()) if r.size else 0.0)
            if err > rtol * scale:
                raise ExportError(f"onnxruntime output differs from the pruned module by {err:.3g}")
            worst = max(worst, err)
    return worst
