"""The bundled family's WordPiece tokenizer: trained on the zoo corpus with deterministic ids.

Imported lazily by ``permerge.zoo.build`` (tokenizers/transformers are heavy imports).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..training import SEQ_LEN, load_tokenizer

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def canonical_vocab(vocab: dict[str, int]) -> dict[str, int]:
    """Deterministic ids for a WordPiece vocabulary: the special tokens first (in SPECIAL_TOKENS
    order), then word-initial pieces, then ``##`` continuations, each sorted by code point.

    The ``tokenizers`` WordPiece trainer numbers its alphabet in the iteration order of a
    hash map whose seed changes with every process, and breaks ties between merges of equal count
    by those ids, so the *set* of pieces is reproducible but their ids are not (two runs on the
    same corpus differed in 123-160 ids).  WordPiece tokenisation is greedy longest-match over
    the set, so renumbering changes no segmentation.
    """
    rest = [t for t in vocab if t not in SPECIAL_TOKENS]
    rest.sort(key=lambda t: (t.startswith("##"), t))
    return {t: i for i, t in enumerate(SPECIAL_TOKENS + rest)}


def train_tokenizer(corpus: Path, out: Path, vocab_size: int = 8192, max_chars: int = 25_000_000,
                    log=print) -> dict:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    def setup(tok):
        # strip_accents=None: BERT's rule (strip accents when lowercasing), and what transformers
        # writes back when a BertTokenizerFast is saved, so the saved file is stable under load/save
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        return tok

    def lines():
        n = 0
        with open(corpus, encoding="utf-8") as f:
            for line in f:
                n += len(line)
                if n > max_chars:
                    return
                yield line

    tok = setup(Tokenizer(models.WordPiece(unk_token="[UNK]")))
    # The trainer numbers the "##x" continuation characters in the order of a hash map seeded per
    # process and breaks ties between equally frequent merges by those numbers, which changes the
    # merges (and so the pieces) from run to run.  Registering every continuation character up
    # front, in code-point order, fixes all their numbers; they are in the vocabulary anyway.
    cont: set[str] = set()
    for line in lines():
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(line)):
            cont.update(word[1:])
    fixed = SPECIAL_TOKENS + ["##" + c for c in sorted(cont)]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=fixed,
                                        continuing_subword_prefix="##", show_progress=False)
    tok.train_from_iterator(lines(), trainer=trainer)
    # a fresh tokenizer with the trained pieces, canonical ids and only the real special tokens
    tok = setup(Tokenizer(models.WordPiece(vocab=canonical_vocab(tok.get_vocab()), unk_token="[UNK]",
                                           continuing_subword_prefix="##", max_input_chars_per_word=100)))
    tok.add_special_tokens(SPECIAL_TOKENS)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = BertTokenizerFast(tokenizer_object=tok, do_lower_case=True, model_max_length=SEQ_LEN,
                             unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fast.save_pretrained(tmp)
    # save once more through a load, as every checkpoint does, so that the tokenizer files here
    # are byte for byte the ones the checkpoints carry
    load_tokenizer(tmp).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"  tokenizer: {tok.get_vocab_size()} entries -> {out}")
    return {"vocab_size": tok.get_vocab_size()}
