"""More transformers families on the module route: Falcon, Mamba and the mixture-of-experts decoders.

Registered into the same tables as :mod:`graphprune.rewrite.hf_attrs` (``NAMED_UPDATERS`` by
qualified class name, ``SPECS`` by ``model_type``); imported by it, so nothing here imports
transformers.

- ``FalconAttention`` (fused ``query_key_value``, ``x @ w.T``): the query heads are
  ``dense.in_features // head_dim``; the KV heads are what is left of the fused projection,
  ``(qkv_out / head_dim - q) / 2`` (new decoder architecture: KV groups; multi-query: 1; classic:
  = q). Its forward reshapes with ``self.num_heads``, so both are set. ``head_dim`` is
  ``hidden_size // num_attention_heads`` in the config: pruned heads are a ``fixed`` width
  (``uniform=True`` keeps them whole; per-layer widths go to the one-line loader).
- ``<Family>Experts`` (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, PhiMoE, DeepSeek-V2): one
  ``[E, 2I, H]`` gate_up and one ``[E, H, I]`` down tensor (``[E, H, 2I]`` / ``[E, I, H]`` when
  ``is_transposed``); a unit removes channel j from every expert, so ``intermediate_dim`` is one
  number per layer; the config field is ``intermediate_size`` (Mixtral, OLMoE, PhiMoE) or
  ``moe_intermediate_size`` (Qwen2/3-MoE, DeepSeek-V2).
- Whole experts (rules/moe.py): the experts' axis 0 and the router's rows go together; the
  experts module and the ``<Family>TopKRouter`` read ``num_experts`` from their weights' first
  axis, and the config's expert count (``num_local_experts``: Mixtral, PhiMoE; ``num_experts``:
  the others) follows. ``num_experts_per_tok`` is kept: the rules keep at least k experts.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .hf_attrs import (
    SPECS,
    Field,
    ModelSpec,
    _heads,
    _llama_like,
    _mlp,
    _qkv_attention,
    _register,
    _set_heads,
)

__all__ = ["EXPERT_COUNT", "MOE_FAMILIES", "experts_count", "experts_width"]

# model_type -> config field of the expert count
EXPERT_COUNT: dict[str, str] = {
    "mixtral": "num_local_experts", "qwen2_moe": "num_experts", "qwen3_moe": "num_experts",
    "olmoe": "num_experts", "phimoe": "num_local_experts", "deepseek_v2": "num_experts",
}
# router class suffix (DeepSeek-V2 spells it TopkRouter)
_ROUTER = {"deepseek_v2": "TopkRouter"}

# model_type -> (class prefix, config field of the experts' intermediate width)
MOE_FAMILIES: dict[str, tuple[str, str]] = {
    "mixtral": ("Mixtral", "intermediate_size"),
    "qwen2_moe": ("Qwen2Moe", "moe_intermediate_size"),
    "qwen3_moe": ("Qwen3Moe", "moe_intermediate_size"),
    "olmoe": ("Olmoe", "intermediate_size"),
    "phimoe": ("Phimoe", "intermediate_size"),
    "deepseek_v2": ("DeepseekV2", "moe_intermediate_size"),
}


def experts_width(m: nn.Module) -> int:
    """The per-expert intermediate width of a fused experts module (read from ``down_proj``)."""
    return int(m.down_proj.shape[1 if getattr(m, "is_transposed", False) else 2])


@_register(*(f"transformers.models.{t}.modeling_{t}.{c}Experts" for t, (c, _) in MOE_FAMILIES.items()))
def _experts(m: nn.Module) -> None:
    m.intermediate_dim = experts_width(m)
    m.num_experts = experts_count(m)


def experts_count(m: nn.Module) -> int:
    """How many experts a fused experts module holds (its weights' first axis)."""
    return int(m.down_proj.shape[0])


@_register(*(f"transformers.models.{t}.modeling_{t}.{c}{_ROUTER.get(t, 'TopKRouter')}"
             for t, (c, _) in MOE_FAMILIES.items()))
def _router(m: nn.Module) -> None:
    m.num_experts = int(m.weight.shape[0])
    if hasattr(m, "out_features"):  # PhiMoE's router is an nn.Linear
        m.out_features = m.num_experts


_register(*(f"transformers.models.{t}.modeling_{t}.{c}Attention" for t, (c, _) in MOE_FAMILIES.items()
            if t != "deepseek_v2"))(_qkv_attention)  # DeepSeek-V2's MLA has no q_proj/k_proj per head


@_register("transformers.models.falcon.modeling_falcon.FalconAttention")
def _falcon_attention(m: nn.Module) -> None:
    q = _heads(m.dense.in_features, m.head_dim, "FalconAttention.dense")
    rest = m.query_key_value.out_features - q * m.head_dim
    kv = _heads(rest // 2, m.head_dim, "FalconAttention.query_key_value") if rest % 2 == 0 else 0
    _set_heads(m, q, kv)
    m.num_kv_heads = kv


def _mla_heads(m: nn.Module) -> int:
    return _heads(m.o_proj.in_features, m.v_head_dim, f"{type(m).__name__}.o_proj")


@_register("transformers.models.deepseek_v2.modeling_deepseek_v2.DeepseekV2Attention")
def _mla_attention(m: nn.Module) -> None:
    """DeepSeek-V2's multi-head latent attention: q_proj, kv_b_proj and o_proj hold whole heads
    (rules/inplace.py, rules/complex_views.py); its forward reshapes with -1, the count is kept true."""
    heads = _mla_heads(m)
    _set_heads(m, heads, heads)


@_register("transformers.models.mamba.modeling_mamba.MambaMixer")
def _mamba_mixer(m: nn.Module) -> None:
    """Mamba: d_inner channels (in_proj's two halves, conv1d, x_proj's input, dt_proj's output,
    A_log, D, out_proj's input) and the dt rank (x_proj's first rows, dt_proj's input), which its
    forward splits with ``self.time_step_rank``."""
    m.intermediate_size = int(m.out_proj.in_features)
    m.time_step_rank = int(m.dt_proj.in_features)


def _falcon_qkv(c: object) -> int:
    hd = c.hidden_size // c.num_attention_heads  # type: ignore[attr-defined]
    if c.new_decoder_architecture:  # type: ignore[attr-defined]
        return (2 * c.num_kv_heads + c.num_attention_heads) * hd  # type: ignore[attr-defined]
    return c.hidden_size + 2 * hd if c.multi_query else 3 * c.hidden_size  # type: ignore[attr-defined]


def _moe_spec(model_type: str) -> ModelSpec:
    prefix, key = MOE_FAMILIES[model_type]
    fields: tuple[Field, ...] = (Field(key, f"{prefix}Experts", experts_width),
                                 Field(EXPERT_COUNT[model_type], f"{prefix}Experts", experts_count))
    if model_type == "deepseek_v2":  # MLA: one latent KV expanded to every query head
        heads = (Field("num_attention_heads", "DeepseekV2Attention", _mla_heads),
                 Field("num_key_value_heads", "DeepseekV2Attention", _mla_heads))
        return ModelSpec(fields + heads)
    attn = _llama_like(prefix).fields[1:]  # query / KV heads, head_dim explicit
    if model_type == "qwen2_moe":  # its shared expert is a Qwen2MoeMLP of shared_expert_intermediate_size
        fields += (Field("shared_expert_intermediate_size", "Qwen2MoeMLP", _mlp()),)
    return ModelSpec(fields + attn, write_head_dim=f"{prefix}Attention")


_SPECS: dict[str, Callable[[], ModelSpec]] = {
    **{t: (lambda t=t: _moe_spec(t)) for t in MOE_FAMILIES},
    "falcon": lambda: ModelSpec(
        (Field("ffn_hidden_size", "FalconMLP", lambda m: int(m.dense_h_to_4h.weight.shape[0])),),
        fixed=(("FalconAttention", "query_key_value.weight", 0, _falcon_qkv),)),
    "mamba": lambda: ModelSpec(
        (Field("intermediate_size", "MambaMixer", lambda m: int(m.out_proj.in_features)),
         Field("time_step_rank", "MambaMixer", lambda m: int(m.dt_proj.in_features)))),
}
for _t, _make in _SPECS.items():
    SPECS.setdefault(_t, _make())
