"""Module route of hidden-size pruning: rescale each RMSNorm that lost channels.

``rules/hidden.py`` derives it: a norm over d channels of which d - d' are removed (exactly 0 in
the masked original) equals the same norm over the d' kept channels with

    eps' = eps * d / d'        scale' = scale * sqrt(d / d')

where ``scale`` is what multiplies the normalized input: ``w`` (LLaMA, Qwen2, Mistral, Phi-3,
graphprune.models.llama) or ``1 + w`` (Gemma, so ``w' = (1 + w) * sqrt(d/d') - 1``). Every norm
over the stream has the same d and d', so one ``rms_norm_eps`` in the config holds eps' for all
(``hf_attrs.update_config`` writes it with ``hidden_size = d'``).

Gemma multiplies the embedding by ``sqrt(hidden_size)`` (a buffer built from the config): a
reloaded model would use sqrt(d'). So the embedding weight is scaled by c = sqrt(d/d') and the
buffer set to sqrt(d'); when the lm_head shares that weight, the final norm's scale is divided by c
so the logits stay the same.

A norm over a removed statistic whose class is not in :data:`RMS_NORMS` raises
:class:`NotRewritable` (the fx route scales the mean itself), as does a model whose other
RMSNorms (per-head q/k norms over head_dim, Qwen3, Gemma3) read the same config eps: the config
could not hold both values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..analysis.coupling import Coupling
from .module_attrs import NotRewritable, by_class_name
from .slicing import pruned_shape

__all__ = ["RMS_NORMS", "NormConvention", "rescale_statistics"]


@dataclass(frozen=True)
class NormConvention:
    eps: str  # attribute holding eps
    one_plus: bool = False  # forward multiplies by (1 + weight)


def _hf(t: str, c: str) -> str:
    return f"transformers.models.{t}.modeling_{t}.{c}RMSNorm"


RMS_NORMS: dict[str, NormConvention] = {
    "graphprune.models.llama.RMSNorm": NormConvention("eps"),
    **{_hf(t, c): NormConvention("variance_epsilon") for t, c in (
        ("llama", "Llama"), ("qwen2", "Qwen2"), ("mistral", "Mistral"), ("phi3", "Phi3"), ("qwen3", "Qwen3"),
        ("granite", "Granite"), ("olmo2", "Olmo2"), ("starcoder2", "Starcoder2"))},
    _hf("gemma", "Gemma"): NormConvention("eps", one_plus=True),
    _hf("gemma2", "Gemma2"): NormConvention("eps", one_plus=True),
}

GEMMA_EMBEDDING = "transformers.models.gemma.modeling_gemma.GemmaTextScaledWordEmbedding"


def convention(mod: nn.Module) -> NormConvention | None:
    return by_class_name(RMS_NORMS, mod)


def _qualname(mod: nn.Module) -> str:
    return f"{type(mod).__module__}.{type(mod).__qualname__}"


def shrunk_norms(coupling: Coupling, removed: np.ndarray) -> dict[str, tuple[int, int]]:
    """Module path -> (d, d') of every mean over a statistic space that lost channels."""
    out: dict[str, tuple[int, int]] = {}
    for node in coupling.graph.nodes:
        if node.op != "reduce" or not node.inputs or node.inputs[0] is None:
            continue
        x = node.inputs[0]
        for ax in node.attrs.get("axes", ()):
            ax %= x.rank
            if (x.index, ax) in coupling.statistics:
                d, dn = x.shape[ax], pruned_shape(coupling, x, removed)[ax]
                if d != dn:
                    out[node.scope] = (d, dn)
    return out


def rescale_statistics(new: nn.Module, coupling: Coupling, removed: np.ndarray) -> dict[str, float]:
    """Rescale, in the rewritten ``new`` (already sliced), every RMSNorm that lost channels;
    returns ``{"eps": eps'}`` of the norms (empty when nothing changed)."""
    norms = shrunk_norms(coupling, removed)
    if not norms:
        return {}
    ratios = {d / dn for d, dn in norms.values()}
    if len(ratios) != 1:
        raise NotRewritable(f"hidden-size pruning: norms lost different shares of their channels ({sorted(ratios)})")
    ratio = ratios.pop()
    c = math.sqrt(ratio)
    done: set[int] = set()
    eps_new: set[float] = set()
    with torch.no_grad():
        for path in sorted(norms):
            mod = new.get_submodule(path) if path else new
            conv = convention(mod)
            if conv is None:
                raise NotRewritable(f"hidden-size pruning: {type(mod).__name__} at {path!r} is not a known RMSNorm class "
                                    "(graphprune.rewrite.hidden.RMS_NORMS); the fx route scales its mean instead")
            if id(mod) in done:
                continue
            done.add(id(mod))
            _scale_norm(mod, conv, c)
            setattr(mod, conv.eps, float(getattr(mod, conv.eps)) * ratio)
            eps_new.add(float(getattr(mod, conv.eps)))
        _refuse_shared_eps(new, done)
        _gemma_embedding(new, c)
    return {"eps": eps_new.pop()} if len(eps_new) == 1 else {}


def _scale_norm(mod: nn.Module, conv: NormConvention, c: float) -> None:
    w = mod.weight
    if conv.one_plus:
        w.copy_((1 + w.float()) * c - 1)
    else:
        w.mul_(c)


def _refuse_shared_eps(new: nn.Module, done: set[int]) -> None:
    """Other RMSNorms of a transformers model (q/k norms over head_dim) read the same config eps:
    one config field cannot hold the stream's eps' and theirs."""
    if getattr(getattr(new, "config", None), "rms_norm_eps", None) is None:
        return
    for name, m in new.named_modules():
        if id(m) not in done and convention(m) is not None:
            raise NotRewritable(f"hidden-size pruning: {name!r} ({type(m).__name__}) reads config.rms_norm_eps too; its eps "
                                "cannot stay while the stream's norms take eps * d/d' (the fx route is exact)")


def _gemma_embedding(new: nn.Module, c: float) -> None:
    for name, emb in new.named_modules():
        if _qualname(emb) != GEMMA_EMBEDDING or c == 1.0:
            continue
        d_new = emb.weight.shape[1]
        emb.weight.mul_(c)
        emb.embed_scale.fill_(math.sqrt(d_new))
        emb.scalar_embed_scale = math.sqrt(d_new)
        head = new.get_output_embeddings() if hasattr(new, "get_output_embeddings") else None
        if head is not None and head.weight is emb.weight:
            final = _final_norm(new)
            conv = convention(final) if final is not None else None
            if final is None or conv is None:
                raise NotRewritable(f"hidden-size pruning: Gemma embedding {name!r} is tied to lm_head but no final norm found")
            _scale_norm(final, conv, 1.0 / c)


def _final_norm(new: nn.Module) -> nn.Module | None:
    base = getattr(new, "model", None) or getattr(new, "base_model", None)
    norm = getattr(base, "norm", None)
    return norm if isinstance(norm, nn.Module) else None
