"""The GLUE tasks as they are distributed: which task a folder holds, its columns, its dev files and
its metrics.

The layouts are those of the GLUE data as shipped (and as the GLUE processors of ``transformers``
read them): the first sentence, the second sentence (pair tasks) and the label by column name,
except CoLA, whose files have no header (source, label, original judgement, sentence).

| task  | text columns              | label         | metric(s) beside the loss            |
|-------|---------------------------|---------------|--------------------------------------|
| CoLA  | 4th column (no header)    | 2nd column    | Matthews correlation, accuracy       |
| SST-2 | sentence                  | label         | accuracy                             |
| MRPC  | #1 String, #2 String      | Quality       | F1 (class 1), accuracy               |
| STS-B | sentence1, sentence2      | score (float) | Pearson and Spearman (regression)    |
| QQP   | question1, question2      | is_duplicate  | F1 (class 1), accuracy               |
| QNLI  | question, sentence        | label (text)  | accuracy                             |
| RTE   | sentence1, sentence2      | label (text)  | accuracy                             |
| MNLI  | sentence1, sentence2      | gold_label    | accuracy (dev_matched, dev_mismatched) |
| WNLI  | sentence1, sentence2      | label         | accuracy                             |

The metrics are computed here with numpy (Matthews correlation, F1, Pearson) and scipy (Spearman).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError


@dataclass(frozen=True)
class GlueTask:
    name: str
    columns: tuple  # header columns the task's files must have (empty: CoLA, no header)
    metrics: tuple  # beside the loss, in this order
    regression: bool = False
    dev_files: tuple = ("dev.tsv",)


GLUE = {t.name: t for t in (
    GlueTask("CoLA", (), ("mcc", "accuracy")),
    GlueTask("SST-2", ("sentence", "label"), ("accuracy",)),
    GlueTask("MRPC", ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), ("f1", "accuracy")),
    GlueTask("STS-B", ("sentence1", "sentence2", "score"), ("pearson", "spearman"), regression=True),
    GlueTask("QQP", ("question1", "question2", "is_duplicate"), ("f1", "accuracy")),
    GlueTask("QNLI", ("question", "sentence", "label"), ("accuracy",)),
    GlueTask("RTE", ("sentence1", "sentence2", "label"), ("accuracy",)),
    GlueTask("MNLI", ("sentence1", "sentence2", "gold_label"), ("accuracy",),
             dev_files=("dev_matched.tsv", "dev_mismatched.tsv")),
    GlueTask("WNLI", ("sentence1", "sentence2", "label"), ("accuracy",)),
)}
METRIC_NAMES = {"accuracy": "accuracy", "f1": "F1", "mcc": "Matthews corr.", "pearson": "Pearson",
                "spearman": "Spearman"}
ALL_METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman")


def _key(s: str) -> str:
    return "".join(c for c in s.lower() if c.isalnum())


_BY_KEY = {_key(n): n for n in GLUE} | {"mnlim": "MNLI", "mnlimm": "MNLI", "mnlimatched": "MNLI",
                                        "mnlimismatched": "MNLI"}


def lookup(name: str) -> str:
    """The GLUE task called ``name`` (any case, with or without the hyphen: sst2, STS-B, ...), or
    DataError naming the choices."""
    n = _BY_KEY.get(_key(name))
    if n is None:
        raise DataError(f"--glue-task {name!r} is not a GLUE task; choose from {', '.join(GLUE)}")
    return n


def by_folder_name(folder: str | Path) -> str | None:
    """The GLUE task a folder's name names (``glue_data/MRPC`` -> MRPC), else None."""
    return _BY_KEY.get(_key(Path(folder).name))


def layout_problem(task: str, header: list[str], width: int) -> str | None:
    """Why a file's first row does not fit ``task``'s layout (None when it fits)."""
    g = GLUE[task]
    if not g.columns:  # CoLA: no header, four columns
        if width != 4 or any(h in ("sentence", "label", "sentence1") for h in header):
            return f"{task} files have no header and 4 columns (source, label, original label, sentence)"
        return None
    missing = [c for c in g.columns if c not in header]
    if missing:
        return f"{task} files have the columns {', '.join(g.columns)}; missing {', '.join(missing)}"
    return None


def metric_names(task: str | None, regression: bool) -> tuple:
    """The metrics reported beside the loss for a task (None: a task that is not GLUE's)."""
    if task is not None:
        return GLUE[task].metrics
    return ("pearson", "spearman") if regression else ("accuracy",)


# --- metrics ------------------------------------------------------------------------------------

def accuracy(y, p) -> float:
    y, p = np.asarray(y), np.asarray(p)
    return float((y == p).mean()) if len(y) else float("nan")


def f1(y, p, positive: int = 1) -> float:
    """F1 of the positive class: 2 TP / (2 TP + FP + FN); 0 when there is no positive at all."""
    y, p = np.asarray(y) == positive, np.asarray(p) == positive
    tp = int((y & p).sum())
    denom = 2 * tp + int((~y & p).sum()) + int((y & ~p).sum())
    return 2 * tp / denom if denom else 0.0


def matthews(y, p) -> float:
    """Matthews correlation (multi-class form of Gorodkin 2004; the binary phi coefficient for two
    classes); 0 when a side has a single class (the denominator vanishes)."""
    y, p = np.asarray(y).astype(np.int64), np.asarray(p).astype(np.int64)
    k = int(max(y.max(initial=0), p.max(initial=0))) + 1
    c = np.zeros((k, k), dtype=np.float64)
    np.add.at(c, (y, p), 1.0)
    t, q = c.sum(1), c.sum(0)  # true and predicted counts per class
    n, correct = c.sum(), np.trace(c)
    cov = correct * n - t @ q
    denom = np.sqrt(n * n - q @ q) * np.sqrt(n * n - t @ t)
    return float(cov / denom) if denom > 0 else 0.0


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def spearman(x, y) -> float:
    """Pearson correlation of the ranks (ties get their mean rank)."""
    from scipy.stats import rankdata

    return pearson(rankdata(x), rankdata(y))


def compute(names, labels, outputs, regression: bool) -> dict[str, float]:
    """``names`` of the metrics from the labels and the model's outputs: class ids (classification)
    or predicted scores (regression)."""
    out = {}
    for n in names:
        if n == "accuracy":
            out[n] = float("nan") if regression else accuracy(labels, outputs)
        elif n == "f1":
            out[n] = f1(labels, outputs)
        elif n == "mcc":
            out[n] = matthews(labels, outputs)
        elif n == "pearson":
            out[n] = pearson(outputs, labels)
        elif n == "spearman":
            out[n] = spearman(outputs, labels)
        else:
            raise ValueError(f"unknown metric {n!r}")
    return out
