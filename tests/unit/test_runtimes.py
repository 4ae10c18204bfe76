"""Target runtimes, GPU ones included, on a machine that may have no GPU.

Oracles: exact error text naming the runtime, what is available and what to install when a
provider or CUDA is missing; exact provider lists, steps and fingerprint fields of GPU runtimes
built with their providers patched in (no GPU session is created); exact per-op fusion rules per
runtime on a captured graph; and the GPU io-binding / synchronize / export code paths run end to
end with the device swapped for the CPU, checked against the eager model's output. Nothing is
timed.
"""

from __future__ import annotations

import subprocess

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphprune.cli import main
from graphprune.cost.profile import measure_models
from graphprune.cost.runtimes import (
    RUNTIMES,
    OrtCudaRuntime,
    OrtTensorrtRuntime,
    TorchCudaRuntime,
    gpu_identity,
    make_runtime,
    ort_cuda_fused,
    ort_fused,
    trt_fused,
)
from graphprune.cost.signature import op_spec
from graphprune.cost.table import fingerprint_key
from graphprune.cost.timing import TimingConfig
from graphprune.errors import OptionError
from graphprune.export import save_model
from graphprune.frontends.torch_export import capture

GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def no_gpu(monkeypatch, tmp_path):
    """This machine as a CPU-only one, whatever it really has; the cache in tmp_path."""
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("shutil.which", lambda name: None)


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """Providers and CUDA reported as present, a fake nvidia-smi; no GPU session is created."""
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(GPU_PROVIDERS))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA Test GPU")
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    real_run = subprocess.run

    def run(cmd, *args, **kwargs):
        if cmd[0] != "/usr/bin/nvidia-smi":
            return real_run(cmd, *args, **kwargs)
        assert cmd[1:] == ["--query-gpu=name,driver_version", "--format=csv,noheader"]
        return subprocess.CompletedProcess(cmd, 0, stdout="NVIDIA Test GPU, 555.42.06\nNVIDIA Other GPU, 555.42.06\n")

    monkeypatch.setattr(subprocess, "run", run)


def test_unknown_runtime_lists_every_runtime():
    with pytest.raises(OptionError) as exc:
        make_runtime("tvm")
    msg = str(exc.value)
    assert "runtime='tvm' is unknown" in msg
    for name in ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "torch", "torch-cuda"):
        assert name in msg
    assert sorted(RUNTIMES) == ["onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "torch", "torch-cuda"]


@pytest.mark.parametrize(
    "name, needs, install",
    [
        ("onnxruntime-cuda", "CUDAExecutionProvider", "pip install onnxruntime-gpu"),
        ("onnxruntime-tensorrt", "TensorrtExecutionProvider and CUDAExecutionProvider", "tensorrt"),
    ],
)
def test_missing_onnxruntime_provider_names_runtime_available_and_install(no_gpu, name, needs, install):
    with pytest.raises(OptionError) as exc:
        make_runtime(name)
    msg = str(exc.value)
    assert msg.startswith(f"runtime={name!r} needs onnxruntime's {needs}, but onnxruntime ")
    assert "here has only CPUExecutionProvider;" in msg
    assert install in msg and msg.endswith("or use runtime='onnxruntime'")


def test_missing_cuda_torch_names_runtime_and_install(no_gpu):
    with pytest.raises(OptionError) as exc:
        make_runtime("torch-cuda")
    msg = str(exc.value)
    assert msg.startswith(f"runtime='torch-cuda' needs torch with CUDA and a visible NVIDIA GPU, but torch {torch.__version__}")
    assert "install a CUDA build of torch" in msg and msg.endswith("or use runtime='torch'")


def test_threads_are_checked_before_the_device():
    with pytest.raises(OptionError, match="threads=-1"):
        make_runtime("onnxruntime-cuda", -1)


def test_ort_cuda_runtime_fields(fake_gpu):
    rt = make_runtime("onnxruntime-cuda", 2)
    assert isinstance(rt, OrtCudaRuntime)
    assert rt.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert (rt.step, rt.threads) == (8, 2)
    fp = rt.fingerprint()
    assert {k: fp[k] for k in ("runtime", "provider", "gpu", "driver", "threads", "step")} == {
        "runtime": "onnxruntime-cuda", "provider": "CUDAExecutionProvider", "gpu": "NVIDIA Test GPU",
        "driver": "555.42.06", "threads": 2, "step": 8}
    assert fp["version"] == onnxruntime.__version__


def test_ort_tensorrt_runtime_fields(fake_gpu, tmp_path):
    rt = make_runtime("onnxruntime-tensorrt")
    assert isinstance(rt, OrtTensorrtRuntime)
    (trt, trt_opts), *rest = rt.providers
    assert trt == "TensorrtExecutionProvider" and rest == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert trt_opts == {"device_id": "0", "trt_fp16_enable": "0", "trt_engine_cache_enable": "0",
                        "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(tmp_path / "cache" / "tensorrt")}
    assert not (tmp_path / "cache").exists()  # building the runtime writes nothing
    fp = rt.fingerprint()
    assert (fp["runtime"], fp["provider"], fp["gpu"], fp["driver"], fp["precision"], fp["step"]) == (
        "onnxruntime-tensorrt", "TensorrtExecutionProvider", "NVIDIA Test GPU", "555.42.06", "fp32", 8)
    cuda_fp = make_runtime("onnxruntime-cuda").fingerprint()
    assert fingerprint_key(fp) != fingerprint_key(cuda_fp)  # tables of the two providers never mix


def test_torch_cuda_runtime_fields(fake_gpu):
    rt = make_runtime("torch-cuda", 3)
    assert isinstance(rt, TorchCudaRuntime)
    assert (rt.step, rt.threads, rt.device) == (8, 3, torch.device("cuda", 0))
    fp = rt.fingerprint()
    assert (fp["runtime"], fp["gpu"], fp["driver"], fp["step"], fp["version"]) == (
        "torch-cuda", "NVIDIA Test GPU", "555.42.06", 8, torch.__version__)
    assert {"cuda", "cudnn", "cudnn_benchmark", "fp32"} <= set(fp)


def test_gpu_identity_sources(fake_gpu, monkeypatch):
    assert gpu_identity() == {"gpu": "NVIDIA Test GPU", "driver": "555.42.06"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # nvidia-smi lists every GPU; torch sees only this one
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_identity() == {"gpu": "NVIDIA Other GPU", "driver": "555.42.06"}
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert gpu_identity() == {"gpu": "unknown gpu", "driver": "unknown"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_identity() == {"gpu": "NVIDIA Test GPU", "driver": "unknown"}


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c3, self.c4 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.b1(self.c1(x)))
        y = F.relu(self.b2(self.c2(y)) + x)  # Conv+BN+Add+Relu
        z = torch.sigmoid(F.relu6(self.c3(y)))  # activations cuDNN's fused conv does not have
        return self.c4(z) + y  # an Add with no Relu after it


def test_fusion_rules_per_runtime():
    g = capture(_Block().eval(), (torch.randn(1, 8, 8, 8),)).graph
    free = {rule.__name__: [n.name for n in g.nodes if rule(n)] for rule in (ort_fused, ort_cuda_fused, trt_fused)}
    everything = ["batch_norm", "relu", "batch_norm_1", "add", "relu_1", "relu6", "sigmoid", "add_1"]
    assert free["ort_fused"] == everything
    assert free["ort_cuda_fused"] == ["batch_norm", "relu", "batch_norm_1", "add", "relu_1"]
    assert free["trt_fused"] == everything


class _CpuBoundCuda(OrtCudaRuntime):
    """The CUDA runtime's io-binding code with the device swapped for the CPU."""

    name = "onnxruntime-cuda-on-cpu"
    provider = "CPUExecutionProvider"
    device_type = "cpu"
    needs = ("CPUExecutionProvider",)

    def provider_list(self):
        return ["CPUExecutionProvider"]


def _small_cnn():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    return m, torch.randn(2, 3, 8, 8)


def test_ort_gpu_call_paths_run_with_the_device_swapped_for_cpu(fake_gpu, tmp_path):
    rt = _CpuBoundCuda(1)
    m, x = _small_cnn()
    g = capture(m, (x,)).graph
    spec = op_spec(next(n for n in g.nodes if n.op == "conv"))
    assert spec is not None
    op = rt.op_call(spec, (3, 8))  # runs once while it is built
    op().copy_outputs_to_cpu()
    assert rt.null_call()().copy_outputs_to_cpu()[0].shape == (1, 8)
    # whole models take measure_models' ONNX path on every onnxruntime runtime: exported, bound, run, synchronized
    path = tmp_path / "m.onnx"
    save_model(m, path, (x,))
    out = rt.onnx_call(path, [x.numpy()])().copy_outputs_to_cpu()[0]
    np.testing.assert_allclose(out, m(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert next(m.parameters()).device.type == "cpu"
    assert len(measure_models([m], (x,), rt, TimingConfig(warmup=0, rounds=1, min_round_s=0.0))) == 1


def test_ort_gpu_session_never_falls_back_silently(fake_gpu, monkeypatch):
    # onnxruntime lists CUDA but cannot load it (e.g. cuDNN missing): the session comes up on CPU only
    made: list[dict] = []

    class CpuOnlySession:
        def __init__(self, model, options, providers, **kwargs):
            made.append({"providers": providers, **kwargs})

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(onnxruntime, "InferenceSession", CpuOnlySession)
    rt = make_runtime("onnxruntime-cuda")
    with pytest.raises(OptionError) as exc:
        rt.null_call()
    assert made == [{"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "enable_fallback": 0}]
    assert str(exc.value).startswith("runtime='onnxruntime-cuda': onnxruntime started only CPUExecutionProvider, "
                                     "not CUDAExecutionProvider")


def test_ort_gpu_session_errors_name_the_runtime(fake_gpu, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("libcudnn.so.9: cannot open shared object file\nmore detail")

    monkeypatch.setattr(onnxruntime, "InferenceSession", broken)
    rt = make_runtime("onnxruntime-tensorrt")
    with pytest.raises(OptionError) as exc:
        rt.null_call()
    msg = str(exc.value)
    assert msg.startswith("runtime='onnxruntime-tensorrt': onnxruntime ")
    assert "could not create a session on TensorrtExecutionProvider (libcudnn.so.9: cannot open shared object file)" in msg
    assert "\n" not in msg


def test_torch_cuda_call_paths_run_with_the_device_swapped_for_cpu(fake_gpu, monkeypatch):
    syncs: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    rt = make_runtime("torch-cuda")
    rt.device = torch.device("cpu")
    m, x = _small_cnn()
    g = capture(m, (x,)).graph
    spec = op_spec(next(n for n in g.nodes if n.op == "conv"))
    assert spec is not None
    op = rt.op_call(spec, (3, 8))
    assert len(syncs) == 1  # the untimed first run
    assert op().shape == (2, 8, 8, 8) and len(syncs) == 2  # every timed call waits for the device
    rt.null_call()
    call = rt.module_call(m, (x,), {})
    torch.testing.assert_close(call(), m(x))


@pytest.mark.parametrize("name", ["onnxruntime-cuda", "onnxruntime-tensorrt", "torch-cuda"])
def test_cli_gpu_runtime_without_gpu_exits_2_with_one_line(no_gpu, name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "resnet18_w050", "--runtime", name]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"graphprune: error: runtime={name!r} needs ")


def test_default_threads_are_the_runtimes_own() -> None:
    """threads=None/0 leaves onnxruntime at its default (intra_op_num_threads=0: one thread per
    physical core) and torch at torch.get_num_threads(); the fingerprint keys the resolved count."""
    from graphprune.cost.runtimes import physical_cores

    ort_rt = make_runtime("onnxruntime", None)
    assert ort_rt.threads == 0 and ort_rt._options().intra_op_num_threads == 0
    assert ort_rt.threads_used == physical_cores() and ort_rt.fingerprint()["threads"] == physical_cores()
    torch_rt = make_runtime("torch")
    assert torch_rt.threads_used == torch.get_num_threads()
    pinned = make_runtime("onnxruntime", 1)
    assert pinned._options().intra_op_num_threads == 1 and pinned.fingerprint()["threads"] == 1
