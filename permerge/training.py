"""Tokenizer training, MLM pre-training, MLM evaluation and classifier fine-tuning.

Imported lazily by ``permerge.zoo.build`` (torch/transformers are heavy imports).
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

SEQ_LEN = 128  # [CLS] + 126 tokens + [SEP]
BODY = SEQ_LEN - 2


@dataclass(frozen=True)
class Recipe:
    """Every knob of the MLM family's pre-training; the defaults are the next family's recipe
    (permerge/zoo/README.md).

    ``sampling``: ``window`` draws a fresh random 126-token window of the token stream for every
    example (plus [CLS] and [SEP]); ``blocks`` shuffles fixed packed blocks once per epoch.
    """
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    ffn: int = 1024
    dropout: float = 0.1
    steps: int = 3000
    batch: int = 256
    lr: float = 1e-3
    warmup: int = 200
    sampling: str = "window"

    def validate(self) -> None:
        """Raise ValueError (one line) for a recipe that cannot be built."""
        for k in ("layers", "hidden", "heads", "ffn", "steps", "batch"):
            if getattr(self, k) < 1:
                raise ValueError(f"--{k} must be at least 1 (got {getattr(self, k)})")
        if self.hidden % self.heads:
            raise ValueError(f"--hidden {self.hidden} is not a multiple of --heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1) (got {self.dropout})")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive (got {self.lr})")
        if not 0 <= self.warmup < self.steps:
            raise ValueError(f"--warmup must be in [0, --steps) (got {self.warmup} of {self.steps})")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"--sampling must be one of {', '.join(SAMPLINGS)} (got {self.sampling!r})")

    def model_config(self) -> dict:
        """BertConfig keyword arguments (BERT's dropout on hidden states and attention probs)."""
        return dict(hidden_size=self.hidden, num_hidden_layers=self.layers, num_attention_heads=self.heads,
                    intermediate_size=self.ffn, max_position_embeddings=SEQ_LEN, type_vocab_size=2,
                    hidden_act="gelu", hidden_dropout_prob=self.dropout,
                    attention_probs_dropout_prob=self.dropout, layer_norm_eps=1e-12,
                    initializer_range=0.02, tie_word_embeddings=True)

    def to_dict(self) -> dict:
        return asdict(self)


SAMPLINGS = ("window", "blocks")


def parameter_count(recipe: Recipe, vocab: int = 8192, num_labels: int | None = None) -> int:
    """Parameters of a BertForMaskedLM (tied decoder), or of a BertForSequenceClassification
    with ``num_labels`` outputs, as transformers builds them (checked against it in the tests)."""
    h, f, L = recipe.hidden, recipe.ffn, recipe.layers
    emb = vocab * h + SEQ_LEN * h + 2 * h + 2 * h  # word, position, token type, LayerNorm
    layer = 4 * (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h
    if num_labels is None:
        head = h * h + h + 2 * h + vocab  # transform dense + LayerNorm + decoder bias (weight tied)
    else:
        head = h * h + h + h * num_labels + num_labels  # pooler + classifier
    return emb + L * layer + head


# ----------------------------------------------------------------------------- tokenizer
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


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def encode_stream(tokenizer, lines, limit_tokens: int | None = None) -> np.ndarray:
    """Token ids of the non-empty lines, each followed by [SEP] -> uint16 array (vocab < 65536)."""
    sep = tokenizer.sep_token_id
    tokenizer.model_max_length = 10 ** 9  # lines are packed, not truncated: silence the length warning
    parts: list[np.ndarray] = []
    n = 0
    batch: list[str] = []

    def flush():
        nonlocal n
        enc = tokenizer(batch, add_special_tokens=False)["input_ids"]
        for ids in enc:
            parts.append(np.asarray(ids + [sep], dtype=np.uint16))
            n += len(ids) + 1
        batch.clear()

    for line in lines:
        line = line.strip()
        if not line:
            continue
        batch.append(line)
        if len(batch) >= 2000:
            flush()
            if limit_tokens and n >= limit_tokens:
                break
    if batch:
        flush()
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    return stream[:limit_tokens] if limit_tokens else stream


def blocks_from_stream(stream: np.ndarray, cls: int, sep: int) -> np.ndarray:
    """Pack a token stream into [CLS] + 126 + [SEP] blocks -> int32 [n, 128]."""
    n = len(stream) // BODY
    out = np.empty((n, SEQ_LEN), dtype=np.int32)
    out[:, 0] = cls
    out[:, 1:-1] = stream[: n * BODY].reshape(n, BODY)
    out[:, -1] = sep
    return out


def encode_blocks(tokenizer, lines, limit_tokens: int | None = None) -> np.ndarray:
    """Pack lines (separated by [SEP]) into [CLS] + 126 + [SEP] blocks -> int32 [n, 128]."""
    stream = encode_stream(tokenizer, lines, limit_tokens)
    return blocks_from_stream(stream, tokenizer.cls_token_id, tokenizer.sep_token_id)


class BatchSampler:
    """Seed-specific training batches of [CLS] + 126 tokens + [SEP] from a token stream."""

    def __init__(self, stream: np.ndarray, sampling: str, batch: int, gen: torch.Generator, cls: int, sep: int):
        if len(stream) < BODY + 1:
            raise ValueError(f"the training stream has {len(stream)} tokens; need more than {BODY}")
        self.stream, self.sampling, self.batch, self.gen = stream, sampling, batch, gen
        self.cls, self.sep = cls, sep
        if sampling == "blocks":
            self.blocks = blocks_from_stream(stream, cls, sep)
            self.order, self.pos = torch.randperm(len(self.blocks), generator=gen), 0
        self._offsets = np.arange(BODY)

    def next(self) -> torch.Tensor:
        if self.sampling == "window":
            starts = torch.randint(0, len(self.stream) - BODY + 1, (self.batch,), generator=self.gen).numpy()
            ids = np.empty((self.batch, SEQ_LEN), dtype=np.int64)
            ids[:, 0] = self.cls
            ids[:, 1:-1] = self.stream[starts[:, None] + self._offsets]
            ids[:, -1] = self.sep
            return torch.from_numpy(ids)
        if self.pos + self.batch > len(self.order):
            self.order, self.pos = torch.randperm(len(self.blocks), generator=self.gen), 0
        idx = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return torch.from_numpy(self.blocks[idx.numpy()]).long()


# ----------------------------------------------------------------------------- masking
def mask_batch(ids: torch.Tensor, tokenizer, gen: torch.Generator, p: float = 0.15):
    """BERT masking: choose 15% of non-special positions; 80% [MASK], 10% random, 10% kept.

    Returns (input_ids, positions [k, 2], labels [k])."""
    special = (ids == tokenizer.cls_token_id) | (ids == tokenizer.sep_token_id) | (ids == tokenizer.pad_token_id)
    prob = torch.rand(ids.shape, generator=gen)
    chosen = (prob < p) & ~special
    labels = ids[chosen]
    inp = ids.clone()
    r = torch.rand(ids.shape, generator=gen)
    to_mask = chosen & (r < 0.8)
    to_rand = chosen & (r >= 0.8) & (r < 0.9)
    inp[to_mask] = tokenizer.mask_token_id
    n_special = 5  # [PAD] [UNK] [CLS] [SEP] [MASK] are ids 0..4
    rand_ids = torch.randint(n_special, len(tokenizer), ids.shape, generator=gen)
    inp[to_rand] = rand_ids[to_rand]
    return inp, chosen, labels


def mlm_loss(model, inp, chosen, labels):
    """Loss with the decoder run only on masked positions (the big matmul is vocab-wide)."""
    hidden = model.bert(input_ids=inp).last_hidden_state
    h = hidden[chosen]
    logits = model.cls(h)
    return torch.nn.functional.cross_entropy(logits.float(), labels.long())


def resolve_device(device: str) -> str:
    """auto -> cuda when present; PermergeError (one line, exit 2) for cuda without a GPU."""
    from ..pipeline import resolve_device as _resolve

    return _resolve(device)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"cpu ({torch.get_num_threads()} threads)"


@torch.no_grad()
def eval_mlm(model, tokenizer, blocks: np.ndarray, device: str = "cpu", batch: int = 64) -> dict:
    """MLM validation loss with fixed masks (seed 0, 15%, 80/10/10) -> {loss, accuracy, tokens}."""
    model.eval()
    gen = torch.Generator().manual_seed(0)
    tot = 0.0
    correct = 0
    n = 0
    for i in range(0, len(blocks), batch):
        ids = torch.from_numpy(blocks[i:i + batch]).long()
        inp, chosen, labels = mask_batch(ids, tokenizer, gen)
        inp, chosen, labels = inp.to(device), chosen.to(device), labels.to(device)
        hidden = model.bert(input_ids=inp).last_hidden_state
        logits = model.cls(hidden[chosen]).float()
        tot += torch.nn.functional.cross_entropy(logits, labels.long(), reduction="sum").item()
        correct += (logits.argmax(-1) == labels).sum().item()
        n += labels.numel()
    return {"mlm_loss": tot / max(n, 1), "mlm_accuracy": correct / max(n, 1), "masked_tokens": n,
            "eval_tokens": int(blocks.size)}


def _lr_lambda(warmup: int, total: int):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def save_checkpoint(model, tokenizer, out: Path, meta: dict, card: str):
    """save_pretrained (fp16 safetensors) + tokenizer + permerge.json + README.md, atomically."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = model.to("cpu").half()
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "permerge.json").write_text(json.dumps(meta, indent=2) + "\n")
    (tmp / "README.md").write_text(card)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)  # readers see either the old or the new checkpoint, never a partial one
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def pretrain(seed: int, tok_dir: Path, stream: np.ndarray, eval_blocks: np.ndarray, out: Path,
             recipe: Recipe = Recipe(), device: str = "cpu", time_budget_s: float | None = None,
             log=print, extra_meta: dict | None = None) -> dict:
    """Pre-train one MLM of the family (seed: initialisation and data order) and save it.
    ``extra_meta`` is merged into its permerge.json (provenance, e.g. the pack it was trained from)."""
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = load_tokenizer(tok_dir)
    torch.manual_seed(seed)
    random.seed(seed)
    cfg = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **recipe.model_config())
    model = BertForMaskedLM(cfg).to(device)
    model.train()
    # fused: one kernel for the whole update on CUDA (same arithmetic as the default loop)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01,
                            fused=device.startswith("cuda"))
    steps = recipe.steps
    warmup_frac = recipe.warmup / steps
    # linear warm-up over the first `warmup` steps, then linear decay to 0 at `steps`; progress is
    # max(step progress, wall-clock progress) so a --time-budget run still completes its schedule
    gen = torch.Generator().manual_seed(1000 + seed)  # seed-specific data order and masks
    sampler = BatchSampler(stream, recipe.sampling, recipe.batch, gen, tokenizer.cls_token_id,
                           tokenizer.sep_token_id)
    use_amp = device.startswith("cuda")
    log_every = max(1, min(250, steps // 12))
    t0 = time.time()
    loss_sum = torch.zeros((), device=device)  # summed on the device: no host sync per step
    recent: list[float] = []
    done = since = 0
    for step in range(steps):
        progress = step / steps
        if time_budget_s:
            progress = max(progress, (time.time() - t0) / time_budget_s)
            if progress >= 1.0:
                break
        if progress < warmup_frac:
            factor = (step + 1) / recipe.warmup if not time_budget_s else max((step + 1) / steps, progress) / warmup_frac
        else:
            factor = (1.0 - progress) / (1.0 - warmup_frac)
        for group in opt.param_groups:
            group["lr"] = recipe.lr * min(1.0, factor)
        ids = sampler.next()
        inp, chosen, labels = mask_batch(ids, tokenizer, gen)
        inp, chosen, labels = (inp.to(device, non_blocking=True), chosen.to(device, non_blocking=True),
                               labels.to(device, non_blocking=True))
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            loss = mlm_loss(model, inp, chosen, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_sum += loss.detach()
        done = step + 1
        since += 1
        if done % log_every == 0 or done == steps or done == 1:  # step 1: the device works
            recent.append(loss_sum.item() / since)
            loss_sum.zero_()
            since = 0
            el = time.time() - t0
            log(f"    seed {seed} step {done:5d}/{steps} loss {recent[-1]:.3f} "
                f"lr {opt.param_groups[0]['lr']:.2e} {done * recipe.batch * SEQ_LEN / el:,.0f} tok/s {el:.0f}s")
    if since:  # stopped by the time budget between two log lines
        recent.append(loss_sum.item() / since)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.time() - t0
    metrics = eval_mlm(model, tokenizer, eval_blocks, device)
    log(f"  mlm-seed{seed}: eval MLM loss {metrics['mlm_loss']:.3f} acc {metrics['mlm_accuracy']:.3f} "
        f"({done} steps, {wall:.0f}s)")
    mc = recipe.model_config()
    meta = {
        "kind": "mlm", "task": "mlm", "seed": seed,
        "architecture": "BertForMaskedLM (post-LN, tied decoder)",
        "config": {k: mc[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                      "intermediate_size", "max_position_embeddings", "hidden_dropout_prob",
                                      "attention_probs_dropout_prob")}
        | {"vocab_size": len(tokenizer), "parameters": sum(p.numel() for p in model.parameters())},
        "recipe": recipe.to_dict(),
        "data": "permerge zoo corpus (WEB, KJV, MHCC, Treasury of David, WordNet glosses, GCIDE); "
                "eval.txt/align.txt held out",
        "train_stream_tokens": int(len(stream)),
        "sampling": recipe.sampling,
        "steps": done, "planned_steps": steps, "batch": recipe.batch, "seq_len": SEQ_LEN, "lr": recipe.lr,
        "warmup_steps": recipe.warmup, "schedule": "AdamW (0.9, 0.98, eps 1e-6, wd 0.01), linear warm-up, "
                                                   "linear decay to 0, grad clip 1.0",
        "train_tokens": done * recipe.batch * SEQ_LEN,
        "final_train_loss": float(recent[-1]) if recent else float("nan"),
        "time_budget_s": time_budget_s,
        "metrics": {"eval_mlm_loss": metrics["mlm_loss"], "eval_mlm_accuracy": metrics["mlm_accuracy"],
                    "eval_masked_tokens": metrics["masked_tokens"]},
        "eval": "data/eval.txt, fixed masks (seed 0, 15%, 80/10/10)",
        "device": device_name(device), "autocast": "bf16" if use_amp else None,
        "wall_time_s": round(wall, 1), "dtype_saved": "float16",
    }
    meta.update(extra_meta or {})
    card = _mlm_card(f"mlm-seed{seed}", meta)
    save_checkpoint(model, tokenizer, out, meta, card)
    return meta


def _cfg_line(meta):
    c = meta["config"]
    return (f"{c['num_hidden_layers']} layers, hidden {c['hidden_size']}, {c['num_attention_heads']} heads, "
            f"FFN {c['intermediate_size']}, vocab {c['vocab_size']}, max positions {c['max_position_embeddings']}, "
            f"{c['parameters'] / 1e6:.2f} M parameters")


def _recipe_line(meta):
    r = meta.get("recipe")
    if not r:  # checkpoints built before the recipe was recorded
        return f"lr {meta['lr']}, {meta['warmup_steps']} warm-up steps (no recipe record)"
    return (f"layers {r['layers']}, hidden {r['hidden']}, heads {r['heads']}, FFN {r['ffn']}, dropout {r['dropout']}, "
            f"{r['steps']} steps x batch {r['batch']}, AdamW lr {r['lr']}, {r['warmup']} warm-up steps then "
            f"linear decay, sampling `{r['sampling']}`")


def _mlm_card(name, meta):
    m = meta["metrics"]
    return f"""# {name}

Small post-LN BERT (`BertForMaskedLM`, tied decoder) from the permerge offline zoo, seed {meta['seed']}.
{_cfg_line(meta)}.

- Trained {meta['steps']} steps x batch {meta['batch']} x {meta['seq_len']} tokens
  ({meta['train_tokens'] / 1e6:.1f} M tokens) on {meta['device']} in {meta['wall_time_s']:.0f} s.
- Recipe: {_recipe_line(meta)}.
- Final train MLM loss {meta['final_train_loss']:.3f}; eval MLM loss {m['eval_mlm_loss']:.3f},
  masked-token accuracy {m['eval_mlm_accuracy']:.3f} ({meta['eval']}).
- Data: {meta['data']}.

A CPU-budget model for offline demos and tests, far weaker than a real BERT; see
`permerge/zoo/README.md` for sources, licenses and how to rebuild it.
"""


# ----------------------------------------------------------------------------- fine-tuning
def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    header = lines[0].split("\t")
    rows = [ln.split("\t") for ln in lines[1:]]
    return header, rows


def _encode_task(tokenizer, header, rows):
    if header == ["sentence", "label"]:
        enc = tokenizer([r[0] for r in rows], truncation=True, max_length=SEQ_LEN, padding="max_length",
                        return_tensors="pt")
    else:
        enc = tokenizer([r[0] for r in rows], [r[1] for r in rows], truncation=True, max_length=SEQ_LEN,
                        padding="max_length", return_tensors="pt")
    labels = torch.tensor([int(r[-1]) for r in rows])
    return enc, labels


@torch.no_grad()
def eval_classifier(model, enc, labels, device="cpu", batch=128) -> dict:
    model.eval()
    tot, correct = 0.0, 0
    for i in range(0, len(labels), batch):
        n_tok = int(enc["attention_mask"][i:i + batch].sum(1).max())
        kw = {k: v[i:i + batch, :n_tok].to(device) for k, v in enc.items()}
        y = labels[i:i + batch].to(device)
        logits = model(**kw).logits.float()
        tot += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
    return {"dev_loss": tot / len(labels), "dev_accuracy": correct / len(labels), "dev_examples": len(labels)}


HEAD_SEED = 12345  # same pooler+classifier initialisation for every fine-tune of a task


def finetune(task: str, task_dir: Path, base: Path, seed: int, out: Path, epochs: float = 2.0,
             batch: int = 32, lr: float = 2e-4, device: str = "cpu", max_len: int | None = None,
             log=print) -> dict:
    from transformers import BertForSequenceClassification

    tokenizer = load_tokenizer(base)
    header, train_rows = read_tsv(task_dir / "train.tsv")
    _, dev_rows = read_tsv(task_dir / "dev.tsv")
    num_labels = max(int(r[-1]) for r in train_rows + dev_rows) + 1
    enc, labels = _encode_task(tokenizer, header, train_rows)
    denc, dlabels = _encode_task(tokenizer, header, dev_rows)
    # trim padding to the longest example (speed); positions stay <= 128
    L = int(max(enc["attention_mask"].sum(1).max(), denc["attention_mask"].sum(1).max()))
    enc = {k: v[:, :L] for k, v in enc.items()}
    denc = {k: v[:, :L] for k, v in denc.items()}

    model = BertForSequenceClassification.from_pretrained(
        str(base), num_labels=num_labels, dtype=torch.float32,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    # identical head init across base seeds: re-initialise pooler + classifier from HEAD_SEED
    g = torch.Generator().manual_seed(HEAD_SEED)
    std = model.config.initializer_range
    with torch.no_grad():
        for lin in (model.bert.pooler.dense, model.classifier):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * std)
            lin.bias.zero_()
    model.to(device).train()
    steps = int(math.ceil(len(labels) / batch) * epochs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(max(1, steps // 10), steps))
    gen = torch.Generator().manual_seed(2000 + seed)
    t0 = time.time()
    losses = []
    order = torch.randperm(len(labels), generator=gen)
    pos = 0
    for step in range(steps):
        if pos + batch > len(order):
            order = torch.randperm(len(labels), generator=gen)
            pos = 0
        idx = order[pos:pos + batch]
        pos += batch
        n_tok = int(enc["attention_mask"][idx].sum(1).max())  # pad only to the batch's longest row
        kw = {k: v[idx, :n_tok].to(device) for k, v in enc.items()}
        out_ = model(**kw, labels=labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        out_.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(out_.loss.item())
        if step % 50 == 0:
            log(f"    {task} seed {seed} step {step:4d}/{steps} loss {np.mean(losses[-50:]):.3f} "
                f"{time.time() - t0:.0f}s")
    wall = time.time() - t0
    metrics = eval_classifier(model, denc, dlabels, device)
    log(f"  {task}-seed{seed}: dev loss {metrics['dev_loss']:.3f} acc {metrics['dev_accuracy']:.3f} "
        f"({steps} steps, {wall:.0f}s)")
    base_meta = json.loads((base / "permerge.json").read_text())
    meta = {
        "kind": "classifier", "task": task, "seed": seed,
        "architecture": "BertForSequenceClassification (post-LN)",
        "base": base.name, "num_labels": num_labels, "columns": header,
        "head_init_seed": HEAD_SEED,
        "config": base_meta["config"],
        "base_recipe": base_meta.get("recipe"),
        "finetune_recipe": {"epochs": epochs, "batch": batch, "lr": lr, "dropout": 0.1,
                            "warmup": "10% of the steps, then linear decay", "head_init_seed": HEAD_SEED},
        "data": f"data/tasks/{task}/train.tsv ({len(train_rows)} rows); dev.tsv ({len(dev_rows)} rows)",
        "steps": steps, "epochs": epochs, "batch": batch, "lr": lr, "max_len": L,
        "train_tokens": int(enc["attention_mask"].sum().item() * epochs),
        "final_train_loss": float(np.mean(losses[-20:])),
        "metrics": metrics,
        "device": device_name(device), "wall_time_s": round(wall, 1), "dtype_saved": "float16",
    }
    card = _clf_card(f"{task}-seed{seed}", meta)
    save_checkpoint(model, tokenizer, out, meta, card)
    return meta


def _clf_card(name, meta):
    m = meta["metrics"]
    return f"""# {name}

`BertForSequenceClassification` fine-tuned from `{meta['base']}` on the permerge zoo task
`{meta['task']}` ({meta['num_labels']} labels; columns {', '.join(meta['columns'])}). Pooler and
classifier were initialised from seed {meta['head_init_seed']}, identical for every base seed of
this task. {_cfg_line(meta)}.

- {meta['steps']} steps x batch {meta['batch']} ({meta['epochs']} epochs, lr {meta['lr']}) on
  {meta['device']} in {meta['wall_time_s']:.0f} s.
- Final train loss {meta['final_train_loss']:.3f}; dev loss {m['dev_loss']:.3f},
  dev accuracy {m['dev_accuracy']:.3f} on {m['dev_examples']} rows{meta.get('metrics_note', '')}.

See `permerge/zoo/README.md` for the task construction and licenses.
"""


def reevaluate(ckpt: Path, eval_blocks: np.ndarray | None, tasks_root: Path, device: str = "cpu",
               log=print) -> dict:
    """Re-measure a saved checkpoint (fp16 weights upcast to fp32) on the current eval/dev data
    and rewrite its permerge.json metrics and README.md card in place."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    meta = json.loads((ckpt / "permerge.json").read_text())
    tokenizer = load_tokenizer(ckpt)
    note = " (measured on the saved fp16 weights)"
    if meta["kind"] == "mlm":
        model = AutoModelForMaskedLM.from_pretrained(str(ckpt), dtype=torch.float32).to(device)
        r = eval_mlm(model, tokenizer, eval_blocks, device)
        meta["metrics"] = {"eval_mlm_loss": r["mlm_loss"], "eval_mlm_accuracy": r["mlm_accuracy"],
                           "eval_masked_tokens": r["masked_tokens"]}
        meta["eval"] = "data/eval.txt, fixed masks (seed 0, 15%, 80/10/10), saved fp16 weights"
        card = _mlm_card(ckpt.name, meta)
        log(f"  {ckpt.name}: eval MLM loss {r['mlm_loss']:.3f} acc {r['mlm_accuracy']:.3f}")
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(ckpt), dtype=torch.float32).to(device)
        header, rows = read_tsv(tasks_root / meta["task"] / "dev.tsv")
        enc, labels = _encode_task(tokenizer, header, rows)
        meta["metrics"] = eval_classifier(model, dict(enc), labels, device)
        meta["metrics_note"] = note
        card = _clf_card(ckpt.name, meta)
        log(f"  {ckpt.name}: dev loss {meta['metrics']['dev_loss']:.3f} "
            f"acc {meta['metrics']['dev_accuracy']:.3f}")
    tmp = ckpt / "permerge.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(ckpt / "permerge.json")
    (ckpt / "README.md").write_text(card)
    return meta
