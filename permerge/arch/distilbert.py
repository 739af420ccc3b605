"""DistilBERT: a post-LN encoder with q_lin/k_lin/v_lin/out_lin, ffn.lin1/lin2, sa_layer_norm and
output_layer_norm; an MLM head (vocab_transform, vocab_layer_norm, vocab_projector tied to the word
embedding); no token types and no pooler (the classifier's pre_classifier reads the first token)."""
from __future__ import annotations

from .spec import Capture, Family, embedding, linear, norm, vector

_L = "{base}transformer.layer.{l}"

DISTILBERT = Family(
    name="distilbert",
    model_types=("distilbert",),
    classes={"DistilBertForMaskedLM": "mlm", "DistilBertForSequenceClassification": "classifier",
             "DistilBertModel": "base"},
    base="distilbert",
    sizes=lambda c: dict(layers=c.n_layers, hidden=c.dim, heads=c.n_heads, intermediate=c.hidden_dim, embedding=c.dim),
    norm="post-ln",
    inputs=("input_ids", "attention_mask"),
    pair_fields=("model_type", "architecture", "vocab_size", "dim", "n_layers", "n_heads", "hidden_dim",
                 "max_position_embeddings", "sinusoidal_pos_embds", "activation", "num_labels", "tie_word_embeddings"),
    embeddings=(embedding("embeddings", "{base}embeddings.word_embeddings", "emb"),
                embedding("embeddings", "{base}embeddings.position_embeddings", "emb"),
                norm("norm", "{base}embeddings.LayerNorm", "emb")),
    layer=(linear("q", f"{_L}.attention.q_lin", "att", "in"),
           linear("k", f"{_L}.attention.k_lin", "att", "in"),
           linear("v", f"{_L}.attention.v_lin", "att", "in"),
           linear("attn-out", f"{_L}.attention.out_lin", "res.att", "att"),
           norm("norm", f"{_L}.sa_layer_norm", "res.att"),
           linear("ff-in", f"{_L}.ffn.lin1", "ff", "res.att"),
           linear("ff-out", f"{_L}.ffn.lin2", "res.ff", "ff"),
           norm("norm", f"{_L}.output_layer_norm", "res.ff")),
    final=(),
    heads={
        "mlm": (linear("head", "vocab_transform", "dec", "last"),
                norm("head", "vocab_layer_norm", "dec"),
                embedding("decoder", "vocab_projector", "dec", optional=True),
                vector("decoder", "vocab_projector.bias")),
        # pre_classifier (first token -> hidden) is left in place: only its input columns move
        "classifier": (linear("classifier", "pre_classifier", None, "last"),
                       linear("classifier", "classifier", None, None)),
    },
    captures={"res.emb": Capture("{base}embeddings.LayerNorm", "output"),
              "att": Capture(f"{_L}.attention.out_lin", "input"),
              "ff": Capture(f"{_L}.ffn.lin2", "input"),
              "res.att": Capture(f"{_L}.sa_layer_norm", "output"),
              "res.ff": Capture(f"{_L}.output_layer_norm", "output")},
    decoder={"mlm": "vocab_projector.weight"},
)
