"""Train a small LLaMA-style byte-level language model for the LLM quality benchmark.

Model: ``transformers.LlamaForCausalLM`` with a 256-symbol byte vocabulary (no tokenizer to
download), 4 decoder layers, hidden 128, 4 query heads / 2 KV heads (GQA), head_dim 32, SwiGLU
intermediate 352, lm_head tied to the embedding: 0.74 M parameters, 3 MB in fp32. It is the
shape of ``graphprune.models.llama`` in ``tools/quality_models.py``, so ``--init-from`` (default:
``models/checkpoints/bytes_lm.pt`` when present, that model trained on pydoc's topic texts) warm
starts from it; on 2 cores shared by several people (load average 12 when this was written) a
from-scratch hidden-256 model got under 50 steps in 10 minutes.

Text: the Python standard library's own ``.py`` sources (top level of ``sysconfig``'s stdlib
directory, sorted by name, so the list is deterministic for one Python version). Every 10th file
is held out. Training stops when the held-out perplexity has not improved for ``--patience``
evaluations, or at ``--minutes`` (the learning rate follows a cosine over that time); the best checkpoint (by held-out perplexity) is saved with
``save_pretrained`` to ``--out`` (default ``models/checkpoints/tiny_llama``) with ``train.json``
(steps, time, held-out perplexity curve, file list digest).

    python tools/train_tiny_llama.py [--minutes 14] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "models" / "checkpoints" / "tiny_llama"
SEQ = 64  # bytes per training/evaluation window (2 shared cores: short windows buy more steps)


def config():  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
        pad_token_id=None,
    )


def corpus(max_files: int = 400) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(train bytes, held-out bytes, sha256 of the file list)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())[:max_files]
    train: list[bytes] = []
    held: list[bytes] = []
    for i, p in enumerate(files):
        (held if i % 10 == 9 else train).append(p.read_bytes())
    digest = hashlib.sha256("\n".join(p.name for p in files).encode()).hexdigest()[:16]

    def cat(parts: list[bytes]) -> torch.Tensor:
        return torch.frombuffer(bytearray(b"\n\n".join(parts)), dtype=torch.uint8).long()

    return cat(train), cat(held), digest


def heldout_batches(held: torch.Tensor, n: int = 64) -> torch.Tensor:
    """``n`` evenly spaced windows of SEQ + 1 bytes (deterministic)."""
    starts = torch.linspace(0, len(held) - SEQ - 2, n).long()
    return torch.stack([held[s : s + SEQ + 1] for s in starts])


@torch.no_grad()
def perplexity(model: torch.nn.Module, batches: torch.Tensor, bs: int = 16) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(batches), bs):
        b = batches[i : i + bs]
        logits = model(input_ids=b[:, :-1]).logits
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), b[:, 1:].reshape(-1), reduction="sum"))
        count += b[:, 1:].numel()
    return math.exp(total / count)


def warm_start(model: torch.nn.Module, path: Path) -> None:
    """Load a ``graphprune.models.llama`` state dict of the same shape into the HF model (same
    math: RMSNorm, rotate-half rotary with theta 1e4, GQA, SwiGLU, tied head)."""
    sd = torch.load(path, weights_only=True)
    names = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}
    out = {}
    for k, v in sd.items():
        if k in names:
            out[names[k]] = v
            continue
        k = k.replace("layers.", "model.layers.").replace(".attn.", ".self_attn.")
        k = k.replace(".input_norm.", ".input_layernorm.").replace(".post_attn_norm.", ".post_attention_layernorm.")
        out[k] = v
    missing, unexpected = model.load_state_dict(out, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise SystemExit(f"--init-from {path}: missing {missing}, unexpected {unexpected}")


def train(out: Path, minutes: float, patience: int, eval_every: int, batch: int, lr: float,
          init_from: Path | None = None) -> dict:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(config())
    if init_from is not None:
        warm_start(model, init_from)
    tr, held, digest = corpus()
    evalb = heldout_batches(held)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    budget = minutes * 60
    curve0 = perplexity(model, evalb)
    print(f"held-out ppl at start {curve0:.3f}", flush=True)
    curve: list[tuple[int, float]] = []
    best, best_step, bad, step = float("inf"), 0, 0, 0
    while True:
        # warm-up over 30 steps, then a cosine over the time budget (2 shared cores: the step
        # count a budget buys varies, the schedule's shape does not)
        warm = min(1.0, (step + 1) / 30)
        frac = min(1.0, (time.time() - t0) / budget)
        cur = lr * warm * max(0.05, 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = cur
        starts = torch.randint(0, len(tr) - SEQ - 1, (batch,), generator=g)
        b = torch.stack([tr[s : s + SEQ + 1] for s in starts])
        model.train()
        loss = model(input_ids=b[:, :-1], labels=b[:, :-1].clone()).loss  # HF shifts the labels
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        over = time.time() - t0 > budget
        if step % eval_every == 0 or over:
            ppl = perplexity(model, evalb)
            curve.append((step, ppl))
            print(f"step {step} loss {loss.item():.3f} held-out ppl {ppl:.3f} ({time.time() - t0:.0f}s)", flush=True)
            if ppl < best - 1e-3:
                best, best_step, bad = ppl, step, 0
                model.save_pretrained(out, safe_serialization=True)
            else:
                bad += 1
            if bad >= patience or over:
                break
    info = {
        "steps": step, "best_step": best_step, "heldout_ppl": best, "seconds": round(time.time() - t0, 1),
        "stopped": "plateau" if bad >= patience else "time", "curve": curve, "files_sha256": digest,
        "train_bytes": len(tr), "heldout_bytes": len(held), "seq": SEQ, "batch": batch, "lr": lr,
        "torch": torch.__version__, "python": sys.version.split()[0],
        "init_from": str(init_from.relative_to(ROOT) if init_from and init_from.is_relative_to(ROOT) else init_from),
        "heldout_ppl_at_start": curve0,
    }
    (out / "train.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--minutes", type=float, default=14.0)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init-from", type=Path, default=ROOT / "models" / "checkpoints" / "bytes_lm.pt",
                    help="graphprune.models.llama state dict to warm start from ('' for none)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    init = a.init_from if str(a.init_from) not in ("", ".") and a.init_from.exists() else None
    info = train(a.out, a.minutes, a.patience, a.eval_every, a.batch, a.lr, init)
    print(json.dumps({k: v for k, v in info.items() if k != "curve"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
