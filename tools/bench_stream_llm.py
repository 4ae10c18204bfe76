"""Prune a LLaMA-shaped bf16 checkpoint bigger than the machine's memory, streamed layer by layer.

    python tools/bench_stream_llm.py --shape 7b --work /tmp/gp7b            # make, prune, check, delete
    python tools/bench_stream_llm.py --shape 7b --layers 1 --recipe default  # one 7B layer, lsq refit
    python tools/bench_stream_llm.py --shape 1b --stock-load                 # + a real from_pretrained

1. A checkpoint directory with random weights (N(0, 0.02), norms 1) is written shard by shard
   (one safetensors file per decoder layer, one for the embeddings/norm/lm_head, the index and
   config.json) without ever holding the model: at most one layer's tensors exist at a time.
2. ``graphprune prune DIR --flops F --calib ids.pt -o OUT --report r.json`` runs in a child
   process; its wall time and peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``) are recorded.
   Recipes: ``uniform`` (wanda scores, every layer the same widths, no reconstruction: the output
   is a stock directory) and ``default`` (wanda + lsq,bias + global: per-layer widths, refit
   consumers; ``graphprune.load_pretrained``).
3. The output is checked: its config reloads with ``AutoConfig``; the class built from it on the
   meta device (``accelerate.init_empty_weights``) has exactly the written tensors' names, shapes
   and dtype (what stock ``from_pretrained`` checks before loading). ``--stock-load`` also runs
   the real ``from_pretrained`` and one forward (only for shapes that fit in memory twice).
4. One row is appended to ``docs/bench/stream_llm.json`` (``--json``) and the table
   ``docs/bench/stream_llm.md`` is rewritten from it. The work directory is deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES: dict[str, dict[str, int]] = {  # LLaMA-7B, OpenLLaMA-3B, TinyLlama-1.1B, and a smoke-test size
    "7b": dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008,
               num_hidden_layers=32, vocab_size=32000),
    "3b": dict(hidden_size=3200, num_attention_heads=32, num_key_value_heads=32, intermediate_size=8640,
               num_hidden_layers=26, vocab_size=32000),
    "1b": dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, intermediate_size=5632,
               num_hidden_layers=22, vocab_size=32000),
    "tiny": dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=4, intermediate_size=688,
                 num_hidden_layers=4, vocab_size=1000),
}


def make_checkpoint(d: Path, shape: dict[str, int], dtype: torch.dtype, seed: int = 0) -> dict[str, Any]:
    """Write the checkpoint shard by shard (module docstring, step 1); returns its size."""
    import transformers
    from safetensors.torch import save_file

    cfg = transformers.LlamaConfig(**shape, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                                   tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    cfg.dtype = dtype
    d.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(d)
    h, i, heads, kv = shape["hidden_size"], shape["intermediate_size"], shape["num_attention_heads"], shape["num_key_value_heads"]
    hd = h // heads
    g = torch.Generator().manual_seed(seed)
    n = shape["num_hidden_layers"]
    files = n + 1
    weight_map: dict[str, str] = {}
    total = 0

    def rnd(*s: int) -> torch.Tensor:
        return (torch.randn(*s, generator=g) * 0.02).to(dtype)

    def write(tensors: dict[str, torch.Tensor], k: int) -> None:
        nonlocal total
        name = f"model-{k:05d}-of-{files:05d}.safetensors"
        save_file(tensors, str(d / name), metadata={"format": "pt"})
        weight_map.update({t: name for t in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())

    # one layer's N(0, 0.02) draws, reused by every layer with its own scale and column permutation
    # (drawing 7B normal numbers costs more than the pruning on a shared 2-core machine)
    base = {"self_attn.q_proj.weight": rnd(heads * hd, h), "self_attn.k_proj.weight": rnd(kv * hd, h),
            "self_attn.v_proj.weight": rnd(kv * hd, h), "self_attn.o_proj.weight": rnd(h, heads * hd),
            "mlp.gate_proj.weight": rnd(i, h), "mlp.up_proj.weight": rnd(i, h), "mlp.down_proj.weight": rnd(h, i)}
    for li in range(n):
        p = f"model.layers.{li}."
        shift = (li * 7919) % h
        layer = {p + k: (t.roll(shift, dims=1) * (1.0 + 0.01 * li)).contiguous() for k, t in base.items()}
        layer[p + "input_layernorm.weight"] = torch.ones(h, dtype=dtype)
        layer[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=dtype)
        write(layer, li + 1)
        del layer
    v = shape["vocab_size"]
    write({"model.embed_tokens.weight": rnd(v, h), "model.norm.weight": torch.ones(h, dtype=dtype),
           "lm_head.weight": rnd(v, h)}, files)
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                "weight_map": weight_map}, indent=1))
    return {"bytes": total, "files": files}


def check_output(out: Path, stock_load: bool) -> dict[str, Any]:
    """Step 3 of the module docstring."""
    import transformers
    from accelerate import init_empty_weights
    from safetensors import safe_open

    data = json.loads((out / "config.json").read_text())
    stock = "graphprune" not in data
    written: dict[str, tuple[list[int], str]] = {}
    for f in sorted(set(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"].values())):
        with safe_open(str(out / f), "pt") as sf:
            for k in sf.keys():
                written[k] = (list(sf.get_slice(k).get_shape()), sf.get_slice(k).get_dtype())
    res: dict[str, Any] = {"stock": stock, "tensors": len(written), "dtypes": sorted({t for _, t in written.values()})}
    if not stock:  # graphprune's loader: the written shapes must be the plan's
        widths = json.loads((out.parent / "report.json").read_text())["widths"]
        res["shapes_match_plan"] = all(written[k][0] == w["after"] for k, w in widths.items() if k in written)
        if stock_load:
            from graphprune import load_pretrained

            t0 = time.perf_counter()
            m = load_pretrained(out)
            with torch.no_grad():
                logits = m(input_ids=torch.tensor([[1, 2, 3, 4]]), use_cache=False).logits
            res["load_pretrained_s"] = round(time.perf_counter() - t0, 2)
            res["forward_finite"] = bool(torch.isfinite(logits).all())
    if stock:
        cfg = transformers.AutoConfig.from_pretrained(out)
        with init_empty_weights():
            model = transformers.LlamaForCausalLM(cfg)
        want = {k: list(v.shape) for k, v in model.state_dict().items()}
        res["config_shapes_match"] = want == {k: s for k, (s, _) in written.items()}
        res["intermediate_size"] = cfg.intermediate_size
        res["num_key_value_heads"] = cfg.num_key_value_heads
        if stock_load:
            t0 = time.perf_counter()
            m = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
            with torch.no_grad():
                logits = m(input_ids=torch.tensor([[1, 2, 3, 4]]), use_cache=False).logits
            res["from_pretrained_s"] = round(time.perf_counter() - t0, 2)
            res["forward_finite"] = bool(torch.isfinite(logits).all())
    return res


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Streamed pruning of LLaMA-shaped bf16 checkpoints (`tools/bench_stream_llm.py`)",
        "",
        "Random weights, written shard by shard; pruned with `graphprune prune DIR --flops F --calib ids.pt -o OUT` "
        "in a child process (one decoder layer in memory at a time: `graphprune.stream`). Peak RSS is the child's "
        "`ru_maxrss`. \"checkpoint GB\" is the tensors' size on disk.",
        "",
        "| shape | layers | recipe | checkpoint GB | calib tokens | flops kept | params kept | prune s | peak RSS GB | "
        "output check | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        chk = r.get("check", {})
        if chk.get("stock"):
            ok = "stock: config + shapes match" if chk.get("config_shapes_match") else "stock: MISMATCH"
        else:
            ok = "graphprune loader: shapes = plan" if chk.get("shapes_match_plan") else "graphprune loader: MISMATCH"
        if "forward_finite" in chk:
            how = "from_pretrained" if chk.get("stock") else "load_pretrained"
            ok += f"; {how} + forward {chk.get('from_pretrained_s', chk.get('load_pretrained_s'))} s"
        lines.append(
            f"| {r['shape']} | {r['layers']} | {r['recipe']} | {r['checkpoint_gb']:.2f} | {r['calib_tokens']} | "
            f"{r['kept_flops']:.3f} | {r['kept_params']:.3f} | {r['prune_s']:.0f} | {r['peak_rss_gb']:.2f} | {ok} | "
            f"{r['machine']} |")
    lines += ["", "Phase times (s) per row are in `stream_llm.json` (`timings`).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--layers", type=int, default=None, help="override num_hidden_layers (e.g. 1: time one layer)")
    ap.add_argument("--recipe", choices=["uniform", "default"], default="uniform")
    ap.add_argument("--flops", type=float, default=0.8)
    ap.add_argument("--calib-batches", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--work", default="/tmp/graphprune-bench-stream")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint and the output")
    ap.add_argument("--reuse", action="store_true", help="reuse a checkpoint --keep left in --work (same --shape)")
    ap.add_argument("--stock-load", action="store_true", help="also from_pretrained the output (needs its size in RAM)")
    ap.add_argument("--json", default=str(ROOT / "docs" / "bench" / "stream_llm.json"))
    args = ap.parse_args(argv)
    shape = dict(SHAPES[args.shape])
    if args.layers is not None:
        shape["num_hidden_layers"] = args.layers
    work = Path(args.work)
    ckpt, out = work / "ckpt", work / "out"
    reuse = args.reuse and (ckpt / "model.safetensors.index.json").is_file()
    if work.exists() and not reuse:
        shutil.rmtree(work)
    shutil.rmtree(out, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        if reuse:
            index = json.loads((ckpt / "model.safetensors.index.json").read_text())
            made = {"bytes": index["metadata"]["total_size"], "files": len(set(index["weight_map"].values()))}
        else:
            made = make_checkpoint(ckpt, shape, torch.bfloat16)
        make_s = time.perf_counter() - t0
        print(f"checkpoint: {made['bytes'] / 1e9:.2f} GB in {made['files']} files, {make_s:.0f} s", flush=True)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, shape["vocab_size"], (args.calib_batches, args.seq), generator=g)
        torch.save(list(ids.split(1)), work / "ids.pt")
        cmd = [sys.executable, "-m", "graphprune.cli", "prune", str(ckpt), "--flops", str(args.flops),
               "--calib", str(work / "ids.pt"), "-o", str(out), "--report", str(work / "report.json")]
        if args.recipe == "uniform":
            cmd += ["--uniform", "--reconstruct", ""]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        prune_s = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
        if p.returncode != 0:
            print(p.stdout, p.stderr[-3000:], file=sys.stderr)
            return 1
        print(p.stdout.strip(), flush=True)
        rep = json.loads((work / "report.json").read_text())
        check = check_output(out, args.stock_load)
        row = {
            "shape": args.shape, "layers": shape["num_hidden_layers"], "recipe": args.recipe, "config": shape,
            "dtype": "bfloat16", "checkpoint_gb": made["bytes"] / 1e9, "make_s": round(make_s, 1),
            "calib_tokens": args.calib_batches * args.seq, "flops_target": args.flops,
            "kept_flops": rep["kept"]["flops"], "kept_params": rep["kept"]["params"], "prune_s": round(prune_s, 1),
            "peak_rss_gb": round(peak, 3), "timings": rep["timings"], "verification": rep["verification"],
            "loader": rep["loader"], "check": check,
            "machine": f"{os.cpu_count()} cores, {_mem_gb():.0f} GB RAM ({platform.machine()}, shared)",
            "command": " ".join(["python", "tools/bench_stream_llm.py", *(argv if argv is not None else sys.argv[1:])]),
        }
        print(json.dumps({k: row[k] for k in ("prune_s", "peak_rss_gb", "kept_flops", "check")}), flush=True)
        path = Path(args.json)
        rows = json.loads(path.read_text()) if path.is_file() else []
        rows.append(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1) + "\n")
        path.with_suffix(".md").write_text(render(rows))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _mem_gb() -> float:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) / 1024**2


if __name__ == "__main__":
    sys.exit(main())
