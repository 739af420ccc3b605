"""GPT-2: a pre-LN decoder.  The residual stream is the raw sum (embeddings, then + attention,
+ MLP per block); its points are read at the embedding sum (the dropout after it), at the input of
each block's second norm and at each block's output, and every norm reading the stream (ln_1,
ln_2, ln_f) takes the stream's permutation on its gamma and beta.  ``c_attn`` is one Conv1D
holding Q, K and V side by side, so the attention permutation is tiled three times on its output
axis; Conv1D weights are stored [in, out].  The LM head is tied to ``wte``; the sequence
classifier's ``score`` (no bias) reads the final state of the last non-pad token.  Text blocks carry no
special tokens."""
from __future__ import annotations

from .spec import Capture, Family, conv1d, embedding, linear, norm

_H = "{base}h.{l}"

# Shared by the pre-LN decoders (GPT-2, GPT-NeoX, Llama): an LM head that is the word embedding
# when tied, and the points where the raw residual sum is read.
CAUSAL_LM_HEAD = (embedding("decoder", "lm_head", "dec", optional=True),)
CAUSAL_LM_DECODER = {"causal-lm": "lm_head.weight"}


def pre_ln_captures(*, emb: str, layer: str, attn_out: str, ff_norm: str, ff_out: str) -> dict[str, Capture]:
    """A pre-LN decoder's capture points: the residual stream at the embedding output, at the input
    of each layer's second norm and at each layer's output; the attention and feed-forward features
    at the inputs of their output projections."""
    return {"res.emb": Capture(emb, "output"),
            "att": Capture(attn_out, "input"),
            "ff": Capture(ff_out, "input"),
            "res.att": Capture(ff_norm, "input"),
            "res.ff": Capture(layer, "output")}


GPT2 = Family(
    name="gpt2",
    model_types=("gpt2",),
    classes={"GPT2LMHeadModel": "causal-lm", "GPT2ForSequenceClassification": "classifier", "GPT2Model": "base"},
    base="transformer",
    sizes=lambda c: dict(layers=c.n_layer, hidden=c.n_embd, heads=c.n_head,
                         intermediate=c.n_inner or 4 * c.n_embd, embedding=c.n_embd),
    norm="pre-ln",
    inputs=("input_ids", "attention_mask"),
    pair_fields=("model_type", "architecture", "vocab_size", "n_embd", "n_layer", "n_head", "n_inner",
                 "n_positions", "activation_function", "scale_attn_by_inverse_layer_idx",
                 "reorder_and_upcast_attn", "tie_word_embeddings"),
    embeddings=(embedding("embeddings", "{base}wte", "emb"),
                embedding("embeddings", "{base}wpe", "emb")),
    layer=(norm("norm", f"{_H}.ln_1", "in"),
           conv1d("qkv", f"{_H}.attn.c_attn", ("att", 3), "in"),
           conv1d("attn-out", f"{_H}.attn.c_proj", "res.att", "att"),
           norm("norm", f"{_H}.ln_2", "res.att"),
           conv1d("ff-in", f"{_H}.mlp.c_fc", "ff", "res.att"),
           conv1d("ff-out", f"{_H}.mlp.c_proj", "res.ff", "ff")),
    final=(norm("norm", "{base}ln_f", "last"),),
    heads={"causal-lm": CAUSAL_LM_HEAD,
           # the classifier reads the last non-pad token's final state: only its input columns move
           "classifier": (linear("classifier", "score", None, "last", bias=False),)},
    captures=pre_ln_captures(emb="{base}drop", layer=_H, attn_out=f"{_H}.attn.c_proj", ff_norm=f"{_H}.ln_2",
                             ff_out=f"{_H}.mlp.c_proj"),
    decoder=CAUSAL_LM_DECODER,
    block_specials=False,
)
