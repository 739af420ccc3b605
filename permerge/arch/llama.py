"""Llama-style decoders: pre-norm with RMSNorm, rotary position embeddings on every query/key dim,
grouped key/value heads, a SwiGLU MLP, tied or untied LM head.

The residual stream is read as for GPT-2 (the embedding output, the input of each layer's second
norm, each layer's output) and the RMSNorms reading it take its permutation on their weight (they
have no bias).  Attention has separate projections: ``q_proj`` carries the q/k group (one query head
per block of ``head_dim`` rows), ``k_proj`` the same group reduced to the key/value heads
(``KV("qk")``), ``v_proj`` the attention group reduced likewise (``KV("att")``), ``o_proj``'s
columns the attention group (the head contexts).  With ``num_key_value_heads`` < heads, a key/value
head and the query heads it serves move as a block, and query heads may be permuted within it.
RoPE turns every q/k dim (``rotary`` = ``head_dim``), so inside a head the q/k dims stay in place
and only whole heads move them; the value dims are free.  The SwiGLU MLP's ``gate_proj`` and
``up_proj`` rows share the FF group's permutation (their product is taken unit by unit) and
``down_proj``'s columns take it too.

The Hugging Face RMSNorm computes in float32 even in a float64 model, so the float64 equivalence
check has float32's rounding floor here (2e-7 to 6e-7 relative on the tested configurations,
growing with depth and width): its tolerance is 1e-4, far below the error of a broken permutation
(0.9 to 1.1 relative for one swapped rotary dim on the tested configurations)."""
from __future__ import annotations

from .gpt2 import CAUSAL_LM_DECODER, CAUSAL_LM_HEAD, pre_ln_captures
from .spec import KV, Capture, Family, embedding, linear_any_bias, norm


def _head_dim(c) -> int:
    return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


_L = "{base}layers.{l}"

LLAMA = Family(
    name="llama",
    model_types=("llama",),
    classes={"LlamaForCausalLM": "causal-lm", "LlamaModel": "base"},
    base="model",
    sizes=lambda c: dict(layers=c.num_hidden_layers, hidden=c.hidden_size, heads=c.num_attention_heads,
                         intermediate=c.intermediate_size, embedding=c.hidden_size, head_dim=_head_dim(c)),
    norm="pre-ln",
    inputs=("input_ids", "attention_mask"),
    pair_fields=("model_type", "architecture", "vocab_size", "hidden_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size", "hidden_act",
                 "attention_bias", "mlp_bias", "rope_parameters", "max_position_embeddings", "tie_word_embeddings"),
    embeddings=(embedding("embeddings", "{base}embed_tokens", "emb"),),
    layer=(norm("norm", f"{_L}.input_layernorm", "in", bias=False),
           *linear_any_bias("q", f"{_L}.self_attn.q_proj", "qk", "in"),
           *linear_any_bias("k", f"{_L}.self_attn.k_proj", KV("qk"), "in"),
           *linear_any_bias("v", f"{_L}.self_attn.v_proj", KV("att"), "in"),
           *linear_any_bias("attn-out", f"{_L}.self_attn.o_proj", "res.att", "att"),
           norm("norm", f"{_L}.post_attention_layernorm", "res.att", bias=False),
           *linear_any_bias("ff-in", f"{_L}.mlp.gate_proj", "ff", "res.att"),
           *linear_any_bias("ff-in", f"{_L}.mlp.up_proj", "ff", "res.att"),
           *linear_any_bias("ff-out", f"{_L}.mlp.down_proj", "res.ff", "ff")),
    final=(norm("norm", "{base}norm", "last", bias=False),),
    heads={"causal-lm": CAUSAL_LM_HEAD},
    captures={**pre_ln_captures(emb="{base}embed_tokens", layer=_L, attn_out=f"{_L}.self_attn.o_proj",
                                ff_norm=f"{_L}.post_attention_layernorm", ff_out=f"{_L}.mlp.down_proj"),
              "qk": Capture(f"{_L}.self_attn.q_proj", "output")},
    decoder=CAUSAL_LM_DECODER,
    block_specials=False,
    rotary=_head_dim,
    kv_heads=lambda c: getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
    equivalence_tol=1e-4,
)
