"""Training: MLM pre-training (the bundled family's recipe), MLM evaluation, fine-tuning any supported
base into a sequence classifier, and the records (``permerge.json``) and cards of what they write.

``permerge finetune`` and ``permerge zoo build`` call this module; it imports torch, so import it
lazily where start-up time matters.
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
    from .pipeline import resolve_device as _resolve

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
HEAD_SEED = 12345  # the bundled classifiers' head initialisation (the same for every base seed of a task)


@dataclass(frozen=True)
class FinetuneRecipe:
    """Fine-tuning knobs.  The paper (Verma & Elbayad 2024) states only that the classification
    head (pooler and classifier) is initialised at random, identically for every base; the rest
    is the usual BERT GLUE recipe (Devlin et al. 2019): AdamW at 2e-5, batch 32, 3 epochs,
    sequences of at most 128 tokens, 10% linear warm-up then linear decay, weight decay 0.01,
    gradient clipping at 1.0, dropout as the base's config has it."""
    epochs: float = 3.0
    lr: float = 2e-5
    batch_size: int = 32
    max_len: int = 128
    warmup: float = 0.1  # fraction of the steps
    weight_decay: float = 0.01
    max_examples: int | None = None  # the first N training examples (None: all)
    dropout: float | None = None  # hidden and attention dropout (None: the base's)

    def validate(self) -> None:
        if not self.epochs > 0:
            raise ValueError(f"--epochs must be positive (got {self.epochs})")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive (got {self.lr})")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.max_len < 8:
            raise ValueError(f"--max-len must be at least 8 (got {self.max_len})")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"--warmup must be a fraction in [0, 1) (got {self.warmup})")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"--max-examples must be at least 1 (got {self.max_examples})")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1) (got {self.dropout})")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FineTuned:
    """A fine-tuned classifier in memory: the model (on the CPU, float32), its tokenizer, and its
    record (what ``write_classifier`` stores as ``permerge.json``)."""
    model: object
    tokenizer: object
    meta: dict


_DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                   "resid_pdrop", "attn_pdrop", "embd_pdrop", "summary_first_dropout")


def _classifier_class(cfg) -> str:
    """The sequence-classification class of a base's family (permerge.arch), or PermergeError."""
    from .arch import SUPPORTED_MODEL_TYPES
    from .errors import PermergeError

    fam = SUPPORTED_MODEL_TYPES.get(cfg.model_type)
    if fam is None:
        raise PermergeError(f"cannot fine-tune a {cfg.model_type!r} model: supported families are "
                            f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}")
    cls = [c for c, h in fam.classes.items() if h == "classifier"]
    if not cls:
        raise PermergeError(f"the {fam.name} family has no sequence classifier in permerge's tables "
                            "(permerge/arch/); it cannot be fine-tuned into one")
    arch = (cfg.architectures or [""])[0]
    if arch in fam.classes and fam.head_of(arch) == "classifier" or arch.endswith("ForSequenceClassification"):
        raise PermergeError(f"the base is already a classifier ({arch}); fine-tune a base with an MLM or "
                            "causal-LM head")
    return cls[0]


def head_prefixes(model_type: str) -> list[str]:
    """The modules of a family's classification head (its table's ``classifier`` weights, e.g.
    ``bert.pooler.dense`` and ``classifier``): re-initialised from the head seed even where the base
    has them (a MultiBERTs checkpoint carries a trained pooler; the paper starts the pooler at random)."""
    from .arch import SUPPORTED_MODEL_TYPES

    fam = SUPPORTED_MODEL_TYPES[model_type]
    return [p.template.replace("{base}", f"{fam.base}.") for p in fam.heads.get("classifier", ())]


def head_init(model, new_keys, head_seed: int) -> list[str]:
    """Re-initialise a classifier's head (``new_keys``: the keys missing from the base's weights
    and the family's head modules, ``head_prefixes``) from ``head_seed`` alone, in the model's parameter order: weight
    matrices from N(0, initializer_range), biases 0, norm weights 1.  The same seed gives the same
    head for every base of one architecture and size (the paper's setting).  Returns the keys."""
    std = getattr(model.config, "initializer_range", 0.02)
    g = torch.Generator().manual_seed(int(head_seed))
    done = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in new_keys:
                continue
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
            done.append(name)
    return done


def _task_examples(task, max_examples=None):
    n = len(task.texts_a) if max_examples is None else min(max_examples, len(task.texts_a))
    return task.texts_a[:n], (task.texts_b[:n] if task.texts_b else None), task.labels[:n]


def _encode(tokenizer, a, b, max_len):
    return tokenizer(a, b, padding=True, truncation=True, max_length=max_len, return_tensors="pt")


@torch.no_grad()
def evaluate_classifier(model, tokenizer, task, device="cpu", batch=64, max_len=128, precision="fp32") -> dict:
    """Dev loss (cross-entropy, MSE for regression), accuracy and the task's GLUE metrics."""
    from .glue import compute

    model.eval()
    a, b, y = _task_examples(task)
    tot, outs = 0.0, []
    use_amp = precision == "bf16" and str(device).startswith("cuda")
    for i in range(0, len(a), batch):
        enc = _encode(tokenizer, a[i:i + batch], b[i:i + batch] if b else None, max_len)
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            logits = model(**enc).logits.float()
        yy = torch.tensor(y[i:i + batch], device=device)
        if task.regression:
            tot += torch.nn.functional.mse_loss(logits.squeeze(-1), yy.float(), reduction="sum").item()
            outs.append(logits.squeeze(-1).cpu().double())
        else:
            tot += torch.nn.functional.cross_entropy(logits, yy.long(), reduction="sum").item()
            outs.append(logits.argmax(-1).cpu())
    out = torch.cat(outs).numpy()
    labels = np.asarray(y)
    metrics = {"dev_loss": tot / len(y), "dev_examples": len(y)}
    names = ["accuracy"] + [m for m in task.metrics if m != "accuracy"] if not task.regression else list(task.metrics)
    metrics.update({f"dev_{k}": v for k, v in compute(names, labels, out, task.regression).items()})
    return metrics


def finetune(base: str, task_dir: str | Path, *, head_seed: int = HEAD_SEED, seed: int = 0,
             recipe: FinetuneRecipe = FinetuneRecipe(), glue_task: str | None = None, device: str = "auto",
             progress=None, log=None, stage: str = "fine-tuning") -> FineTuned:
    """Fine-tune ``base`` (a checkpoint with an MLM or causal-LM head, a local folder or a hub id)
    into its family's sequence classifier on the task folder ``task_dir`` (GLUE-format: train.tsv
    and dev.tsv, or a GLUE task as distributed; ``permerge.data.read_task``).

    The classification head (the family's head modules, ``head_prefixes``, and whatever else the
    base lacks) comes from ``head_seed`` alone (``head_init``), the data order and dropout from
    ``seed``.  On a GPU the
    forwards run under bf16 autocast, on the CPU in float32.  ``progress(stage, step, steps)`` is
    called after every optimizer step (and may raise to cancel).  The dev metrics are measured at
    the end and kept in the record."""
    import transformers

    from . import data as D
    from .checkpoints import (_check_weight_files, _folder, _load_tokenizer, check_regular_files, quiet_transformers,
                              read_config)
    from .errors import DataError, PermergeError
    from .pipeline import resolve_device

    try:
        recipe.validate()
    except ValueError as e:
        raise PermergeError(str(e)) from None
    quiet_transformers()
    device = resolve_device(device)
    cfg = read_config(str(base))
    cls_name = _classifier_class(cfg)
    train_task = D.read_task(task_dir, "train", glue_task)
    glue = train_task.glue
    dev_splits = ["dev"]
    if glue == "MNLI":
        dev_splits = [s for s in ("dev_matched", "dev_mismatched") if (Path(task_dir) / f"{s}.tsv").is_file()] or ["dev"]
    devs = {s: D.read_task(task_dir, s, glue_task) for s in dev_splits}
    regression = train_task.regression
    if any(d.regression != regression for d in devs.values()):
        raise DataError(f"{task_dir}: train.tsv and the dev file disagree on regression vs classes")
    num_labels = 1 if regression else max([train_task.num_labels] + [d.num_labels for d in devs.values()])
    a, b, y = _task_examples(train_task, recipe.max_examples)

    folder, _ = _folder(str(base), "all")  # a hub id: its snapshot (fetched when downloads are allowed)
    target = str(folder)
    check_regular_files(str(base), folder)
    _check_weight_files(folder)
    tokenizer = _load_tokenizer(target, str(base))
    if tokenizer is None:
        raise PermergeError(f"{base} has no tokenizer files; fine-tuning reads the task's text through the base's "
                            "tokenizer")
    pad_note = None
    if tokenizer.pad_token is None:  # GPT-2: no pad token; the classifier reads the last non-pad token
        if tokenizer.eos_token is None:
            raise PermergeError(f"the tokenizer of {base} has neither a pad nor an end-of-text token")
        tokenizer.pad_token = tokenizer.eos_token
        pad_note = f"pad token = end-of-text token {tokenizer.eos_token!r} (right padding)"
    tokenizer.padding_side = "right"
    max_len = recipe.max_len
    positions = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if positions:
        max_len = min(max_len, positions - (2 if cfg.model_type == "roberta" else 0))
    kw = {"num_labels": num_labels, "pad_token_id": tokenizer.pad_token_id}
    if regression:
        kw["problem_type"] = "regression"
    if recipe.dropout is not None:
        kw.update({k: recipe.dropout for k in _DROPOUT_FIELDS if hasattr(cfg, k)})
    torch.manual_seed(seed)  # dropout
    try:
        where = {"local_files_only": True}
        model, info = getattr(transformers, cls_name).from_pretrained(
            target, dtype=torch.float32, trust_remote_code=False, output_loading_info=True, **kw, **where)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PermergeError(f"cannot load {base!r} as {cls_name}: {msg}") from None
    prefixes = tuple(f"{h}." for h in head_prefixes(cfg.model_type))
    new_keys = set(info.get("missing_keys", [])) | {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
    head_keys = head_init(model, new_keys, head_seed)
    if not head_keys:
        raise PermergeError(f"{base}: loading it as {cls_name} added no new weights; is it already a classifier?")
    model.config.architectures = [cls_name]
    if not regression and train_task.glue:
        from .data import _LABEL_ORDERS  # string classes: keep their names in the config
        for order in _LABEL_ORDERS:
            if train_task.num_labels == len(order) and glue in ("MNLI", "QNLI", "RTE"):
                if (glue == "MNLI") == (len(order) == 3):
                    model.config.id2label = dict(enumerate(order))
                    model.config.label2id = {v: k for k, v in enumerate(order)}
    model.to(device).train()

    n = len(a)
    per_epoch = math.ceil(n / recipe.batch_size)
    steps = max(1, int(math.ceil(per_epoch * recipe.epochs)))
    warm = int(recipe.warmup * steps)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(max(1, warm), steps) if warm else
                                              (lambda s: max(0.0, (steps - s) / steps)))
    gen = torch.Generator().manual_seed(2000 + seed)  # data order
    use_amp = device.startswith("cuda")
    log = log or (lambda *_: None)
    label_t = torch.tensor(y, dtype=torch.float if regression else torch.long)
    t0 = time.time()
    losses: list[float] = []
    order, pos, tokens = torch.randperm(n, generator=gen), 0, 0
    for step in range(steps):
        if pos >= n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + recipe.batch_size].tolist()
        pos += recipe.batch_size
        enc = _encode(tokenizer, [a[i] for i in idx], [b[i] for i in idx] if b else None, max_len)
        tokens += int(enc["attention_mask"].sum())
        enc = {k: v.to(device, non_blocking=True) for k, v in enc.items()}
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            logits = model(**enc).logits
        yy = label_t[idx].to(device)
        loss = (torch.nn.functional.mse_loss(logits.float().squeeze(-1), yy) if regression
                else torch.nn.functional.cross_entropy(logits.float(), yy))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress is not None:
            progress(stage, step + 1, steps, loss=float(np.mean(losses[-20:])))
        if step % 50 == 0 or step + 1 == steps:
            log(f"    {stage} step {step + 1}/{steps} loss {np.mean(losses[-50:]):.3f} {time.time() - t0:.0f}s")
    wall = time.time() - t0
    metrics = {}
    for s, d in devs.items():
        m = evaluate_classifier(model, tokenizer, d, device, max_len=max_len, precision="bf16" if use_amp else "fp32")
        # MNLI: the matched dev set under the plain names, the mismatched one with a suffix
        metrics.update({f"{k}_mismatched": v for k, v in m.items()} if s == "dev_mismatched" and len(devs) > 1 else m)
    model = model.to("cpu").float().eval()
    base_cfg = model.config
    meta = {
        "kind": "classifier", "task": Path(task_dir).name, "glue_task": glue, "seed": seed,
        "architecture": cls_name, "base": str(base), "num_labels": num_labels, "regression": regression,
        "head_init_seed": int(head_seed), "head_parameters": head_keys,
        "finetune_recipe": recipe.to_dict(),
        "data": f"{train_task.file} ({n} of {len(train_task.texts_a)} rows); "
                + "; ".join(f"{Path(d.file).name} ({len(d.texts_a)} rows)" for d in devs.values()),
        "steps": steps, "epochs": recipe.epochs, "batch": recipe.batch_size, "lr": recipe.lr, "max_len": max_len,
        "train_examples": n, "train_tokens": tokens,
        "final_train_loss": float(np.mean(losses[-20:])),
        "metrics": metrics,
        "config": {"hidden_size": getattr(base_cfg, "hidden_size", None), "layers": getattr(base_cfg, "num_hidden_layers", None),
                   "vocab_size": base_cfg.vocab_size, "parameters": sum(p.numel() for p in model.parameters())},
        "device": device_name(device), "autocast": "bf16" if use_amp else None,
        "wall_time_s": round(wall, 1), "pad_token": pad_note,
    }
    shown = ", ".join(f"{k[4:]} {v:.3f}" for k, v in metrics.items() if k.startswith("dev_") and isinstance(v, float))
    log(f"  {stage}: {shown} ({steps} steps, {wall:.0f}s)")
    return FineTuned(model, tokenizer, meta)


def write_classifier(result: FineTuned, out: str | Path, overwrite: bool = False, final: Path | None = None) -> Path:
    """Save a fine-tuned classifier as an ordinary checkpoint folder (config.json, float32
    safetensors, the tokenizer, permerge.json and a README.md card), atomically: written into a
    temporary sibling and renamed into place (``permerge.outputs.staged``); an existing folder is
    replaced only with ``overwrite`` and only when permerge wrote it."""
    from .checkpoints import save_model
    from .outputs import check_out, staged

    final = final or check_out(out, overwrite)
    with staged(final, overwrite) as tmp:
        save_model(result.model, result.tokenizer, tmp)
        (tmp / "permerge.json").write_text(json.dumps(result.meta, indent=2, default=float) + "\n")
        (tmp / "README.md").write_text(classifier_card(final.name, result.meta))
    return final


def zoo_classifier_card(name: str, meta: dict) -> str:
    """The card of a bundled classifier: the general card, and where the zoo's tasks are described."""
    return (classifier_card(name, meta).rstrip("\n") + f"{meta.get('metrics_note', '')}\n\n"
            "See `permerge/zoo/README.md` for the task construction and licenses.\n")


def classifier_card(name: str, meta: dict) -> str:
    m = meta["metrics"]
    shown = ", ".join(f"{k[4:].replace('_', ' ')} {v:.3f}" for k, v in m.items()
                      if k.startswith("dev_") and isinstance(v, float))
    r = meta.get("finetune_recipe", {})
    return f"""# {name}

`{meta['architecture']}` fine-tuned by `permerge finetune` from `{meta['base']}` on `{meta['task']}`
({'GLUE ' + meta['glue_task'] if meta.get('glue_task') else 'task folder'}; {meta['num_labels']} output(s)).
The new head weights ({', '.join(meta['head_parameters'])}) were initialised from head seed
{meta['head_init_seed']}, identical for every base of this size; data order and dropout from seed {meta['seed']}.

- {meta['steps']} steps x batch {meta['batch']} ({meta['epochs']} epochs of {meta['train_examples']} examples,
  AdamW lr {meta['lr']}, {r.get('warmup', 0.1):.0%} warm-up then linear decay, max length {meta['max_len']})
  on {meta['device']} in {meta['wall_time_s']:.0f} s.
- Final train loss {meta['final_train_loss']:.3f}; dev: {shown} ({m.get('dev_examples', '?')} rows).
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
        from .data import read_task

        model = AutoModelForSequenceClassification.from_pretrained(str(ckpt), dtype=torch.float32).to(device)
        task = read_task(tasks_root / meta["task"], "dev")
        meta["metrics"] = evaluate_classifier(model, tokenizer, task, device, max_len=meta.get("max_len", SEQ_LEN))
        meta["metrics_note"] = note
        card = zoo_classifier_card(ckpt.name, meta)
        log(f"  {ckpt.name}: dev loss {meta['metrics']['dev_loss']:.3f} "
            f"acc {meta['metrics']['dev_accuracy']:.3f}")
    tmp = ckpt / "permerge.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(ckpt / "permerge.json")
    (ckpt / "README.md").write_text(card)
    return meta
