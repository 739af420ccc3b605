"""The BERT family as a table (see spec.py for the template and symbol language).

The residual stream is post-LN: every sub-block ends in a LayerNorm whose output is the stream, so
the residual points are those outputs (``res.emb``, ``res.<l>.att``, ``res.<l>.ff``).
"""
from __future__ import annotations

from .spec import Capture, Family, embedding, linear, norm, vector

BERT_SIZES = lambda c: dict(layers=c.num_hidden_layers, hidden=c.hidden_size,  # noqa: E731
                            heads=c.num_attention_heads, intermediate=c.intermediate_size,
                            embedding=getattr(c, "embedding_size", c.hidden_size))

# The encoder layer shared by the BERT-style families (BERT, RoBERTa, ELECTRA).
BERT_LAYER = (
    linear("q", "{base}encoder.layer.{l}.attention.self.query", "att", "in"),
    linear("k", "{base}encoder.layer.{l}.attention.self.key", "att", "in"),
    linear("v", "{base}encoder.layer.{l}.attention.self.value", "att", "in"),
    linear("attn-out", "{base}encoder.layer.{l}.attention.output.dense", "res.att", "att"),
    norm("norm", "{base}encoder.layer.{l}.attention.output.LayerNorm", "res.att"),
    linear("ff-in", "{base}encoder.layer.{l}.intermediate.dense", "ff", "res.att"),
    linear("ff-out", "{base}encoder.layer.{l}.output.dense", "res.ff", "ff"),
    norm("norm", "{base}encoder.layer.{l}.output.LayerNorm", "res.ff"),
)
BERT_EMBEDDINGS = (
    embedding("embeddings", "{base}embeddings.word_embeddings", "emb"),
    embedding("embeddings", "{base}embeddings.position_embeddings", "emb"),
    embedding("embeddings", "{base}embeddings.token_type_embeddings", "emb", optional=True),
    norm("norm", "{base}embeddings.LayerNorm", "emb"),
)
BERT_CAPTURES = {
    "res.emb": Capture("{base}embeddings.LayerNorm", "output"),
    "att": Capture("{base}encoder.layer.{l}.attention.output.dense", "input"),
    "ff": Capture("{base}encoder.layer.{l}.output.dense", "input"),
    "res.att": Capture("{base}encoder.layer.{l}.attention.output.LayerNorm", "output"),
    "res.ff": Capture("{base}encoder.layer.{l}.output.LayerNorm", "output"),
}
BERT_PAIR_FIELDS = ("model_type", "architecture", "vocab_size", "hidden_size", "num_hidden_layers",
                    "num_attention_heads", "intermediate_size", "max_position_embeddings", "type_vocab_size",
                    "hidden_act", "num_labels", "tie_word_embeddings")

BERT = Family(
    name="bert",
    model_types=("bert",),
    classes={"BertForMaskedLM": "mlm", "BertForSequenceClassification": "classifier", "BertModel": "base"},
    base="bert",
    sizes=BERT_SIZES,
    norm="post-ln",
    inputs=("input_ids", "attention_mask", "token_type_ids"),
    pair_fields=BERT_PAIR_FIELDS,
    embeddings=BERT_EMBEDDINGS,
    layer=BERT_LAYER,
    final=(),
    heads={
        # The transform's output space meets the decoder, whose columns are the word embedding's
        # when tied ("dec"): forgetting this transform is the public code's bug.
        "mlm": (linear("head", "cls.predictions.transform.dense", "dec", "last"),
                norm("head", "cls.predictions.transform.LayerNorm", "dec"),
                embedding("decoder", "cls.predictions.decoder", "dec", optional=True),
                vector("decoder", "cls.predictions.bias"),
                vector("decoder", "cls.predictions.decoder.bias", optional=True)),
        "classifier": (linear("pooler", "{base}pooler.dense", "pooler", "last"),
                       linear("classifier", "classifier", None, "pooler")),
        "base": (linear("pooler", "{base}pooler.dense", None, "last", optional=True),),
    },
    captures=BERT_CAPTURES,
    decoder={"mlm": "cls.predictions.decoder.weight"},
    head_module={"mlm": "cls"},
    pooler=Capture("{base}pooler", "output"),
    # google/multiberts-seed_N (and -step_Xk), bert-base-uncased: config.json names BertForPreTraining
    # and pytorch_model.bin holds the MLM head, the next-sentence head and the pooler.
    published={"BertForPreTraining": ("BertForMaskedLM", "the next-sentence head and the pooler are ignored")},
)
