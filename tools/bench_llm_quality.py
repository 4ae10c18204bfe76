"""Perplexity of a trained small LLaMA after structured pruning, no retraining (issue #12 item 7).

Model: ``models/checkpoints/tiny_llama`` (``tools/train_tiny_llama.py``; trained here if missing),
a byte-level ``transformers.LlamaForCausalLM``. Held-out text: the training script's held-out
Python stdlib files, ``--eval`` windows of 64 bytes (evenly spaced, deterministic; 0 = every
disjoint window, 6362). Calibration: ``--calib`` windows of the TRAINING split, drawn with seed
0, 1, ... (``--seeds`` draws for the ``--seed-rows`` rows at ``--seed-levels``; one draw, seed 0,
elsewhere), in batches shaped like the example input. The JSON's ``summary`` has the mean, min and
max of ppl/dense over the draws; ``--paired ROW`` adds ``paired``: ROW's perplexity over each other
row's at the same level and draw, with a 95% interval and the share of resamples in which ROW is
lower, from a paired bootstrap over the held-out windows (2000 resamples). ``--append`` adds rows
to an existing JSON measured with the same windows, draws and dense model.

Rows (each at 20%, 30% and 50% of the parameters removed, ``params=0.8/0.7/0.5``):

- ``graphprune default``: ``gp.prune(model, x, params=F, calib=calib)`` (the default recipe)
- ``+ hidden``: the same with ``hidden=True`` (residual-stream channels too)
- ``uniform`` / ``uniform + hidden``: the default's criterion and reconstruction with
  ``allocation="uniform"`` (every layer keeps the same share), without and with ``hidden=True``:
  the global ranking rarely takes stream channels (their normalized scores are flat), so this
  pair measures what the hidden size itself costs
- ``+ layers (ShortGPT)``: ``layers=max(1, floor(removed * n_layers))`` whole decoder layers first
  (block influence on calib), widths take the rest of the budget
- ``default + lsq{rounds=1}``: the default pipeline with ``reconstruct-lsq{rounds=1}`` (each refit
  consumer refit once more on the pruned model's own inputs against the dense outputs, the
  SparseGPT/FLAP sequential target; off by default, docs/QUALITY.md)
- ``default + lsq{ridge=0.001}``: the default pipeline with the refit's ridge at 1e-3 (default 1e-2)
- ``FLAP-style``: ``criterion="flap", reconstruct="bias"`` (fluctuation + bias compensation),
  with the allocation a user gets by default for a criterion they set (uniform: every layer keeps
  the same share)
- ``FLAP-style, global``: the same with ``allocation="global"`` (one ranking of group-normalized
  scores across layers and modules: closer to FLAP's adaptive structure search)
- ``Wanda-sp``: ``criterion="wanda"``, no reconstruction
- ``Taylor``: ``criterion="taylor"`` with the next-byte cross-entropy as the loss (LLM-Pruner-style)
- ``Torch-Pruning LLM recipe``: examples/LLMs/prune_llm.py of Torch-Pruning: MetaPruner,
  GroupNormImportance(p=2, group_reduction="mean"), lm_head ignored, num_heads for q/k/v,
  prune_num_heads, no head dims, head_pruning_ratio = pruning_ratio, round_to 4 (it prunes the
  hidden size too); example input one window of the calibration batch (the recipe's is one short
  sequence); its pruning_ratio is bisected so the kept parameters land on the target. Needs
  ``torch-pruning`` (a second venv: it pins another torch); see ``tp_prune`` for the one setting
  made so its dependency graph terminates under torch 2.13 and 2.14.

Every pruned model is evaluated in memory; ``ppl/dense`` is its held-out perplexity over the dense
model's (1.0 = no loss). Writes ``--json`` (default docs/bench/llm_quality.json) and prints a table.

    python tools/bench_llm_quality.py [--levels 0.2 0.3 0.5] [--rows default,hidden,...] [--eval 0] [--seeds 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import platform
import sys
import time
from itertools import product
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_tiny_llama as tt  # noqa: E402

import graphprune as gp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH = 8


def load_model() -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    if not (tt.DEFAULT_OUT / "config.json").exists():
        print("no trained checkpoint: training it (tools/train_tiny_llama.py)", flush=True)
        init = ROOT / "models" / "checkpoints" / "bytes_lm.pt"
        tt.train(tt.DEFAULT_OUT, 15.0, 4, 25, 16, 1e-3, init if init.exists() else None)
    return LlamaForCausalLM.from_pretrained(tt.DEFAULT_OUT).eval()


def data(n_eval: int, n_calib: int, seed: int = 0) -> tuple[torch.Tensor, list[dict[str, Any]], dict[str, Any]]:
    """Held-out windows (``n_eval`` <= 0: every disjoint window of the held-out text) and ``n_calib``
    calibration windows of the training split drawn with ``seed``."""
    tr, held, _ = tt.corpus()
    if n_eval <= 0:
        n_eval = (len(held) - 1) // (tt.SEQ + 1)  # evenly spaced windows of SEQ+1 bytes that do not overlap
    evalb = tt.heldout_batches(held, n_eval)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(tr) - tt.SEQ - 1, (n_calib,), generator=g)
    windows = torch.stack([tr[s : s + tt.SEQ] for s in starts])
    calib = [{"input_ids": windows[i : i + BATCH], "use_cache": False} for i in range(0, n_calib, BATCH)]
    return evalb, calib, calib[0]


@torch.no_grad()
def window_nll(model: torch.nn.Module, batches: torch.Tensor, bs: int = 64) -> torch.Tensor:
    """Summed next-byte negative log-likelihood of every held-out window ([n_windows], float64)."""
    model.eval()
    out = []
    for i in range(0, len(batches), bs):
        b = batches[i : i + bs]
        logits = model(input_ids=b[:, :-1]).logits.float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1), reduction="none")
        out.append(nll.view(len(b), -1).sum(1).double())
    return torch.cat(out)


def paired(base: torch.Tensor, other: torch.Tensor, n_tokens: int, resamples: int = 2000) -> dict[str, float]:
    """Paired bootstrap over held-out windows of ppl(base) / ppl(other): the ratio, its 95% interval
    and the share of resamples in which ``base`` has the lower perplexity."""
    g = torch.Generator().manual_seed(12345)
    idx = torch.randint(0, len(base), (resamples, len(base)), generator=g)
    diff = (base[idx].sum(1) - other[idx].sum(1)) / (n_tokens * len(base))  # log ppl(base) - log ppl(other)
    ratio = torch.exp(diff)
    return {"ratio": round(math.exp(float(base.sum() - other.sum()) / (n_tokens * len(base))), 5),
            "ci95": [round(float(ratio.quantile(0.025)), 5), round(float(ratio.quantile(0.975)), 5)],
            "base_better_share": round(float((diff < 0).double().mean()), 4)}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def ce_loss(out: Any, batch: Any) -> torch.Tensor:
    logits = out[0] if isinstance(out, (tuple, list)) else (out["logits"] if isinstance(out, dict) else out.logits)
    ids = batch["input_ids"]
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def tp_prune(dense: torch.nn.Module, example: torch.Tensor, ratio: float) -> torch.nn.Module:
    """Torch-Pruning's examples/LLMs/prune_llm.py recipe (see the module docstring)."""
    import torch_pruning as tp
    from torch_pruning.dependency import constants as tp_constants

    # the recipe's GroupNormImportance is named GroupMagnitudeImportance in torch-pruning 1.6
    imp = getattr(tp.importance, "GroupNormImportance", None) or tp.importance.GroupMagnitudeImportance
    model = copy.deepcopy(dense)
    model.config.use_cache = False  # its tracer needs tensor outputs (a DynamicCache is not one)
    # Torch-Pruning maps channel indices through a torch.cat only when the cat runs over the feature
    # dim; it tells from grad_fn._saved_dim (`!= 1 and < MAX_VALID_DIM`, 100; the bound guards against
    # garbage dims of torch 1.11). Under torch 2.13 and 2.14 a cat over dim=-1 saves 2**64 - 1, so the rotary
    # rotate_half cat (over head_dim) is taken for a feature cat: its offsets (+64) feed a cycle
    # (q -> slice -> cat -> mul -> add -> mul -> q) in which the indices grow without bound and
    # get_all_groups never returns (the "first prune did not finish in 5 minutes" of the last run).
    # Raising the bound above 2**64 makes the guard read a negative dim as "not the feature dim",
    # which is what it meant; it is restored afterwards.
    saved_bound = tp_constants.MAX_VALID_DIM
    tp_constants.MAX_VALID_DIM = 2**64 + 1
    try:
        return _tp_prune(tp, imp, model, example, ratio)
    finally:
        tp_constants.MAX_VALID_DIM = saved_bound


def _tp_prune(tp: Any, imp: Any, model: torch.nn.Module, example: torch.Tensor, ratio: float) -> torch.nn.Module:
    cfg = model.config
    num_heads = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            num_heads[m.q_proj] = cfg.num_attention_heads
            num_heads[m.k_proj] = cfg.num_key_value_heads
            num_heads[m.v_proj] = cfg.num_key_value_heads
    gqa = cfg.num_attention_heads != cfg.num_key_value_heads
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=example, importance=imp(p=2, group_reduction="mean"),
        global_pruning=False, pruning_ratio=ratio, ignored_layers=[model.lm_head], num_heads=num_heads,
        prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio, round_to=4,
    )
    for g in pruner.step(interactive=True):
        g.prune()
    model.config.hidden_size = model.lm_head.in_features
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            m.hidden_size = m.q_proj.out_features
            m.num_heads = m.hidden_size // m.head_dim
            model.config.num_attention_heads = m.num_heads
            if not gqa:
                m.num_key_value_heads = m.num_heads
            m.num_key_value_groups = m.num_heads // max(1, m.k_proj.out_features // m.head_dim)
        elif name.endswith("mlp"):
            m.hidden_size = m.gate_proj.in_features
            model.config.intermediate_size = m.gate_proj.out_features
    return model.eval()


def tp_at(dense: torch.nn.Module, example: torch.Tensor, keep: float) -> tuple[torch.nn.Module, float]:
    """Bisect Torch-Pruning's channel ratio (8 steps at most) toward kept parameters within 0.5% of ``keep``."""
    base = n_params(dense)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(8):
        mid = (lo + hi) / 2
        m = tp_prune(dense, example, mid)
        kept = n_params(m) / base
        if best is None or abs(kept - keep) < abs(best[1] - keep):
            best = (m, kept, mid)
        if abs(kept - keep) < 0.005:
            break
        lo, hi = (mid, hi) if kept > keep else (lo, mid)
    assert best is not None
    return best[0], best[2]


def run_row(row: str, dense: torch.nn.Module, x: dict[str, Any], calib: list[dict[str, Any]], removed: float,
            n_layers: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    keep = round(1.0 - removed, 4)
    if row == "tp":  # the recipe's example input is one short sequence ("Hello world."): one window here
        m, ratio = tp_at(dense, x["input_ids"][:1], keep)
        return m, {"tp_pruning_ratio": round(ratio, 4)}
    kw: dict[str, Any] = {"params": keep, "calib": calib}
    if row in LSQ_OPTION:  # the default pipeline with one option of its least-squares refit changed
        from graphprune.passes import default_pipeline

        text = default_pipeline("params", keep, "wanda", "global", None, reconstruct=("lsq", "bias"))
        kw = {"pipeline": text.replace("reconstruct-lsq,", f"reconstruct-lsq{{{LSQ_OPTION[row]}}},"), "calib": calib}
    if row == "hidden":
        kw["hidden"] = True
    elif row == "hidden_uniform":
        kw.update(hidden=True, criterion="wanda", reconstruct="lsq,bias", allocation="uniform")
    elif row == "uniform":
        kw.update(criterion="wanda", reconstruct="lsq,bias", allocation="uniform")
    elif row == "layers":
        kw["layers"] = max(1, int(math.floor(removed * n_layers)))
    elif row == "flap":
        kw.update(criterion="flap", reconstruct="bias")
    elif row == "flap_global":
        kw.update(criterion="flap", reconstruct="bias", allocation="global")
    elif row == "wanda":
        kw.update(criterion="wanda")
    elif row == "taylor":
        kw.update(criterion="taylor", loss=ce_loss)
    res = gp.prune(dense, x, **kw)
    info = {"route": res.report["route"], "hidden_size": getattr(getattr(res.model, "config", None), "hidden_size", None)}
    if "layers_removed" in res.report:
        info["layers_removed"] = res.report["layers_removed"]["removed"]
    return res.model.eval(), info


LSQ_OPTION = {"lsq_rounds1": "rounds=1", "lsq_ridge1e-3": "ridge=0.001"}

LABELS = {
    "default": "graphprune default (calib=)",
    "hidden": "graphprune default + hidden=True",
    "uniform": "graphprune wanda+lsq,bias, uniform",
    "hidden_uniform": "graphprune wanda+lsq,bias, uniform + hidden",
    "layers": "graphprune default + layers (ShortGPT)",
    "lsq_rounds1": "graphprune default + lsq{rounds=1}",
    "lsq_ridge1e-3": "graphprune default + lsq{ridge=0.001}",
    "flap": "FLAP-style (flap + bias)",
    "flap_global": "FLAP-style, global allocation",
    "wanda": "Wanda-sp (wanda)",
    "taylor": "Taylor (LLM-Pruner-style)",
    "tp": "Torch-Pruning LLM recipe",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=float, nargs="+", default=[0.2, 0.3, 0.5], help="fractions of parameters removed")
    ap.add_argument("--rows", default=",".join(LABELS), help=f"comma-separated subset of {','.join(LABELS)}")
    ap.add_argument("--eval", type=int, default=0, help="held-out windows of 64 bytes (0: every disjoint window)")
    ap.add_argument("--calib", type=int, default=32, help="calibration windows (training split)")
    ap.add_argument("--seeds", type=int, default=3, help="calibration draws for the --seed-rows rows")
    ap.add_argument("--seed-rows", default="default,flap", help="rows measured on every calibration draw")
    ap.add_argument("--seed-levels", type=float, nargs="*", default=None,
                    help="levels at which the --seed-rows take every draw (default: all levels)")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "bench" / "llm_quality.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paired", default=None, metavar="ROW",
                    help="paired bootstrap over held-out windows of ROW against every other row, same level and draw")
    ap.add_argument("--append", action="store_true",
                    help="add these rows to --json (same eval windows, calibration draws and dense model)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    rows = [r.strip() for r in a.rows.split(",") if r.strip()]
    seed_rows = {r.strip() for r in a.seed_rows.split(",") if r.strip()}
    dense = load_model()
    draws = {seed: data(a.eval, a.calib, seed) for seed in range(max(1, a.seeds))}
    evalb = draws[0][0]
    dense_ppl = math.exp(float(window_nll(dense, evalb).sum()) / (len(evalb) * tt.SEQ))
    per_window: dict[tuple[str, float, int], torch.Tensor] = {}
    base = n_params(dense)
    n_layers = dense.config.num_hidden_layers
    print(f"dense: {base} params, held-out ppl {dense_ppl:.4f} on {len(evalb)} windows", flush=True)
    results: list[dict[str, Any]] = []
    train_info = json.loads((tt.DEFAULT_OUT / "train.json").read_text()) if (tt.DEFAULT_OUT / "train.json").exists() else {}
    out = {
        "model": {"path": str(tt.DEFAULT_OUT.relative_to(ROOT)), "params": base, "layers": n_layers,
                  "hidden_size": dense.config.hidden_size, "heldout_ppl": round(dense_ppl, 4),
                  "train": {k: v for k, v in train_info.items() if k != "curve"}},
        "eval_windows": len(evalb), "eval_tokens": len(evalb) * tt.SEQ, "calib_windows": a.calib,
        "calib_seeds": sorted(draws), "seed_rows": sorted(seed_rows),
        "seed_levels": a.levels if a.seed_levels is None else a.seed_levels, "seq": tt.SEQ, "levels": a.levels,
        "command": "python tools/bench_llm_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu_threads": a.threads, "python": platform.python_version(), "torch": torch.__version__,
                    "torch_pruning": _version("torch-pruning"), "transformers": _version("transformers"),
                    "loadavg_start": _loadavg()},
        "results": results,
    }
    def plan_seeds(row: str, removed: float) -> list[int]:
        multi = row in seed_rows and (a.seed_levels is None or removed in a.seed_levels)
        return sorted(draws) if multi else [0]

    prev_end = None
    if a.append and a.json.exists():
        prev = json.loads(a.json.read_text())
        same = ("model", "eval_windows", "calib_windows", "calib_seeds", "seq")
        if any(prev.get(k) != out[k] for k in same):
            raise SystemExit(f"--append: {a.json} was measured with other settings ({', '.join(same)} differ)")
        redo = {(r, lv, sd) for r, lv in product(rows, a.levels) for sd in plan_seeds(r, lv)}
        results[:0] = [r for r in prev["results"] if (r["row"], r["removed_target"], r.get("seed", 0)) not in redo]
        out["command"] = [*([prev["command"]] if isinstance(prev["command"], str) else prev["command"]), out["command"]]
        out["machine"]["loadavg_start"] = [prev["machine"].get("loadavg_start"), out["machine"]["loadavg_start"]]
        prev_end = prev["machine"].get("loadavg_end")
        out["levels"] = sorted({*prev["levels"], *a.levels})
        out["seed_rows"] = sorted({*prev.get("seed_rows", []), *seed_rows})
    a.json.parent.mkdir(parents=True, exist_ok=True)
    for row in rows:  # row by row: a slow row last leaves the others complete
        for removed in a.levels:
            for seed in plan_seeds(row, removed):
                _, calib, x = draws[seed]
                t0 = time.time()
                try:
                    m, info = run_row(row, dense, x, calib, removed, n_layers)
                except Exception as exc:  # a row that fails is reported, not hidden
                    results.append({"row": row, "label": LABELS[row], "removed_target": removed, "seed": seed,
                                    "error": f"{type(exc).__name__}: {exc}"[:300]})
                    print(f"{removed:.0%} {LABELS[row]:<40} ERROR {results[-1]['error']}", flush=True)
                    a.json.write_text(json.dumps(out, indent=1) + "\n")
                    continue
                nll = window_nll(m, evalb)
                ppl = math.exp(float(nll.sum()) / (len(evalb) * tt.SEQ))
                if a.paired:
                    per_window[(row, removed, seed)] = nll
                rec = {"row": row, "label": LABELS[row], "removed_target": removed, "seed": seed,
                       "params_kept": round(n_params(m) / base, 4), "ppl": round(ppl, 4),
                       "ppl_rel": round(ppl / dense_ppl, 4), "seconds": round(time.time() - t0, 1), **info}
                results.append(rec)
                print(f"{removed:.0%} {LABELS[row]:<40} seed {seed} kept {rec['params_kept']:.3f} ppl {ppl:.4f} "
                      f"x{rec['ppl_rel']:.4f} ({rec['seconds']}s)", flush=True)
                a.json.write_text(json.dumps(out, indent=1) + "\n")  # after every prune: a long run keeps what it has
    if a.paired:
        out["paired"] = [{"row": a.paired, "vs": r, "removed_target": lv, "seed": sd,
                          **paired(per_window[(a.paired, lv, sd)], nll, tt.SEQ)}
                         for (r, lv, sd), nll in per_window.items() if r != a.paired and (a.paired, lv, sd) in per_window]
        for q in out["paired"]:
            print(f"{q['removed_target']:.0%} seed {q['seed']} {q['row']} / {q['vs']}: x{q['ratio']:.5f} "
                  f"[{q['ci95'][0]:.5f}, {q['ci95'][1]:.5f}], {q['row']} lower in {q['base_better_share']:.1%} of resamples")
    out["machine"]["loadavg_end"] = _loadavg() if prev_end is None else [prev_end, _loadavg()]
    out["summary"] = summary(out)
    a.json.write_text(json.dumps(out, indent=1) + "\n")
    print(table(out))
    return 0


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _loadavg() -> list[float] | None:
    try:
        import os

        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def summary(out: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per (row, level): mean, min and max of ppl/dense over the calibration draws."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in out["results"]:
        if "error" not in r:
            groups.setdefault((r["row"], r["removed_target"]), []).append(r)
    res = []
    for (row, lv), rs in groups.items():
        rel = [r["ppl_rel"] for r in rs]
        ppl = [r["ppl"] for r in rs]
        res.append({"row": row, "removed_target": lv, "draws": len(rs), "ppl_mean": round(sum(ppl) / len(ppl), 4),
                    "ppl_rel_mean": round(sum(rel) / len(rel), 4), "ppl_rel_min": min(rel), "ppl_rel_max": max(rel),
                    "params_kept_mean": round(sum(r["params_kept"] for r in rs) / len(rs), 4)})
    return res


def table(out: dict[str, Any]) -> str:
    levels = out["levels"]
    lines = ["| row | " + " | ".join(f"{lv:.0%} removed: ppl/dense (kept)" for lv in levels) + " |",
             "|---|" + "---|" * len(levels)]
    by = {(r["row"], r["removed_target"]): r for r in summary(out)}
    errors = {(r["row"], r["removed_target"]) for r in out["results"] if "error" in r}
    for row, label in LABELS.items():
        cells = []
        for lv in levels:
            r = by.get((row, lv))
            if r is None:
                cells.append("error" if (row, lv) in errors else "")
            elif r["draws"] > 1:
                cells.append(f"{r['ppl_rel_mean']:.4f} [{r['ppl_rel_min']:.4f}-{r['ppl_rel_max']:.4f}] ({r['params_kept_mean']:.3f})")
            else:
                cells.append(f"{r['ppl_rel_mean']:.4f} ({r['params_kept_mean']:.3f})")
        if any(cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
