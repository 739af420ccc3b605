"""Checkpoints written small in the exact layouts their authors published on the Hub.

MultiBERTs (google/multiberts-seed_N and google/multiberts-seed_N-step_Xk, checked on the Hub's file
lists and config.json pages): README.md, config.json (``"architectures": ["BertForPreTraining"]``,
``"_name_or_path": "tmp-model"``, vocabulary 30522, 512 positions, transformers 4.12.3),
pytorch_model.bin (MLM head, next-sentence head and pooler; saved by transformers 4.x, whose state
dict still held the ``position_ids`` buffer), special_tokens_map.json, tf_model.h5,
tokenizer_config.json (``"tokenizer_class": "BertTokenizer"``), vocab.txt; no tokenizer.json and no
safetensors.  Sizes are tiny (hidden 24, 2 layers) except the vocabulary and positions.

Stanford CRFM GPT-2 (stanford-crfm/alias-gpt2-small-x21, ...): config.json, pytorch_model.bin,
vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json, training files and
DeepSpeed states (global_step400000/mp_rank_00_model_states.pt) beside them, and a branch
``checkpoint-N`` per saved step.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import WORDS

MULTIBERTS_VOCAB = 30522


def multiberts_vocab() -> list[str]:
    """30522 entries laid out like BERT's uncased vocabulary: [PAD], [unused..], [UNK], [CLS],
    [SEP], [MASK], then the words (those the tests' text uses first)."""
    head = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = list(dict.fromkeys(WORDS + list("abcdefghijklmnopqrstuvwxyz.,")))
    rest = [f"w{i}" for i in range(MULTIBERTS_VOCAB - len(head) - len(words))]
    return head + words + rest


def write_multiberts(folder: Path, seed: int, hidden=24, heads=3, layers=2, intermediate=40) -> Path:
    from transformers import BertConfig, BertForPreTraining

    folder.mkdir(parents=True, exist_ok=True)
    cfg = BertConfig(vocab_size=MULTIBERTS_VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=512,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = BertForPreTraining(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    state["bert.embeddings.position_ids"] = torch.arange(512).expand((1, -1)).clone()
    torch.save(state, folder / "pytorch_model.bin")
    config = {"_name_or_path": "tmp-model", "architectures": ["BertForPreTraining"],
              "attention_probs_dropout_prob": 0.1, "classifier_dropout": None, "hidden_act": "gelu",
              "hidden_dropout_prob": 0.1, "hidden_size": hidden, "initializer_range": 0.02,
              "intermediate_size": intermediate, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
              "model_type": "bert", "num_attention_heads": heads, "num_hidden_layers": layers, "pad_token_id": 0,
              "position_embedding_type": "absolute", "torch_dtype": "float32", "transformers_version": "4.12.3",
              "type_vocab_size": 2, "use_cache": True, "vocab_size": MULTIBERTS_VOCAB}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "vocab.txt").write_text("\n".join(multiberts_vocab()) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
         "mask_token": "[MASK]"}))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
         "cls_token": "[CLS]", "mask_token": "[MASK]", "tokenize_chinese_chars": True, "strip_accents": None,
         "model_max_length": 512, "special_tokens_map_file": None, "name_or_path": "tmp-model",
         "tokenizer_class": "BertTokenizer"}))
    (folder / "README.md").write_text(f"# MultiBERTs - Seed {seed} (tiny test copy)\n")
    (folder / "tf_model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(4096))  # never to be fetched
    return folder


def write_crfm_gpt2(folder: Path, seed: int, hidden=24, heads=3, layers=2) -> Path:
    """A tiny GPT-2 in the layout of stanford-crfm's Mistral runs (one snapshot)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from conftest import VOCAB

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(["<|endoftext|>"] + VOCAB[5:] + [f"\u0120{w}" for w in WORDS]))}
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=128, n_embd=hidden, n_layer=layers, n_head=heads,
                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    torch.save({k: v.clone().contiguous() for k, v in model.state_dict().items()}, folder / "pytorch_model.bin")
    c = cfg.to_dict()
    c["architectures"] = ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(c, indent=2))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128,
                                                              "tokenizer_class": "GPT2Tokenizer"}))
    (folder / "trainer_state.json").write_text("{}")
    (folder / "training_args.bin").write_bytes(bytes(64))
    (folder / "global_step400000").mkdir(exist_ok=True)
    (folder / "global_step400000" / "mp_rank_00_model_states.pt").write_bytes(bytes(2048))
    return folder
