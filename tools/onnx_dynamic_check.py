"""Do pruned ONNX exports of transformers models keep their dynamic dims? (issue #9)

For each model class (tiny config, random weights) and each torch exporter (TorchScript with
``dynamic_axes``, dynamo with ``dynamic_shapes``), with dynamic batch and sequence (ViT: batch):
export, ``graphprune.prune(path, flops=0.6)``, then check that the pruned file keeps the inputs'
``dim_param``s and equals the masked original graph at (batch, seq) = (1, 7), (2, 33), (1, 64)
(ViT: batch 1, 2, 3). Prints a table and writes the rows as JSON (``--json``).

    python tools/onnx_dynamic_check.py --json onnx_dynamic.json [--models llama,gpt2] [--exporters dynamo]

Each (model, exporter) runs in its own process (``--timeout`` seconds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

MODELS = ("llama", "qwen2", "mistral", "gemma", "phi3", "gpt2", "bert", "vit")
EXPORTERS = ("torchscript", "dynamo")
TEXT_SIZES = ((1, 7), (2, 33), (1, 64))
VIT_BATCHES = (1, 2, 3)


def _build(name: str) -> tuple[Any, dict[str, Any], dict[str, dict[int, str]]]:
    """(module returning one tensor, example inputs by name, dynamic axes by input name)."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    dec = {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
    axes = {0: "batch", 1: "seq"}
    if name == "vit":
        cfg = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64)
        return _Out(tf.ViTModel(cfg, add_pooling_layer=False), "last_hidden_state", ("pixel_values",)), \
            {"pixel_values": torch.randn(2, 3, 32, 32)}, {"pixel_values": {0: "batch"}}
    if name == "bert":
        cfg = tf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=128)
        model, key = tf.BertModel(cfg, add_pooling_layer=False), "last_hidden_state"
    elif name == "gpt2":
        model, key = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=128)), "logits"
    else:
        cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
               "mistral": (tf.MistralConfig, tf.MistralForCausalLM), "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM),
               "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM)}[name]
        extra = {"head_dim": 8} if name == "gemma" else {"pad_token_id": 0} if name == "phi3" else {}
        model, key = cls[1](cls[0](**dec, **extra)), "logits"
    ids = torch.randint(0, 100, (2, 9))
    return _Out(model, key, ("input_ids", "attention_mask")), \
        {"input_ids": ids, "attention_mask": torch.ones(2, 9, dtype=torch.int64)}, \
        {"input_ids": axes, "attention_mask": axes}


def _Out(model: Any, key: str, names: tuple[str, ...]) -> Any:  # noqa: N802 - a module factory
    """A module with named arguments (dynamo's ``dynamic_shapes`` are keyed by them) returning one tensor."""
    import torch

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model.eval()

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            kw = {"use_cache": False} if key == "logits" else {}
            return getattr(self.m(input_ids=input_ids, attention_mask=attention_mask, **kw), key)

    class Vision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model.eval()

        def forward(self, pixel_values: Any) -> Any:
            return getattr(self.m(pixel_values=pixel_values), key)

    return (Vision() if names == ("pixel_values",) else Text()).eval()


def _export(name: str, exporter: str, path: Path) -> None:
    import logging
    import warnings

    import torch

    for lg in ("torch.onnx", "torch.export", "onnxscript"):
        logging.getLogger(lg).setLevel(logging.ERROR)
    model, x, axes = _build(name)
    names = list(x)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(model, tuple(x.values()), str(path), dynamo=False, input_names=names, output_names=["out"],
                              dynamic_axes={**axes, "out": {0: "batch"}})
        else:
            dims = {p: torch.export.Dim(p, max=64 if p == "batch" else 128) for a in axes.values() for p in a.values()}
            torch.onnx.export(model, tuple(x.values()), str(path), dynamo=True, input_names=names, output_names=["out"],
                              external_data=False,
                              dynamic_shapes={k: {ax: dims[p] for ax, p in a.items()} for k, a in axes.items()})


def _feeds(name: str, shape: tuple[int, ...], seed: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    if name == "vit":
        return {"pixel_values": rng.standard_normal((shape[0], 3, 32, 32)).astype(np.float32)}
    mask = np.ones(shape, dtype=np.int64)
    mask[-1, shape[1] // 2 + 1 :] = 0
    return {"input_ids": rng.integers(0, 100, size=shape).astype(np.int64), "attention_mask": mask}


def run_job(name: str, exporter: str, workdir: Path) -> dict[str, Any]:
    """One row: export, prune at flops 0.6, check dims and the masked original at three sizes."""
    import numpy as np
    import onnx

    import graphprune as gp
    from graphprune.errors import GraphpruneError
    from graphprune.frontends import load_onnx, prepare
    from graphprune.rewrite.onnx_dynamic import masked_original
    from graphprune.verification_onnx import run_onnx

    row: dict[str, Any] = {"model": name, "exporter": exporter}
    src = workdir / f"{name}.{exporter}.onnx"
    try:
        _export(name, exporter, src)
    except Exception as exc:  # exporters fail on some architectures: that is a result
        row.update(export=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        return row
    row["export"] = "ok"
    try:
        res = gp.prune(str(src), flops=0.6, allow_static=True)
    except GraphpruneError as exc:
        row.update(dynamic="no", why=f"prune failed: {exc}")
        return row
    rep = res.report
    dyn = rep.get("onnx_dynamic") or {}
    row.update(analyzed_at=rep.get("symbolic_dims"), flops_kept=round(rep["achieved"]["flops"], 4),
               verified=bool(rep["verification"] and rep["verification"]["ok"]))
    symbolic = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim if d.dim_param] for i in res.model.graph.input}
    kept = bool(dyn.get("kept")) and all(symbolic.values())
    row.update(dynamic="yes" if kept else "no", why="" if kept else dyn.get("reason", "no symbolic dims"))
    if not kept:
        return row
    prep = prepare(load_onnx(str(src)))
    masked = masked_original(prep.dynamic, prep.model, res.coupling, res.removed)
    sizes = [(b,) for b in VIT_BATCHES] if name == "vit" else list(TEXT_SIZES)
    matches = {}
    for shape in sizes:
        feeds = _feeds(name, shape, seed=sum(shape))
        ref, got = run_onnx(masked, feeds)[0], run_onnx(res.model, feeds)[0]
        err = float(np.abs(ref.astype(np.float64) - got).max()) if ref.shape == got.shape else float("inf")
        matches[str(shape)] = err <= 1e-4 * max(1.0, float(np.abs(ref).max()))
    row["match"] = matches
    onnx.checker.check_model(res.model)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="write the rows here")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--exporters", default=",".join(EXPORTERS), help="comma list of torchscript, dynamo")
    p.add_argument("--timeout", type=int, default=600, help="seconds per (model, exporter)")
    p.add_argument("--job", nargs=3, metavar=("MODEL", "EXPORTER", "DIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.job:
        print(json.dumps(run_job(args.job[0], args.job[1], Path(args.job[2]))))
        return 0
    models, exporters = args.models.split(","), args.exporters.split(",")
    bad = sorted(set(models) - set(MODELS)) + sorted(set(exporters) - set(EXPORTERS))
    if bad:
        p.error(f"unknown model/exporter {bad}; models: {', '.join(MODELS)}; exporters: {', '.join(EXPORTERS)}")
    rows = []
    print("model    exporter    dims kept  masked original matches at 3 sizes, flops kept, why not", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            for e in exporters:
                try:
                    r = subprocess.run([sys.executable, __file__, "--json", "-", "--job", m, e, tmp],
                                       capture_output=True, text=True, timeout=args.timeout)
                    lines = r.stdout.strip().splitlines()
                    row = json.loads(lines[-1]) if r.returncode == 0 and lines else {
                        "model": m, "exporter": e, "export": "?", "dynamic": "no",
                        "why": f"worker failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:200]}"}
                except subprocess.TimeoutExpired:
                    row = {"model": m, "exporter": e, "export": "?", "dynamic": "no", "why": f"timed out after {args.timeout}s"}
                rows.append(row)
                _print_row(row)
    Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def _print_row(r: dict[str, Any]) -> None:
    match = r.get("match")
    m = "-" if not match else "yes" if all(match.values()) else "NO " + ",".join(k for k, v in match.items() if not v)
    if r.get("export") != "ok":
        print(f"{r['model']:8} {r['exporter']:11} export {r.get('export', '?')[:150]}", flush=True)
        return
    print(f"{r['model']:8} {r['exporter']:11} dynamic {r.get('dynamic', '?'):3}  match@3 sizes {m:6} "
          f"flops {r.get('flops_kept', '-')}  {r.get('why', '')[:150]}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
