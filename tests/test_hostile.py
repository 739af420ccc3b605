"""Large, hostile and subtly wrong inputs: data read only as far as the token budget needs, cache
values that cannot run code, one tokenizer per pair, bounded configs, paths that never reach the
network, --overwrite that keeps the user's files, one-line errors instead of tracebacks."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import VOCAB, WORDS, make_model, save_checkpoint, write_text
from permerge.cli import main

KW = dict(head="mlm", hidden_size=24, num_attention_heads=3, intermediate_size=40, num_hidden_layers=2,
          vocab_size=len(VOCAB))


def run(*argv, cache=None):
    extra = ["--cache-dir", str(cache)] if cache else ["--no-cache"]
    return main([*map(str, argv), *extra, "--quiet"])


def one_line_error(capsys, argv, pattern, cache=None):
    code = run(*argv, cache=cache)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert pattern in err[0], err[0]
    return err[0]


@pytest.fixture
def tokenised_chars(monkeypatch):
    """Counts the characters given to any tokenizer call."""
    from transformers import PreTrainedTokenizerBase

    seen = [0]
    real = PreTrainedTokenizerBase.__call__

    def counting(self, text=None, *a, **k):
        for t in [text] if isinstance(text, str) else (text or []):
            seen[0] += len(t) if isinstance(t, str) else 0
        return real(self, text, *a, **k)
    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", counting)
    return seen


# --- 1. the data is read and tokenised only as far as --tokens and the held-out tail need --------

@pytest.mark.parametrize("one_line", [False, True])
def test_large_data_is_read_lazily(tiny_mlm_pair, tmp_path, tokenised_chars, one_line):
    a, b, text = tiny_mlm_pair
    chunk = text.read_text()
    if one_line:
        chunk = chunk.replace("\n", " ")
    big = tmp_path / "big.txt"
    with big.open("w") as fh:
        while fh.tell() < 6 << 20:  # 6 MB, more than the size read whole
            fh.write(chunk)
    out = tmp_path / "o"
    assert run("align", a, b, "--data", big, "--tokens", 2048, "--eval-blocks", 8, "--out", out) == 0
    assert tokenised_chars[0] < 1 << 20, f"{tokenised_chars[0]} characters tokenised for 2048 tokens"
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["tokens"] == 2048  # 32 blocks of the tiny models' 64 tokens
