"""Dynamic ONNX stays dynamic (issue #9): symbolic batch and sequence dims survive pruning.

Models: BERT exported by the TorchScript exporter (``dynamic_axes``), LLaMA with GQA and GPT-2
exported by the dynamo exporter (``dynamic_shapes``), all built from transformers configs with
random weights; a hand-written file whose input is ``[1, 'seq_len']``; a graph whose shape
arithmetic the rewriter cannot carry.

Oracles:
- the written file's inputs keep their ``dim_param``s, and at (batch, seq) = (1, 7), (2, 33),
  (1, 64) the pruned file equals an INDEPENDENT masked original (``_onnx_util.masked_by_plan``:
  the original file with the plan's removed indices zeroed on contraction axes, from the ONNX op
  types only);
- symbolic dims are analyzed at the representative size (batch 1, sequence 128), which the
  report states;
- a model that cannot stay dynamic raises one line (API) / exits 2 with one line writing nothing
  (CLI), unless allow_static / --allow-static, which writes the bound shapes, verified.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from _onnx_util import assert_close, build, masked_by_plan, run

import graphprune as gp
from graphprune.cli import main
from graphprune.rewrite import NotDynamic

SIZES = ((1, 7), (2, 33), (1, 64))
VOCAB = 100

_EXPORT = r"""
import logging, sys, warnings
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
for lg in ("torch.onnx", "torch.export", "onnxscript"):
    logging.getLogger(lg).setLevel(logging.ERROR)
warnings.simplefilter("ignore")
torch.manual_seed(0)
torch.set_num_threads(1)
name, path = sys.argv[1], sys.argv[2]

class Out(torch.nn.Module):  # (input_ids, attention_mask) -> one tensor
    def __init__(self, m, key):
        super().__init__()
        self.m, self.key = m, key
    def forward(self, input_ids, attention_mask):
        kw = {"use_cache": False} if self.key == "logits" else {}
        return getattr(self.m(input_ids=input_ids, attention_mask=attention_mask, **kw), self.key)

ids = torch.randint(0, 100, (2, 9))
mask = torch.ones(2, 9, dtype=torch.int64)
names = ["input_ids", "attention_mask"]
if name == "bert":
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    m = Out(BertModel(cfg, add_pooling_layer=False), "last_hidden_state").eval()
    axes = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(m, (ids, mask), path, dynamo=False, input_names=names, output_names=["hidden"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes})
else:
    if name == "llama":
        m = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    else:
        m = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=128))
    b, s = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=128)
    with torch.no_grad():
        torch.onnx.export(Out(m.eval(), "logits").eval(), (ids, mask), path, dynamo=True, input_names=names,
                          output_names=["logits"], external_data=False,
                          dynamic_shapes={"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: s}})
"""
MODELS = ("bert", "llama", "gpt2")


def _key() -> str:
    import torch
    import transformers

    return hashlib.sha256(f"{torch.__version__} {transformers.__version__} {onnx.__version__} {_EXPORT}".encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> .onnx file, exported once per exporter/transformers version (pytest's cache), the
    three side by side in worker processes."""
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir(f"graphprune_onnx_dynamic_{_key()}") if cache is not None else tmp_path_factory.mktemp("dyn")
    paths = {n: root / f"{n}.onnx" for n in MODELS}
    procs = {}
    for n, p in paths.items():
        if not p.exists():
            procs[n] = subprocess.Popen([sys.executable, "-c", _EXPORT, n, str(p) + ".partial"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for n, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"export of {n} failed:\n{err[-3000:]}"
        Path(str(paths[n]) + ".partial").replace(paths[n])
    return paths


def _tokens(batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[-1, seq // 2 + 1 :] = 0  # padding in the last row
    return {"input_ids": rng.integers(0, VOCAB, size=(batch, seq)).astype(np.int64), "attention_mask": mask}


def _dims(model: onnx.ModelProto) -> dict[str, list[str | int]]:
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}


@pytest.mark.parametrize("name", MODELS)
def test_exported_transformer_stays_dynamic(exported: dict[str, Path], name: str, tmp_path: Path) -> None:
    src = exported[name]
    res = gp.prune(str(src), flops=0.6)
    rep = res.report
    assert rep["verification"]["ok"], rep["verification"]
    assert rep["units_removed"] > 0
    assert rep["symbolic_dims"] == {"batch": 1, "seq": 128}
    assert rep["input_shapes"] == {"input_ids": [1, 128], "attention_mask": [1, 128]}
    dyn = rep["onnx_dynamic"]
    assert dyn["kept"] is True, dyn
    assert dyn["dims"] == {"input_ids": {"0": "batch", "1": "seq"}, "attention_mask": {"0": "batch", "1": "seq"}}
    out = tmp_path / "small.onnx"
    res.save(out)
    written = onnx.load(str(out))
    onnx.checker.check_model(written, full_check=True)
    assert _dims(written) == _dims(onnx.load(str(src))) == {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"]}
    masked = masked_by_plan(onnx.load(str(src)), res.plan.kept)
    for batch, seq in SIZES:
        feeds = _tokens(batch, seq, seed=seq)
        got = run(str(out), feeds)
        assert got[0].shape[:2] == (batch, seq)
        assert_close(run(masked, feeds), got, what=f"{name} at (batch, seq) = {(batch, seq)}")


def test_flops_are_counted_at_the_representative_size(exported: dict[str, Path]) -> None:
    """The budget is priced at sequence 128, not 1 (where attention costs nothing)."""
    src = str(exported["llama"])
    res = gp.prune(src, flops=0.6)
    at1 = gp.prune(src, flops=0.6, input_shapes={"input_ids": (1, 1), "attention_mask": (1, 1)})
    assert res.report["symbolic_dims"] == {"batch": 1, "seq": 128}
    assert res.report["flops_before"] > 128 * at1.report["flops_before"]  # linear layers x128, attention more
    assert "onnx_dynamic" not in at1.report and "symbolic_dims" not in at1.report


SEQ_LEN_GRAPH = '<ir_version: 8, opset_import: ["" : 17]>\n' + """g (int64[1,seq_len] ids) => (float[1,seq_len,16] y) {
  h = Gather(emb, ids)
  q = MatMul(h, wq)
  k = MatMul(h, wk)
  v = MatMul(h, wv)
  s = Shape(q)
  s0 = Gather(s, i0)
  s1 = Gather(s, i1)
  heads = Concat<axis=0>(s0, s1, four, minus1)
  qh = Reshape(q, heads)
  kh = Reshape(k, heads)
  vh = Reshape(v, heads)
  qt = Transpose<perm=[0,2,1,3]>(qh)
  kt = Transpose<perm=[0,2,3,1]>(kh)
  vt = Transpose<perm=[0,2,1,3]>(vh)
  a = MatMul(qt, kt)
  p = Softmax<axis=-1>(a)
  o = MatMul(p, vt)
  ot = Transpose<perm=[0,2,1,3]>(o)
  flat = Concat<axis=0>(s0, s1, sixteen)
  of = Reshape(ot, flat)
  y = MatMul(of, wo)
}"""


def _seq_len_model() -> onnx.ModelProto:
    ints = {"i0": np.asarray([0]), "i1": np.asarray([1]), "four": np.asarray([4]), "minus1": np.asarray([-1]),
            "sixteen": np.asarray([16])}
    return build(SEQ_LEN_GRAPH, {"emb": (50, 16), "wq": (16, 16), "wk": (16, 16), "wv": (16, 16), "wo": (16, 16)}, ints)


def test_third_party_seq_len_input_stays_dynamic(tmp_path: Path) -> None:
    """Input [1, 'seq_len'], heads split by a Shape->Gather->Concat sub-graph: the pruned file keeps
    'seq_len' and its head-count constants follow the pruning while the sequence stays computed."""
    m = _seq_len_model()
    src = tmp_path / "third_party.onnx"
    onnx.save(m, str(src))
    res = gp.prune(str(src), flops=0.6)
    rep = res.report
    assert rep["verification"]["ok"], rep["verification"]
    assert rep["symbolic_dims"] == {"seq_len": 128}
    assert rep["onnx_dynamic"]["kept"] is True, rep["onnx_dynamic"]
    assert any(k in res.plan.kept for k in ("wq", "wv")), "no head was pruned"
    out = tmp_path / "small.onnx"
    res.save(out)
    written = onnx.load(str(out))
    assert _dims(written) == {"ids": [1, "seq_len"]}
    assert sum(n.op_type == "Shape" for n in written.graph.node) >= 1, "the sequence length is no longer computed"
    masked = masked_by_plan(m, res.plan.kept)
    for seq in (7, 33, 64):
        feeds = {"ids": np.random.default_rng(seq).integers(0, 50, size=(1, seq)).astype(np.int64)}
        assert_close(run(masked, feeds), run(str(out), feeds), what=f"seq_len {seq}")


CANNOT = '<ir_version: 8, opset_import: ["" : 17]>\n' + """g (float[batch,seq,8] x) => (float[batch,seq,8] y) {
  h = MatMul(x, w1)
  r = Relu(h)
  s = Shape(r)
  b = Gather(s, i0)
  q = Gather(s, i1)
  f = Mul(q, sixteen)
  p = Concat<axis=0>(b, f)
  z = Reshape(r, p)
  p2 = Concat<axis=0>(b, q, sixteen)
  z2 = Reshape(z, p2)
  y = MatMul(z2, w2)
}"""


def _cannot_model() -> onnx.ModelProto:
    """Reshape (b, s, 16) -> (b, s * 16) with the 16 multiplied in at run time: the element follows
    the sequence AND the pruned width, which no edit of the Reshape's operand can express."""
    return build(CANNOT, {"w1": (8, 16), "w2": (16, 8)},
                 ints={"i0": np.asarray([0]), "i1": np.asarray([1]), "sixteen": np.asarray([16])})


def test_cannot_stay_dynamic_raises_one_line() -> None:
    with pytest.raises(NotDynamic) as info:
        gp.prune(_cannot_model(), flops=0.6)
    msg = str(info.value)
    assert "\n" not in msg
    assert "Reshape" in msg and "--allow-static" in msg and "x=[1, 128, 8]" in msg, msg


def test_cannot_stay_dynamic_with_allow_static_writes_bound_shapes() -> None:
    m = _cannot_model()
    res = gp.prune(m, flops=0.6, allow_static=True)
    dyn = res.report["onnx_dynamic"]
    assert dyn["kept"] is False and "Reshape" in dyn["reason"], dyn
    assert res.report["verification"]["ok"], res.report["verification"]
    assert _dims(res.model) == {"x": [1, 128, 8]}
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 128, 8)).astype(np.float32)}
    assert_close(run(masked_by_plan(m, res.plan.kept), feeds), run(res.model, feeds))


def test_cli_cannot_stay_dynamic_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "cannot.onnx"
    onnx.save(_cannot_model(), str(src))
    out = tmp_path / "small.onnx"
    assert main(["prune", str(src), "--flops", "0.6", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "--allow-static" in lines[0] and "Reshape" in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cannot.onnx"]
    assert main(["prune", str(src), "--flops", "0.6", "-o", str(out), "--allow-static", "--allow-miss", "--report", str(tmp_path / "r.json")]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "analyzed at batch=1, seq=128; --input-shape overrides" in printed, printed
    assert "input shapes FIXED (Reshape" in printed, printed
    assert _dims(onnx.load(str(out))) == {"x": [1, 128, 8]}
    assert json.loads((tmp_path / "r.json").read_text())["symbolic_dims"] == {"batch": 1, "seq": 128}


def test_cli_states_the_representative_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "third_party.onnx"
    onnx.save(_seq_len_model(), str(src))
    out = tmp_path / "small.onnx"
    assert main(["prune", str(src), "--flops", "0.6", "-o", str(out), "--allow-miss"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "analyzed at seq_len=128; --input-shape overrides symbolic input dims kept" in printed, printed
    assert main(["prune", str(src), "--flops", "0.6", "-o", str(out), "--input-shape", "ids=1,16", "--allow-miss"]) == 0
    assert "analyzed at" not in capsys.readouterr().out
    assert _dims(onnx.load(str(out))) == {"ids": [1, 16]}


POSITIONS = '<ir_version: 8, opset_import: ["" : 17]>\n' + """g (int64[1,seq_len] ids) => (float[1,seq_len,16] y) {
  h = Gather(emb, ids)
  s = Shape(ids)
  n = Slice(s, i1, i2)
  pos = Slice(table, zero, n)
  hp = Add(h, pos)
  a = MatMul(hp, w1)
  r = Relu(a)
  y = MatMul(r, w2)
}"""


def test_weight_computed_from_the_input_size_is_sliced_at_run_time() -> None:
    """A position table sliced by the sequence length folds, at the analysis size, into a constant
    that loses pruned hidden channels; in the written model it must stay computed (a Gather on the
    kept channels of the run-time slice), or it would fix the sequence length."""
    m = build(POSITIONS, {"emb": (50, 24), "table": (64, 24), "w1": (24, 32), "w2": (32, 16)},
              ints={"i1": np.asarray([1]), "i2": np.asarray([2]), "zero": np.asarray([0])})
    res = gp.prune(m, flops=0.6)
    assert res.report["onnx_dynamic"]["kept"] is True, res.report["onnx_dynamic"]
    assert res.report["symbolic_dims"] == {"seq_len": 64}  # 128 is longer than the table
    assert len(res.plan.kept["emb"][1]) < 24, "the hidden channels were not pruned"
    assert any(n.op_type == "Gather" and n.input[0] == "pos" for n in res.model.graph.node)
    masked = masked_by_plan(m, res.plan.kept)
    for seq in (7, 33, 64):
        feeds = {"ids": np.random.default_rng(seq).integers(0, 50, size=(1, seq)).astype(np.int64)}
        assert_close(run(masked, feeds), run(res.model, feeds), what=f"seq_len {seq}")


NOOP_VIEW = '<ir_version: 8, opset_import: ["" : 17]>\n' + """g (float[batch,seq,8] x) => (float[batch,seq,8] y) {
  h = MatMul(x, w1)
  s = Shape(h)
  b = Gather(s, i0)
  q = Gather(s, i1)
  p = Concat<axis=0>(b, q, sixteen)
  z = Reshape(h, p)
  r = Relu(z)
  y = MatMul(r, w2)
}"""


def test_reshape_folded_away_as_a_no_op_still_follows_the_pruned_width() -> None:
    """A view to (batch, seq, 16) of a tensor of that shape is removed by constant folding, so the
    analysis never sees it; in the original graph its shape operand still says 16 and must follow
    the pruned width while batch and seq stay computed."""
    m = build(NOOP_VIEW, {"w1": (8, 16), "w2": (16, 8)},
              ints={"i0": np.asarray([0]), "i1": np.asarray([1]), "sixteen": np.asarray([16])})
    res = gp.prune(m, flops=0.6)
    assert res.report["onnx_dynamic"]["kept"] is True, res.report["onnx_dynamic"]
    assert len(res.plan.kept["w1"][1]) < 16
    masked = masked_by_plan(m, res.plan.kept)
    for shape in ((1, 7, 8), (2, 33, 8), (1, 64, 8)):
        feeds = {"x": np.random.default_rng(shape[1]).standard_normal(shape).astype(np.float32)}
        assert_close(run(masked, feeds), run(res.model, feeds), what=f"x {shape}")
