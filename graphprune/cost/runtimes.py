"""Target runtimes the latency tables are measured on: onnxruntime CPU and PyTorch eager.

A runtime builds, for an :class:`~.signature.OpSpec` at given widths, a zero-argument callable
that runs that single op once (ONNX models made with ``onnx.helper`` for onnxruntime, functional
calls for torch), and a callable running a whole model. Timing is :mod:`.timing`'s job. Each
runtime's ``null`` callable (an Identity model / an empty call) measures the per-call harness
overhead, which is subtracted from single-op times: ``t_op = t(op) - t(null)``.

``step`` is the channel granularity the runtime's kernels favour (onnxruntime's NCHWc conv
blocks are 16 channels with AVX-512, 8 otherwise); tables are measured on multiples of it and
the latency allocator keeps widths on those multiples.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import OptionError
from ..ir import Node
from .signature import OpSpec
from .table import cpu_model

__all__ = ["RUNTIMES", "OrtRuntime", "Runtime", "TorchRuntime", "make_runtime", "ort_fused"]

Call = Callable[[], object]


def _has_avx512() -> bool:
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


#: activations onnxruntime folds into a preceding Conv (ConvActivationFusion); BatchNormalization
#: is folded into the Conv's weights (ConvBNFusion), and an Add of a Conv output into the NCHWc Conv
_ORT_CONV_EPILOGUE = frozenset({"batch_norm", "relu", "relu6", "clamp", "hardtanh", "sigmoid", "tanh",
                                "leaky_relu", "hardsigmoid"})


def ort_fused(node: Node) -> bool:
    """True when onnxruntime fuses ``node`` into the conv that (through other fused epilogue
    ops with one user each) produces one of its inputs; such a node costs nothing extra."""
    if node.op not in _ORT_CONV_EPILOGUE and node.op != "add":
        return False
    for v in node.inputs[: 2 if node.op == "add" else 1]:
        while v is not None and v.producer is not None and len(v.users) == 1:
            p = v.producer
            if p.op == "conv":
                return True
            if p.op not in _ORT_CONV_EPILOGUE and p.op != "add":  # Conv+Add+Relu is one NCHWc kernel
                break
            v = p.inputs[0]
    return False


class Runtime(Protocol):
    name: str
    threads: int
    step: int

    def free(self, node: Node) -> bool: ...

    def fingerprint(self) -> dict[str, Any]: ...

    def op_call(self, spec: OpSpec, widths: tuple[int, ...]) -> Call: ...

    def null_call(self) -> Call: ...

    def onnx_call(self, path: str | os.PathLike[str], feeds: list[np.ndarray]) -> Call: ...

    def module_call(self, model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call: ...


def _conv_dims(spec: OpSpec, widths: tuple[int, ...]) -> tuple[int, int, int]:
    f = spec.fixed
    if f["groups"] == 1:
        return widths[0], widths[1], 1
    g = widths[0]
    return g * f["gin"], g * f["gout"], g


class OrtRuntime:
    """onnxruntime CPUExecutionProvider with ``threads`` intra-op threads."""

    name = "onnxruntime"

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.threads = threads
        self.step = 16 if _has_avx512() else 8
        self._rng = np.random.default_rng(0)

    def free(self, node: Node) -> bool:
        return ort_fused(node)

    def fingerprint(self) -> dict[str, Any]:
        return {"cpu": cpu_model(), "cores": os.cpu_count(), "runtime": self.name,
                "version": self.ort.__version__, "threads": self.threads, "step": self.step}

    def _options(self) -> Any:
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return so

    def _session_call(self, model_or_path: Any, feeds: list[np.ndarray]) -> Call:
        sess = self.ort.InferenceSession(model_or_path, self._options(), providers=["CPUExecutionProvider"])
        binding = sess.io_binding()
        for inp, arr in zip(sess.get_inputs(), feeds, strict=True):
            binding.bind_cpu_input(inp.name, np.ascontiguousarray(arr))
        for out in sess.get_outputs():
            binding.bind_output(out.name, "cpu")
        return lambda: sess.run_with_iobinding(binding)

    def _model(self, nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> bytes:
        from onnx import helper

        graph = helper.make_graph(nodes, "op", inputs, outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model.SerializeToString()

    def _init(self, name: str, shape: list[int]) -> Any:
        from onnx import numpy_helper

        return numpy_helper.from_array(self._rng.standard_normal(shape).astype(np.float32) * 0.1, name)

    def op_call(self, spec: OpSpec, widths: tuple[int, ...]) -> Call:
        from onnx import TensorProto, helper

        f = spec.fixed
        inits: list[Any] = []
        if spec.kind == "conv":
            cin, cout, g = _conv_dims(spec, widths)
            xs = [f["batch"], cin, *f["spatial"]]
            inits.append(self._init("W", [cout, cin // g, *f["kernel"]]))
            names = ["X", "W"]
            if f["bias"]:
                inits.append(self._init("B", [cout]))
                names.append("B")
            pads = [p // 2 for p in f["pads"]] + [p - p // 2 for p in f["pads"]]
            if f.get("transposed"):
                inits[0] = self._init("W", [cin, cout, *f["kernel"]])
                nodes = [helper.make_node("ConvTranspose", names, ["Y"], kernel_shape=f["kernel"], strides=f["strides"],
                                          pads=pads, output_padding=f["output_padding"])]
            else:
                nodes = [helper.make_node("Conv", names, ["Y"], group=g, kernel_shape=f["kernel"],
                                          strides=f["strides"], pads=pads)]
        elif spec.kind == "linear":
            k, n = widths
            xs = [*f["lead"], k]
            inits.append(self._init("W", [k, n]))
            nodes = [helper.make_node("MatMul", ["X", "W"], ["Y" if not f["bias"] else "H"])]
            if f["bias"]:
                inits.append(self._init("B", [n]))
                nodes.append(helper.make_node("Add", ["H", "B"], ["Y"]))
        else:
            raise OptionError(f"onnxruntime runtime cannot measure op kind {spec.kind!r}")
        x = helper.make_tensor_value_info("X", TensorProto.FLOAT, xs)
        y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
        data = self._model(nodes, [x], [y], inits)
        return self._session_call(data, [self._rng.standard_normal(xs).astype(np.float32)])

    def null_call(self) -> Call:
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 8])
        y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
        data = self._model([helper.make_node("Identity", ["X"], ["Y"])], [x], [y], [])
        return self._session_call(data, [np.zeros((1, 8), np.float32)])

    def onnx_call(self, path: str | os.PathLike[str], feeds: list[np.ndarray]) -> Call:
        return self._session_call(str(path), feeds)

    def module_call(self, model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        raise OptionError("runtime 'onnxruntime' times ONNX files; export the model first")


class TorchRuntime:
    """PyTorch eager on CPU with ``threads`` intra-op threads (set only while timing)."""

    name = "torch"

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self.step = 8
        self._gen = torch.Generator().manual_seed(0)

    def free(self, node: Node) -> bool:
        return False

    def fingerprint(self) -> dict[str, Any]:
        return {"cpu": cpu_model(), "cores": os.cpu_count(), "runtime": self.name,
                "version": torch.__version__, "threads": self.threads, "step": self.step}

    @contextlib.contextmanager
    def threads_set(self) -> Iterator[None]:
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    def _wrap(self, fn: Callable[[], object]) -> Call:
        def call() -> object:
            with torch.no_grad():
                return fn()

        return call

    def op_call(self, spec: OpSpec, widths: tuple[int, ...]) -> Call:
        import torch.nn.functional as F

        f = spec.fixed
        r = lambda *s: torch.randn(*s, generator=self._gen)  # noqa: E731
        if spec.kind == "conv":
            cin, cout, g = _conv_dims(spec, widths)
            if f.get("transposed"):
                xt, wt = r(f["batch"], cin, *f["spatial"]), r(cin, cout, *f["kernel"])
                bt = r(cout) if f["bias"] else None
                tconv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[len(f["kernel"])]
                pad = tuple((p + 1) // 2 for p in f["pads"])  # torch pads both sides: 2 * pad - out_pad = P
                out_pad = tuple(min(st - 1, o + p % 2) for st, o, p in zip(f["strides"], f["output_padding"], f["pads"], strict=True))
                return self._wrap(lambda: tconv(xt, wt, bt, tuple(f["strides"]), pad, out_pad))
            x = r(f["batch"], cin, *[a + p for a, p in zip(f["spatial"], f["pads"], strict=True)])
            w = r(cout, cin // g, *f["kernel"])
            b = r(cout) if f["bias"] else None
            conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(f["kernel"])]
            return self._wrap(lambda: conv(x, w, b, tuple(f["strides"]), 0, 1, g))
        if spec.kind == "linear":
            k, n = widths
            x, w = r(*f["lead"], k), r(n, k)
            b = r(n) if f["bias"] else None
            return self._wrap(lambda: F.linear(x, w, b))
        raise OptionError(f"torch runtime cannot measure op kind {spec.kind!r}")

    def null_call(self) -> Call:
        x = torch.zeros(1, 8)
        return self._wrap(lambda: x.clone())

    def onnx_call(self, path: str | os.PathLike[str], feeds: list[np.ndarray]) -> Call:
        raise OptionError("runtime 'torch' times modules, not ONNX files")

    def module_call(self, model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        model.eval()
        return self._wrap(lambda: model(*args, **kwargs))


RUNTIMES: dict[str, type] = {"onnxruntime": OrtRuntime, "torch": TorchRuntime}


def make_runtime(name: str, threads: int = 1) -> Runtime:
    """A runtime by name; errors name the option."""
    cls = RUNTIMES.get(name)
    if cls is None:
        raise OptionError(f"runtime={name!r} is unknown; use one of: {', '.join(sorted(RUNTIMES))}")
    if not isinstance(threads, int) or threads < 1:
        raise OptionError(f"threads={threads!r} must be a positive integer")
    return cls(threads)  # type: ignore[no-any-return]
