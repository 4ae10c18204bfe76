"""Target runtimes the latency tables are measured on: onnxruntime (CPU, CUDA and TensorRT
execution providers) and PyTorch eager (CPU, CUDA).

A runtime builds, for an :class:`~.signature.OpSpec` at given widths, a zero-argument callable
that runs that single op once (ONNX models made with ``onnx.helper`` for onnxruntime, functional
calls for torch), and a callable running a whole model. Timing is :mod:`.timing`'s job. Each
runtime's ``null`` callable (an Identity model / an empty call) measures the per-call harness
overhead, which is subtracted from single-op times: ``t_op = t(op) - t(null)``.

``step`` is the channel granularity the runtime's kernels favour (onnxruntime's NCHWc conv
blocks are 16 channels with AVX-512, 8 otherwise); tables are measured on multiples of it and
the latency allocator keeps widths on those multiples. The GPU runtimes use 8: tensor-core conv
and GEMM kernels (cuDNN, cuBLAS, TensorRT) want channel counts that are multiples of 8 for FP16
(16 bytes; 4 for TF32, with 8 the usual tile), and other widths are padded up or sent to
non-tensor-core kernels, so a width off a multiple of 8 rarely runs faster than the next
multiple; 8 is the finest grid that follows those steps, and a coarser one would drop widths
whose cost does differ.

GPU runtimes keep inputs and outputs on the device (onnxruntime io-binding with CUDA
``OrtValue`` objects, torch tensors on ``cuda``) and wait for the device inside the timed call, so a
time is kernels plus launch, never host copies or a queue that has not drained. Each GPU call
runs once when it is built: TensorRT engine builds and cuDNN algorithm searches happen there,
not in the timed rounds. They were written against the documented onnxruntime / torch APIs and
have not been run on a GPU in this change (see docs/LATENCY.md).
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils._pytree import tree_map

from ..errors import OptionError
from ..ir import Node, Value
from .signature import OpSpec
from .table import cache_dir, cpu_model

__all__ = [
    "RUNTIMES", "OrtCudaRuntime", "OrtRuntime", "OrtTensorrtRuntime", "Runtime", "TorchCudaRuntime", "TorchRuntime",
    "gpu_identity", "make_runtime", "ort_cuda_fused", "ort_fused", "physical_cores", "trt_fused",
]

Call = Callable[[], object]


def physical_cores() -> int:
    """Physical cores (hyper-threads of one core counted once): onnxruntime's default intra-op
    thread count on CPU."""
    seen: set[tuple[str, str]] = set()
    for topo in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology"):
        try:
            seen.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            continue
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(len(seen), allowed)) if seen else max(1, allowed)


def _has_avx512() -> bool:
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _nvidia_smi() -> tuple[str, str] | None:
    """(name, driver version) of the first visible GPU from ``nvidia-smi``, or None."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln for ln in out.splitlines() if "," in ln]
    if not lines:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    line = lines[int(visible)] if visible.isdigit() and int(visible) < len(lines) else lines[0]
    name, _, driver = line.rpartition(",")
    return name.strip(), driver.strip()


def gpu_identity() -> dict[str, str]:
    """``{"gpu": name, "driver": version}`` of GPU 0, for device fingerprints: the name from
    torch when it has CUDA, else from ``nvidia-smi``; the driver from ``nvidia-smi``; "unknown
    gpu" / "unknown" when neither can tell."""
    name = None
    if torch.cuda.is_available():
        try:
            name = torch.cuda.get_device_name(0)
        except (RuntimeError, AssertionError):
            name = None
    smi = _nvidia_smi()
    return {"gpu": name or (smi[0] if smi else "unknown gpu"), "driver": smi[1] if smi else "unknown"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


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


def _sole_user_of(v: Value | None, op: str) -> bool:
    """``v`` is produced by an ``op`` node and read by exactly one node."""
    return v is not None and v.producer is not None and v.producer.op == op and len(v.users) == 1


def _conv_out(v: Value | None) -> bool:
    """``v`` is what onnxruntime sees as a conv output with one consumer: a conv read only by the
    next node, or a BatchNormalization folded into such a conv (ConvBNFusion runs for every EP)."""
    if _sole_user_of(v, "conv"):
        return True
    return _sole_user_of(v, "batch_norm") and _sole_user_of(v.producer.inputs[0], "conv")  # type: ignore[union-attr]


def ort_cuda_fused(node: Node) -> bool:
    """True when onnxruntime's CUDA EP fuses ``node`` into a conv. Its ConvActivationFusion makes
    a cuDNN FusedConv of Conv+Relu and Conv+Add+Relu only (cudnnConvolutionBiasActivationForward
    applies ReLU and adds a second tensor ``z``); other activations, and an Add not followed by a
    Relu, stay separate kernels. BatchNormalization after a conv is folded into its weights."""
    if node.op == "batch_norm":
        return _sole_user_of(node.inputs[0], "conv")
    if node.op == "relu":
        v = node.inputs[0]
        if _conv_out(v):
            return True
        return _sole_user_of(v, "add") and ort_cuda_fused(v.producer)  # type: ignore[union-attr,arg-type]
    if node.op == "add":
        users = node.output.users
        return (len(users) == 1 and users[0].op == "relu"
                and any(_conv_out(v) for v in node.inputs[:2]))
    return False


#: pointwise ops TensorRT fuses into the epilogue of the conv that feeds them (its conv + bias +
#: BatchNorm folding and PointWise fusion take any chain of these, a residual Add included)
_TRT_EPILOGUE = _ORT_CONV_EPILOGUE | {"add", "hardswish", "silu", "gelu", "elu", "mish"}


def _trt_chain_from_conv(v: Value | None) -> bool:
    while v is not None and v.producer is not None and len(v.users) == 1:
        p = v.producer
        if p.op == "conv":
            return True
        if p.op not in _TRT_EPILOGUE:
            return False
        if p.op == "add":
            return any(_trt_chain_from_conv(u) for u in p.inputs[:2])
        v = p.inputs[0]
    return False


def trt_fused(node: Node) -> bool:
    """True when TensorRT fuses ``node`` into a conv: BatchNorm, activations and residual Adds
    reached from a conv output through a chain of such pointwise ops, each read once."""
    if node.op not in _TRT_EPILOGUE:
        return False
    return any(_trt_chain_from_conv(v) for v in node.inputs[: 2 if node.op == "add" else 1])


class Runtime(Protocol):
    name: str
    threads: int  # as asked: 0 is the runtime's own default
    threads_used: int  # what that resolves to on this machine
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
    """onnxruntime CPUExecutionProvider with ``threads`` intra-op threads (0: onnxruntime's own
    default, one per physical core, as a deployed session runs)."""

    name = "onnxruntime"

    def __init__(self, threads: int = 0) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.threads = threads
        self.threads_used = threads or physical_cores()
        self.step = 16 if _has_avx512() else 8
        self.providers: list[Any] = ["CPUExecutionProvider"]
        self._rng = np.random.default_rng(0)

    def free(self, node: Node) -> bool:
        return ort_fused(node)

    def fingerprint(self) -> dict[str, Any]:
        return {"cpu": cpu_model(), "cores": os.cpu_count(), "runtime": self.name,
                "version": self.ort.__version__, "threads": self.threads_used, "step": self.step}

    def _options(self) -> Any:
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return so

    def _session_call(self, model_or_path: Any, feeds: list[np.ndarray]) -> Call:
        sess = self.ort.InferenceSession(model_or_path, self._options(), providers=self.providers)
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


_ORT_GPU_INSTALL = ("install the GPU build of onnxruntime (pip uninstall onnxruntime && pip install onnxruntime-gpu) "
                    "on a machine with an NVIDIA GPU, its driver, CUDA and cuDNN")


class OrtCudaRuntime(OrtRuntime):
    """onnxruntime's CUDAExecutionProvider on GPU 0 (CPU for ops it has no kernel for).

    Inputs are copied to the device once, as CUDA ``OrtValue`` objects, and outputs are bound on the
    device, so a timed run holds no host copies; ``run_with_iobinding`` returns after the EP has
    synchronized its stream (onnxruntime's default, RunOptions
    ``disable_synchronize_execution_providers=0``) and ``synchronize_outputs`` makes sure of it.
    """

    name = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"
    device_type = "cuda"
    device_id = 0
    needs: tuple[str, ...] = ("CUDAExecutionProvider",)
    libs = "CUDA/cuDNN"
    install = _ORT_GPU_INSTALL

    def __init__(self, threads: int = 0) -> None:
        super().__init__(threads)
        have = list(self.ort.get_available_providers())
        missing = [p for p in self.needs if p not in have]
        if missing:
            raise OptionError(
                f"runtime={self.name!r} needs onnxruntime's {' and '.join(missing)}, but onnxruntime "
                f"{self.ort.__version__} here has only {', '.join(have) or 'no providers'}; {self.install}, "
                f"or use runtime='onnxruntime'")
        self.step = 8  # tensor-core tiles (see the module docstring)
        self.providers = self.provider_list()

    def provider_list(self) -> list[Any]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def free(self, node: Node) -> bool:
        return ort_cuda_fused(node)

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "provider": self.provider, **gpu_identity()}

    def _session(self, model_or_path: Any) -> Any:
        try:  # no silent fallback: a time measured on another provider would be filed under this one
            sess = self.ort.InferenceSession(model_or_path, self._options(), providers=self.providers,
                                             enable_fallback=0)
        except Exception as exc:  # onnxruntime raises its own types for EP load failures
            raise OptionError(
                f"runtime={self.name!r}: onnxruntime {self.ort.__version__} could not create a session on "
                f"{self.provider} ({_first_line(exc)}); check that the {self.libs} libraries it needs are installed "
                f"and found, or {self.install}") from None
        if self.provider not in sess.get_providers():
            raise OptionError(
                f"runtime={self.name!r}: onnxruntime started only {', '.join(sess.get_providers())}, not "
                f"{self.provider}; check that the {self.libs} libraries it needs are installed and found")
        return sess

    def _session_call(self, model_or_path: Any, feeds: list[np.ndarray]) -> Call:
        sess = self._session(model_or_path)
        binding = sess.io_binding()
        for inp, arr in zip(sess.get_inputs(), feeds, strict=True):
            value = self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), self.device_type, self.device_id)
            binding.bind_ortvalue_input(inp.name, value)  # the binding keeps the value alive
        for out in sess.get_outputs():
            binding.bind_output(out.name, self.device_type, self.device_id)

        def call() -> object:
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()
            return binding

        call()  # engine builds, cuDNN algorithm search and output allocation happen here, untimed
        return call


class OrtTensorrtRuntime(OrtCudaRuntime):
    """onnxruntime's TensorrtExecutionProvider on GPU 0, CUDA then CPU for what TensorRT rejects.

    FP32 engines (``trt_fp16_enable=0``: the tables must price the model graphprune verified and
    writes; TensorRT may still use TF32 on Ampere and newer). The engine cache is off: every grid
    point of every signature is its own engine, weights included, and would stay on disk; the
    timing cache (tactic timings, small) is kept under the graphprune cache dir so later builds
    are faster. TensorRT builds an engine when the session is created or, for shapes it only
    learns then, on the first run; the call factory does both before any timing.
    """

    name = "onnxruntime-tensorrt"
    provider = "TensorrtExecutionProvider"
    needs = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    libs = "CUDA/cuDNN/TensorRT"
    install = ("install onnxruntime-gpu and TensorRT (pip uninstall onnxruntime && pip install onnxruntime-gpu "
               "tensorrt) on a machine with an NVIDIA GPU, its driver, CUDA and cuDNN")

    def trt_options(self) -> dict[str, str]:
        return {"device_id": str(self.device_id), "trt_fp16_enable": "0", "trt_engine_cache_enable": "0",
                "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(cache_dir() / "tensorrt")}

    def provider_list(self) -> list[Any]:
        return [("TensorrtExecutionProvider", self.trt_options()), "CUDAExecutionProvider", "CPUExecutionProvider"]

    def free(self, node: Node) -> bool:
        return trt_fused(node)

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "precision": "fp32"}

    def _session(self, model_or_path: Any) -> Any:
        Path(self.providers[0][1]["trt_timing_cache_path"]).mkdir(parents=True, exist_ok=True)
        return super()._session(model_or_path)


class TorchRuntime:
    """PyTorch eager on CPU with ``threads`` intra-op threads (set only while timing; 0: torch's
    own default, ``torch.get_num_threads()``)."""

    name = "torch"

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads
        self.threads_used = threads or torch.get_num_threads()
        self.step = 8
        self.device = torch.device("cpu")
        self._gen = torch.Generator().manual_seed(0)

    def free(self, node: Node) -> bool:
        return False

    def fingerprint(self) -> dict[str, Any]:
        return {"cpu": cpu_model(), "cores": os.cpu_count(), "runtime": self.name,
                "version": torch.__version__, "threads": self.threads_used, "step": self.step}

    @contextlib.contextmanager
    def threads_set(self) -> Iterator[None]:
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads_used)
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
        r = lambda *s: torch.randn(*s, generator=self._gen).to(self.device)  # noqa: E731
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
        x = torch.zeros(1, 8, device=self.device)
        return self._wrap(lambda: x.clone())

    def onnx_call(self, path: str | os.PathLike[str], feeds: list[np.ndarray]) -> Call:
        raise OptionError("runtime 'torch' times modules, not ONNX files")

    def module_call(self, model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        model.eval()
        return self._wrap(lambda: model(*args, **kwargs))


def _fp32_precision() -> str:
    """How torch runs FP32 convs and matmuls on CUDA (TF32 or not): it changes the times."""
    try:
        return f"conv={torch.backends.cudnn.conv.fp32_precision},matmul={torch.backends.cuda.matmul.fp32_precision}"
    except AttributeError:  # torch before the fp32_precision settings
        return f"conv_tf32={torch.backends.cudnn.allow_tf32},matmul={torch.get_float32_matmul_precision()}"


class TorchCudaRuntime(TorchRuntime):
    """PyTorch eager on GPU 0: tensors and a copy of each model on ``cuda``;
    ``torch.cuda.synchronize`` inside every timed call, so a time covers the kernels' execution,
    not only their (asynchronous) launch."""

    name = "torch-cuda"

    def __init__(self, threads: int = 0) -> None:
        if not torch.cuda.is_available():
            why = ("is a CPU-only build" if torch.version.cuda is None
                   else f"(CUDA {torch.version.cuda}) sees no GPU: no driver, or CUDA_VISIBLE_DEVICES hides them")
            raise OptionError(
                f"runtime={self.name!r} needs torch with CUDA and a visible NVIDIA GPU, but torch {torch.__version__} "
                f"{why}; install a CUDA build of torch (pip install torch --index-url "
                f"https://download.pytorch.org/whl/<cuda tag>, see pytorch.org/get-started) on a machine with "
                f"an NVIDIA GPU, or use runtime='torch'")
        super().__init__(threads)
        self.device = torch.device("cuda", 0)
        self.step = 8  # tensor-core tiles (see the module docstring)

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                "cudnn_benchmark": bool(torch.backends.cudnn.benchmark), "fp32": _fp32_precision(), **gpu_identity()}

    def _wrap(self, fn: Callable[[], object]) -> Call:
        device = self.device

        def call() -> object:
            with torch.no_grad():
                out = fn()
            torch.cuda.synchronize(device)
            return out

        call()  # CUDA context, cuBLAS/cuDNN handles and kernel loading happen here, untimed
        return call

    def module_call(self, model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        """Time a copy of ``model`` on the device (the caller's model stays where it is)."""
        dev = self.device
        moved = copy.deepcopy(model).to(dev).eval()
        on_dev = lambda t: t.to(dev) if isinstance(t, torch.Tensor) else t  # noqa: E731
        a, k = tree_map(on_dev, args), tree_map(on_dev, kwargs)
        return self._wrap(lambda: moved(*a, **k))


RUNTIMES: dict[str, type] = {
    "onnxruntime": OrtRuntime, "onnxruntime-cuda": OrtCudaRuntime, "onnxruntime-tensorrt": OrtTensorrtRuntime,
    "torch": TorchRuntime, "torch-cuda": TorchCudaRuntime,
}


def make_runtime(name: str, threads: int | None = 0) -> Runtime:
    """A runtime by name; ``threads`` None or 0 is the runtime's own default. Errors name the option."""
    cls = RUNTIMES.get(name)
    if cls is None:
        raise OptionError(f"runtime={name!r} is unknown; use one of: {', '.join(sorted(RUNTIMES))}")
    if threads is None:
        threads = 0
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise OptionError(f"threads={threads!r} must be a positive integer (or None for the runtime's default)")
    return cls(threads)  # type: ignore[no-any-return]
