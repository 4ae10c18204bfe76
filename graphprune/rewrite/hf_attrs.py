"""Hugging Face transformers on the module route: per-class updaters and the config mapping.

Nothing here imports transformers: classes are registered by qualified name into
:data:`graphprune.rewrite.module_attrs.NAMED_UPDATERS`, and a model is recognized by the
``model_type`` of its ``config``. :func:`graphprune.rewrite.to_torch.rewrite_module` imports this
module only when ``transformers`` is already imported (a transformers model implies it).

Updaters (derived from the current weights, idempotent):

- ``Conv1D`` (GPT-2): weight is ``[nx, nf]`` (transposed vs nn.Linear): ``nx, nf = weight.shape``.
- attention with separate q/k/v projections (LLaMA, Qwen2, Qwen3, Mistral, Gemma, OLMo, Granite,
  Starcoder2, Phi, StableLM, OPT, ViT, BERT): the head count attributes the module holds (``num_heads``, ``num_attention_heads``, ``num_key_value_heads``,
  ``num_key_value_groups``, ``all_head_size``) follow ``q/k_proj.out_features // head_dim``; head_dim
  never changes (a unit is a whole head / KV group). StableLM and OPT reshape with
  ``self.num_heads`` (OPT without an error: the sequence axis absorbs the difference), so they need it.
- Phi-3 (fused ``qkv_proj``): its forward slices ``qkv`` at ``config.num_attention_heads * head_dim``,
  so a layer whose head counts differ from the shared config gets its own shallow config copy.
- GPT-2 attention (fused ``c_attn``): ``split_size = c_attn.nf // 3``, ``num_heads`` follows.

Config mapping (:data:`SPECS`, keyed by ``model_type``): which config field each repeated layer's
width is, read from the pruned modules. :func:`layer_widths` lists them per layer;
:func:`update_config` writes them into the shared config when every layer of a kind agrees (so
stock ``save_pretrained`` + ``from_pretrained`` rebuilds the same shapes) and otherwise records the
per-layer widths in ``config.graphprune``. Widths a stock config cannot express (GPT-2, BERT,
RoBERTa, ELECTRA, ALBERT, DistilBERT, GPT-NeoX, OPT and StableLM derive head_dim from
``hidden_size // num_heads``) are listed by :func:`stock_fixed`; ``uniform=True`` keeps them unpruned.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .module_attrs import NAMED_UPDATERS, NotRewritable, Updater

__all__ = ["SPECS", "Field", "ModelSpec", "decoder_layers", "drop_layers", "hf_config", "layer_widths", "spec_for", "stock_fixed",
           "update_config"]

CONFIG_KEY = "graphprune"  # config attribute holding per-layer widths (and the loader's name)
LOADER = "graphprune.load_pretrained"


def _register(*names: str) -> Callable[[Updater], Updater]:
    def deco(fn: Updater) -> Updater:
        for n in names:
            NAMED_UPDATERS[n] = fn
        return fn

    return deco


def _heads(width: int, head_dim: int, what: str) -> int:
    if width % head_dim:
        raise NotRewritable(f"{what}: {width} channels are not whole heads of head_dim {head_dim}")
    return width // head_dim


@_register("transformers.pytorch_utils.Conv1D")
def _conv1d(m: nn.Module) -> None:
    m.nx, m.nf = m.weight.shape


def _set_heads(m: nn.Module, q_heads: int, kv_heads: int) -> None:
    if kv_heads < 1 or q_heads % kv_heads:
        raise NotRewritable(f"{type(m).__name__}: {q_heads} query heads do not share {kv_heads} KV heads evenly")
    for attr, val in (("num_heads", q_heads), ("num_attention_heads", q_heads), ("num_key_value_heads", kv_heads),
                      ("num_key_value_groups", q_heads // kv_heads)):
        if isinstance(getattr(m, attr, None), int):
            setattr(m, attr, val)


@_register(*(f"transformers.models.{t}.modeling_{t}.{c}Attention" for t, c in
             (("llama", "Llama"), ("qwen2", "Qwen2"), ("mistral", "Mistral"), ("gemma", "Gemma"), ("vit", "ViT"),
              ("qwen3", "Qwen3"), ("olmo", "Olmo"), ("granite", "Granite"), ("starcoder2", "Starcoder2"),
              ("phi", "Phi"), ("stablelm", "StableLm"), ("opt", "OPT"))))
def _qkv_attention(m: nn.Module) -> None:
    name = type(m).__name__
    _set_heads(m, _heads(m.q_proj.out_features, m.head_dim, f"{name}.q_proj"),
               _heads(m.k_proj.out_features, m.head_dim, f"{name}.k_proj"))


@_register("transformers.models.bert.modeling_bert.BertSelfAttention")
def _bert_attention(m: nn.Module) -> None:
    heads = _heads(m.query.out_features, m.attention_head_size, "BertSelfAttention.query")
    _set_heads(m, heads, heads)
    m.all_head_size = heads * m.attention_head_size


@_register("transformers.models.phi3.modeling_phi3.Phi3Attention")
def _phi3_attention(m: nn.Module) -> None:
    q = _heads(m.o_proj.in_features, m.head_dim, "Phi3Attention.o_proj")
    kv = _heads((m.qkv_proj.out_features - q * m.head_dim) // 2, m.head_dim, "Phi3Attention.qkv_proj")
    _set_heads(m, q, kv)
    cfg = m.config
    if (cfg.num_attention_heads, cfg.num_key_value_heads) != (q, kv):
        m.config = copy.copy(cfg)  # this layer's own widths; the shared config stays the model's
        m.config.num_attention_heads, m.config.num_key_value_heads = q, kv


@_register("transformers.models.gpt2.modeling_gpt2.GPT2Attention")
def _gpt2_attention(m: nn.Module) -> None:
    if getattr(m, "is_cross_attention", False):
        raise NotRewritable("GPT2Attention with cross attention: c_attn holds k/v only and q_attn the queries")
    if m.c_attn.nf % 3:
        raise NotRewritable(f"GPT2Attention.c_attn: {m.c_attn.nf} outputs are not 3 equal q/k/v parts")
    m.split_size = m.c_attn.nf // 3
    heads = _heads(m.split_size, m.head_dim, "GPT2Attention.c_attn")
    _set_heads(m, heads, heads)


# ------------------------------------------------------------------------------- config mapping


@dataclass(frozen=True)
class Field:
    """One config field whose value is a width of a repeated module class."""

    key: str  # config field, e.g. intermediate_size
    cls: str  # class name of the repeated module (matched within transformers.models.<type>)
    read: Callable[[nn.Module], int]


@dataclass(frozen=True)
class ModelSpec:
    fields: tuple[Field, ...]
    write_head_dim: str | None = None  # attention class whose head_dim the config must state explicitly
    # (class, weight attr, axis, the size a stock config builds): widths a stock config cannot shrink
    fixed: tuple[tuple[str, str, int, Callable[[Any], int]], ...] = ()


def _mlp(down: str = "down_proj") -> Callable[[nn.Module], int]:
    return lambda m: int(getattr(m, down).weight.shape[1])


def _llama_like(c: str) -> ModelSpec:
    return ModelSpec(
        (Field("intermediate_size", f"{c}MLP", _mlp()),
         Field("num_attention_heads", f"{c}Attention", lambda m: m.q_proj.out_features // m.head_dim),
         Field("num_key_value_heads", f"{c}Attention", lambda m: m.k_proj.out_features // m.head_dim)),
        write_head_dim=f"{c}Attention",
    )


SPECS: dict[str, ModelSpec] = {
    "llama": _llama_like("Llama"),
    "qwen2": _llama_like("Qwen2"),
    "mistral": _llama_like("Mistral"),
    "gemma": _llama_like("Gemma"),
    "phi3": ModelSpec(
        (Field("intermediate_size", "Phi3MLP", _mlp()),
         Field("num_attention_heads", "Phi3Attention", lambda m: m.o_proj.in_features // m.head_dim),
         Field("num_key_value_heads", "Phi3Attention",
               lambda m: (m.qkv_proj.out_features - m.o_proj.in_features) // 2 // m.head_dim)),
        write_head_dim="Phi3Attention",
    ),
    "vit": ModelSpec(
        (Field("intermediate_size", "ViTMLP", lambda m: int(m.fc1.weight.shape[0])),
         Field("num_attention_heads", "ViTAttention", lambda m: m.q_proj.out_features // m.head_dim)),
        write_head_dim="ViTAttention",
    ),
    "qwen3": _llama_like("Qwen3"),
    "olmo": _llama_like("Olmo"),
    "granite": _llama_like("Granite"),
    "starcoder2": ModelSpec(
        (Field("intermediate_size", "Starcoder2MLP", lambda m: int(m.c_fc.weight.shape[0])),
         *_llama_like("Starcoder2").fields[1:]),
        write_head_dim="Starcoder2Attention",
    ),
    "phi": ModelSpec(
        (Field("intermediate_size", "PhiMLP", lambda m: int(m.fc1.weight.shape[0])),
         *_llama_like("Phi").fields[1:]),
        write_head_dim="PhiAttention",
    ),
    "t5": ModelSpec(  # d_kv is explicit in the config: heads can be written
        (Field("d_ff", "T5DenseActDense", lambda m: int(m.wi.weight.shape[0])),
         Field("num_heads", "T5Attention", lambda m: m.q.out_features // m.key_value_proj_dim)),
    ),
    # head_dim = hidden_size // num_heads in these: pruned heads cannot be written in the config
    "gpt2": ModelSpec((Field("n_inner", "GPT2MLP", lambda m: int(m.c_fc.weight.shape[1])),),
                      fixed=(("GPT2Attention", "c_attn.weight", 1, lambda c: 3 * c.hidden_size),)),
    "bert": ModelSpec((Field("intermediate_size", "BertIntermediate", lambda m: int(m.dense.weight.shape[0])),),
                      fixed=(("BertSelfAttention", "query.weight", 0, lambda c: c.hidden_size),)),
    **{t: ModelSpec((Field("intermediate_size", f"{c}Intermediate", lambda m: int(m.dense.weight.shape[0])),),
                    fixed=((f"{c}SelfAttention", "query.weight", 0, lambda c: c.hidden_size),))
       for t, c in (("roberta", "Roberta"), ("electra", "Electra"))},
    "distilbert": ModelSpec((Field("hidden_dim", "FFN", lambda m: int(m.lin1.weight.shape[0])),),
                            fixed=(("DistilBertSelfAttention", "q_lin.weight", 0, lambda c: c.dim),)),
    "albert": ModelSpec((Field("intermediate_size", "AlbertLayer", lambda m: int(m.ffn.weight.shape[0])),),
                        fixed=(("AlbertAttention", "query.weight", 0, lambda c: c.hidden_size),)),
    "gpt_neox": ModelSpec((Field("intermediate_size", "GPTNeoXMLP", lambda m: int(m.dense_h_to_4h.weight.shape[0])),),
                          fixed=(("GPTNeoXAttention", "query_key_value.weight", 0, lambda c: 3 * c.hidden_size),)),
    "opt": ModelSpec((Field("ffn_dim", "OPTDecoderLayer", lambda m: int(m.fc1.weight.shape[0])),),
                     fixed=(("OPTAttention", "q_proj.weight", 0, lambda c: c.hidden_size),)),
    "stablelm": ModelSpec((Field("intermediate_size", "StableLmMLP", _mlp()),),
                          fixed=(("StableLmAttention", "q_proj.weight", 0, lambda c: c.hidden_size),)),
}


def hf_config(model: nn.Module) -> Any:
    """The transformers config of ``model`` (a PreTrainedModel), else None."""
    cfg = getattr(model, "config", None)
    return cfg if isinstance(getattr(cfg, "model_type", None), str) and hasattr(cfg, "to_dict") else None


def spec_for(model: nn.Module) -> ModelSpec | None:
    cfg = hf_config(model)
    return SPECS.get(cfg.model_type) if cfg is not None else None


def _of_class(model: nn.Module, cls: str) -> list[tuple[str, nn.Module]]:
    model_type = hf_config(model).model_type
    pat = re.compile(rf"transformers\.models\.{re.escape(model_type)}\.")
    return [(n, m) for n, m in model.named_modules()
            if type(m).__name__ == cls and pat.match(type(m).__module__ + ".")]


def layer_widths(model: nn.Module) -> dict[str, list[int]] | None:
    """Per config field, the width of each repeated layer in order; None for an unmapped class."""
    spec = spec_for(model)
    if spec is None:
        return None
    return {f.key: [f.read(m) for _, m in _of_class(model, f.cls)] for f in spec.fields}


def stock_fixed(model: nn.Module) -> list[tuple[str, int]]:
    """(parameter FQN relative to ``model``, axis) pairs a stock config cannot express shrunk.
    Searches ``model`` and its submodules for transformers models (a wrapper is fine)."""
    out: list[tuple[str, int]] = []
    for prefix, sub in model.named_modules():
        spec = spec_for(sub)
        if spec is None or (prefix and hf_config(model) is hf_config(sub)):
            continue  # a submodule sharing the parent's config was handled with the parent
        for cls, attr, axis, _ in spec.fixed:
            for name, _ in _of_class(sub, cls):
                full = ".".join(p for p in (prefix, name, attr) if p)
                out.append((full, axis))
    return out


def update_config(model: nn.Module) -> dict[str, Any]:
    """Write the pruned widths into ``model.config``. A field whose width every layer shares is
    written (and ``head_dim``, where the model reads it from the config and it no longer follows
    from ``hidden_size // num_attention_heads``), so stock ``from_pretrained`` rebuilds the shapes.
    Fields that differ per layer keep their original value and the per-layer widths go to
    ``config.graphprune = {"loader": ..., "layers": {field: [width per layer]}, "fixed_changed": [...]}``
    (also when a width the stock config cannot express was pruned). Returns what was found."""
    cfg = hf_config(model)
    spec = spec_for(model)
    if cfg is None or spec is None:
        return {}
    widths = layer_widths(model) or {}
    per_layer = {k: v for k, v in widths.items() if v and len(set(v)) > 1}
    uniform = {k: v[0] for k, v in widths.items() if v and len(set(v)) == 1}
    for k, v in uniform.items():
        if getattr(cfg, k) != v:
            setattr(cfg, k, v)
    if spec.write_head_dim:
        attn = _of_class(model, spec.write_head_dim)
        stated = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        if attn and stated != attn[0][1].head_dim:
            cfg.head_dim = int(attn[0][1].head_dim)
    _update_hidden(model, cfg)
    fixed = _fixed_changed(model, spec)
    if per_layer or fixed:
        setattr(cfg, CONFIG_KEY, {"loader": LOADER, "layers": per_layer, "fixed_changed": fixed})
    elif hasattr(cfg, CONFIG_KEY):
        delattr(cfg, CONFIG_KEY)
    if not per_layer:
        _share_config(model, spec)
    return {"uniform": uniform, "per_layer": per_layer, "fixed_changed": fixed}


def _update_hidden(model: nn.Module, cfg: Any) -> None:
    """Hidden-size pruning: ``hidden_size`` follows the final RMSNorm's (and the input
    embedding's) width, ``head_dim`` is stated explicitly (it no longer follows from
    hidden_size // heads) and ``rms_norm_eps`` takes the rescaled eps of the stream's norms
    (rewrite/hidden.py). Models without a known final RMSNorm (ALBERT's narrower embedding, OPT's
    projection) are left alone."""
    from .hidden import convention

    base = getattr(model, "model", None)
    norm = getattr(base, "norm", None) if base is not None else None
    conv = convention(norm) if isinstance(norm, nn.Module) else None
    if conv is None or not hasattr(cfg, "rms_norm_eps") or not hasattr(cfg, "hidden_size"):
        return
    width = int(norm.weight.shape[0])  # type: ignore[union-attr]
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if width == cfg.hidden_size or getattr(getattr(emb, "weight", None), "shape", (0, 0))[-1] != width:
        return
    if not getattr(cfg, "head_dim", None) and getattr(cfg, "num_attention_heads", None):
        cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads  # was implied by the old hidden size
    cfg.hidden_size = width
    cfg.rms_norm_eps = float(getattr(norm, conv.eps))


def _fixed_changed(model: nn.Module, spec: ModelSpec) -> list[str]:
    """Modules whose widths the stock config cannot express and that were pruned anyway."""
    cfg = hf_config(model)
    out = []
    for cls, attr, axis, stock in spec.fixed:
        for name, m in _of_class(model, cls):
            mod_path, _, pname = attr.rpartition(".")
            w = getattr(m.get_submodule(mod_path) if mod_path else m, pname)
            if w.shape[axis] != stock(cfg):
                out.append(name)
    return out


def _share_config(model: nn.Module, spec: ModelSpec) -> None:
    """Layers that took a private config copy (Phi-3) use the shared one again once it holds
    their widths, so the model is what stock ``from_pretrained`` builds."""
    cfg = hf_config(model)
    for f in spec.fields:
        for _, m in _of_class(model, f.cls):
            own = getattr(m, "config", None)
            if own is not None and own is not cfg and type(own) is type(cfg) and \
                    all(getattr(own, g.key, None) == getattr(cfg, g.key, None) for g in spec.fields):
                m.config = cfg


# -- whole decoder layers (analysis/depth.py: drop_decoder_layers) --------------------------------

def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The ModuleList of decoder layers of a transformers causal LM (``model.model.layers``, the
    LLaMA family's layout), else None."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    return layers if hf_config(model) is not None and isinstance(layers, nn.ModuleList) and len(layers) else None


def drop_layers(model: nn.Module, drop: list[int]) -> nn.Module:
    """A NEW model (deep copy) without the decoder layers ``drop``. What transformers indexes by
    layer follows: every module's ``layer_idx`` (attention modules index the KV cache with it) is
    renumbered to the layer's new position, and the config's ``num_hidden_layers`` and per-layer
    lists (``layer_types``, ...) keep the surviving entries, so ``save_pretrained`` ->
    ``from_pretrained`` and ``generate()`` with a cache work on the result."""
    layers = decoder_layers(model)
    if layers is None:
        raise NotRewritable(f"{type(model).__name__}: no decoder layer list (model.model.layers)")
    n = len(layers)
    keep = [i for i in range(n) if i not in set(drop)]
    new = copy.deepcopy(model)
    cfg = hf_config(new)
    new_layers = nn.ModuleList([decoder_layers(new)[i] for i in keep])  # type: ignore[index]
    new.model.layers = new_layers  # type: ignore[union-attr]
    for pos, layer in enumerate(new_layers):
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = pos
    for key, val in list(vars(cfg).items()):
        if key != "num_hidden_layers" and isinstance(val, list) and len(val) == n:
            setattr(cfg, key, [val[i] for i in keep])
    cfg.num_hidden_layers = len(keep)
    return new


from . import hf_families  # noqa: E402,F401  (Falcon, MoE: registers into NAMED_UPDATERS and SPECS)
