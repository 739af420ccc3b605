"""What ``zoo build --stages adopt`` checks beyond checksums: size limits derived from the recipe,
and each unpacked checkpoint loaded and evaluated on a few blocks before it replaces anything."""
from __future__ import annotations

import math
from pathlib import Path

from ..errors import PermergeError
from . import pack as P

MAX_VOCAB = 1 << 16  # the token stream is uint16: no tokenizer of the family is larger
VERIFY_BLOCKS = 4


def limits(recipe) -> dict:
    """Member limits for the archives of checkpoints trained with ``recipe``: the weights file at
    most float32 for every parameter of the recipe's model (at the largest vocabulary) plus 1 MiB of
    header, any other file at most 8 MiB, at most 16 members."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(vocab_size=MAX_VOCAB, **recipe.model_config())
    with torch.device("meta"):
        n = sum(p.numel() for p in BertForMaskedLM(cfg).parameters())
    return {"members": P.ADOPT_MAX_MEMBERS, "weights_bytes": 4 * n + P.MiB, "other_bytes": 8 * P.MiB}


def verifier(eval_text: Path | None):
    """``verify(folder, name)`` for ``pack.adopt``: the checkpoint loads as permerge loads it (its
    config matching its weights, every weight finite) and its MLM loss on a few blocks of
    ``eval_text`` (or of its own vocabulary, without one) is finite."""
    def verify(folder: Path, name: str) -> None:
        import numpy as np

        from ..checkpoints import load_checkpoint
        from .. import training as train

        try:
            ck = load_checkpoint(str(folder))
        except PermergeError as e:
            raise PermergeError(f"the archived {name} does not load: {str(e).replace(str(folder), name)}") from None
        tok = ck.tokenizer or train.load_tokenizer(folder)
        width = min(128, int(ck.config.max_position_embeddings))
        blocks = None
        if eval_text is not None and Path(eval_text).is_file() and width == 128:
            lines = Path(eval_text).read_text(encoding="utf-8", errors="replace").splitlines()
            blocks = train.encode_blocks(tok, lines, limit_tokens=VERIFY_BLOCKS * 128)[:VERIFY_BLOCKS]
        if blocks is None or not len(blocks):  # random ids of the vocabulary, between [CLS] and [SEP]
            rng = np.random.default_rng(0)
            specials = max(tok.all_special_ids) + 1
            blocks = rng.integers(specials, int(ck.config.vocab_size), size=(VERIFY_BLOCKS, width)).astype(np.int32)
            blocks[:, 0], blocks[:, -1] = tok.cls_token_id, tok.sep_token_id
        loss = train.eval_mlm(ck.model, tok, blocks)["mlm_loss"]
        if not math.isfinite(loss):
            raise PermergeError(f"the archived {name} gives a non-finite MLM loss ({loss}) on {len(blocks)} blocks")
    return verify
