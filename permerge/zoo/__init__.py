"""Bundled offline checkpoint family: small BERT MLMs (5 seeds) and fine-tuned classifiers.

Importing this module is cheap (no torch / transformers).  Checkpoints live in
``permerge/zoo/checkpoints/<name>/`` and load with plain ``transformers``::

    from transformers import AutoModelForMaskedLM, AutoTokenizer
    a, b = default_pair()
    model = AutoModelForMaskedLM.from_pretrained(a)
    tok = AutoTokenizer.from_pretrained(a)

Rebuild everything with ``python -m permerge.zoo.build`` (see README.md).
"""
from __future__ import annotations

import json
from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
CHECKPOINTS_DIR = ZOO_DIR / "checkpoints"
DATA_DIR = ZOO_DIR / "data"
TASKS_DIR = DATA_DIR / "tasks"

DEFAULT_PAIR = ("mlm-seed1", "mlm-seed2")

# Hub ids of the real family for users with a network connection (MultiBERTs, final checkpoints).
HUB_FAMILY = tuple(f"google/multiberts-seed_{i}" for i in range(1, 6))

__all__ = [
    "ZOO_DIR", "CHECKPOINTS_DIR", "DATA_DIR", "TASKS_DIR", "DEFAULT_PAIR", "HUB_FAMILY",
    "list_checkpoints", "get_checkpoint", "default_pair", "task_dir", "list_tasks",
    "eval_text", "align_text",
]


def list_checkpoints(kind: str | None = None, task: str | None = None) -> list[dict]:
    """Bundled checkpoints, sorted by (kind, task, seed).

    Each entry: name, path (absolute str), kind ("mlm" | "classifier"), task, seed,
    metrics (dict), plus base (classifiers) and num_labels (classifiers).  Folders without a
    ``permerge.json`` or a ``config.json`` (e.g. an interrupted ``*.tmp`` build) are skipped.
    """
    out = []
    if not CHECKPOINTS_DIR.is_dir():
        return out
    for d in CHECKPOINTS_DIR.iterdir():
        meta_path = d / "permerge.json"
        if not d.is_dir() or d.name.endswith((".tmp", ".old")) or not meta_path.is_file() \
                or not (d / "config.json").is_file():
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        entry = {
            "name": d.name,
            "path": str(d.resolve()),
            "kind": meta.get("kind"),
            "task": meta.get("task"),
            "seed": meta.get("seed"),
            "metrics": dict(meta.get("metrics") or {}),
        }
        if meta.get("kind") == "classifier":
            entry["base"] = meta.get("base")
            entry["num_labels"] = meta.get("num_labels")
        if kind is not None and entry["kind"] != kind:
            continue
        if task is not None and entry["task"] != task:
            continue
        out.append(entry)
    order = {"mlm": 0, "classifier": 1}
    out.sort(key=lambda e: (order.get(e["kind"], 2), e["task"] or "", e["seed"] or 0, e["name"]))
    return out


def get_checkpoint(name: str) -> dict:
    """The list_checkpoints() entry called ``name``; KeyError if it is not bundled."""
    for e in list_checkpoints():
        if e["name"] == name:
            return e
    raise KeyError(f"no bundled checkpoint {name!r} in {CHECKPOINTS_DIR}")


def default_pair() -> tuple[str, str]:
    """Absolute paths of the two default MLMs (seed 1 and seed 2)."""
    a, b = (get_checkpoint(n)["path"] for n in DEFAULT_PAIR)
    return a, b


def list_tasks() -> list[str]:
    """Task names with a train.tsv and a dev.tsv under data/tasks/."""
    if not TASKS_DIR.is_dir():
        return []
    return sorted(d.name for d in TASKS_DIR.iterdir()
                  if (d / "train.tsv").is_file() and (d / "dev.tsv").is_file())


def task_dir(task: str) -> Path:
    """GLUE-style folder (train.tsv, dev.tsv with a header row) of a bundled task."""
    d = TASKS_DIR / task
    if not (d / "dev.tsv").is_file():
        raise KeyError(f"no bundled task {task!r}; have {list_tasks()}")
    return d


def eval_text() -> Path:
    """Held-out English text (~150 KB) for MLM evaluation; no bundled model trained on it."""
    return DATA_DIR / "eval.txt"


def align_text() -> Path:
    """Held-out English text (~450 KB) for alignment statistics; no bundled model trained on it."""
    return DATA_DIR / "align.txt"
