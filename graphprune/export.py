"""Writing results: ``.pt`` (pickled module) and ``.onnx`` (exported, then checked in onnxruntime
against the pruned PyTorch module). Every write goes to a temporary file that replaces the target
only after the checks pass, so a failed save never leaves a half-written file. The temporary file
gets the mode a plain ``open()`` would give (``0o666 & ~umask``), not ``mkstemp``'s private 0600,
so the written model is readable by whoever the user's umask allows (a serving container)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from .errors import ExportError
from .frontends.inputs import ExampleInputs, as_args_kwargs
from .quiet import quiet_loggers

__all__ = ["check_onnx", "default_file_mode", "fx_dynamic", "mutates_in_place", "save_model", "write_atomic"]

log = logging.getLogger(__name__)


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only set)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666 & ~umask``."""
    return 0o666 & ~_umask()


def _tmp_beside(path: Path, suffix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())  # mkstemp creates 0600; the result should read like open()'s
    finally:
        os.close(fd)
    return Path(name)


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path`` (mode as ``open()`` gives), then
    replace ``path`` with it; on any failure ``path`` is left as it was and the temporary removed."""
    target = Path(path)
    tmp = _tmp_beside(target, target.suffix)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    dyn = fx_dynamic(model)
    reason = ""
    if dyn is not None:
        try:
            return _export_onnx_dynamic(model, path, example_inputs, opset, dyn)
        except ExportError as exc:
            reason = str(exc)
            log.warning("writing %s with the example input shapes only: %s", path.name, reason)
    args, kwargs = as_args_kwargs(example_inputs)
    errors = []
    # the TorchScript exporter is ~8x faster where it works; where its model disagrees with the
    # module in onnxruntime, the dynamo exporter gets its turn (see _exporters)
    for dynamo in _exporters(model):
        try:
            _run_exporter(model, path, args, kwargs, opset, dynamo)
            with _silenced_fds():
                err = check_onnx(path, model, example_inputs)
            break
        except Exception as exc:  # exporter failures (many types) and onnxruntime mismatches
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {_first_line(exc)}")
    else:
        raise ExportError("ONNX export failed: " + "; ".join(errors))
    info: dict[str, Any] = {"format": "onnx", "onnxruntime_max_abs_err": err,
                            "exporter": "dynamo" if dynamo else "torchscript"}
    if reason:
        info["dynamic"] = {"kept": False, "reason": reason}
    return info


def mutates_in_place(model: nn.Module) -> bool:
    """True for a GraphModule with an in-place ATen op (e.g. ``fill_`` on a ``slice`` of a
    ``new_zeros``: how export records ``mask[a:b, c:d] = k``, as in Swin's shifted-window mask)."""
    graph = getattr(model, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        return False
    return any(n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) and n.target._schema.is_mutable
               for n in graph.nodes)


def _exporters(model: nn.Module, dynamic: bool = False) -> tuple[bool, ...]:
    """``dynamo`` flags to try in order. The TorchScript exporter turns an in-place op on a view
    of a GraphModule into an op on a copy (ONNX Slice copies), so the write never reaches the base
    tensor: swin_t's attention mask came out all zeros (onnxruntime off by 1.5e-2, unpruned too).
    It also traces ``aten.sym_size`` calls as constants, so a GraphModule that reads its input
    sizes cannot keep them symbolic. The dynamo exporter functionalizes the graph and keeps sizes
    symbolic; such modules go to it directly."""
    graph = getattr(model, "graph", None)
    reads_sizes = dynamic and isinstance(graph, torch.fx.Graph) and any(
        n.target is torch.ops.aten.sym_size.int for n in graph.nodes)
    return (True,) if reads_sizes or mutates_in_place(model) else (False, True)


def _first_line(exc: BaseException) -> str:
    """The line that names the cause: the dynamo exporter's opens with generic advice and states
    the op it could not lower under ``## Exception summary``, which is the line kept then."""
    text = str(exc)
    if not text:
        return type(exc).__name__
    lines = text.splitlines()
    if "## Exception summary" in lines:
        cause = [ln for ln in lines[lines.index("## Exception summary") + 1:] if ln.strip()][:1]
        if cause:
            return re.sub(r"^<class '[\w.]+\.(\w+)'>: ", r"\1: ", cause[0])[:300]
    return lines[0][:200]


def moe_translations() -> dict[Any, Any]:
    """ONNX lowerings for the grouped matmul of transformers' mixture-of-experts layers
    (``transformers::grouped_mm_fallback``, ``aten._grouped_mm``), which torch's dynamo exporter
    lacks: transformers' own ONNX exporter ships them (``transformers.exporters.exporter_onnx``),
    and they are passed to ``torch.onnx.export`` as its ``custom_translation_table``. Empty when
    transformers is not already imported or has no such table."""
    if "transformers" not in sys.modules:
        return {}
    try:
        from transformers.exporters.exporter_onnx import _ONNX_TRANSLATION_TABLE as table
    except Exception:  # an older transformers, or onnxscript missing: nothing to add
        return {}
    ops = [getattr(getattr(torch.ops, ns, None), name, None) for ns, name in
           (("transformers", "grouped_mm_fallback"), ("aten", "_grouped_mm"))]
    keys = [getattr(op, "default", None) for op in ops if op is not None]
    return {k: table[k] for k in keys if k is not None and k in table}


def _run_exporter(model: nn.Module, path: Path, args: tuple[Any, ...], kwargs: dict[str, Any], opset: int | None,
                  dynamo: bool, **extra: Any) -> None:
    # the exporters print whole graphs on failure (from C++ too); keep them off the terminal
    if dynamo and (table := moe_translations()):
        extra.setdefault("custom_translation_table", table)
    with warnings.catch_warnings(), torch.no_grad(), _quiet_onnx_logs(), _silenced_fds():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, str(path), kwargs=kwargs or None, dynamo=dynamo,
            external_data=False, opset_version=opset, **({"verbose": False} if dynamo else {}), **extra,
        )


def fx_dynamic(model: Any) -> dict[str, Any] | None:
    """The symbolic input dims a graph-route module kept (``meta["graphprune_dynamic"]``), or None."""
    meta = getattr(model, "meta", None)
    info = meta.get("graphprune_dynamic") if isinstance(meta, dict) else None
    return info if isinstance(info, dict) and info.get("kept") else None


def _dim_name(sym: Any) -> str:
    return re.sub(r"\W+", "_", str(sym)).strip("_") or "dim"


def _export_onnx_dynamic(
    model: nn.Module, path: Path, example_inputs: ExampleInputs, opset: int | None, dyn: dict[str, Any]
) -> dict[str, Any]:
    """Write a graph-route module with its symbolic input dims as ONNX dim_params and check it in
    onnxruntime at the example shapes and at a second size of every symbolic dim."""
    import torch.fx._pytree as fx_pytree

    from .frontends.torch_export import is_symbolic, resize_inputs

    args, kwargs = as_args_kwargs(example_inputs)
    in_spec = model.graph._codegen.pytree_info.in_spec  # type: ignore[union-attr]
    names: list[str] = list(dyn["inputs"])
    dims: dict[str, dict[int, str]] = {k: {int(a): s for a, s in v.items()} for k, v in dyn["dims"].items()}
    by_id = {id(t): n for n, t in zip(names, fx_pytree.tree_flatten_spec((args, kwargs), in_spec), strict=False)}
    leaves = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    input_names = [by_id.get(id(t), f"input_{i}") for i, t in enumerate(leaves)]
    axes: dict[str, dict[int, str]] = {n: {a: _dim_name(s) for a, s in dims[n].items()} for n in input_names if n in dims}
    out_node = next(n for n in model.graph.nodes if n.op == "output")  # type: ignore[union-attr]
    outs = [a for a in tree_flatten(out_node.args[0])[0] if isinstance(a, torch.fx.Node)]
    output_names = [f"output_{i}" for i in range(len(outs))]
    for name, o in zip(output_names, outs, strict=True):
        val = o.meta.get("val")
        if isinstance(val, torch.Tensor):
            sym = {a: _dim_name(s) for a, s in enumerate(val.shape) if is_symbolic(s)}
            if sym:
                axes[name] = sym
    alt, sizes = resize_inputs(example_inputs, in_spec, names, dims)
    errors = []
    for dynamo in _exporters(model, dynamic=True):
        try:
            if dynamo:
                extra: dict[str, Any] = {"dynamic_shapes": _dynamo_shapes(model, args, kwargs, by_id, dims)}
            else:
                extra = {"input_names": input_names, "output_names": output_names, "dynamic_axes": axes}
            _run_exporter(model, path, args, kwargs, opset, dynamo, **extra)
            with _silenced_fds():  # onnxruntime logs a failed run from C++; the error says it
                err = max(check_onnx(path, model, example_inputs), check_onnx(path, model, alt))
            return {"format": "onnx", "onnxruntime_max_abs_err": err, "exporter": "dynamo" if dynamo else "torchscript",
                    "dynamic": {"kept": True, "dims": axes, "checked_at": sizes}}
        except Exception as exc:  # export failures and mismatches at either size
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {_first_line(exc)}")
    raise ExportError("ONNX export with symbolic dims failed: " + "; ".join(errors))


def _dynamo_shapes(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], by_id: dict[int, str],
                   dims: dict[str, dict[int, str]]) -> Any:
    shapes = torch.export.ShapesCollection()
    for t in tree_flatten((args, kwargs))[0]:
        name = by_id.get(id(t)) if isinstance(t, torch.Tensor) else None
        if name in dims:
            shapes[t] = {a: torch.export.Dim.AUTO for a in dims[name]}
    return shapes.dynamic_shapes(model, args, kwargs)


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


def _quiet_onnx_logs() -> contextlib.AbstractContextManager[None]:
    """The exporters log registry chatter at WARNING; keep the user's terminal clean."""
    return quiet_loggers("torch.onnx", "torch.export", "onnxscript")


def check_onnx(path: Path, model: nn.Module, example_inputs: ExampleInputs, rtol: float = 1e-3) -> float:
    """Run the .onnx in onnxruntime and compare with the module; raise ExportError on mismatch."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    args, kwargs = as_args_kwargs(example_inputs)
    flat, _ = tree_flatten((args, kwargs))
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    names = [inp.name for inp in sess.get_inputs()]
    if len(names) != len(tensors):
        # the TorchScript exporter turns an int keyword default into an input (BLOOM: logits_to_keep)
        raise ExportError(f"the .onnx asks for inputs {names} but the model was called with {len(tensors)} tensors: "
                          f"{', '.join(names[len(tensors):]) or 'too few inputs'} would have no value")
    feeds = {name: t.detach().cpu().numpy() for name, t in zip(names, tensors, strict=True)}
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
