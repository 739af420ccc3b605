"""Data: plain text cut into 128-token blocks, GLUE-format task folders, deterministic MLM masks.

Everything here is deterministic: the same files and options give the same tensors, so cached
statistics and curves are safe to reuse.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DataError

BLOCK = 128


# --- plain text -----------------------------------------------------------------------------

def text_files(path: str | Path) -> list[Path]:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data path not found: {path}")
    files = sorted(p.rglob("*.txt")) if p.is_dir() else [p]
    if not files:
        raise DataError(f"no .txt files in folder {path}")
    return files


def read_text(path: str | Path) -> str:
    parts = []
    for f in text_files(path):
        try:
            parts.append(f.read_text(encoding="utf-8", errors="replace"))
        except OSError as e:
            raise DataError(f"cannot read {f}: {e}") from None
    text = "\n".join(parts)
    if not text.strip():
        raise DataError(f"the data at {path} is empty")
    return text


def text_blocks(tokenizer, text: str, block: int = BLOCK, specials: bool = True) -> torch.Tensor:
    """Concatenate the text's tokens and cut them into [CLS] + (block-2) tokens + [SEP] rows, or
    into plain runs of ``block`` tokens without ``specials`` (a decoder's blocks)."""
    _need_tokenizer(tokenizer)
    ids: list[int] = []
    for line in text.splitlines():
        if line.strip():
            ids.extend(tokenizer(line, add_special_tokens=False)["input_ids"])
    body = block - 2 if specials else block
    n = len(ids) // body
    if n == 0:
        raise DataError(f"the data has {len(ids)} tokens, fewer than one {block}-token block")
    t = torch.tensor(ids[: n * body], dtype=torch.long).view(n, body)
    if not specials:
        return t
    cls = torch.full((n, 1), tokenizer.cls_token_id, dtype=torch.long)
    sep = torch.full((n, 1), tokenizer.sep_token_id, dtype=torch.long)
    return torch.cat([cls, t, sep], dim=1)


def block_batches(blocks: torch.Tensor, batch_size: int, special_ids: tuple[int, ...] = ()) -> list[dict]:
    out = []
    for i in range(0, len(blocks), batch_size):
        x = blocks[i:i + batch_size]
        special = torch.zeros_like(x, dtype=torch.bool)
        for s in special_ids:
            special |= x == s
        out.append({"input_ids": x, "attention_mask": torch.ones_like(x), "token_type_ids": torch.zeros_like(x),
                    "special_tokens_mask": special.long()})
    return out


# --- GLUE-format tasks ------------------------------------------------------------------------

# Column layouts of the GLUE tasks (first sentence, second sentence or None, label), by header.
_TEXT_COLUMNS = (("sentence1", "sentence2"), ("question1", "question2"), ("question", "sentence"),
                 ("#1 String", "#2 String"), ("sentence", None))
_LABEL_COLUMNS = ("label", "gold_label", "is_duplicate", "Quality", "score")
# Label orders used by the GLUE fine-tuned checkpoints on the hub (string labels only).
_LABEL_ORDERS = (("entailment", "neutral", "contradiction"), ("entailment", "not_entailment"))


@dataclass
class Task:
    name: str
    texts_a: list[str]
    texts_b: list[str] | None
    labels: list[float]
    regression: bool
    num_labels: int


def _dev_file(folder: Path) -> Path:
    for name in ("dev.tsv", "dev_mismatched.tsv", "dev_matched.tsv"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"no dev.tsv in task folder {folder}")


def is_task_folder(path: str | Path) -> bool:
    p = Path(path).expanduser()
    return p.is_dir() and ((p / "train.tsv").is_file() or any((p / n).is_file() for n in ("dev.tsv", "dev_mismatched.tsv")))


def read_task(folder: str | Path, split: str) -> Task:
    """Read ``train`` or ``dev`` of a GLUE-format folder (GLUE's own TSVs, or header-based TSVs
    with sentence / sentence1+sentence2 and label columns).  CoLA's header-less file is handled."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"task folder not found: {folder}")
    f = folder / "train.tsv" if split == "train" else _dev_file(folder)
    if not f.is_file():
        raise DataError(f"missing {f.name} in task folder {folder}")
    with f.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise DataError(f"{f} is empty")
    header = rows[0]
    if "sentence" not in header and "sentence1" not in header and len(header) == 4 and not any(
            h in header for h in _LABEL_COLUMNS):
        # CoLA: source, label, original label, sentence; no header
        ta, tb, y = [r[3] for r in rows], None, [r[1] for r in rows]
    else:
        cols = {h: i for i, h in enumerate(header)}
        pair = next(((a, b) for a, b in _TEXT_COLUMNS if a in cols and (b is None or b in cols)), None)
        lab = next((c for c in _LABEL_COLUMNS if c in cols), None)
        if pair is None or lab is None:
            raise DataError(f"{f}: unrecognised columns {header}; expected sentence or sentence1/sentence2, and label")
        body = [r for r in rows[1:] if len(r) >= len(header)]
        ta = [r[cols[pair[0]]] for r in body]
        tb = [r[cols[pair[1]]] for r in body] if pair[1] else None
        y = [r[cols[lab]] for r in body]
    if not ta:
        raise DataError(f"{f} has no examples")
    regression = lab_is_float(y)
    if regression:
        labels = [float(v) for v in y]
        k = 1
    else:
        labels, k = _label_ids(y)
    return Task(folder.name, ta, tb, labels, regression, k)


def lab_is_float(values: list[str]) -> bool:
    try:
        return any("." in v for v in values) and all(float(v) == float(v) for v in values)
    except ValueError:
        return False


def _label_ids(values: list[str]) -> tuple[list[float], int]:
    uniq = sorted(set(values))
    if all(v.lstrip("-").isdigit() for v in uniq):
        ids = [int(v) for v in values]
        return [float(i) for i in ids], max(ids) + 1
    order = next((o for o in _LABEL_ORDERS if set(uniq) <= set(o)), uniq)
    index = {v: i for i, v in enumerate(order)}
    return [float(index[v]) for v in values], len(order)


def task_batches(tokenizer, task: Task, batch_size: int, max_len: int = BLOCK) -> list[dict]:
    """Encode sentences (pairs with their real token_type_ids), padded per batch."""
    _need_tokenizer(tokenizer)
    out = []
    for i in range(0, len(task.texts_a), batch_size):
        a = task.texts_a[i:i + batch_size]
        b = task.texts_b[i:i + batch_size] if task.texts_b else None
        enc = tokenizer(a, b, padding=True, truncation=True, max_length=max_len, return_tensors="pt",
                        return_token_type_ids=True, return_special_tokens_mask=True)
        y = torch.tensor(task.labels[i:i + batch_size], dtype=torch.float if task.regression else torch.long)
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                    "token_type_ids": enc["token_type_ids"], "special_tokens_mask": enc["special_tokens_mask"],
                    "labels": y})
    return out


def limit_tokens(batches: list[dict], tokens: int | None) -> list[dict]:
    """The shortest prefix of the batches with at least ``tokens`` non-padding tokens (rows cut)."""
    if tokens is None:
        return batches
    if tokens <= 0:
        raise DataError("--tokens must be positive")
    out, seen = [], 0
    for b in batches:
        per_row = b["attention_mask"].sum(1)
        cum = torch.cumsum(per_row, 0)
        need = int((cum < tokens - seen).sum().item()) + 1
        if need < len(per_row):
            out.append({k: v[:need] for k, v in b.items()})
            return out
        out.append(b)
        seen += int(per_row.sum())
    return out


# --- fixed MLM masks --------------------------------------------------------------------------

def mlm_masks(tokenizer, blocks: torch.Tensor, seed: int = 0, prob: float = 0.15) -> dict:
    """15% of non-special tokens selected with a fixed seed; 80% [MASK], 10% random, 10% kept.
    Returns input_ids and labels (-100 where not selected): the same masks for every model."""
    g = torch.Generator().manual_seed(seed)
    special = torch.zeros_like(blocks, dtype=torch.bool)
    for s in tokenizer.all_special_ids:
        special |= blocks == s
    selected = (torch.rand(blocks.shape, generator=g) < prob) & ~special
    r = torch.rand(blocks.shape, generator=g)
    random_ids = torch.randint(len(tokenizer), blocks.shape, generator=g)
    inputs = blocks.clone()
    inputs[selected & (r < 0.8)] = tokenizer.mask_token_id
    swap = selected & (r >= 0.8) & (r < 0.9)
    inputs[swap] = random_ids[swap]
    labels = torch.where(selected, blocks, torch.full_like(blocks, -100))
    return {"input_ids": inputs, "labels": labels}


def content_hash(obj) -> str:
    """Hash of tensors / lists / strings, for cache keys."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, torch.Tensor):
            h.update(f"T{x.dtype}{tuple(x.shape)}".encode())
            h.update(x.contiguous().numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x):
                h.update(str(k).encode())
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}".encode())
            for v in x:
                feed(v)
        else:
            h.update(repr(x).encode())

    feed(obj)
    return h.hexdigest()


def _need_tokenizer(tokenizer) -> None:
    if tokenizer is None:
        raise DataError("neither checkpoint has a tokenizer; add tokenizer files to checkpoint B's folder")
