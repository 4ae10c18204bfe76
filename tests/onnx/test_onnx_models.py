"""End-to-end ONNX route: every built-in model, exported by BOTH PyTorch exporters, prunes to 50% of
its FLOPs as an ONNX model, and the result is right.

Oracles:
- the library's own verification (``report["verification"]["ok"]``);
- an INDEPENDENT masked original: the prepared original with the removed indices zeroed on every
  consumer-side (contraction) axis, derived from the ONNX op types and ``res.plan.kept`` only
  (``_onnx_util.masked_by_plan``), equals the pruned model on fresh random inputs;
- the library's ``masked_onnx`` with ``res.coupling`` / ``res.removed`` on other fresh inputs;
- every pruned initializer is exactly the index-selected original initializer;
- the saved file passes ``onnx.checker`` (full check); output names/shapes equal the original's;
- achieved FLOPs within 0.03 of the target, unless barriers made it unreachable;
- a budget of 1.0 is the identity;
- the same resnet50 pruned from PyTorch and from its ONNX export keeps identical channels.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _onnx_util import assert_close, masked_by_plan, random_inputs, run
from graphprune.models import MODELS
from onnx import numpy_helper

import graphprune as gp
from graphprune.frontends import load_onnx, prepare
from graphprune.verification_onnx import masked_onnx

NAMES = sorted(MODELS)
EXPORTERS = ("torchscript", "dynamo")
FLOPS = 0.5

# Exporting is the slow part (the dynamo exporter takes 2-20 s per model on a small CPU), so the
# 20 files are written by a few worker processes side by side, once, into pytest's cache.
_EXPORT_WORKER = r"""
import json, os, sys, warnings, logging
import torch
from graphprune.models import MODELS
torch.set_num_threads(1)
for lg in ("torch.onnx", "torch.export", "onnxscript"):
    logging.getLogger(lg).setLevel(logging.ERROR)
errors = {}
for name, exporter, path in json.loads(sys.argv[1]):
    model, x = MODELS[name]()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            dyn = exporter == "dynamo"
            tmp = path[: -len(".onnx")] + ".partial.onnx"
            torch.onnx.export(model, x, tmp, dynamo=dyn, external_data=False, **({"verbose": False} if dyn else {}))
        os.replace(tmp, path)
    except Exception as exc:
        errors[path] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
print(json.dumps(errors))
"""

# rough relative export cost, to balance the workers
_COST = {"densenet": 9, "inception": 4, "vit_tiny": 4, "resnet50_w025": 2, "llama_tiny": 2, "shufflenet": 2}


def _export_key() -> str:
    """Exports depend on the model code and the exporter versions only."""
    import onnxscript

    h = hashlib.sha256(f"{torch.__version__} {onnx.__version__} {onnxscript.__version__}".encode())
    models_dir = Path(MODELS[NAMES[0]].__code__.co_filename).parent
    for f in sorted(models_dir.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path | str]:
    """(model, exporter) -> the exported .onnx path, or the exporter's error message.

    Files are kept in pytest's cache directory under a key of the model sources and exporter
    versions, so only the first run (or a run after a model/exporter change) pays for exporting.
    """
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir(f"graphprune_onnx_exports_{_export_key()}") if cache is not None else tmp_path_factory.mktemp("x")
    jobs = [(n, e, str(root / f"{n}.{e}.onnx")) for n in NAMES for e in EXPORTERS]
    todo = [j for j in jobs if not Path(j[2]).exists() or Path(j[2]).stat().st_size == 0]
    todo.sort(key=lambda j: -(_COST.get(j[0], 1) * (4 if j[1] == "dynamo" else 1)))
    workers = max(1, min(3, os.cpu_count() or 1))
    buckets: list[list[tuple[str, str, str]]] = [[] for _ in range(workers)]
    load = [0] * workers
    for j in todo:
        k = load.index(min(load))
        buckets[k].append(j)
        load[k] += _COST.get(j[0], 1) * (4 if j[1] == "dynamo" else 1)
    procs = [
        subprocess.Popen([sys.executable, "-c", _EXPORT_WORKER, json.dumps(b)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for b in buckets if b
    ]
    errors: dict[str, str] = {}
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, f"export worker crashed:\n{err[-3000:]}"
        errors.update(json.loads(out.strip().splitlines()[-1]))
    return {(n, e): errors.get(p, Path(p)) for n, e, p in jobs}


def _path(exported: dict[tuple[str, str], Path | str], name: str, exporter: str) -> Path:
    got = exported[(name, exporter)]
    assert isinstance(got, Path), f"torch.onnx.export ({exporter}) of {name} failed: {got}"
    return got


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", NAMES)
def test_onnx_prune_half_flops(exported: dict[tuple[str, str], Path | str], name: str, exporter: str,
                               tmp_path: Path) -> None:
    src = _path(exported, name, exporter)
    res = gp.prune(str(src), flops=FLOPS)
    rep = res.report
    assert isinstance(res.model, onnx.ModelProto)
    assert rep["route"] == "onnx"
    assert rep["verification"] is not None and rep["verification"]["ok"], rep["verification"]
    achieved = rep["achieved"]["flops"]
    assert abs(achieved - FLOPS) <= 0.03 or (rep["barriers"] and not rep["target_reachable"]), (
        achieved, rep["target_reachable"], rep["barriers"])
    assert rep["units_removed"] > 0 and rep["flops_after"] < rep["flops_before"]
    shapes = {k: tuple(v) for k, v in rep["input_shapes"].items()}

    # the written file is a valid model with the original's interface
    out = tmp_path / "small.onnx"
    res.save(out)
    onnx.checker.check_model(str(out), full_check=True)
    small = onnx.load(str(out))
    original = onnx.load(str(src))
    assert [o.name for o in small.graph.output] == [o.name for o in original.graph.output]
    feeds = random_inputs(original, shapes, seed=1234)
    ref_orig, got = run(original, feeds), run(str(out), feeds)
    assert [r.shape for r in got] == [r.shape for r in ref_orig]
    assert sum(int(np.prod(t.dims)) for t in small.graph.initializer) < sum(
        int(np.prod(t.dims)) for t in original.graph.initializer)

    # every pruned initializer is the index-selected original one
    prep = prepare(load_onnx(str(src)), shapes)
    before = {t.name: numpy_helper.to_array(t) for t in prep.model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in small.graph.initializer}
    assert set(res.plan.kept) <= set(before), sorted(set(res.plan.kept) - set(before))[:5]
    for wname, axes in res.plan.kept.items():
        if wname not in after:  # only used by nodes the rewrite dropped
            continue
        expect = before[wname]
        for ax, idx in axes.items():
            expect = np.take(expect, np.asarray(idx, dtype=np.int64), axis=ax)
        assert after[wname].shape == expect.shape, (wname, after[wname].shape, expect.shape)
        np.testing.assert_array_equal(after[wname], expect, err_msg=wname)

    # independent oracle: masked original (contraction axes from op types, kept from the plan)
    masked = masked_by_plan(prep.model, res.plan.kept)
    for seed in (7, 8):
        f = random_inputs(prep.model, shapes, seed=seed)
        assert_close(run(masked, f), run(small, f), what=f"independent oracle, seed {seed}")

    # the library's masked original, rebuilt from what the result carries, on other fresh inputs
    assert res.coupling is not None and res.removed is not None
    lib_masked = masked_onnx(prep.model, res.coupling, res.removed)
    f = random_inputs(prep.model, shapes, seed=99)
    assert_close(run(lib_masked, f), run(small, f), what="masked_onnx oracle")


@pytest.mark.parametrize(("name", "exporter"), [("resnet18_w050", "torchscript"), ("vit_tiny", "dynamo"),
                                                ("llama_tiny", "torchscript")])
def test_onnx_budget_one_is_identity(exported: dict[tuple[str, str], Path | str], name: str, exporter: str) -> None:
    src = _path(exported, name, exporter)
    res = gp.prune(str(src), flops=1.0)
    rep = res.report
    assert rep["units_removed"] == 0 and res.plan.kept == {}
    assert rep["achieved"]["flops"] == pytest.approx(1.0)
    shapes = {k: tuple(v) for k, v in rep["input_shapes"].items()}
    original = onnx.load(str(src))
    feeds = random_inputs(original, shapes, seed=5)
    assert_close(run(original, feeds), run(res.model, feeds), rtol=1e-6, what="identity")


def test_onnx_initializers_listed_as_graph_inputs(tmp_path: Path) -> None:
    """Older exporters (and ``keep_initializers_as_inputs=True``) list every initializer in
    graph.input as well; pruning must update or drop those input declarations."""
    model, x = MODELS["resnet18_w050"]()
    src = tmp_path / "r18_inputs.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x, str(src), dynamo=False, keep_initializers_as_inputs=True)
    assert len(onnx.load(str(src)).graph.input) > 1
    res = gp.prune(str(src), flops=FLOPS)
    assert res.report["verification"]["ok"], res.report["verification"]
    out = tmp_path / "small.onnx"
    res.save(out)
    onnx.checker.check_model(str(out), full_check=True)
    feeds = random_inputs(onnx.load(str(src)), {k: tuple(v) for k, v in res.report["input_shapes"].items()}, 3)
    assert [o.shape for o in run(str(out), feeds)] == [o.shape for o in run(str(src), feeds)]


def test_onnx_dynamic_batch_stays_dynamic(tmp_path: Path) -> None:
    """A model exported with a symbolic batch dim is analyzed at batch 1, but the pruned model must
    keep the original interface (DESIGN.md: model inputs/outputs are pinned) and run at batch 3."""
    model, x = MODELS["resnet18_w050"]()
    src = tmp_path / "r18_dynbatch.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x, str(src), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    res = gp.prune(str(src), flops=FLOPS)
    assert res.report["verification"]["ok"], res.report["verification"]
    dyn = res.report["onnx_dynamic"]
    assert (dyn["kept"], dyn["dims"]) == (True, {"x": {"0": "batch"}}), dyn
    assert [c["x"][0] for c in dyn["checked_at"]] == [1, 2, 3]
    assert [d.dim_param for d in res.model.graph.output[0].type.tensor_type.shape.dim][:1] == ["batch"]
    x3 = np.random.default_rng(0).standard_normal((3, *x[0].shape[1:])).astype(np.float32)
    got = run(res.model, {"x": x3})[0]
    assert got.shape[0] == 3
    for i in range(3):
        np.testing.assert_allclose(got[i : i + 1], run(res.model, {"x": x3[i : i + 1]})[0], rtol=1e-4, atol=1e-5)


def _export_bert(path: Path, axes: dict[int, str]) -> None:
    model, x = MODELS["bert_tiny"]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x, str(path), dynamo=False, input_names=["input_ids", "attention_mask"],
                          output_names=["logits"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}})


def _tokens(shape: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones(shape, dtype=np.int64)
    mask[0, shape[1] // 2 :] = 0
    return {"input_ids": rng.integers(0, 1000, size=shape).astype(np.int64), "attention_mask": mask}


def test_onnx_symbolic_dim_named_like_a_given_one_takes_its_size(tmp_path: Path) -> None:
    """attention_mask shares the dim names of input_ids: sizing input_ids sizes both, and then no
    dim is left symbolic (the pruned model has the given shapes, no dynamic report)."""
    src = tmp_path / "bert_dyn2.onnx"
    _export_bert(src, {0: "batch", 1: "seq"})
    res = gp.prune(str(src), flops=FLOPS, input_shapes={"input_ids": (2, 8)})
    assert res.report["verification"]["ok"], res.report["verification"]
    assert res.report["input_shapes"] == {"input_ids": [2, 8], "attention_mask": [2, 8]}
    assert "onnx_dynamic" not in res.report


def test_onnx_transformer_dynamic_batch_stays_dynamic(tmp_path: Path) -> None:
    """BERT exported with a symbolic batch: the pruned model keeps it and, at batch 3 and 5, equals
    the original at that batch with the removed channels zeroed (independent oracle)."""
    src = tmp_path / "bert_dynbatch.onnx"
    _export_bert(src, {0: "batch"})
    res = gp.prune(str(src), flops=FLOPS)
    assert res.report["verification"]["ok"], res.report["verification"]
    dyn = res.report["onnx_dynamic"]
    assert (dyn["kept"], dyn["dims"]) == (True, {"input_ids": {"0": "batch"}, "attention_mask": {"0": "batch"}}), dyn
    assert all([d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] == ["batch", 16]
               for i in res.model.graph.input)
    masked = masked_by_plan(onnx.load(str(src)), res.plan.kept)
    for batch in (3, 5):
        feeds = _tokens((batch, 16), seed=batch)
        assert_close(run(masked, feeds), run(res.model, feeds), what=f"batch {batch}")


def test_onnx_transformer_dynamic_sequence_stays_dynamic(tmp_path: Path) -> None:
    """BERT with symbolic batch AND sequence (TorchScript export, which slices the position table by
    the sequence length): analyzed at sequence 64 (its position table's length: 128 does not run),
    the pruned model keeps both dims and equals the masked original at other sizes. (Before the
    rewrite edited the original graph this fell back to static [1, 1] inputs.)"""
    src = tmp_path / "bert_dynseq.onnx"
    _export_bert(src, {0: "batch", 1: "seq"})
    res = gp.prune(str(src), flops=FLOPS)
    dyn = res.report["onnx_dynamic"]
    assert dyn["kept"] is True, dyn
    assert res.report["verification"]["ok"], res.report["verification"]
    assert res.report["symbolic_dims"] == {"batch": 1, "seq": 64}
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in res.model.graph.input}
    assert shapes == {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"]}
    masked = masked_by_plan(onnx.load(str(src)), res.plan.kept)
    for shape in ((1, 7), (2, 33), (1, 64)):
        feeds = _tokens(shape, seed=shape[1])
        assert_close(run(masked, feeds), run(res.model, feeds), what=f"(batch, seq) = {shape}")


def test_resnet50_torch_and_onnx_keep_identical_channels(tmp_path: Path) -> None:
    model, x = MODELS["resnet50_w025"]()
    src = tmp_path / "resnet50.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x, str(src), dynamo=False, do_constant_folding=False)
    params = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    assert params & {t.name for t in onnx.load(str(src)).graph.initializer}, "initializers are not named by FQN"
    res_t = gp.prune(model, x, flops=FLOPS)
    res_o = gp.prune(str(src), flops=FLOPS)
    assert res_o.report["verification"]["ok"], res_o.report["verification"]
    kt, ko = res_t.plan.kept, res_o.plan.kept
    assert kt, "the PyTorch route pruned nothing"
    missing = sorted(set(kt) - set(ko))
    assert not missing, f"pruned via PyTorch but not via ONNX: {missing[:8]}"
    diff = [k for k in kt if {a: tuple(i) for a, i in kt[k].items()} != {a: tuple(i) for a, i in ko[k].items()}]
    assert not diff, f"different kept channels for {diff[:5]}: torch {kt[diff[0]]} vs onnx {ko[diff[0]]}"
    extra = sorted(k for k in set(ko) - set(kt) if k.split("__use")[0] not in kt)
    assert not extra, f"pruned via ONNX but not via PyTorch: {extra[:8]}"


def test_onnx_reshape_through_shape_subgraph_stays_dynamic() -> None:
    """Reshape (batch, seq, 8) -> (seq, batch * 8) through a Shape sub-graph: both output dims follow
    symbolic dims, which the rewrite of the original graph keeps computing (this used to fall back
    to static shapes, as no 0/-1 shape expresses it). The pruned model runs at other sizes."""
    from _onnx_util import build

    m = build('<ir_version: 8, opset_import: ["" : 17]>\n' + """g (float[batch,seq,8] x) => (float[seq,n] z) {
      h = MatMul(x, w1)
      r = Relu(h)
      y = MatMul(r, w2)
      s = Shape(y)
      a = Gather(s, i1)
      b = Gather(s, i0)
      c = Mul(b, eight)
      p = Concat<axis=0>(a, c)
      z = Reshape(y, p)
    }""", {"w1": (8, 16), "w2": (16, 8)},
              ints={"i0": np.asarray([0]), "i1": np.asarray([1]), "eight": np.asarray([8])})
    res = gp.prune(m, flops=FLOPS, input_shapes=None)
    dyn = res.report["onnx_dynamic"]
    assert dyn["kept"] is True, dyn
    assert res.report["verification"]["ok"], res.report["verification"]
    assert res.report["units_removed"] > 0
    assert [d.dim_param for d in res.model.graph.input[0].type.tensor_type.shape.dim][:2] == ["batch", "seq"]
    masked = masked_by_plan(m, res.plan.kept)
    for shape in ((1, 1, 8), (3, 5, 8), (2, 40, 8)):
        feeds = {"x": np.random.default_rng(shape[1]).standard_normal(shape).astype(np.float32)}
        assert_close(run(masked, feeds), run(res.model, feeds), what=f"x {shape}")
