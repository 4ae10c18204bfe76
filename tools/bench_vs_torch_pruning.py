"""Benchmark graphprune against Torch-Pruning on the same models, in one process.

For each model (from tools/zoo.py ``ZOO`` or graphprune's ``graphprune.models.MODELS``) and one
FLOPs target ``t`` (fraction of the original FLOPs to keep, e.g. 0.5):

* **graphprune**: ``gp.prune(copy.deepcopy(model), inputs, flops=t)`` timed as a whole (it does
  export, analysis, pruning and verification), plus ``res.report["timings"]`` when present.
* **Torch-Pruning** (``tp.pruner.BasePruner``, alias ``MetaPruner``, with
  ``tp.importance.GroupMagnitudeImportance(p=2)``, local/uniform ranking) on another deep copy.
  Torch-Pruning prunes by channel ratio, not by FLOPs, so the target is reached by one of:

  - ``--tp-mode auto`` (default): ``bisect`` for recipes that prune whole attention heads (in
    progressive mode Torch-Pruning 1.6 removes a whole head at every step whatever the step's
    ratio, so 4 heads reach 0 in 4 steps and the 5th step divides by zero), ``progressive`` else.
  - ``--tp-mode progressive`` (what Torch-Pruning's own ImageNet benchmark
    ``prune_to_target_flops`` does): build the pruner once with ``pruning_ratio=1.0`` and
    ``iterative_steps=N`` (``--tp-steps``, default 100), then call ``pruner.step()`` until the FLOPs
    are at or below ``t * flops_before``. One graph build; overshoot is at most one step.
  - ``--tp-mode bisect``: binary-search ``pruning_ratio`` in [0, 0.95] (``--tp-bisect-iters``),
    each trial on a fresh deep copy with a fresh pruner and one ``step()``; keep the largest ratio
    whose FLOPs are above or at target... precisely: the smallest ratio with FLOPs <= target. Costs one
    graph build per trial; the build and step times reported are the final trial's, and
    ``tp_search_s`` is the whole search. This is also how the head-pruning examples run
    (one ``step()`` with ``head_pruning_ratio = pruning_ratio``).

  Model-specific settings follow Torch-Pruning's documented examples ("recipes", named in the
  ``tp_recipe`` column): torchvision ViT (``round_to=num_heads``, reset ``hidden_dim``), timm ViT
  (``num_heads`` of each ``qkv``, reset ``num_heads/head_dim/attn_dim``), LLaMA-family
  (``num_heads`` for q/k/v with GQA, ``prune_num_heads=True, prune_head_dims=False``, ignore
  ``lm_head``, reset attention attributes), BERT (heads of query/key/value, ignore the pooler).
  Every recipe also ignores the modules that produce the model's output tensor, so that a shape
  change of the output is Torch-Pruning's doing, not the setup's. ``--tp-recipe generic`` turns the
  model-specific parts off; ``--round-to N`` rounds kept channels to a multiple of N (both tools).
  ``in_channel_groups``/``out_channel_groups`` are passed as fresh dicts: their defaults in
  ``BasePruner.__init__`` are shared mutable dicts that the pruner writes into.

Measured for both tools, with ONE FLOPs counter for the original and both pruned models:
``gp.count_flops`` when graphprune provides it and it counts all three, else
``torch.utils.flop_counter.FlopCounterMode`` (the ``counter`` column says which; JSON holds both).
Torch-Pruning's progressive/bisect search steers by the same counter (falling back to
``FlopCounterMode`` if ``gp.count_flops`` fails on a Torch-Pruning model; ``tp_steered_by`` says).

Also: output shape kept (bool), and onnxruntime CPU latency before/after: export with
``torch.onnx.export(..., dynamo=False)`` (TorchScript exporter; falls back to the dynamo
exporter), ``intra_op_num_threads=--threads``, median of ``--latency-runs`` runs after 3 warm-up
runs; the original and the pruned models run in turn, round after round, so that load from other
processes hits them alike (thread spinning is off, so an idle session does not steal the cores). An error in one model or one tool is recorded in its row and the run goes on; ``--timeout``
bounds each tool per model (SIGALRM).

Usage (in the zoo venv, with ``pip install -e /work/main`` done once graphprune exists)::

    /work/venv-zoo/bin/python tools/bench_vs_torch_pruning.py --models resnet50,mobilenet_v2,vit_b_16 \\
        --target 0.5 --json /tmp/bench.json
    /work/venv-zoo/bin/python tools/bench_vs_torch_pruning.py --only tp --models resnet50 --target 0.5
    /work/venv-zoo/bin/python tools/bench_vs_torch_pruning.py --list

This file lives in tools/: it is never imported by the graphprune package.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo  # noqa: E402  (tools/zoo.py, beside this file)
from benchutil import short_error, time_limit  # noqa: E402  (tools/benchutil.py)

Inputs = Any  # tuple of tensors, or a dict of keyword tensors


# ------------------------------------------------------------------------------------ utilities


def eval_mode(model: nn.Module) -> nn.Module:
    """``model.eval()``, except for modules that refuse it (``ExportedProgram.module()`` raises)."""
    with contextlib.suppress(NotImplementedError):
        model.eval()
    return model


def call(model: nn.Module, inputs: Inputs) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def as_tuple(inputs: Inputs) -> tuple[Any, ...]:
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs)
    if isinstance(inputs, dict):
        return tuple(inputs.values())
    return (inputs,)


def shapes(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return list(out.shape)
    if isinstance(out, (tuple, list)):
        return [shapes(o) for o in out]
    if isinstance(out, dict):
        return {k: shapes(v) for k, v in out.items()}
    if hasattr(out, "to_tuple"):
        return shapes(out.to_tuple())
    return type(out).__name__


def output_shapes(model: nn.Module, inputs: Inputs) -> Any:
    with torch.no_grad():
        return shapes(call(eval_mode(model), inputs))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def torch_flops(model: nn.Module, inputs: Inputs) -> tuple[int, int]:
    """(FLOPs, params) by ``torch.utils.flop_counter.FlopCounterMode`` (matmul/conv/sdpa, 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        call(eval_mode(model), inputs)
    return int(counter.get_total_flops()), n_params(model)


# -------------------------------------------------------------------------------------- models


def resolve_model(name: str) -> tuple[str, Callable[[], tuple[nn.Module, Inputs]]]:
    """Find ``name`` in zoo.ZOO or graphprune.models.MODELS; ``zoo:``/``gp:`` prefixes force one."""
    prefix, _, bare = name.partition(":") if ":" in name else ("", "", name)
    if prefix in ("", "zoo") and bare in zoo.ZOO:
        return "zoo", zoo.ZOO[bare]
    if prefix in ("", "gp"):
        try:
            from graphprune.models import MODELS  # type: ignore[attr-defined]
        except ImportError as exc:
            raise KeyError(
                f"{name!r} is not in tools/zoo.py ZOO and graphprune.models.MODELS is unavailable ({exc})"
            ) from None
        if bare in MODELS:
            return "graphprune.models", MODELS[bare]
        raise KeyError(
            f"{name!r} is in neither zoo.ZOO ({', '.join(zoo.ZOO)}) nor graphprune.models.MODELS ({', '.join(MODELS)})"
        )
    raise KeyError(f"{name!r}: unknown prefix or name; known zoo entries: {', '.join(zoo.ZOO)}")


def list_models() -> None:
    print("tools/zoo.py ZOO:", ", ".join(zoo.ZOO))
    try:
        from graphprune.models import MODELS  # type: ignore[attr-defined]

        print("graphprune.models.MODELS:", ", ".join(MODELS))
    except ImportError as exc:
        print(f"graphprune.models.MODELS: unavailable ({exc})")


# -------------------------------------------------------------------------------------- ONNX


def onnx_session(
    model: nn.Module, inputs: Inputs, tmp: str, tag: str, threads: int
) -> tuple[Any, dict, dict]:
    """Export ``model`` to ONNX under ``tmp`` and open an onnxruntime CPU session on it.

    TorchScript exporter (``dynamo=False``) first, the dynamo exporter if that fails. Returns
    ``(session, feeds, info)``.
    """
    import onnxruntime as ort

    args = as_tuple(inputs)
    info: dict[str, Any] = {}
    path = os.path.join(tmp, f"{tag}.onnx")
    model = eval_mode(model)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, path, dynamo=False, opset_version=17)
        info["exporter"] = "torchscript"
    except Exception as exc:  # noqa: BLE001 - fall back to the dynamo exporter
        info["torchscript_error"] = short_error(exc)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, path, dynamo=True)
        info["exporter"] = "dynamo"
    info["export_s"] = round(time.perf_counter() - t0, 3)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # sessions are timed in turn: idle ones must not spin their threads while another runs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {i.name: a.detach().numpy() for i, a in zip(sess.get_inputs(), args, strict=False)}
    for _ in range(3):  # warm-up
        sess.run(None, feeds)
    return sess, feeds, info


def interleaved_median_ms(sessions: dict[str, tuple[Any, dict]], runs: int) -> dict[str, float]:
    """Median ms per session over ``runs`` rounds; each round runs every session once, in turn,
    so that load from other processes on the machine hits all models alike."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for tag, (sess, feeds) in sessions.items():
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times[tag].append((time.perf_counter() - t0) * 1e3)
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


# ------------------------------------------------------------------------------- Torch-Pruning


@dataclass
class TPRecipe:
    """Torch-Pruning settings for one model, after its documented examples."""

    name: str
    ignored: list[nn.Module] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    # called after every pruner.step() to update attributes the model's forward reads
    fixup: Callable[[nn.Module, Any], None] = lambda model, pruner: None
    head_ratio_follows_channels: bool = False


def output_modules(model: nn.Module, inputs: Inputs) -> list[nn.Module]:
    """Leaf modules whose output tensor is (a view of) a tensor the model returns.

    All producers of one tensor are kept: an ``nn.Identity`` after the classifier returns the
    classifier's own tensor object. The tensors are held until the end so that ids stay unique.
    """
    produced: dict[int, tuple[torch.Tensor, list[nn.Module]]] = {}
    hooks = []

    def hook(mod: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            produced.setdefault(id(out), (out, []))[1].append(mod)

    for m in model.modules():
        if len(list(m.children())) == 0:
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = call(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    outs = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
    found = []
    for o in outs:
        for t in (o, getattr(o, "_base", None)):
            for mod in produced.get(id(t), (None, []))[1] if t is not None else []:
                if mod not in found:
                    found.append(mod)
    return found


def tp_recipe(model: nn.Module, inputs: Inputs, generic: bool) -> TPRecipe:
    pinned = output_modules(model, inputs)
    # the torchvision/timm examples ignore the 1000-way classifier; output_modules finds it too
    if generic:
        return TPRecipe("generic", ignored=pinned)

    with contextlib.suppress(ImportError):
        from torchvision.models.vision_transformer import VisionTransformer as TVViT

        if isinstance(model, TVViT):
            # examples/torchvision_models/torchvision_pruning.py
            def fix_tv_vit(m: nn.Module, pruner: Any) -> None:
                m.hidden_dim = m.conv_proj.out_channels

            heads = model.encoder.layers[0].num_heads
            return TPRecipe("torchvision-vit", pinned, {"round_to": heads}, fix_tv_vit)

    with contextlib.suppress(ImportError):
        from timm.layers import Attention as TimmAttention

        attn = [m for m in model.modules() if isinstance(m, TimmAttention)]
        if attn:
            # examples/transformers/prune_timm_vit.py (current timm reads attn_dim in forward)
            num_heads = {m.qkv: m.num_heads for m in attn}

            def fix_timm(m: nn.Module, pruner: Any) -> None:
                for a in m.modules():
                    if isinstance(a, TimmAttention):
                        a.num_heads = pruner.num_heads[a.qkv]
                        a.attn_dim = a.qkv.out_features // 3
                        a.head_dim = a.attn_dim // a.num_heads

            return TPRecipe("timm-vit", pinned, {"num_heads": num_heads}, fix_timm)

    hf = getattr(model, "hf", None)
    cfg = getattr(hf, "config", None)
    if hf is not None and cfg is not None:
        if hasattr(cfg, "num_key_value_heads") and any(
            n.endswith("self_attn") for n, _ in hf.named_modules()
        ):
            return _tp_llm_recipe(model, hf, cfg, pinned)
        if getattr(cfg, "model_type", "") == "bert":
            return _tp_bert_recipe(model, hf, cfg, pinned)
    return TPRecipe("generic", ignored=pinned)


def _tp_llm_recipe(model: nn.Module, hf: nn.Module, cfg: Any, pinned: list[nn.Module]) -> TPRecipe:
    """examples/LLMs/prune_llm.py: prune whole heads (GQA-aware), hidden and MLP widths."""
    num_heads: dict[nn.Module, int] = {}
    for name, m in hf.named_modules():
        if name.endswith("self_attn") and hasattr(m, "q_proj"):
            num_heads[m.q_proj] = cfg.num_attention_heads
            num_heads[m.k_proj] = cfg.num_key_value_heads
            num_heads[m.v_proj] = cfg.num_key_value_heads
    is_gqa = cfg.num_attention_heads != cfg.num_key_value_heads
    ignored = list(pinned)
    if getattr(hf, "lm_head", None) is not None and hf.lm_head not in ignored:
        ignored.append(hf.lm_head)

    def fix_llm(m: nn.Module, pruner: Any) -> None:
        h = m.hf
        if getattr(h, "lm_head", None) is not None:
            h.config.hidden_size = h.lm_head.in_features
        for name, mod in h.named_modules():
            if name.endswith("self_attn") and hasattr(mod, "q_proj"):
                n_q = mod.q_proj.out_features // mod.head_dim
                n_kv = mod.k_proj.out_features // mod.head_dim
                mod.num_heads = n_q
                mod.num_key_value_heads = n_kv
                mod.num_key_value_groups = max(1, n_q // max(1, n_kv))
                h.config.num_attention_heads = n_q
                h.config.num_key_value_heads = n_kv if is_gqa else n_q
            elif name.endswith("mlp") and hasattr(mod, "gate_proj"):
                mod.hidden_size = mod.gate_proj.in_features
                mod.intermediate_size = mod.gate_proj.out_features
                h.config.intermediate_size = mod.gate_proj.out_features

    return TPRecipe(
        "hf-llm",
        ignored,
        {"num_heads": num_heads, "prune_num_heads": True, "prune_head_dims": False, "round_to": 4},
        fix_llm,
        head_ratio_follows_channels=True,
    )


def _tp_bert_recipe(model: nn.Module, hf: nn.Module, cfg: Any, pinned: list[nn.Module]) -> TPRecipe:
    """examples/transformers/prune_hf_bert.py: heads of query/key/value, pooler ignored."""
    num_heads: dict[nn.Module, int] = {}
    selfs = [
        m for n, m in hf.named_modules() if hasattr(m, "query") and hasattr(m, "key") and hasattr(m, "value")
    ]
    for m in selfs:
        num_heads[m.query] = num_heads[m.key] = num_heads[m.value] = cfg.num_attention_heads
    ignored = list(pinned)
    if getattr(hf, "pooler", None) is not None:
        ignored.append(hf.pooler)

    def fix_bert(m: nn.Module, pruner: Any) -> None:
        for s in selfs:
            n = pruner.num_heads.get(s.query, cfg.num_attention_heads)
            for attr, val in (
                ("num_attention_heads", n),
                ("attention_head_size", s.query.out_features // max(1, n)),
                ("all_head_size", s.query.out_features),
            ):
                if hasattr(s, attr):
                    setattr(s, attr, val)

    return TPRecipe(
        "hf-bert",
        ignored,
        {"num_heads": num_heads, "prune_num_heads": True, "prune_head_dims": False},
        fix_bert,
        head_ratio_follows_channels=True,
    )


def _tp_pruner(
    model: nn.Module, inputs: Inputs, recipe: TPRecipe, ratio: float, steps: int, round_to: int | None
) -> Any:
    import torch_pruning as tp

    kwargs = dict(recipe.kwargs)
    if recipe.head_ratio_follows_channels:
        kwargs["head_pruning_ratio"] = ratio
    if round_to and "round_to" not in kwargs:
        kwargs["round_to"] = round_to
    return tp.pruner.BasePruner(
        model,
        example_inputs=inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=False,
        pruning_ratio=ratio,
        iterative_steps=steps,
        ignored_layers=recipe.ignored,
        in_channel_groups={},  # fresh: the defaults are shared dicts the pruner mutates
        out_channel_groups={},
        **kwargs,
    )


class Steer:
    """The FLOPs counter that steers Torch-Pruning's search: the report's counter where it works.

    ``gp.count_flops`` when chosen and it counts the model; on its first failure the search falls
    back to ``FlopCounterMode`` (base and target recomputed in those units) and says so.
    """

    def __init__(self, use_gp: bool) -> None:
        self.fn = gp_counter() if use_gp else None
        self.name = "gp.count_flops" if self.fn is not None else "FlopCounterMode"
        self.note = ""

    def __call__(self, model: nn.Module, inputs: Inputs) -> int:
        if self.fn is not None:
            try:
                return int(self.fn(model, inputs)[0])
            except Exception as exc:  # noqa: BLE001
                self.fn, self.name, self.note = (
                    None,
                    "FlopCounterMode",
                    f"gp.count_flops failed: {short_error(exc)}",
                )
                raise _SteerSwitched from exc
        return torch_flops(model, inputs)[0]


class _SteerSwitched(Exception):
    pass


def run_tp(model: nn.Module, inputs: Inputs, target: float, ns: argparse.Namespace) -> dict[str, Any]:
    """Prune a deep copy of ``model`` with Torch-Pruning to keep ``target`` of its FLOPs."""
    steer = Steer(ns.counter in ("auto", "gp"))
    try:
        return _run_tp(model, inputs, target, ns, steer)
    except _SteerSwitched:
        return _run_tp(model, inputs, target, ns, steer)


def _run_tp(
    model: nn.Module, inputs: Inputs, target: float, ns: argparse.Namespace, steer: Steer
) -> dict[str, Any]:
    target_flops = target * steer(model, inputs)
    t_search = time.perf_counter()
    base = copy.deepcopy(model)
    recipe = tp_recipe(base, inputs, generic=ns.tp_recipe == "generic")
    mode = ns.tp_mode
    if mode == "auto":
        mode = "bisect" if recipe.kwargs.get("prune_num_heads") else "progressive"
    r: dict[str, Any] = {"tp_mode": mode, "tp_recipe": recipe.name, "tp_ignored": len(recipe.ignored)}
    r["tp_steered_by"] = steer.name
    if steer.note:
        r["tp_steer_note"] = steer.note

    if mode == "progressive":
        m = base
        t0 = time.perf_counter()
        pruner = _tp_pruner(m, inputs, recipe, 1.0, ns.tp_steps, ns.round_to)
        r["tp_build_s"] = round(time.perf_counter() - t0, 3)
        prune_s, steps, stalled, flops = 0.0, 0, 0, steer(m, inputs)
        while flops > target_flops and steps < ns.tp_steps:
            t0 = time.perf_counter()
            pruner.step()
            recipe.fixup(m, pruner)
            prune_s += time.perf_counter() - t0
            steps += 1
            new = steer(m, inputs)
            stalled = stalled + 1 if new >= flops else 0
            flops = new
            if stalled >= 5:  # five steps without a FLOP less: nothing this setup can prune
                r["tp_stalled"] = True
                break
        r["tp_prune_s"] = round(prune_s, 3)
        r["tp_steps"] = steps
        r["tp_pruning_ratio"] = round(steps / ns.tp_steps, 4)
    else:
        lo, hi, best = 0.0, 0.95, None
        for _ in range(ns.tp_bisect_iters):
            ratio = (lo + hi) / 2
            m = copy.deepcopy(model)
            rec = tp_recipe(m, inputs, generic=ns.tp_recipe == "generic")  # modules of this copy
            t0 = time.perf_counter()
            pruner = _tp_pruner(m, inputs, rec, ratio, 1, ns.round_to)
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            pruner.step()
            rec.fixup(m, pruner)
            step_s = time.perf_counter() - t0
            flops = steer(m, inputs)
            if flops <= target_flops:
                best, hi = (ratio, m, build_s, step_s, flops), ratio
            else:
                lo = ratio
        if best is None:  # target not reachable inside [0, 0.95]: report the densest cut tried
            best = (hi, m, build_s, step_s, flops)
        ratio, m, build_s, step_s, flops = best
        r["tp_build_s"] = round(build_s, 3)
        r["tp_prune_s"] = round(step_s, 3)
        r["tp_pruning_ratio"] = round(ratio, 4)
        r["tp_bisect_iters"] = ns.tp_bisect_iters
    r["tp_search_s"] = round(time.perf_counter() - t_search, 3)
    r["tp_reached_target"] = flops <= target_flops
    r["_model"] = m
    return r


# ---------------------------------------------------------------------------------- graphprune


def run_gp(model: nn.Module, inputs: Inputs, target: float, round_to: int | None) -> dict[str, Any]:
    import graphprune as gp

    r: dict[str, Any] = {}
    m = copy.deepcopy(model)
    kwargs = {"round_to": round_to} if round_to else {}
    t0 = time.perf_counter()
    res = gp.prune(m, inputs, flops=target, **kwargs)
    r["gp_total_s"] = round(time.perf_counter() - t0, 3)
    report = getattr(res, "report", None) or {}
    if isinstance(report, dict):
        if report.get("timings") is not None:
            r["gp_timings"] = report["timings"]
        for k in ("flops_before", "flops_after", "params_before", "params_after"):
            if k in report:
                r[f"gp_report_{k}"] = report[k]
    r["_model"] = res.model
    return r


def gp_counter() -> Callable[[nn.Module, Inputs], tuple[int, int]] | None:
    try:
        import graphprune as gp
    except ImportError:
        return None
    fn = getattr(gp, "count_flops", None)
    return fn if callable(fn) else None


# ------------------------------------------------------------------------------------------ run


def bench_model(name: str, ns: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "target": ns.target}
    try:
        source, factory = resolve_model(name)
        row["source"] = source
        torch.manual_seed(0)
        model, inputs = factory()
        model.eval()
        row["inputs"] = shapes(list(as_tuple(inputs)))
        ref_shape = output_shapes(model, inputs)
        row["out_shape"] = ref_shape
        f0, p0 = torch_flops(model, inputs)
        row["flops_before"], row["params_before"] = f0, p0
    except Exception as exc:  # noqa: BLE001
        row["error"] = "setup: " + short_error(exc)
        row["traceback"] = traceback.format_exc(limit=8)
        return row

    pruned: dict[str, nn.Module] = {}
    tools = {"gp": ns.only in ("both", "gp"), "tp": ns.only in ("both", "tp")}
    for tool, enabled in tools.items():
        if not enabled:
            continue
        try:
            with time_limit(ns.timeout):
                if tool == "gp":
                    r = run_gp(model, inputs, ns.target, ns.round_to)
                else:
                    r = run_tp(model, inputs, ns.target, ns)
            pruned[tool] = r.pop("_model")
            row.update(r)
            row[f"{tool}_ok"] = True
        except Exception as exc:  # noqa: BLE001 - one tool failing must not stop the other
            row[f"{tool}_ok"] = False
            row[f"{tool}_error"] = short_error(exc)
            row[f"{tool}_traceback"] = traceback.format_exc(limit=10)

    # one counter for the original and both pruned models
    count_gp = gp_counter() if ns.counter in ("auto", "gp") else None
    counts: dict[str, dict[str, tuple[int, int]]] = {"torch": {}, "gp": {}}
    for tag, m in [("orig", model), *pruned.items()]:
        with contextlib.suppress(Exception):
            counts["torch"][tag] = torch_flops(m, inputs)
        if count_gp is not None:
            try:
                f, p = count_gp(m, inputs)
                counts["gp"][tag] = (int(f), int(p))
            except Exception as exc:  # noqa: BLE001
                row[f"gp_count_error_{tag}"] = short_error(exc)
    use = "gp" if count_gp is not None and len(counts["gp"]) == 1 + len(pruned) else "torch"
    if ns.counter == "gp" and use != "gp":
        row["counter_note"] = "gp.count_flops unavailable or failed on a model; used FlopCounterMode"
    row["counter"] = "gp.count_flops" if use == "gp" else "FlopCounterMode"
    row["flops_torch"] = {k: v[0] for k, v in counts["torch"].items()}
    if counts["gp"]:
        row["flops_gp"] = {k: v[0] for k, v in counts["gp"].items()}
    base = counts[use].get("orig")
    for tool, m in pruned.items():
        c = counts[use].get(tool)
        if base and c:
            row[f"{tool}_flops_ratio"] = round(c[0] / base[0], 4) if base[0] else None
            row[f"{tool}_params_ratio"] = round(c[1] / base[1], 4) if base[1] else None
        try:
            row[f"{tool}_shape_kept"] = output_shapes(m, inputs) == ref_shape
        except Exception as exc:  # noqa: BLE001
            row[f"{tool}_shape_kept"] = False
            row[f"{tool}_forward_error"] = short_error(exc)

    if ns.latency_runs > 0:
        with tempfile.TemporaryDirectory() as tmp:
            sessions: dict[str, tuple[Any, dict]] = {}
            for tag, m in [("orig", model), *pruned.items()]:
                row[f"{tag}_ms"] = None
                try:
                    with time_limit(ns.timeout):
                        sess, feeds, info = onnx_session(m, inputs, tmp, tag, ns.threads)
                    sessions[tag] = (sess, feeds)
                    row[f"{tag}_onnx"] = info
                except Exception as exc:  # noqa: BLE001
                    row[f"{tag}_onnx_error"] = short_error(exc)
            try:
                with time_limit(ns.timeout):
                    for tag, ms in interleaved_median_ms(sessions, ns.latency_runs).items():
                        row[f"{tag}_ms"] = ms
            except Exception as exc:  # noqa: BLE001
                row["latency_error"] = short_error(exc)
    return row


COLUMNS = [
    ("model", "model"),
    ("GFLOPs", "flops_before"),
    ("ms", "orig_ms"),
    ("gp ok", "gp_ok"),
    ("gp s", "gp_total_s"),
    ("gp flops", "gp_flops_ratio"),
    ("gp params", "gp_params_ratio"),
    ("gp shape", "gp_shape_kept"),
    ("gp ms", "gp_ms"),
    ("tp recipe", "tp_recipe"),
    ("tp ok", "tp_ok"),
    ("tp build s", "tp_build_s"),
    ("tp prune s", "tp_prune_s"),
    ("tp search s", "tp_search_s"),
    ("tp flops", "tp_flops_ratio"),
    ("tp params", "tp_params_ratio"),
    ("tp shape", "tp_shape_kept"),
    ("tp ms", "tp_ms"),
    ("error", "_error"),
]


def _cell(row: dict[str, Any], key: str) -> str:
    if key == "_error":
        errs = [f"{k.split('_')[0]}: {row[k]}" for k in ("error", "gp_error", "tp_error") if row.get(k)]
        return " | ".join(errs)[:160]
    v = row.get(key)
    if v is None:
        return "-"
    if key == "flops_before":
        return f"{v / 1e9:.3f}"
    if isinstance(v, float):
        return f"{v:.3g}" if not math.isnan(v) else "nan"
    return str(v)


def print_table(rows: list[dict[str, Any]], ns: argparse.Namespace) -> None:
    cols = [
        (h, k)
        for h, k in COLUMNS
        if ns.only == "both"
        or not (k.startswith("gp") and ns.only == "tp")
        and not (k.startswith("tp") and ns.only == "gp")
    ]
    title = f"graphprune vs Torch-Pruning, FLOPs target {ns.target} (ratios are after/before)"
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for h, _ in cols:
            table.add_column(h, overflow="fold")
        for r in rows:
            table.add_row(*[_cell(r, k) for _, k in cols])
        Console(width=max(160, 14 * len(cols))).print(table)
    except ImportError:
        print(title)
        print(" | ".join(h for h, _ in cols))
        for r in rows:
            print(" | ".join(_cell(r, k) for _, k in cols))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        default="resnet50,mobilenet_v2,vit_b_16",
        help="comma-separated names from tools/zoo.py ZOO or graphprune.models.MODELS (prefix zoo: or gp: to choose)",
    )
    parser.add_argument("--target", type=float, default=0.5, help="fraction of FLOPs to keep (default 0.5)")
    parser.add_argument("--only", choices=["both", "gp", "tp"], default="both", help="run one tool only")
    parser.add_argument("--tp-mode", choices=["auto", "progressive", "bisect"], default="auto")
    parser.add_argument(
        "--round-to",
        type=int,
        default=None,
        help="round kept channels to a multiple of N, in both tools (default: each tool's own default)",
    )
    parser.add_argument("--tp-steps", type=int, default=100, help="iterative_steps for --tp-mode progressive")
    parser.add_argument("--tp-bisect-iters", type=int, default=7)
    parser.add_argument(
        "--tp-recipe",
        choices=["auto", "generic"],
        default="auto",
        help="model-specific Torch-Pruning settings from its examples, or none",
    )
    parser.add_argument(
        "--counter", choices=["auto", "gp", "torch"], default="auto", help="FLOPs counter for the ratios"
    )
    parser.add_argument(
        "--latency-runs", type=int, default=20, help="onnxruntime runs per model (0 = skip latency)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per tool per model (0 = none)")
    parser.add_argument("--json", help="write all rows as JSON to this path")
    parser.add_argument("--list", action="store_true", help="list the known model names and exit")
    ns = parser.parse_args(argv)
    if ns.list:
        list_models()
        return 0
    if not 0 < ns.target <= 1:
        parser.error("--target must be in (0, 1]")
    torch.set_num_threads(ns.threads)
    warnings.filterwarnings("ignore")

    rows = []
    for name in [n.strip() for n in ns.models.split(",") if n.strip()]:
        t0 = time.perf_counter()
        row = bench_model(name, ns)
        row["wall_s"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
        print(
            json.dumps({k: v for k, v in row.items() if not k.endswith("traceback")}, default=str), flush=True
        )
    print_table(rows, ns)
    if ns.json:
        meta = {
            "argv": sys.argv[1:],
            "versions": _versions(),
            "tp_mode_arg": ns.tp_mode,
            "target": ns.target,
        }
        with open(ns.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2, default=str)
    return 0


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in (
        "torch",
        "torchvision",
        "timm",
        "transformers",
        "torch-pruning",
        "onnxruntime",
        "onnx",
        "graphprune",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


if __name__ == "__main__":
    sys.exit(main())
