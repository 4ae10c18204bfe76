"""Latency budgets for ``.onnx`` sources on onnxruntime (API and CLI), without asserting timings.

Oracles:
- the library's verification, and an INDEPENDENT masked original (``_onnx_util.masked_by_plan``:
  contraction axes from the ONNX op types, removed indices from ``res.plan.kept``) that the written
  file must equal on fresh random inputs; the file passes ``onnx.checker`` and keeps the original's
  output names and shapes;
- ``report["latency"]`` carries the same keys as for a PyTorch source, with the exact relations
  the loop defines (target = fraction x measured original; speedup = original / measured);
- a second run reuses the cached tables and calibration (nothing measured, identical calibration);
- the whole-model timer for ONNX hands the timing code the prepared model for the all-False mask
  and exactly ``rewrite_onnx``'s model for another mask, with the feeds in graph-input order;
- ``calibrate`` passes the all-False mask first and keeps what the measuring callable returned;
- an ONNX Gemm gets the same latency-table signature as the PyTorch linear it was exported from;
- ``runtime="torch"`` with an ONNX source is an OptionError naming the option and what to use, and
  exit status 2 with one ``graphprune: error:`` line (and no output file) from the CLI.

The latency cache is pointed at a per-module temporary directory (``GRAPHPRUNE_CACHE``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _onnx_util import assert_close, masked_by_plan, random_inputs, run
from graphprune.models import build

import graphprune as gp
from graphprune.analysis.allocation import ShapeTable
from graphprune.cli import main
from graphprune.cost.profile import calibrate, table_model
from graphprune.cost.runtimes import make_runtime, physical_cores
from graphprune.cost.signature import op_spec
from graphprune.errors import OptionError
from graphprune.frontends import capture, load_onnx, prepare
from graphprune.latency_source import OnnxTimer, make_timer
from graphprune.rewrite import rewrite_onnx

LATENCY_KEYS = {
    "runtime", "threads", "step", "source", "calibration", "signatures_measured_now", "cache", "predicted_before_ms",
    "predicted_ms", "measured_before_at_calibration_ms", "original_ms", "measured_ms", "target_ms",
    "measured_speedup", "miss", "met", "iterations", "prediction_error",
}


def _export(model: torch.nn.Module, x: tuple[torch.Tensor, ...], path: Path) -> Path:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x, str(path), dynamo=False, external_data=False)
    return path


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ResNet-18 (base 16 channels, 32x32 input, 10 classes) exported by TorchScript."""
    model, x = build("resnet18_w050", width=0.25, image_size=32, num_classes=10)
    return _export(model, x, tmp_path_factory.mktemp("model") / "r18.onnx")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("latency-cache")


@pytest.fixture(autouse=True)
def _cache(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(cache_dir))


def test_latency_budget_prunes_onnx_and_writes_a_verified_file(src: Path, cache_dir: Path, tmp_path: Path) -> None:
    res = gp.prune(str(src), latency=0.6)
    rep = res.report
    assert isinstance(res.model, onnx.ModelProto)
    assert rep["verification"]["ok"], rep["verification"]
    assert rep["route"] == "onnx" and rep["target"] == {"latency": 0.6}
    assert rep["units_removed"] > 0 and rep["flops_after"] < rep["flops_before"]
    lat = rep["latency"]
    assert LATENCY_KEYS <= set(lat), sorted(LATENCY_KEYS - set(lat))
    # no threads= given: onnxruntime's own default (one thread per physical core), as deployed
    assert (lat["runtime"], lat["threads"], lat["source"]) == ("onnxruntime", physical_cores(), "onnx")
    assert lat["threads_source"] == "runtime default"
    assert lat["calibration"]["models"] == 6  # the original and 5 random variants
    assert Path(lat["cache"]).parent == cache_dir
    assert 1 <= len(lat["iterations"]) <= 3  # iterate=2 re-allocations at most
    assert lat["target_ms"] == pytest.approx(0.6 * lat["original_ms"])
    assert lat["measured_speedup"] == pytest.approx(lat["original_ms"] / lat["measured_ms"])
    assert all(lat[k] > 0 for k in ("original_ms", "measured_ms", "predicted_ms", "predicted_before_ms"))

    out = tmp_path / "small.onnx"
    res.save(out)
    onnx.checker.check_model(str(out), full_check=True)
    original = onnx.load(str(src))
    shapes = {k: tuple(v) for k, v in rep["input_shapes"].items()}
    feeds = random_inputs(original, shapes, seed=11)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == [o.name for o in original.graph.output]
    assert [o.shape for o in run(str(out), feeds)] == [o.shape for o in run(original, feeds)] == [(1, 10)]
    prep = prepare(load_onnx(str(src)), shapes)
    masked = masked_by_plan(prep.model, res.plan.kept)
    for seed in (3, 4):
        f = random_inputs(prep.model, shapes, seed=seed)
        assert_close(run(masked, f), run(str(out), f), what=f"independent oracle, seed {seed}")

    again = gp.prune(str(src), latency=0.6, iterate=0).report["latency"]
    assert again["signatures_measured_now"] == 0
    assert again["calibration"] == lat["calibration"]  # read back from the cache, not measured again


def test_onnx_timer_times_the_prepared_and_rewritten_models(src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = gp.analyze(str(src))
    (name, shape), = a.onnx.input_shapes.items()
    user = {name: np.full(shape, 0.5, np.float32)}
    timer = make_timer(make_runtime("onnxruntime"), a.graph, a.coupling, onnx=a.onnx, example_inputs=user)
    assert isinstance(timer, OnnxTimer)
    assert [f.shape for f in timer.feeds] == [shape]
    np.testing.assert_array_equal(timer.feeds[0], user[name])  # the user's arrays are timed

    seen: list[bytes] = []

    def fake_measure(paths, feeds, runtime):  # type: ignore[no-untyped-def]
        assert feeds is timer.feeds and runtime is timer.runtime
        seen.extend(Path(p).read_bytes() for p in paths)
        return [float(i + 1) for i in range(len(paths))]

    monkeypatch.setattr("graphprune.latency_source.measure_onnx", fake_measure)
    removed = np.zeros(a.coupling.n_units, dtype=bool)
    g = max(a.coupling.groups, key=lambda g: g.size)
    removed[g.units[: g.size // 2]] = True
    assert timer.measure_masks([np.zeros_like(removed), removed]) == [1.0, 2.0]
    assert seen[0] == a.onnx.model.SerializeToString()
    assert seen[1] == rewrite_onnx(a.onnx.model, a.graph, a.coupling, removed).SerializeToString()
    pruned = rewrite_onnx(a.onnx.model, a.graph, a.coupling, removed)
    assert timer.measure_pair(pruned) == (1.0, 2.0)
    assert seen[2:] == [a.onnx.model.SerializeToString(), pruned.SerializeToString()]


def test_calibrate_measures_the_original_first_through_the_callable(src: Path) -> None:
    a = gp.analyze(str(src))
    rt = make_runtime("onnxruntime")
    got: list[np.ndarray] = []

    times = [1e-3, 1.1e-3, 1.2e-3, 1.3e-3]

    def measure(masks):  # type: ignore[no-untyped-def]
        got.extend(masks)
        return times[: len(masks)]

    cal = calibrate(table_model({}, rt), a.graph, a.coupling, measure, rt, variants=3)
    assert len(got) == 4 and not got[0].any() and all(m.any() for m in got[1:])
    assert all(m.shape == (a.coupling.n_units,) and m.dtype == bool for m in got)
    assert cal.measured == times and cal.base_measured == 1e-3
    assert len(cal.raw) == 4 and cal.raw[0] > max(cal.raw[1:])  # the unpruned model is the slowest prediction


def test_onnx_gemm_shares_the_torch_linear_signature(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 24), torch.nn.ReLU(), torch.nn.Linear(24, 4)).eval()
    x = (torch.randn(2, 8),)
    a = gp.analyze(str(_export(model, x, tmp_path / "mlp.onnx")))
    onnx_specs = [op_spec(n) for n in a.graph.nodes if n.op in ("gemm", "matmul")]
    torch_specs = [op_spec(n) for n in capture(model, x).graph.nodes if n.op == "linear"]
    assert len(onnx_specs) == len(torch_specs) == 2
    assert [s.key for s in onnx_specs] == [s.key for s in torch_specs]  # type: ignore[union-attr]
    assert [s.full for s in onnx_specs] == [(8, 24), (24, 4)]  # type: ignore[union-attr]
    # pruned widths follow the weight's (K, N) axes
    assert len(a.coupling.groups) == 1  # the hidden layer; model input and output are pinned
    removed = np.zeros(a.coupling.n_units, dtype=bool)
    removed[a.coupling.groups[0].units[:10]] = True
    shape = ShapeTable(a.coupling).shapes(removed)
    assert [op_spec(n, shape).widths for n in a.graph.nodes if n.op == "gemm"] == [(8, 14), (14, 4)]  # type: ignore[union-attr]


def test_torch_runtime_with_onnx_source_names_the_option(src: Path) -> None:
    with pytest.raises(OptionError, match=r"runtime='torch'.*runtime='onnxruntime'"):
        gp.prune(str(src), speedup=2.0, runtime="torch")
    with pytest.raises(OptionError, match="steps="):  # still refused for ONNX sources
        gp.prune(str(src), flops=0.5, steps=2)


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("graphprune: error:"), err
    return lines[0]


@pytest.mark.parametrize("cmd", ["prune", "profile", "analyze"])
def test_cli_torch_runtime_with_onnx_source_exits_2(cmd: str, src: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "small.onnx"
    argv = {"prune": ["prune", str(src), "--speedup", "2", "--runtime", "torch", "-o", str(out)],
            "profile": ["profile", str(src), "--runtime", "torch"],
            "analyze": ["analyze", str(src), "--latency", "--runtime", "torch"]}[cmd]
    assert main(argv) == 2
    got = capsys.readouterr()
    line = _one_error_line(got.err)
    assert "runtime='torch'" in line and "onnxruntime" in line
    assert got.out == ""  # refused before any work
    assert list(tmp_path.iterdir()) == []


def test_cli_prune_profile_analyze_onnx_with_latency(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, report = tmp_path / "small.onnx", tmp_path / "r.json"
    code = main(["prune", str(src), "--speedup", "1.5", "-o", str(out), "--report", str(report), "--iterate", "0"])
    rep = json.loads(report.read_text())
    # a measured miss beyond the loop's 5% exits 3 with the model written (timings are not asserted)
    assert code == (0 if rep["target_met"] else 3)
    assert rep["target_met"] is (rep["latency"]["miss"] <= 0.05)
    assert rep["verification"]["ok"] and rep["latency"]["source"] == "onnx"
    assert rep["latency"]["target_ms"] == pytest.approx(rep["latency"]["original_ms"] / 1.5)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == [o.name for o in onnx.load(str(src)).graph.output]
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert f"latency (onnxruntime, {physical_cores()} thr, runtime default)" in printed and "verification: ok" in printed
    assert main(["profile", str(src)]) == 0
    assert "measured original" in " ".join(capsys.readouterr().out.split())
    assert main(["analyze", str(src), "--latency"]) == 0
    assert "total predicted" in " ".join(capsys.readouterr().out.split())
