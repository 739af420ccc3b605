"""ELECTRA: BERT's encoder under the prefix ``electra``, with an embedding narrower than the hidden
width when ``embedding_size != hidden_size`` (``embeddings_project`` maps it into the residual
stream, and the embedding gets a permutation group of its own, ``emb``).  Heads: the generator
(ElectraForMaskedLM: generator_predictions, generator_lm_head tied to the word embedding), the
discriminator (ElectraForPreTraining: replaced-token detection, aligned but not evaluated along
lambda) and a classifier; their hidden layers stay in place, only their input columns move."""
from __future__ import annotations

from .bert import BERT_CAPTURES, BERT_EMBEDDINGS, BERT_LAYER, BERT_PAIR_FIELDS, BERT_SIZES
from .spec import Family, embedding, linear, norm, vector

ELECTRA = Family(
    name="electra",
    model_types=("electra",),
    classes={"ElectraForMaskedLM": "mlm", "ElectraForPreTraining": "discriminator",
             "ElectraForSequenceClassification": "classifier", "ElectraModel": "base"},
    base="electra",
    sizes=BERT_SIZES,
    norm="post-ln",
    inputs=("input_ids", "attention_mask", "token_type_ids"),
    pair_fields=BERT_PAIR_FIELDS + ("embedding_size",),
    embeddings=BERT_EMBEDDINGS,
    layer=BERT_LAYER,
    final=(),
    heads={
        "mlm": (linear("head", "generator_predictions.dense", "dec", "last"),
                norm("head", "generator_predictions.LayerNorm", "dec"),
                embedding("decoder", "generator_lm_head", "dec", optional=True),
                vector("decoder", "generator_lm_head.bias")),
        "discriminator": (linear("head", "discriminator_predictions.dense", None, "last"),
                          linear("head", "discriminator_predictions.dense_prediction", None, None)),
        "classifier": (linear("classifier", "classifier.dense", None, "last"),
                       linear("classifier", "classifier.out_proj", None, None)),
    },
    captures=BERT_CAPTURES,
    decoder={"mlm": "generator_lm_head.weight"},
    embedding_project="{base}embeddings_project",
)
