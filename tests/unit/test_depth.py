"""Depth pruning: groups taken to width 0 (a residual branch removed whole).

Oracles: exact eligible group sets on hand-built graphs and built-in models; a brute-force optimum
of a synthetic cost table for the greedy; exact allocated widths for the allocate pass on FLOPs;
numeric equality with the masked original (``verify_pruned``) and onnxruntime agreement for
rewritten models with whole branches removed; exact error types and the option they name.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
import torch
from graphprune.models import build
from graphprune.passes import PassContext, default_pipeline, parse_pipeline, run_pipeline
from torch import nn

import graphprune as gp
from graphprune.analysis import couple
from graphprune.analysis.allocation import ShapeTable
from graphprune.analysis.depth import bypassed, depth_eligible, removed_whole
from graphprune.analysis.knapsack import allocate_greedy, allowed_widths
from graphprune.cli import main
from graphprune.cost import count
from graphprune.cost.latency import PROFILES, Roofline, TableLatency, removed_node
from graphprune.errors import OptionError
from graphprune.export import save_model
from graphprune.frontends import capture, load_onnx, lower_onnx, prepare
from graphprune.rewrite import NotRewritable, rewrite_fx, rewrite_module, rewrite_onnx
from graphprune.verification import verify_pruned
from graphprune.verification_onnx import verify_onnx


class ResMLP(nn.Module):
    """stem -> n residual MLP blocks ``h + fc2(relu(fc1(h)))`` -> head."""

    def __init__(self, blocks: int = 2, dim: int = 16, hidden: int = 8, norm: bool = False) -> None:
        super().__init__()
        self.stem, self.head = nn.Linear(dim, dim), nn.Linear(dim, 4)
        self.fc1 = nn.ModuleList(nn.Linear(dim, hidden) for _ in range(blocks))
        self.fc2 = nn.ModuleList(nn.Linear(hidden, dim) for _ in range(blocks))
        self.norm = nn.LayerNorm(hidden) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for fc1, fc2 in zip(self.fc1, self.fc2, strict=True):
            h = h + fc2(self.norm(torch.relu(fc1(h))))
        return self.head(h)


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.relu(self.c1(x)))


class TwoBranches(nn.Module):
    """stem -> two parallel conv-relu-conv branches -> concat -> head (an Inception-like module)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)
        self.a1, self.a2 = nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(6, 4, 1)
        self.b1, self.b2 = nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        a = self.a2(torch.relu(self.a1(h)))
        b = self.b2(torch.relu(self.b1(h)))
        return self.head(torch.cat([a, b], 1))


def _analyse(model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...]):  # type: ignore[no-untyped-def]
    cap = capture(model.eval(), x if isinstance(x, tuple) else (x,))
    return cap, couple(cap.graph)


def _group_of(coupling, weight: str, axis: int = 0):  # type: ignore[no-untyped-def]
    v = next(v for v in coupling.graph.values if v.source == weight)
    return next(g for g in coupling.groups if (v.name, axis) in g.spaces)


def _sources(coupling, g) -> set[str]:  # type: ignore[no-untyped-def]
    return {coupling.graph.value(n).source for n, _ in g.spaces if coupling.graph.value(n).source}


def _producers(coupling, g) -> set[str]:  # type: ignore[no-untyped-def]
    """Weights whose axis 0 (conv filters, linear rows) is in the group."""
    return {coupling.graph.value(n).source for n, ax in g.spaces if ax == 0 and coupling.graph.value(n).source}


# -- eligibility -----------------------------------------------------------------------------------


def test_residual_mlp_hidden_groups_are_eligible_the_stream_is_not() -> None:
    _, c = _analyse(ResMLP(), torch.randn(4, 16))
    hidden = {_group_of(c, f"fc1.{i}.weight").id for i in range(2)}
    stream = _group_of(c, "stem.weight")
    assert stream.id not in hidden and len(c.groups) == 3
    assert depth_eligible(c) == frozenset(hidden)  # removing the stream would cut the output off


def test_plain_chain_group_is_not_eligible() -> None:
    _, c = _analyse(Chain(), torch.randn(1, 3, 8, 8))
    (g,) = c.groups  # c1's filters; c2's outputs are the model output (pinned)
    assert _sources(c, g) >= {"c1.weight", "c2.weight"}
    assert depth_eligible(c) == frozenset()  # c2 would emit its bias alone: the output loses the input


def test_layer_norm_over_the_hidden_axis_leaves_nothing_to_remove() -> None:
    _, c = _analyse(ResMLP(blocks=1, norm=True), torch.randn(4, 16))
    w = next(v for v in c.graph.values if v.source == "fc1.0.weight")
    assert not c.prunable(w, 0)  # the norm's statistics freeze the hidden axis
    assert [_sources(c, g) >= {"stem.weight"} for g in c.groups] == [True]  # only the stream is left
    assert depth_eligible(c) == frozenset()


def test_resnet18_inner_groups_of_basic_blocks_are_eligible() -> None:
    model, x = build("resnet18_w050")
    _, c = _analyse(model, x)
    inner = {g.id for g in c.groups if any(s.endswith(".conv1.weight") and s.startswith("layer") for s in _producers(c, g))}
    assert len(inner) == 8  # one per BasicBlock
    assert depth_eligible(c) == frozenset(inner)  # stage streams (tied to the stem/downsample) are not


def test_vit_heads_and_mlp_hidden_are_eligible() -> None:
    model, x = build("vit_tiny", depth=2, dim=48)
    _, c = _analyse(model, x)
    heads = {g.id for g in c.groups if any("attn.in_proj_weight" in s for s in _producers(c, g))}
    mlp = {g.id for g in c.groups if any(s.endswith("fc1.weight") for s in _producers(c, g))}
    assert len(heads) == len(mlp) == 2
    assert depth_eligible(c) == frozenset(heads | mlp)  # all heads of a block go through sdpa to out_proj


def test_parallel_branches_are_eligible_alone_not_together() -> None:
    _, c = _analyse(TwoBranches(), torch.randn(1, 3, 8, 8))
    g = {w: _group_of(c, f"{w}.weight") for w in ("stem", "a1", "a2", "b1", "b2")}
    assert depth_eligible(c) == frozenset(g[w].id for w in ("a1", "a2", "b1", "b2"))  # the stem feeds both
    assert bypassed(c, [g["a1"], g["a2"]])  # branch a gone, b still carries x
    for pair in (("a1", "b1"), ("a1", "b2"), ("a2", "b1"), ("a2", "b2")):  # each branch cut: the head sees biases
        assert not bypassed(c, [g[w] for w in pair])

    # removing everything eligible would be cheapest; the greedy stops where the head still sees x
    def cost(node, shape):  # type: ignore[no-untyped-def]
        return 0.0 if node.op != "conv" or removed_node(node, shape) else 10.0 + min(shape(node.inputs[1])[:2])

    scores = np.full(c.n_units, 0.01)
    scores[g["stem"].units] = 10.0
    res = allocate_greedy(c, scores, cost, 0.0, depth=depth_eligible(c))
    whole = removed_whole(c, res.removed)
    assert not res.reachable and whole and bypassed(c, whole)
    gone = {w for w in ("a1", "a2", "b1", "b2") if g[w] in whole}
    assert gone and (gone <= {"a1", "a2"} or gone <= {"b1", "b2"})


# -- costs at width 0 -----------------------------------------------------------------------------


def test_empty_nodes_cost_nothing() -> None:
    cap, c = _analyse(ResMLP(blocks=1), torch.randn(4, 16))
    g = _group_of(c, "fc1.0.weight")
    rem = np.zeros(c.n_units, dtype=bool)
    rem[g.units] = True
    shape = ShapeTable(c).shapes(rem)
    nodes = {n.name: n for n in cap.graph.nodes}
    fc1 = next(n for n in cap.graph.nodes if n.op == "linear" and n.inputs[1].source == "fc1.0.weight")
    fc2 = next(n for n in cap.graph.nodes if n.op == "linear" and n.inputs[1].source == "fc2.0.weight")
    relu = next(n for n in cap.graph.nodes if n.op == "relu")
    roof = Roofline(PROFILES["cpu-avx2-1t"])
    table = TableLatency({}, roof)
    for node in (fc1, relu, fc2):
        assert removed_node(node, shape)
        assert roof.node_latency(node, shape) == 0.0 and table.node_latency(node, shape) == 0.0
    assert roof.node_latency(fc2, lambda v: v.shape) > PROFILES["cpu-avx2-1t"].overhead
    kept = [n for n in nodes.values() if n not in (fc1, relu, fc2)]
    assert not any(removed_node(n, shape) for n in kept)
    flops = count(cap.graph, shape)
    assert flops.per_node[fc1.name] == flops.per_node[fc2.name] == flops.per_node[relu.name] == 0.0


def test_allowed_widths_end_at_zero_only_when_asked() -> None:
    _, c = _analyse(ResMLP(hidden=16), torch.randn(4, 16))
    g = _group_of(c, "fc1.0.weight")
    assert allowed_widths(g, 4) == [16, 12, 8, 4]
    assert allowed_widths(g, 4, allow_zero=True) == [16, 12, 8, 4, 0]


# -- allocation -----------------------------------------------------------------------------------


def test_greedy_removes_a_whole_branch_when_fixed_costs_make_it_optimal() -> None:
    _, c = _analyse(ResMLP(), torch.randn(4, 16))
    ga, gb = _group_of(c, "fc1.0.weight"), _group_of(c, "fc1.1.weight")
    stream = _group_of(c, "stem.weight")
    scores = np.ones(c.n_units)
    scores[ga.units] = 0.1
    scores[stream.units] = 10.0
    fixed = 10.0

    # a block linear costs a per-op overhead plus its hidden width; an empty node costs nothing
    def cost(node, shape):  # type: ignore[no-untyped-def]
        if node.op != "linear" or removed_node(node, shape):
            return 0.0
        w = node.inputs[1]
        if w.source in ("stem.weight", "head.weight"):
            return 0.0
        return fixed + float(min(shape(w)))

    target = 2 * (fixed + 8)  # one block's worth: unreachable by widths alone (overheads stay)
    res = allocate_greedy(c, scores, cost, target, depth=depth_eligible(c))
    ka, kb = (int((~res.removed[g.units]).sum()) for g in (ga, gb))
    ks = int((~res.removed[stream.units]).sum())

    def total(a: int, b: int) -> float:
        return sum(2 * (fixed + k) if k else 0.0 for k in (a, b))

    best = max((0.1 * a + b, a, b) for a, b in itertools.product(range(9), repeat=2) if total(a, b) <= target)
    assert (ka, kb, ks) == (best[1], best[2], 16) == (0, 8, 16)
    assert res.reachable and res.cost_after == target
    assert removed_whole(c, res.removed) == [ga]
    no_depth = allocate_greedy(c, scores, cost, target)
    assert not no_depth.reachable and not removed_whole(c, no_depth.removed)


def test_greedy_shrinks_instead_of_jumping_far_past_the_target() -> None:
    _, c = _analyse(ResMLP(), torch.randn(4, 16))
    ga, gb, stream = (_group_of(c, w) for w in ("fc1.0.weight", "fc1.1.weight", "stem.weight"))
    scores = np.ones(c.n_units)
    scores[stream.units] = 10.0
    fixed = 10.0

    def cost(node, shape):  # type: ignore[no-untyped-def]
        w = node.inputs[1] if node.op == "linear" else None
        if w is None or removed_node(node, shape) or w.source in ("stem.weight", "head.weight"):
            return 0.0
        return fixed + float(min(shape(w)))

    # dropping a branch is the best rate (8 lost for 36 saved) but 3 is all that is needed: two
    # single-unit steps (2 lost) beat it, and are the brute-force optimum
    target = 4 * (fixed + 8) - 3
    res = allocate_greedy(c, scores, cost, target, depth=depth_eligible(c))
    ka, kb = (int((~res.removed[g.units]).sum()) for g in (ga, gb))

    def total(a: int, b: int) -> float:
        return sum(2 * (fixed + k) if k else 0.0 for k in (a, b))

    best = max(a + b for a, b in itertools.product(range(9), repeat=2) if total(a, b) <= target)
    assert ka + kb == best == 14 and res.reachable and not removed_whole(c, res.removed)


def _onnx_resmlp(tmp_path, x: torch.Tensor) -> str:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    path = str(tmp_path / "resmlp.onnx")
    torch.onnx.export(ResMLP().eval(), (x,), path, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    return path


def _allocate_pass(depth: bool, onnx_dir=None):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model, x = ResMLP().eval(), torch.randn(4, 16)
    if onnx_dir is not None:
        prep = prepare(load_onnx(_onnx_resmlp(onnx_dir, x)))  # batch symbolic, bound to 1 (FLOPs scale by 1/4)
        ctx = PassContext(model=None, example_inputs=None, onnx=prep)
        graph = run_pipeline(parse_pipeline("couple"), lower_onnx(prep), ctx)
    else:
        cap = capture(model, (x,))
        ctx = PassContext(model=model, example_inputs=(x,), program=cap.program)
        graph = run_pipeline(parse_pipeline("couple"), cap.graph, ctx)
    c = ctx.coupling
    ga, gb, stream = (_group_of(c, w) for w in ("fc1.0.weight", "fc1.1.weight", "stem.weight"))
    ctx.scores = np.ones(c.n_units)
    ctx.scores[ga.units] = 0.1
    ctx.scores[stream.units] = 10.0
    text = f"allocate{{flops=0.7,policy=greedy,round-to=1,depth={str(depth).lower()}}},rewrite,verify"
    run_pipeline(parse_pipeline(text), graph, ctx)
    return ctx, [int((~ctx.allocation.removed[g.units]).sum()) for g in (ga, gb, stream)]


def test_allocate_pass_with_depth_on_flops_removes_the_branch_and_verifies() -> None:
    # FLOPs (batch 4): stem 2048, per block fc1 1024 + relu 32 + fc2 1024 + add 64, head 512 = 6848;
    # 0.7 of it is 4793.6: block 0's branch (2080) must go entirely, or one unit of block 1 too
    ctx, widths = _allocate_pass(depth=True)
    assert widths == [0, 8, 16]
    assert ctx.allocation.cost_after == 6848 - 2080
    assert ctx.route == "fx" and "depth" in ctx.route_reason
    assert ctx.verification.ok and ctx.verification.max_abs_err == 0.0
    ctx, widths = _allocate_pass(depth=False)
    assert widths == [1, 7, 16]
    assert ctx.route == "module" and ctx.verification.ok


def test_allocate_pass_with_depth_on_an_onnx_source(tmp_path) -> None:
    ctx, widths = _allocate_pass(depth=True, onnx_dir=tmp_path)
    assert widths == [0, 8, 16]
    assert ctx.route == "onnx" and ctx.verification.ok, ctx.verification
    ops = [n.op_type for n in ctx.pruned.graph.node]
    assert ops.count("Gemm") + ops.count("MatMul") == 1 + 2 + 1  # stem, block 1's two, head
    assert ops.count("Expand") == 1 and "Relu" in ops and ops.count("Relu") == 1  # block 0's fc2 is its bias
    assert ctx.onnx_dynamic["kept"] is False and "removed whole" in ctx.onnx_dynamic["reason"]  # static shapes


def test_onnx_exit_without_bias_becomes_zeros(tmp_path) -> None:
    model = Chain()
    model.c2 = nn.Conv2d(8, 3, 3, padding=1, bias=False)

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.branch = nn.Conv2d(3, 3, 1), model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.stem(x)
            return h + self.branch(h)

    x = torch.randn(1, 3, 8, 8)
    path = str(tmp_path / "res.onnx")
    torch.onnx.export(Res().eval(), (x,), path, dynamo=False, input_names=["x"])
    a = gp.analyze(path)
    (gid,) = depth_eligible(a.coupling)  # the branch's hidden channels (c1 filters)
    rem = np.zeros(a.coupling.n_units, dtype=bool)
    rem[a.coupling.groups[gid].units] = True
    prep = prepare(load_onnx(path), {"x": (1, 3, 8, 8)})
    pruned = rewrite_onnx(prep.model, a.graph, a.coupling, rem)
    assert "ConstantOfShape" in [n.op_type for n in pruned.graph.node]
    assert [n.op_type for n in pruned.graph.node].count("Conv") == 1  # only the stem is left
    res = verify_onnx(prep.model, pruned, a.coupling, rem, prep.input_shapes, trials=2)
    assert res.ok and res.max_abs_err == 0.0, res


def test_depth_needs_the_greedy_policy_and_a_pytorch_model() -> None:
    model, x = ResMLP().eval(), torch.randn(4, 16)
    with pytest.raises(OptionError, match="allocation='greedy'"):
        gp.prune(model, x, flops=0.5, depth=True)
    with pytest.raises(OptionError, match="depth=true needs policy=greedy"):
        gp.prune(model, x, pipeline="couple,score,allocate{flops=0.5,depth=true},rewrite,verify")
    res = gp.prune(model, x, flops=0.5, allocation="greedy", depth=False)
    assert res.report["verification"]["ok"] and not removed_whole(res.coupling, res.removed)
    assert res.report["groups_removed_whole"] == 0
    res = gp.prune(model, x, flops=0.5, allocation="greedy", depth=True)
    assert res.report["verification"]["ok"]
    assert res.report["groups_removed_whole"] == len(removed_whole(res.coupling, res.removed))


def test_depth_option_in_pipeline_string_and_cli(tmp_path, capsys) -> None:
    text = default_pipeline("latency", 0.5, policy="greedy", depth=True)
    alloc = next(p for p in parse_pipeline(text) if p.name == "allocate")
    assert alloc.depth is True and alloc.policy == "greedy"
    assert next(p for p in parse_pipeline(default_pipeline("flops", 0.5)) if p.name == "allocate").depth is False
    out = tmp_path / "x.onnx"
    assert main(["prune", "resnet18_w050", "--flops", "0.5", "--depth", "-o", str(out)]) == 2
    assert "depth=True needs allocation='greedy'" in capsys.readouterr().err and not out.exists()


# -- rewrite and verification -----------------------------------------------------------------------


def _rewrite_removing(name: str, pick, tmp_path, **overrides):  # type: ignore[no-untyped-def]
    model, x = build(name, **overrides)
    cap, c = _analyse(model, x)
    eligible = depth_eligible(c)
    chosen = [g for g in c.groups if pick(_producers(c, g))]
    assert chosen and all(g.id in eligible for g in chosen)
    rem = np.zeros(c.n_units, dtype=bool)
    for g in chosen:
        rem[g.units] = True
    with pytest.raises(NotRewritable, match="removed whole"):
        rewrite_module(model, c, rem)
    pruned = rewrite_fx(cap.program, cap.graph, c, rem)
    res = verify_pruned(model, pruned, c, rem, x, random_trials=2)
    assert res.ok, res
    path = tmp_path / f"{name}.onnx"
    saved = save_model(pruned, path, x)  # check_onnx inside: onnxruntime vs the pruned module
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x[0].numpy()})[0]
    with torch.no_grad():
        ref = model(*x).numpy()  # the ORIGINAL: a removed branch changes the output, by its exit's bias
    return pruned, saved, got, ref


def test_resnet18_block_without_its_inner_group_matches_the_masked_original(tmp_path) -> None:
    pruned, saved, got, ref = _rewrite_removing("resnet18_w050", lambda s: "layer2.1.conv1.weight" in s, tmp_path)
    convs = [str(n.args[1].target) for n in pruned.graph.nodes if n.op == "call_function" and "conv2d" in str(n.target)]
    # 20 convs before; the block's conv1 is gone and its conv2 (no bias) became zeros
    assert len(convs) == 18 and not {"layer2.1.conv1.weight", "layer2.1.conv2.weight"} & set(convs)
    zeros = [n.args[1] for n in pruned.graph.nodes if "new_zeros" in str(n.target)]
    assert len(zeros) == 1 and zeros[0][1:] == [64, 8, 8]
    assert zeros[0][0].target is torch.ops.aten.sym_size.int  # the batch is read from the input at run time
    assert saved["format"] == "onnx" and got.shape == ref.shape and not np.allclose(got, ref)


def test_vit_block_without_heads_and_mlp_matches_the_masked_original(tmp_path) -> None:
    pruned, _, got, ref = _rewrite_removing(
        "vit_tiny", lambda s: any(w.startswith("blocks.0.") for w in s), tmp_path, depth=2, dim=48)
    ops = [str(n.target) for n in pruned.graph.nodes if n.op == "call_function"]
    assert ops.count("aten.scaled_dot_product_attention.default") == 1  # block 0's attention is gone
    assert ops.count("aten.linear.default") == 4 + 1  # block 1's four, the head; block 0's exits are biases
    assert got.shape == ref.shape


# -- reporting --------------------------------------------------------------------------------------


def test_analyze_reports_depth_eligible_groups(capsys) -> None:
    a = gp.analyze(ResMLP(), torch.randn(4, 16))
    assert a.report["depth_eligible"] == 2
    assert sorted(g["id"] for g in a.report["groups"] if g["depth_eligible"]) == sorted(depth_eligible(a.coupling))
    assert main(["analyze", "resnet18_w050"]) == 0
    assert "8 removable whole (depth)" in capsys.readouterr().out
