"""Coupling rules of the ONNX frontend on hand-written ONNX text graphs (``onnx.parser``).

Oracles:
- exact per-element unit ids of every initializer axis from ``gp.analyze(ModelProto)``: the same
  raw id on two tensors means "removed together", -1 means frozen; partitions are compared with
  ``canon`` against hand-derived ones, and every axis not named as prunable must be frozen;
- for most graphs also ``gp.prune(flops=0.5)``: the library's onnxruntime verification, plus the
  independent masked original of ``_onnx_util.masked_by_plan`` on fresh random inputs, and
  ``onnx.checker`` on the pruned model.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import pytest
from _onnx_util import assert_close, build, canon, masked_by_plan, random_inputs, run, unit_table
from onnx import ModelProto, TensorProto, helper

import graphprune as gp
from graphprune.errors import GraphpruneError
from graphprune.frontends import load_onnx, prepare

INT_MAX = 2**63 - 1


def header(opset: int, extra: str = "") -> str:
    ir = 10 if opset >= 21 else 8
    return f'<ir_version: {ir}, opset_import: ["" : {opset}{extra}]>\n'


def only_free(table: dict[str, list[np.ndarray]], free: Iterable[tuple[str, int]]) -> None:
    """Every (initializer, axis) not in ``free`` is entirely frozen; those in it are all free."""
    free = set(free)
    for name, axes in table.items():
        for ax, ids in enumerate(axes):
            if (name, ax) in free:
                assert (ids >= 0).all(), f"{name}[{ax}] should be prunable, got {ids.tolist()}"
            else:
                assert (ids == -1).all(), f"{name}[{ax}] should be frozen, got {ids.tolist()}"


def same(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def prune_checked(model: ModelProto, flops: float = 0.5, expect_removed: bool = True, **kw: object) -> gp.PruneResult:
    """Prune, then re-check independently: masked original (from the plan) == pruned model."""
    res = gp.prune(model, flops=flops, **kw)  # type: ignore[arg-type]
    rep = res.report
    assert rep["route"] == "onnx"
    assert rep["verification"]["ok"], rep["verification"]
    if expect_removed:
        assert rep["units_removed"] > 0
    onnx.checker.check_model(res.model, full_check=True)
    shapes = {k: tuple(v) for k, v in rep["input_shapes"].items()}
    prep = prepare(load_onnx(model), shapes)
    masked = masked_by_plan(prep.model, res.plan.kept)
    for seed in (11, 12):
        feeds = random_inputs(prep.model, shapes, seed)
        ref = run(masked, feeds)
        got = run(res.model, feeds)
        assert_close(ref, got, what=f"masked original vs pruned (seed {seed})")
        assert [r.shape for r in run(model, feeds)] == [g.shape for g in got]
    return res


# -- Conv -> BatchNormalization -> Relu -> Conv ------------------------------------------------------


@pytest.mark.parametrize("opset", [17, 21])
def test_conv_bn_relu_conv(opset: int) -> None:
    m = build(header(opset) + """g (float[1,3,8,8] x) => (float[1,6,8,8] y) {
      a = Conv<pads=[1,1,1,1]>(x, w1, b1)
      b = BatchNormalization(a, s, bb, mu, var)
      r = Relu(b)
      y = Conv<pads=[1,1,1,1]>(r, w2)
    }""", {"w1": (4, 3, 3, 3), "b1": (4,), "s": (4,), "bb": (4,), "mu": (4,), "var": (4,), "w2": (6, 4, 3, 3)})
    t, a = unit_table(m)
    assert canon(t["w1"][0]) == [0, 1, 2, 3]
    for name in ("b1", "s", "bb", "mu", "var"):
        same(t[name][0], t["w1"][0])
    same(t["w2"][1], t["w1"][0])
    only_free(t, [("w1", 0), ("b1", 0), ("s", 0), ("bb", 0), ("mu", 0), ("var", 0), ("w2", 1)])
    assert a.coupling.barriers == {}
    res = prune_checked(m)
    kept = res.plan.kept
    assert kept["w1"][0] == kept["s"][0] == kept["var"][0] == kept["w2"][1]


# -- residual Add ------------------------------------------------------------------------------------


def test_residual_add_ties_both_branches() -> None:
    m = build(header(17) + """g (float[1,3,8,8] x) => (float[1,6,8,8] y) {
      a = Conv<pads=[1,1,1,1]>(x, w1)
      r = Relu(a)
      b = Conv<pads=[1,1,1,1]>(r, w2)
      c = Add(a, b)
      y = Conv(c, w3)
    }""", {"w1": (4, 3, 3, 3), "w2": (4, 4, 3, 3), "w3": (6, 4, 1, 1)})
    t, _ = unit_table(m)
    assert canon(t["w1"][0]) == [0, 1, 2, 3]
    for name, ax in (("w2", 0), ("w2", 1), ("w3", 1)):
        same(t[name][ax], t["w1"][0])
    only_free(t, [("w1", 0), ("w2", 0), ("w2", 1), ("w3", 1)])
    prune_checked(m)


def test_residual_with_graph_input_is_frozen() -> None:
    m = build(header(17) + """g (float[1,4,8,8] x) => (float[1,6,8,8] y) {
      b = Conv<pads=[1,1,1,1]>(x, w2)
      c = Add(x, b)
      y = Conv(c, w3)
    }""", {"w2": (4, 4, 3, 3), "w3": (6, 4, 1, 1)})
    t, _ = unit_table(m)
    only_free(t, [])


# -- Concat / Split / Slice ----------------------------------------------------------------------


@pytest.mark.parametrize(("opset", "axis"), [(17, 1), (17, -3), (21, 1)])
def test_concat_of_two_convs_offsets(opset: int, axis: int) -> None:
    m = build(header(opset) + f"""g (float[1,3,8,8] x) => (float[1,6,8,8] y) {{
      a = Conv(x, wa)
      b = Conv(x, wb)
      c = Concat<axis={axis}>(a, b)
      y = Conv(c, wc)
    }}""", {"wa": (3, 3, 1, 1), "wb": (5, 3, 1, 1), "wc": (6, 8, 1, 1)})
    t, _ = unit_table(m)
    same(t["wc"][1][:3], t["wa"][0])
    same(t["wc"][1][3:], t["wb"][0])
    assert canon(t["wc"][1]) == list(range(8))
    only_free(t, [("wa", 0), ("wb", 0), ("wc", 1)])
    prune_checked(m)


@pytest.mark.parametrize("variant", ["sizes", "sizes_neg_axis", "num_outputs"])
def test_split(variant: str) -> None:
    if variant == "num_outputs":  # opset 18+: equal parts, no sizes input
        text = header(18) + """g (float[1,3,8,8] x) => (float[1,4,8,8] y1, float[1,4,8,8] y2) {
          a = Conv(x, w1)
          s1, s2 = Split<axis=1, num_outputs=2>(a)
          y1 = Conv(s1, w2)
          y2 = Conv(s2, w3)
        }"""
        k = 4
        ints = {}
    else:
        axis = -3 if variant == "sizes_neg_axis" else 1
        text = header(17) + f"""g (float[1,3,8,8] x) => (float[1,4,8,8] y1, float[1,4,8,8] y2) {{
          a = Conv(x, w1)
          s1, s2 = Split<axis={axis}>(a, sp)
          y1 = Conv(s1, w2)
          y2 = Conv(s2, w3)
        }}"""
        k = 3
        ints = {"sp": np.array([3, 5], np.int64)}
    m = build(text, {"w1": (8, 3, 1, 1), "w2": (4, k, 1, 1), "w3": (4, 8 - k, 1, 1)}, ints)
    t, _ = unit_table(m)
    same(t["w1"][0][:k], t["w2"][1])
    same(t["w1"][0][k:], t["w3"][1])
    assert canon(t["w1"][0]) == list(range(8))
    only_free(t, [("w1", 0), ("w2", 1), ("w3", 1)])
    res = prune_checked(m)
    split = next(n for n in res.model.graph.node if n.op_type == "Split")
    sizes = onnx.numpy_helper.to_array(next(i for i in res.model.graph.initializer if i.name == split.input[1]))
    assert sizes.tolist() == [len(res.plan.kept["w2"].get(1, range(k))), len(res.plan.kept["w3"].get(1, range(8 - k)))]


@pytest.mark.parametrize(("starts", "ends", "lo", "hi"), [(2, 6, 2, 6), (-4, INT_MAX, 4, 8), (0, 5, 0, 5)])
def test_slice_with_constant_bounds(starts: int, ends: int, lo: int, hi: int) -> None:
    m = build(header(17) + """g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
      a = Conv(x, w1)
      s = Slice(a, st, en, ax)
      y = Conv(s, w2)
    }""", {"w1": (8, 3, 1, 1), "w2": (4, hi - lo, 1, 1)},
        {"st": np.array([starts], np.int64), "en": np.array([ends], np.int64), "ax": np.array([1], np.int64)})
    t, _ = unit_table(m)
    same(t["w2"][1], t["w1"][0][lo:hi])
    ids = t["w1"][0]
    assert ((ids >= 0) | (np.arange(8) < lo) | (np.arange(8) >= hi)).all()
    assert len(set(ids[ids >= 0].tolist())) == int((ids >= 0).sum())  # one unit per channel
    for name, ax in (("w1", 1), ("w2", 0)):
        assert (t[name][ax] == -1).all()
    prune_checked(m)


def test_slice_over_one_of_two_axes_is_a_plain_slice() -> None:
    """starts/ends over two axes where one is the full range: still a channel slice."""
    m = build(header(17) + """g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
      a = Conv(x, w1)
      s = Slice(a, st, en, ax)
      y = Conv(s, w2)
    }""", {"w1": (8, 3, 1, 1), "w2": (4, 4, 1, 1)},
        {"st": np.array([2, 0], np.int64), "en": np.array([6, INT_MAX], np.int64), "ax": np.array([1, 2], np.int64)})
    t, _ = unit_table(m)
    same(t["w2"][1], t["w1"][0][2:6])
    prune_checked(m)


# -- Gemm / MatMul ---------------------------------------------------------------------------------


@pytest.mark.parametrize("first_trans_b", [1, 0])
def test_gemm_trans_b(first_trans_b: int) -> None:
    """Gemm B is [N, K] with transB=1 and [K, N] with transB=0: the N axis produces, K reads."""
    second = 1 - first_trans_b
    w1 = (16, 8) if first_trans_b else (8, 16)
    w2 = (4, 16) if second else (16, 4)
    m = build(header(17) + f"""g (float[2,8] x) => (float[2,4] y) {{
      h = Gemm<transB={first_trans_b}>(x, W1, b1)
      r = Relu(h)
      y = Gemm<transB={second}>(r, W2, b2)
    }}""", {"W1": w1, "b1": (16,), "W2": w2, "b2": (4,)})
    t, _ = unit_table(m)
    p1 = 0 if first_trans_b else 1  # producer axis of W1
    r2 = 1 if second else 0  # reader axis of W2
    assert canon(t["W1"][p1]) == list(range(16))
    same(t["b1"][0], t["W1"][p1])
    same(t["W2"][r2], t["W1"][p1])
    only_free(t, [("W1", p1), ("b1", 0), ("W2", r2)])
    prune_checked(m)


def test_matmul_with_weight_on_either_side() -> None:
    m = build(header(17) + """g (float[2,8] x) => (float[4,2] y) {
      h = MatMul(x, W1)
      r = Relu(h)
      t = Transpose<perm=[1,0]>(r)
      y = MatMul(W2, t)
    }""", {"W1": (8, 16), "W2": (4, 16)})
    t, _ = unit_table(m)
    assert canon(t["W1"][1]) == list(range(16))
    same(t["W2"][1], t["W1"][1])
    only_free(t, [("W1", 1), ("W2", 1)])
    prune_checked(m)


def test_einsum_linear_layers() -> None:
    m = build(header(17) + """g (float[2,5,8] x) => (float[2,5,4] y) {
      h = Einsum<equation="bsi,oi->bso">(x, W1)
      r = Relu(h)
      y = Einsum<equation="bso,po->bsp">(r, W2)
    }""", {"W1": (16, 8), "W2": (4, 16)})
    t, _ = unit_table(m)
    assert canon(t["W1"][0]) == list(range(16))
    same(t["W2"][1], t["W1"][0])
    only_free(t, [("W1", 0), ("W2", 1)])
    prune_checked(m)


# -- attention: Reshape into heads + Transpose + MatMul-Softmax-MatMul ---------------------------


@pytest.mark.parametrize("opset", [17, 21])
def test_attention_heads_are_units(opset: int) -> None:
    m = build(header(opset) + """g (float[1,4,8] x) => (float[1,4,8] y) {
      q = MatMul(x, Wq)
      k = MatMul(x, Wk)
      v = MatMul(x, Wv)
      q4 = Reshape(q, s4)
      k4 = Reshape(k, s4)
      v4 = Reshape(v, s4)
      qt = Transpose<perm=[0,2,1,3]>(q4)
      kt = Transpose<perm=[0,2,3,1]>(k4)
      vt = Transpose<perm=[0,2,1,3]>(v4)
      s = MatMul(qt, kt)
      p = Softmax<axis=-1>(s)
      o = MatMul(p, vt)
      ot = Transpose<perm=[0,2,1,3]>(o)
      o3 = Reshape(ot, s3)
      y = MatMul(o3, Wo)
    }""", {"Wq": (8, 8), "Wk": (8, 8), "Wv": (8, 8), "Wo": (8, 8)},
        {"s4": np.array([1, 4, 2, 4], np.int64), "s3": np.array([1, 4, 8], np.int64)})
    t, a = unit_table(m)
    assert canon(t["Wq"][1]) == [0, 0, 0, 0, 1, 1, 1, 1]  # 2 heads of head_dim 4: heads are units
    for name, ax in (("Wk", 1), ("Wv", 1), ("Wo", 0)):
        same(t[name][ax], t["Wq"][1])
    only_free(t, [("Wq", 1), ("Wk", 1), ("Wv", 1), ("Wo", 0)])
    assert all(g.width == 4 for g in a.coupling.groups)
    res = prune_checked(m)
    for name, ax in (("Wq", 1), ("Wk", 1), ("Wv", 1), ("Wo", 0)):
        kept = res.plan.kept[name][ax]
        assert kept in ((0, 1, 2, 3), (4, 5, 6, 7)), (name, kept)  # one whole head kept
    reshapes = [n for n in res.model.graph.node if n.op_type == "Reshape"]
    shapes = {tuple(onnx.numpy_helper.to_array(i).tolist()) for n in reshapes
              for i in res.model.graph.initializer if i.name == n.input[1]}
    assert shapes == {(1, 4, 1, 4), (1, 4, 4)}


# -- Flatten -> Gemm, Reshape(0, -1) -> Gemm -------------------------------------------------------


def test_flatten_into_gemm_blocks() -> None:
    m = build(header(17) + """g (float[1,3,4,4] x) => (float[1,10] y) {
      a = Conv<pads=[1,1,1,1]>(x, w1)
      r = Relu(a)
      f = Flatten(r)
      y = Gemm<transB=1>(f, W2)
    }""", {"w1": (4, 3, 3, 3), "W2": (10, 64)})
    t, _ = unit_table(m)
    assert canon(t["w1"][0]) == [0, 1, 2, 3]
    same(t["W2"][1], np.repeat(t["w1"][0], 16))  # feature c*16 + (h*4 + w) belongs to channel c
    only_free(t, [("w1", 0), ("W2", 1)])
    prune_checked(m)


def test_reshape_zero_minus_one_into_gemm() -> None:
    m = build(header(17) + """g (float[2,3,4,4] x) => (float[2,5] y) {
      a = Conv(x, w1)
      r = Relu(a)
      f = Reshape(r, shp)
      y = Gemm<transB=1>(f, W2)
    }""", {"w1": (8, 3, 1, 1), "W2": (5, 128)}, {"shp": np.array([0, -1], np.int64)})
    t, _ = unit_table(m)
    same(t["W2"][1], np.repeat(t["w1"][0], 16))
    prune_checked(m)


# -- grouped / depthwise Conv, ConvTranspose ------------------------------------------------------


def test_grouped_conv_prunes_whole_groups() -> None:
    m = build(header(17) + """g (float[1,3,8,8] x) => (float[1,6,8,8] y) {
      a = Conv(x, w1)
      b = Conv<group=2>(a, w2)
      y = Conv(b, w3)
    }""", {"w1": (8, 3, 1, 1), "w2": (8, 4, 1, 1), "w3": (6, 8, 1, 1)})
    t, _ = unit_table(m)
    assert canon(t["w1"][0]) == [0, 0, 0, 0, 1, 1, 1, 1]
    same(t["w2"][0], t["w1"][0])
    same(t["w3"][1], t["w1"][0])
    only_free(t, [("w1", 0), ("w2", 0), ("w3", 1)])
    res = prune_checked(m)
    conv = [n for n in res.model.graph.node if n.op_type == "Conv"][1]
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    assert group == len(res.plan.kept["w2"][0]) // 4  # 4 output channels per group


def test_depthwise_conv_ties_in_and_out_channels() -> None:
    m = build(header(17) + """g (float[1,3,8,8] x) => (float[1,6,8,8] y) {
      a = Conv(x, w1)
      b = Conv<group=8, pads=[1,1,1,1]>(a, w2, b2)
      y = Conv(b, w3)
    }""", {"w1": (8, 3, 1, 1), "w2": (8, 1, 3, 3), "b2": (8,), "w3": (6, 8, 1, 1)})
    t, _ = unit_table(m)
    assert canon(t["w1"][0]) == list(range(8))
    for name, ax in (("w2", 0), ("b2", 0), ("w3", 1)):
        same(t[name][ax], t["w1"][0])
    only_free(t, [("w1", 0), ("w2", 0), ("b2", 0), ("w3", 1)])
    res = prune_checked(m)
    conv = [n for n in res.model.graph.node if n.op_type == "Conv"][1]
    assert next(a.i for a in conv.attribute if a.name == "group") == len(res.plan.kept["w2"][0])


def test_conv_transpose() -> None:
    """ConvTranspose W is [C_in, C_out/g, k...]: axis 0 reads, axis 1 (and the bias) produces."""
    m = build(header(17) + """g (float[1,3,4,4] x) => (float[1,5,8,8] y) {
      a = Conv(x, w1)
      b = ConvTranspose<strides=[2,2]>(a, wt, bt)
      y = Conv(b, w3)
    }""", {"w1": (4, 3, 1, 1), "wt": (4, 6, 2, 2), "bt": (6,), "w3": (5, 6, 1, 1)})
    t, _ = unit_table(m)
    same(t["wt"][0], t["w1"][0])
    same(t["bt"][0], t["wt"][1])
    same(t["w3"][1], t["wt"][1])
    assert canon(np.concatenate([t["w1"][0], t["wt"][1]])) == list(range(10))
    only_free(t, [("w1", 0), ("wt", 0), ("wt", 1), ("bt", 0), ("w3", 1)])
    prune_checked(m)


# -- DepthToSpace ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "expect"), [
    ("DCR", [0, 1, 2, 3] * 4),  # input channel (i*2 + j)*4 + c -> output channel c
    ("CRD", [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4),  # input channel c*4 + i*2 + j -> output channel c
])
def test_depth_to_space(mode: str, expect: list[int]) -> None:
    m = build(header(17) + f"""g (float[1,3,4,4] x) => (float[1,5,8,8] y) {{
      a = Conv(x, w1)
      d = DepthToSpace<blocksize=2, mode="{mode}">(a)
      y = Conv(d, w2)
    }}""", {"w1": (16, 3, 1, 1), "w2": (5, 4, 1, 1)})
    t, _ = unit_table(m)
    assert canon(t["w1"][0]) == expect
    u = t["w1"][0]
    same(t["w2"][1], [u[expect.index(c)] for c in range(4)])
    only_free(t, [("w1", 0), ("w2", 1)])
    prune_checked(m)


# -- Gather with a constant scalar index ------------------------------------------------------------


def test_gather_scalar_on_batch_axis_keeps_channels_coupled() -> None:
    m = build(header(17) + """g (float[2,3,4,4] x) => (float[1,5,4,4] y) {
      a = Conv(x, w1)
      r = Relu(a)
      g = Gather<axis=0>(r, i)
      u = Unsqueeze(g, z)
      y = Conv(u, w2)
    }""", {"w1": (8, 3, 1, 1), "w2": (5, 8, 1, 1)}, {"i": np.array(1, np.int64), "z": np.array([0], np.int64)})
    t, _ = unit_table(m)
    assert canon(t["w1"][0]) == list(range(8))
    same(t["w2"][1], t["w1"][0])
    only_free(t, [("w1", 0), ("w2", 1)])
    prune_checked(m)


def test_gather_scalar_on_channel_axis_keeps_the_selected_channel() -> None:
    m = build(header(17) + """g (float[1,3,4,4] x) => (float[1,5,4,4] y) {
      a = Conv(x, w1)
      r = Relu(a)
      g = Gather<axis=1>(r, i)
      u = Unsqueeze(g, z)
      y = Conv(u, w2)
    }""", {"w1": (8, 3, 1, 1), "w2": (5, 1, 1, 1)}, {"i": np.array(5, np.int64), "z": np.array([1], np.int64)})
    t, _ = unit_table(m)
    assert t["w1"][0][5] == -1  # the selected channel can never be removed
    # if other channels are prunable, the rewrite must remap the index: the oracle checks it
    prune_checked(m, expect_removed=False)


# -- a custom-domain op is a named barrier; the rest still prunes ------------------------------------

_CUSTOM = """g (float[1,3,8,8] x) => (float[1,5,8,8] y, float[1,5,8,8] z) {
  a = Conv(x, w1)
  b = com.example.MyOp(a)
  y = Conv(b, w2)
  c = Conv(x, w3)
  r = Relu(c)
  z = Conv(r, w4)
}"""


def _custom_model() -> ModelProto:
    m = build(header(17, ', "com.example" : 1') + _CUSTOM,
              {"w1": (4, 3, 1, 1), "w2": (5, 4, 1, 1), "w3": (6, 3, 1, 1), "w4": (5, 6, 1, 1)})
    # the custom op's output shape is declared, as exporters do for ops shape inference cannot see
    m.graph.value_info.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 8, 8]))
    return m


def _custom_at_output_model() -> ModelProto:
    return build(header(17, ', "com.example" : 1') + """g (float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,5,8,8] z) {
      a = Conv(x, w1)
      y = com.example.MyOp(a)
      c = Conv(x, w3)
      r = Relu(c)
      z = Conv(r, w4)
    }""", {"w1": (4, 3, 1, 1), "w3": (6, 3, 1, 1), "w4": (5, 6, 1, 1)})


def test_custom_domain_op_at_output_is_a_named_barrier() -> None:
    t, a = unit_table(_custom_at_output_model())
    names = [n for nodes in a.coupling.barriers.values() for n in nodes]
    assert any("MyOp" in k for k in a.coupling.barriers), a.coupling.barriers
    assert len(names) == 1
    same(t["w4"][1], t["w3"][0])
    only_free(t, [("w3", 0), ("w4", 1)])


def test_custom_domain_op_mid_graph_is_a_named_barrier() -> None:
    """The op's output shape is given by value_info; analysis must not need to run the op."""
    t, a = unit_table(_custom_model())
    assert any("MyOp" in k for k in a.coupling.barriers), a.coupling.barriers
    assert canon(t["w3"][0]) == list(range(6))
    same(t["w4"][1], t["w3"][0])
    only_free(t, [("w3", 0), ("w4", 1)])


@pytest.mark.parametrize("where", ["mid_graph", "at_output"])
def test_custom_domain_op_prune_is_clean(where: str) -> None:
    """onnxruntime cannot run com.example.MyOp: prune must either prune the rest (with MyOp in the
    barriers) or stop with a GraphpruneError that names the op -- never a raw runtime error."""
    model = _custom_model() if where == "mid_graph" else _custom_at_output_model()
    try:
        res = gp.prune(model, flops=0.5)
    except GraphpruneError as exc:
        assert "MyOp" in str(exc), str(exc)
        return
    assert any("MyOp" in k for k in res.report["barriers"]), res.report["barriers"]
    assert "w3" in res.plan.kept and "w1" not in res.plan.kept


# -- GroupNormalization (opset 21: per-channel scale) -------------------------------------------------


def test_group_normalization_opset21_prunes_whole_groups() -> None:
    m = build(header(21) + """g (float[1,3,4,4] x) => (float[1,5,4,4] y) {
      a = Conv(x, w1)
      n = GroupNormalization<num_groups=4, epsilon=0.00001>(a, sc, bi)
      y = Conv(n, w2)
    }""", {"w1": (8, 3, 1, 1), "sc": (8,), "bi": (8,), "w2": (5, 8, 1, 1)})
    t, _ = unit_table(m)
    assert canon(t["w1"][0]) == [0, 0, 1, 1, 2, 2, 3, 3]  # statistics are per group: groups are units
    for name, ax in (("sc", 0), ("bi", 0), ("w2", 1)):
        same(t[name][ax], t["w1"][0])
    only_free(t, [("w1", 0), ("sc", 0), ("bi", 0), ("w2", 1)])
    res = prune_checked(m)
    gn = next(n for n in res.model.graph.node if n.op_type == "GroupNormalization")
    groups = next(a.i for a in gn.attribute if a.name == "num_groups")
    assert groups == len(res.plan.kept["sc"][0]) // 2


# -- per-channel constants and other channel-preserving ops --------------------------------------------


@pytest.mark.parametrize(("body", "weights", "ints", "tied"), [
    ("m = Mul(a, gamma)", {"gamma": (1, 8, 1, 1)}, {}, ("gamma", 1)),
    ("m = PRelu(a, slope)", {"slope": (8, 1, 1)}, {}, ("slope", 0)),
    ("m = InstanceNormalization(a, sc, bi)", {"sc": (8,), "bi": (8,)}, {}, ("sc", 0)),
    ("m = Expand(a, shp)", {}, {"shp": np.array([1, 8, 8, 8], np.int64)}, None),
    ("s = Squeeze(a, zz)\n m = Unsqueeze(s, zz)", {}, {"zz": np.array([0], np.int64)}, None),
    ("p = MaxPool<kernel_shape=[2,2], strides=[2,2]>(a)\n m = Resize<mode=\"nearest\">(p, , rs)", {},
     {"rs": np.array([1, 1, 2, 2], np.float32)}, None),
    ("m = Pad(a, pads)", {}, {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}, None),
])
def test_channel_preserving_ops(body: str, weights: dict, ints: dict, tied: tuple[str, int] | None) -> None:
    m = build(header(17) + f"""g (float[1,3,8,8] x) => (float[1,4,H,W] y) {{
      a = Conv(x, w1)
      {body}
      y = Conv(m, w2)
    }}""", {"w1": (8, 3, 1, 1), **weights, "w2": (4, 8, 1, 1)}, ints)
    t, _ = unit_table(m)
    assert canon(t["w1"][0]) == list(range(8))
    same(t["w2"][1], t["w1"][0])
    if tied:
        same(t[tied[0]][tied[1]], t["w1"][0])
    prune_checked(m)


@pytest.mark.parametrize(("body", "ints", "opset"), [
    ("m = Softmax<axis=1>(a)", {}, 17),
    ("r = ReduceMean<keepdims=1>(a, ax)\n m = Sub(a, r)", {"ax": np.array([1], np.int64)}, 18),
])
def test_ops_reading_across_channels_freeze_them(body: str, ints: dict, opset: int) -> None:
    """Softmax / mean over the channels mix them: removing one changes every other one: frozen."""
    c2 = 8
    m = build(header(opset) + f"""g (float[1,3,8,8] x) => (float[1,4,8,8] y) {{
      a = Conv(x, w1)
      {body}
      y = Conv(m, w2)
    }}""", {"w1": (8, 3, 1, 1), "w2": (4, c2, 1, 1)}, ints)
    t, _ = unit_table(m)
    assert (t["w1"][0] == -1).all(), canon(t["w1"][0])
    res = gp.prune(m, flops=0.5)
    assert res.report["verification"]["ok"]


def test_layer_norm_over_a_hidden_size_is_consistent() -> None:
    """LayerNorm statistics run over the hidden axis: its scale/bias, the producer's columns and the
    consumer's rows must be one coupled space (today: all frozen, DESIGN.md's documented case)."""
    m = build(header(17) + """g (float[2,5,8] x) => (float[2,5,4] y) {
      h = MatMul(x, W1)
      n = LayerNormalization<axis=-1>(h, sc, bi)
      y = MatMul(n, W2)
    }""", {"W1": (8, 16), "sc": (16,), "bi": (16,), "W2": (16, 4)})
    t, _ = unit_table(m)
    for name, ax in (("sc", 0), ("bi", 0), ("W2", 0)):
        same(t[name][ax], t["W1"][1])
    for name, ax in (("W1", 0), ("W2", 1)):
        assert (t[name][ax] == -1).all()
    res = gp.prune(m, flops=0.5)
    assert res.report["verification"]["ok"]


def test_shared_conv_weight_ties_both_uses() -> None:
    m = build(header(17) + """g (float[1,3,8,8] x, float[1,3,8,8] x2) => (float[1,4,8,8] y) {
      a = Conv(x, w1)
      b = Conv(x2, w1)
      ra = Relu(a)
      rb = Relu(b)
      c = Add(ra, rb)
      y = Conv(c, w2)
    }""", {"w1": (8, 3, 1, 1), "w2": (4, 8, 1, 1)})
    t, _ = unit_table(m)
    assert canon(t["w1"][0]) == list(range(8))
    same(t["w2"][1], t["w1"][0])
    prune_checked(m)


def test_isnan_where_safe_softmax_pattern_keeps_channels() -> None:
    """The dynamo exporter writes softmax as Where(IsNaN(s), 0, s): IsNaN is elementwise, not a
    barrier (it froze every attention head of exported LLaMA/Qwen2/Mistral models)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    import graphprune as gp

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    inits = [numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("IsNaN", ["h"], ["n"]),
             helper.make_node("Where", ["n", "zero", "h"], ["s"]), helper.make_node("MatMul", ["s", "w2"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    res = gp.prune(model, flops=0.5)
    assert res.report["barriers"] == {}
    assert res.report["verification"]["ok"]
    w1 = next(t for t in res.model.graph.initializer if t.name == "w1")
    assert w1.dims[0] == 8 and 0 < w1.dims[1] < 16
