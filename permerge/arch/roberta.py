"""RoBERTa: BERT's encoder under another prefix, an ``lm_head`` (dense, layer_norm, decoder tied to
the word embedding) and a classification head on the first token.  Positions start after the
padding index (the model computes them from the input ids), so the longest input is
``max_position_embeddings - pad_token_id - 1``; token types are not used."""
from __future__ import annotations

from .bert import BERT_CAPTURES, BERT_EMBEDDINGS, BERT_LAYER, BERT_PAIR_FIELDS, BERT_SIZES
from .spec import Family, embedding, linear, norm, vector

ROBERTA = Family(
    name="roberta",
    model_types=("roberta",),
    classes={"RobertaForMaskedLM": "mlm", "RobertaForSequenceClassification": "classifier", "RobertaModel": "base"},
    base="roberta",
    sizes=BERT_SIZES,
    norm="post-ln",
    inputs=("input_ids", "attention_mask"),
    pair_fields=BERT_PAIR_FIELDS + ("pad_token_id",),
    embeddings=BERT_EMBEDDINGS,
    layer=BERT_LAYER,
    final=(),
    heads={
        "mlm": (linear("head", "lm_head.dense", "dec", "last"),
                norm("head", "lm_head.layer_norm", "dec"),
                embedding("decoder", "lm_head.decoder", "dec", optional=True),
                vector("decoder", "lm_head.bias"),
                vector("decoder", "lm_head.decoder.bias", optional=True)),
        # the classification head's hidden layer is left in place: only its input columns move
        "classifier": (linear("classifier", "classifier.dense", None, "last"),
                       linear("classifier", "classifier.out_proj", None, None)),
        "base": (linear("pooler", "{base}pooler.dense", None, "last", optional=True),),
    },
    captures=BERT_CAPTURES,
    decoder={"mlm": "lm_head.decoder.weight"},
    head_module={"mlm": "lm_head"},
    max_length=lambda c: c.max_position_embeddings - c.pad_token_id - 1,
)
