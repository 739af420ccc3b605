"""GPT-NeoX (the Pythias and PolyPythias): a pre-LN decoder with rotary position embeddings.

The residual stream is the raw sum, read as for GPT-2: at the embedding (``emb_dropout``), at the
input of each layer's second norm and at each layer's output; the norms reading it take its
permutation.  With ``use_parallel_residual`` (the Pythias) attention and MLP read the *same* stream
through their own norms and both outputs join the layer output: the MLP's norm reads the layer input
(symbol ``ff.read``) and the attention output is written to the layer output (``att.write``); the
point ``res.<l>.att`` is then the layer input read again, and no weight uses it on its own.

``query_key_value`` is one Linear whose output holds, per head, the head's query, key and value
blocks side by side (``PerHead("qk", "qk", "att")``): the query and key blocks take the q/k group's
permutation, the value block the attention group's.  RoPE turns the first ``rotary`` dims of every
query and key head (``partial_rotary_factor``, 25 % in the Pythias, rounded up to an even count as
the rotary embedding does): they stay in place, the other q/k dims are free, identically in queries
and keys.  The q/k group's features are the queries (block 0 of each head of the fused output).  The
LM head ``lm_head`` (``embed_out`` in older checkpoints, renamed by transformers on load) is untied
by default; a tied one is the embedding."""
from __future__ import annotations

from .gpt2 import CAUSAL_LM_DECODER, CAUSAL_LM_HEAD, pre_ln_captures
from .spec import Capture, Family, PerHead, embedding, linear, linear_any_bias, norm


def _rotary(c) -> int:
    """Rotary dims per head, as the rotary embedding computes them (an even count)."""
    head = c.hidden_size // c.num_attention_heads
    rope = getattr(c, "rope_parameters", None) or {}
    factor = rope.get("partial_rotary_factor", getattr(c, "rotary_pct", 1.0))
    dims = int(head * factor)
    return min(head, dims + dims % 2)


_L = "{base}layers.{l}"

GPT_NEOX = Family(
    name="gpt_neox",
    model_types=("gpt_neox",),
    classes={"GPTNeoXForCausalLM": "causal-lm", "GPTNeoXModel": "base"},
    base="gpt_neox",
    sizes=lambda c: dict(layers=c.num_hidden_layers, hidden=c.hidden_size, heads=c.num_attention_heads,
                         intermediate=c.intermediate_size, embedding=c.hidden_size),
    norm="pre-ln",
    inputs=("input_ids", "attention_mask"),
    pair_fields=("model_type", "architecture", "vocab_size", "hidden_size", "num_hidden_layers",
                 "num_attention_heads", "intermediate_size", "hidden_act", "use_parallel_residual",
                 "attention_bias", "rope_parameters", "max_position_embeddings", "tie_word_embeddings"),
    embeddings=(embedding("embeddings", "{base}embed_in", "emb"),),
    layer=(norm("norm", f"{_L}.input_layernorm", "in"),
           *linear_any_bias("qkv", f"{_L}.attention.query_key_value", PerHead("qk", "qk", "att"), "in"),
           *linear_any_bias("attn-out", f"{_L}.attention.dense", "att.write", "att"),
           norm("norm", f"{_L}.post_attention_layernorm", "ff.read"),
           linear("ff-in", f"{_L}.mlp.dense_h_to_4h", "ff", "ff.read"),
           linear("ff-out", f"{_L}.mlp.dense_4h_to_h", "res.ff", "ff")),
    final=(norm("norm", "{base}final_layer_norm", "last"),),
    heads={"causal-lm": CAUSAL_LM_HEAD},
    captures={**pre_ln_captures(emb="{base}emb_dropout", layer=_L, attn_out=f"{_L}.attention.dense",
                                ff_norm=f"{_L}.post_attention_layernorm", ff_out=f"{_L}.mlp.dense_4h_to_h"),
              "qk": Capture(f"{_L}.attention.query_key_value", "output", part=(3, 0))},
    decoder=CAUSAL_LM_DECODER,
    block_specials=False,
    rotary=_rotary,
    parallel=lambda c: c.use_parallel_residual,
)
