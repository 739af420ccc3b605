"""Data: plain text cut into 128-token blocks, GLUE-format task folders, deterministic MLM masks.

Everything here is deterministic: the same files and options give the same tensors, so cached
statistics and curves are safe to reuse.
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import safeio
from .errors import DataError, warn

BLOCK = 128
UNK_WARN = 0.05  # warn when at least this fraction of the data's tokens is the unknown token
# Pseudo and system file systems: never read as data (a FIFO or /proc file blocks or leaks).
_SYSTEM_ROOTS = SYSTEM_ROOTS = ("/proc", "/sys", "/dev", "/run", "/etc", "/boot")


def in_system_folder(path: str | Path) -> bool:
    """The path (links resolved, as far as it exists) is one of the system folders or inside one."""
    rp = Path(path).expanduser().resolve()
    return any(rp == Path(r) or Path(r) in rp.parents for r in SYSTEM_ROOTS)


def check_data_path(path: str | Path, what: str = "--data") -> Path:
    """A readable regular file or folder outside the system folders, or DataError."""
    p = Path(path).expanduser()
    try:
        p.stat()
    except FileNotFoundError:
        raise DataError(f"data path not found: {path}") from None
    except OSError as e:  # a name too long for the file system, a loop of links, ...
        raise DataError(f"cannot use {what} {path}: {e.strerror or e}") from None
    rp = p.resolve()
    if any(rp == Path(r) or Path(r) in rp.parents for r in _SYSTEM_ROOTS):
        raise DataError(f"{what} {path} is in a system folder ({', '.join(_SYSTEM_ROOTS)}); give a text file or folder")
    mode = rp.stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DataError(f"{what} {path} is not a regular file or folder (a FIFO, socket or device)")
    if not os.access(rp, os.R_OK):
        raise DataError(f"{what} {path} is not readable")
    return p


# --- plain text -----------------------------------------------------------------------------

def text_files(path: str | Path) -> list[Path]:
    p = check_data_path(path)
    files = sorted(p.rglob("*.txt")) if p.is_dir() else [p]
    if not files:
        raise DataError(f"no .txt files in folder {path}")
    for f in files if p.is_dir() else ():
        check_data_path(f, "the data file")
    return files


def read_text(path: str | Path) -> str:
    parts = []
    for f in text_files(path):
        try:
            parts.append(safeio.decode(safeio.read_bytes(f), f, errors="replace"))
        except safeio.EncodingRefused as e:
            raise DataError(str(e)) from None
        except OSError as e:
            raise DataError(f"cannot read {f}: {e.strerror or e}") from None
    text = "\n".join(parts)
    if not text.strip():
        raise DataError(f"the data at {path} is empty")
    return text


# --- plain text, read lazily: memory bounded by the token budget, not by the file ----------------

SMALL_TEXT = 4 << 20  # bytes: plain-text data up to this size is read whole
_CHUNK = 1 << 20  # bytes read at a time
_PIECE = 1 << 16  # bytes: a longer line is tokenised in pieces cut before whitespace
_BATCH = 256  # lines per tokenizer call


def _open_text(f: Path):
    """A binary stream of the file's text as UTF-8: the file itself when it is UTF-8 (with or
    without a byte-order mark, which ``_encode`` drops), its decoded text for UTF-16 or UTF-32
    (up to ``SMALL_TEXT`` bytes; a larger one is refused in one line); binary bytes are refused."""
    try:
        fh = safeio.open_regular(f)
    except OSError as e:
        raise DataError(f"cannot read {f}: {e.strerror or e}") from None
    try:
        head = fh.read(4096)
        codec = safeio.detect_encoding(head, f)
        if codec in ("utf-8", "utf-8-sig"):
            fh.seek(0)
            return fh
        size = os.fstat(fh.fileno()).st_size
        if size > SMALL_TEXT:
            raise DataError(f"{f} is {codec.upper()} text of {size / 1e6:.1f} MB; permerge decodes UTF-16 and UTF-32 "
                            f"files up to {SMALL_TEXT / 1e6:.1f} MB: convert it to UTF-8 (iconv -f {codec} -t utf-8)")
        try:
            text = safeio.decode(head + fh.read(), f)
        except UnicodeDecodeError as e:
            raise DataError(f"{f} is not valid {codec.upper()} text ({e.reason})") from None
        fh.close()
        return io.BytesIO(text.encode("utf-8"))
    except safeio.EncodingRefused as e:
        fh.close()
        raise DataError(str(e)) from None
    except OSError as e:
        fh.close()
        raise DataError(f"cannot read {f}: {e.strerror or e}") from None
    except BaseException:
        fh.close()
        raise


def _cut(buf: bytes, limit: int) -> int:
    """Where to cut a line longer than ``limit`` bytes into a first piece: before the last
    whitespace within the limit, else at a UTF-8 character boundary."""
    i = max(buf.rfind(b" ", 1, limit), buf.rfind(b"\t", 1, limit))
    if i <= 0:
        i = limit
        while i > 1 and 0x80 <= buf[i] < 0xC0:  # inside a multi-byte character
            i -= 1
    return i


def _lines_forward(files: list[Path], stop: tuple[int, int] | None = None):
    """(text, (file index, byte offset of its start)) for each line of the files in order, long
    lines in pieces; ends before the position ``stop``."""
    for fi, f in enumerate(files):
        if stop is not None and fi > stop[0]:
            return
        end = stop[1] if stop is not None and fi == stop[0] else None
        fh = _open_text(f)
        with fh:
            buf, base, pos = b"", 0, 0  # buf holds the file's bytes from offset base on
            while True:
                want = _CHUNK if end is None else min(_CHUNK, end - pos)
                try:
                    chunk = fh.read(want) if want > 0 else b""
                except OSError as e:
                    raise DataError(f"cannot read {f}: {e.strerror or e}") from None
                pos += len(chunk)
                buf += chunk
                i = 0  # the next line starts at buf[i]
                while True:
                    nl = buf.find(b"\n", i)
                    if nl >= 0:
                        yield buf[i:nl], (fi, base + i)
                        i = nl + 1
                    elif len(buf) - i > _PIECE and chunk:
                        cut = i + _cut(buf[i:i + _PIECE + 1], _PIECE)
                        yield buf[i:cut], (fi, base + i)
                        i = cut
                    else:
                        break
                buf, base = buf[i:], base + i
                if not chunk:
                    if buf:
                        yield buf, (fi, base)
                    break


def _lines_backward(files: list[Path]):
    """(text, (file index, byte offset of its start)) for each line of the files from the last
    one back, long lines in pieces."""
    for fi in range(len(files) - 1, -1, -1):
        f = files[fi]
        fh = _open_text(f)
        try:
            size = fh.seek(0, os.SEEK_END)
        except OSError as e:
            fh.close()
            raise DataError(f"cannot read {f}: {e.strerror or e}") from None
        with fh:
            buf, pos = b"", size  # buf holds the bytes from pos on that are not yet given out
            while True:
                step = min(_CHUNK, pos)
                pos -= step
                try:
                    fh.seek(pos)
                    chunk = fh.read(step)
                except OSError as e:
                    raise DataError(f"cannot read {f}: {e.strerror or e}") from None
                buf = chunk + buf
                j = len(buf)  # buf[:j] is not given out yet
                while True:
                    nl = buf.rfind(b"\n", 0, j)
                    if nl >= 0:
                        yield buf[nl + 1:j], (fi, pos + nl + 1)
                        j = nl
                    elif j > _PIECE:
                        k = buf.find(b" ", j - _PIECE, j)
                        k = k if k > 0 else j - _PIECE
                        while k < j and 0x80 <= buf[k] < 0xC0:
                            k += 1
                        yield buf[k:j], (fi, pos + k)
                        j = k
                    else:
                        break
                buf = buf[:j]
                if pos == 0:
                    if buf:
                        yield buf, (fi, 0)
                    break


def _encode(tokenizer, lines) -> "array":
    """Token ids of the non-empty lines (each line alone, without special tokens)."""
    from array import array

    texts = [t for raw in lines for t in raw.decode("utf-8", errors="replace").lstrip("\ufeff").splitlines()
             if t.strip()]
    out = array("i")
    if texts:
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            out.extend(ids)
    return out


class _Budget:
    """Reads lines, tokenises them in batches and stops once ``need`` tokens are in (None: all)."""

    def __init__(self, tokenizer, need: int | None):
        from array import array

        self.tokenizer, self.need = tokenizer, need
        self.parts: list = []
        self.n = 0
        self.first = None  # position of the earliest line used (backward reading)
        self._array = array

    def take(self, lines, backward: bool = False) -> "array":
        batch, where, size = [], None, 0
        for line, at in lines:
            batch.append(line)
            where, size = at, size + len(line)
            if len(batch) >= _BATCH or size >= _PIECE:
                if self._flush(batch, backward, where):
                    break
                batch, size = [], 0
        else:
            if batch:
                self._flush(batch, backward, where)
        parts = self.parts[::-1] if backward else self.parts
        out = self._array("i")
        for p in parts:
            out.extend(p)
        return out

    def _flush(self, batch, backward, where) -> bool:
        ids = _encode(self.tokenizer, batch[::-1] if backward else batch)
        self.parts.append(ids)
        self.n += len(ids)
        self.first = where
        batch.clear()
        return self.need is not None and self.n >= self.need


def _blocks(tokenizer, ids, block: int, specials: bool, n: int | None = None, from_end: bool = False) -> torch.Tensor:
    body = block - 2 if specials else block
    k = len(ids) // body if n is None else min(n, len(ids) // body)
    t = torch.from_numpy(np.frombuffer(ids, dtype=np.int32).astype(np.int64)) if len(ids) else \
        torch.zeros(0, dtype=torch.long)
    t = (t[len(t) - k * body:] if from_end else t[: k * body]).view(k, body)
    if not specials:
        return t
    cls = torch.full((k, 1), tokenizer.cls_token_id, dtype=torch.long)
    sep = torch.full((k, 1), tokenizer.sep_token_id, dtype=torch.long)
    return torch.cat([cls, t, sep], dim=1)


def _check_tokens(tokenizer, ids, path) -> None:
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and len(ids):
        n_unk = ids.count(unk)
        if n_unk == len(ids):
            raise DataError(f"every token of the data at {path} is {tokenizer.unk_token} (unknown to the "
                            "tokenizer): nothing to align or score; is this the right data for these checkpoints?")
        if n_unk / len(ids) >= UNK_WARN:
            warn(f"{100 * n_unk / len(ids):.1f}% of the data's tokens are {tokenizer.unk_token} (unknown to the "
                 "tokenizer); is this the right data for these checkpoints?")


def text_data(tokenizer, path: str | Path, block: int = BLOCK, specials: bool = True, tokens: int | None = None,
              hold_out: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(alignment blocks, held-out blocks) of plain-text data, read lazily.

    The alignment blocks are the shortest prefix of the data with at least ``tokens`` tokens (all
    of it when ``tokens`` is None); with ``hold_out`` > 0 the last ``hold_out`` blocks of the data
    are held out (at most half of the data's blocks) and never used for alignment.  Only what the
    budget needs is read and tokenised: data of up to ``SMALL_TEXT`` bytes is read whole, from a
    larger one the alignment prefix is read from the start and the held-out blocks from the end."""
    _need_tokenizer(tokenizer)
    files = text_files(path)
    body = block - 2 if specials else block
    want = None if tokens is None else -(-tokens // block) * body  # a block counts its [CLS] and [SEP]
    total = 0
    for f in files:
        try:
            total += f.stat().st_size
        except OSError as e:
            raise DataError(f"cannot read {f}: {e.strerror or e}") from None
    if total > SMALL_TEXT and hold_out:
        tail_budget = _Budget(tokenizer, hold_out * body)
        tail = tail_budget.take(_lines_backward(files), backward=True)
        if len(tail) >= hold_out * body:
            head = _Budget(tokenizer, want).take(_lines_forward(files, stop=tail_budget.first))
            if len(head) >= body:
                _check_tokens(tokenizer, head, path)
                return (_blocks(tokenizer, head, block, specials, None if want is None else want // body),
                        _blocks(tokenizer, tail, block, specials, hold_out, from_end=True))
        # a large file with few tokens: read it whole below (its tokens are few)
    ids = _Budget(tokenizer, None if hold_out else want).take(_lines_forward(files))
    if len(ids) == 0 and not any(line.strip() for line, _ in _lines_forward(files)):
        raise DataError(f"the data at {path} is empty")
    _check_tokens(tokenizer, ids, path)
    n = len(ids) // body
    if n == 0:
        raise DataError(f"the data has {len(ids)} tokens, fewer than one {block}-token block")
    held = None
    if hold_out:
        k = min(hold_out, n // 2)
        if k == 0:
            raise DataError("the data is too short to hold out evaluation blocks; give --eval-data")
        held = _blocks(tokenizer, ids[(n - k) * body: n * body], block, specials)
        n -= k
    return _blocks(tokenizer, ids, block, specials, n if want is None else min(n, want // body)), held


def text_blocks(tokenizer, text: str, block: int = BLOCK, specials: bool = True) -> torch.Tensor:
    """Concatenate the text's tokens and cut them into [CLS] + (block-2) tokens + [SEP] rows, or
    into plain runs of ``block`` tokens without ``specials`` (a decoder's blocks)."""
    _need_tokenizer(tokenizer)
    ids: list[int] = []
    for line in text.splitlines():
        if line.strip():
            ids.extend(tokenizer(line, add_special_tokens=False)["input_ids"])
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and ids:
        frac = sum(1 for i in ids if i == unk) / len(ids)
        if frac >= UNK_WARN:
            warn(f"{100 * frac:.1f}% of the data's tokens are {tokenizer.unk_token} (unknown to the tokenizer); "
                 "is this the right data for these checkpoints?")
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
    file: str = ""  # the TSV the examples come from, and each example's line in it (for messages)
    lines: list[int] | None = None
    glue: str | None = None  # the GLUE task (permerge.glue.GLUE) whose layout and metrics these are

    @property
    def metrics(self) -> tuple:
        """The metrics reported beside the loss (permerge.glue)."""
        from .glue import metric_names

        return metric_names(self.glue, self.regression)

    def where(self, i: int) -> str:
        line = self.lines[i] if self.lines and i < len(self.lines) else None
        return f"{self.file}, line {line}" if line else (self.file or self.name)


def _dev_file(folder: Path, glue: str | None = None) -> Path:
    names = ("dev.tsv", "dev_matched.tsv", "dev_mismatched.tsv") if glue == "MNLI" else \
        ("dev.tsv", "dev_mismatched.tsv", "dev_matched.tsv")
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"no dev.tsv in task folder {folder}")


def is_task_folder(path: str | Path) -> bool:
    p = Path(path).expanduser()
    return p.is_dir() and ((p / "train.tsv").is_file() or any((p / n).is_file() for n in ("dev.tsv", "dev_mismatched.tsv")))


def read_task(folder: str | Path, split: str, glue: str | None = None) -> Task:
    """Read ``train`` or ``dev`` (or, for MNLI, ``dev_matched`` / ``dev_mismatched``) of a
    GLUE-format folder (GLUE's own TSVs, or header-based TSVs with sentence / sentence1+sentence2
    and label columns).  CoLA's header-less file is handled.  A short row, an empty, negative or
    non-finite label, or a mix of text and numeric labels is an error naming the file and the line.

    ``glue`` names the GLUE task (``permerge.glue``; default: the one the folder's name names):
    its layout is checked (an error when named here, a warning and a plain task folder when only
    the folder's name says so), STS-B's scores are regression targets, and the task carries its
    metrics."""
    from . import glue as G

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"task folder not found: {folder}")
    explicit = glue is not None
    glue = G.lookup(glue) if explicit else G.by_folder_name(folder)
    if split == "train":
        f = folder / "train.tsv"
    elif split in ("dev_matched", "dev_mismatched"):
        f = folder / f"{split}.tsv"
    else:
        f = _dev_file(folder, glue)
    if not f.is_file():
        raise DataError(f"missing {f.name} in task folder {folder}")
    check_data_path(f, "the task file")
    rows = []
    reader = None
    try:
        # the encoding as for text data: a byte-order mark (UTF-8, -16, -32) is not part of the
        # header's first column's name; NUL-heavy bytes without one are refused
        raw = safeio.read_bytes(f)
        codec = safeio.detect_encoding(raw[:4096], f)
        text = safeio.decode(raw, f)
        del raw
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
        for r in reader:
            rows.append((reader.line_num, r))
    except safeio.EncodingRefused as e:
        raise DataError(str(e)) from None
    except UnicodeDecodeError as e:
        what = "UTF-8" if codec.startswith("utf-8") else codec.upper()
        raise DataError(f"{f} is not {what} text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:  # a field over the csv module's size limit, a NUL byte, ...
        raise DataError(f"{f}, line {reader.line_num if reader else 1}: {e}") from None
    except OSError as e:
        raise DataError(f"cannot read {f}: {e.strerror or e}") from None
    rows = [(n, r) for n, r in rows if any(c.strip() for c in r)]  # blank lines
    if not rows:
        raise DataError(f"{f} is empty")
    header = rows[0][1]
    problem = G.layout_problem(glue, header, len(header)) if glue else None
    if problem and explicit:
        raise DataError(f"{f}, line {rows[0][0]}: {problem}")
    if problem:
        warn(f"{f}: the folder's name says GLUE's {glue}, but {problem}; read as a plain task folder "
             f"(no {glue} metrics; --glue-task names the task)")
        glue = None
    if glue == "CoLA" or "sentence" not in header and "sentence1" not in header and len(header) == 4 and not any(
            h in header for h in _LABEL_COLUMNS):
        # CoLA: source, label, original label, sentence; no header
        width, body, (ia, ib, il) = 4, rows, (3, None, 1)
    else:
        cols = {h: i for i, h in enumerate(header)}
        pair = next(((a, b) for a, b in _TEXT_COLUMNS if a in cols and (b is None or b in cols)), None)
        lab = next((c for c in _LABEL_COLUMNS if c in cols), None)
        if pair is None or lab is None:
            raise DataError(f"{f}: unrecognised columns {header}; expected sentence or sentence1/sentence2, and label")
        width, body = len(header), rows[1:]
        ia, ib, il = cols[pair[0]], (cols[pair[1]] if pair[1] else None), cols[lab]
    for n, r in body:
        if len(r) < width:
            raise DataError(f"{f}, line {n}: {len(r)} tab-separated column(s), expected {width}")
        if len(r) > width:
            raise DataError(f"{f}, line {n}: {len(r)} tab-separated columns, expected {width} (a tab inside "
                            "a sentence?)")
    ta = [r[ia] for _, r in body]
    tb = [r[ib] for _, r in body] if ib is not None else None
    y = [r[il].strip() for _, r in body]
    lines = [n for n, _ in body]
    if not ta:
        raise DataError(f"{f} has no examples")
    labels, regression, k = _parse_labels(y, lambda i: f"{f}, line {lines[i]}")
    if glue and G.GLUE[glue].regression and not regression:  # STS-B scores written without a decimal point
        if not all(_number(v) is not None for v in y):
            i = next(i for i, v in enumerate(y) if _number(v) is None)
            raise DataError(f"{f}, line {lines[i]}: label {y[i]!r} is not a number ({glue} scores are numbers)")
        regression, k = True, 1
    return Task(folder.name, ta, tb, labels, regression, k, str(f), lines, glue)


def _number(v: str):
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return None


def _parse_labels(values: list[str], where) -> tuple[list[float], bool, int]:
    """Integer class ids, string classes, or (numbers with a decimal point) regression targets."""
    for i, v in enumerate(values):
        if not v:
            raise DataError(f"{where(i)}: empty label")
    nums = [_number(v) for v in values]
    numeric = [x is not None for x in nums]
    if any(numeric) and not all(numeric):
        i = numeric.index(False) if sum(numeric) > len(values) / 2 else numeric.index(True)
        raise DataError(f"{where(i)}: label {values[i]!r} mixes with "
                        f"{'numeric' if not numeric[i] else 'text'} labels elsewhere in the file")
    if not all(numeric):  # string classes, in the hub checkpoints' order when known
        uniq = sorted(set(values))
        order = next((o for o in _LABEL_ORDERS if set(uniq) <= set(o)), uniq)
        index = {v: i for i, v in enumerate(order)}
        return [float(index[v]) for v in values], False, len(order)
    for i, x in enumerate(nums):
        if not math.isfinite(x):
            raise DataError(f"{where(i)}: label {values[i]!r} is not a finite number")
    if all(isinstance(x, int) for x in nums):
        for i, x in enumerate(nums):
            if x < 0:
                raise DataError(f"{where(i)}: label {x} is negative; class labels are 0, 1, ... "
                                "(GLUE test files mark missing labels with -1: use a file with labels)")
        return [float(x) for x in nums], False, max(nums) + 1
    return [float(x) for x in nums], True, 1


def check_task_labels(task: Task, num_labels: int) -> None:
    """The task's labels fit the checkpoints' head: regression for one output, class ids below
    ``num_labels`` otherwise; the first misfit is named with its file and line."""
    if num_labels == 1 and not task.regression:
        raise DataError(f"{task.where(0)}: label {task.labels[0]:g} is a class, but the checkpoints are regression "
                        "models (1 output); regression labels are numbers with a decimal point")
    if num_labels > 1 and task.regression and all(v == int(v) for v in task.labels):
        task.regression, task.num_labels = False, num_labels  # class ids written as 0.0, 1.0, ...
    if num_labels > 1 and task.regression:
        i = next((i for i, v in enumerate(task.labels) if v != int(v)), 0)
        raise DataError(f"{task.where(i)}: label {task.labels[i]:g} is not a class id; the checkpoints are "
                        f"{num_labels}-way classifiers (labels 0..{num_labels - 1})")
    if num_labels > 1:
        for i, v in enumerate(task.labels):
            if v >= num_labels:
                raise DataError(f"{task.where(i)}: label {int(v)} is out of range for the checkpoints' "
                                f"{num_labels} classes (0..{num_labels - 1})")


def task_batches(tokenizer, task: Task, batch_size: int, max_len: int = BLOCK) -> list[dict]:
    """Encode sentences (pairs with their real token_type_ids), padded per batch."""
    return list(iter_task_batches(tokenizer, task, batch_size, max_len))


def iter_task_batches(tokenizer, task: Task, batch_size: int, max_len: int = BLOCK):
    """``task_batches`` one batch at a time, so that ``limit_tokens`` encodes only what it takes."""
    _need_tokenizer(tokenizer)
    for i in range(0, len(task.texts_a), batch_size):
        a = task.texts_a[i:i + batch_size]
        b = task.texts_b[i:i + batch_size] if task.texts_b else None
        enc = tokenizer(a, b, padding=True, truncation=True, max_length=max_len, return_tensors="pt",
                        return_token_type_ids=True, return_special_tokens_mask=True)
        y = torch.tensor(task.labels[i:i + batch_size], dtype=torch.float if task.regression else torch.long)
        yield {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
               "token_type_ids": enc["token_type_ids"], "special_tokens_mask": enc["special_tokens_mask"],
               "labels": y}


def limit_tokens(batches: list[dict], tokens: int | None) -> list[dict]:
    """The shortest prefix of the batches with at least ``tokens`` non-padding tokens (rows cut)."""
    if tokens is None:
        return list(batches)
    if tokens <= 0:
        raise DataError("--tokens must be positive")
    out, seen = [], 0
    for b in batches:
        if seen >= tokens:
            break
        per_row = b["attention_mask"].sum(1)
        cum = torch.cumsum(per_row, 0)
        need = int((cum < tokens - seen).sum().item()) + 1
        if need < len(per_row):
            out.append({k: v[:need] for k, v in b.items()})
            return out
        out.append(b)
        seen += int(per_row.sum())
    if seen < tokens:
        warn(f"--tokens {tokens} is more than the alignment data holds: using all of its {seen} tokens "
             f"({sum(len(b['input_ids']) for b in out)} sequences)")
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
