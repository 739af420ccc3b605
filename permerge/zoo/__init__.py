"""Bundled offline checkpoint family: small BERT MLMs (5 seeds) and fine-tuned classifiers.

Importing this module is cheap (no torch / transformers).  The checkpoints and their data are
repository data, not package data: a checkout has them in ``permerge/zoo/checkpoints/<name>/`` and
``permerge/zoo/data/``; an installed package finds them in the folder named by ``$PERMERGE_ZOO`` or
by the command line's ``--zoo DIR`` (``use``).  They load with plain ``transformers``::

    from transformers import AutoModelForMaskedLM, AutoTokenizer
    a, b = default_pair()
    model = AutoModelForMaskedLM.from_pretrained(a)
    tok = AutoTokenizer.from_pretrained(a)

Rebuild everything with ``python -m permerge zoo build`` (see README.md).
"""
from __future__ import annotations

import csv
import json
import os
import stat
from collections import Counter
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent  # this package's code (and, in a checkout, its data)
ENV_VAR = "PERMERGE_ZOO"

# Where the family is: $PERMERGE_ZOO when set, else this folder; ``use`` moves all four.
ZOO_DIR = Path(os.environ[ENV_VAR]).expanduser().resolve() if os.environ.get(ENV_VAR) else PACKAGE_DIR
CHECKPOINTS_DIR = ZOO_DIR / "checkpoints"
DATA_DIR = ZOO_DIR / "data"
TASKS_DIR = DATA_DIR / "tasks"
_SOURCE = ENV_VAR if os.environ.get(ENV_VAR) else None  # what named ZOO_DIR, for messages

DEFAULT_PAIR = ("mlm-seed1", "mlm-seed2")
PREFIX = "zoo:"  # zoo:mlm-seed1 names a bundled checkpoint, zoo:align.txt a file of data/

# Hub ids of the real family for users with a network connection (MultiBERTs, final checkpoints).
HUB_FAMILY = tuple(f"google/multiberts-seed_{i}" for i in range(1, 6))

HOW_TO_GET = (f"clone the permerge repository and pass --zoo CLONE/permerge/zoo (or set {ENV_VAR} to it), "
              "or build them with `permerge zoo build --out DIR`")

__all__ = [
    "ZOO_DIR", "CHECKPOINTS_DIR", "DATA_DIR", "TASKS_DIR", "DEFAULT_PAIR", "HUB_FAMILY", "PREFIX",
    "use", "require", "resolve",
    "list_checkpoints", "get_checkpoint", "default_pair", "task_dir", "list_tasks",
    "eval_text", "align_text", "task_chance", "task_learning", "learned_tasks",
]


def use(folder, source: str = "--zoo") -> Path:
    """Take the family from ``folder`` (a folder holding ``checkpoints/`` and ``data/``) from now
    on; ``source`` names where the folder came from in error messages.  Raises PermergeError when
    it holds no checkpoint."""
    global ZOO_DIR, CHECKPOINTS_DIR, DATA_DIR, TASKS_DIR, _SOURCE
    root = Path(str(folder)).expanduser().resolve()
    ZOO_DIR, CHECKPOINTS_DIR, DATA_DIR, TASKS_DIR = root, root / "checkpoints", root / "data", root / "data" / "tasks"
    _SOURCE = source
    return require()


def require() -> Path:
    """The family's folder; PermergeError (one line saying how to get the checkpoints) when it
    holds none."""
    from ..errors import PermergeError

    if list_checkpoints():
        return ZOO_DIR
    if _SOURCE is None:
        raise PermergeError(f"no bundled checkpoints: they are repository data, not part of the installed package; "
                            f"{HOW_TO_GET}")
    where = f"{_SOURCE}={ZOO_DIR}" if _SOURCE == ENV_VAR else f"{_SOURCE} {ZOO_DIR}"
    what = "no such folder" if not ZOO_DIR.is_dir() else "no bundled checkpoints there (no checkpoints/NAME/permerge.json)"
    raise PermergeError(f"{where}: {what}; {HOW_TO_GET}")


def resolve(source: str) -> str:
    """``zoo:NAME`` -> the path of bundled checkpoint NAME, or of ``data/NAME`` (``zoo:align.txt``,
    ``zoo:eval.txt``, ``zoo:tasks/style``); any other string is returned unchanged."""
    from ..errors import PermergeError

    if not source.startswith(PREFIX):
        return source
    name = source[len(PREFIX):].strip("/")
    require()
    ckpt = CHECKPOINTS_DIR / name
    if name and "/" not in name and (ckpt / "config.json").is_file():
        return str(ckpt)
    data = DATA_DIR / name
    if name and ".." not in Path(name).parts and data.exists():
        return str(data)
    have = ", ".join(e["name"] for e in list_checkpoints())
    raise PermergeError(f"no bundled checkpoint or data file {source!r} in {ZOO_DIR} (checkpoints: {have}; "
                        "data: zoo:align.txt, zoo:eval.txt, zoo:tasks/TASK)")


def _warn(message: str) -> None:
    """permerge's one-line warning; a plain one when this module is loaded on its own."""
    try:
        from ..errors import warn
    except ImportError:
        import warnings

        warnings.warn(message, stacklevel=3)
        return
    warn(message)


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
        meta = cfg = None
        for f in ("permerge.json", "config.json"):
            try:
                if not stat.S_ISREG(os.stat(d / f).st_mode):  # a FIFO would block the read
                    raise OSError(f"{f} is not a regular file")
                value = json.loads((d / f).read_bytes())
            except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
                _warn(f"skipped {d.name} in {CHECKPOINTS_DIR}: unreadable {f} ({type(e).__name__})")
                break
            meta, cfg = (value, cfg) if f == "permerge.json" else (meta, value)
        if cfg is None:
            continue
        if not (isinstance(meta, dict) and isinstance(cfg, dict) and isinstance(meta.get("kind"), str)
                and isinstance(meta.get("metrics") or {}, dict)
                and all(isinstance(meta.get(k), (str, type(None))) for k in ("task", "base"))
                and all(isinstance(meta.get(k), (int, type(None))) and not isinstance(meta.get(k), bool)
                        for k in ("seed", "num_labels"))):
            _warn(f"skipped {d.name} in {CHECKPOINTS_DIR}: its permerge.json is not a checkpoint record of the zoo")
            continue
        entry = {
            "name": d.name,
            "path": str(d.resolve()),
            "kind": meta.get("kind"),
            "task": meta.get("task"),
            "seed": meta.get("seed"),
            "metrics": {str(k): v for k, v in (meta.get("metrics") or {}).items()
                        if isinstance(v, (int, float, str)) and not isinstance(v, bool)},
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


def task_chance(task: str) -> float | None:
    """Accuracy of always answering the most frequent label of a bundled task's dev.tsv (its
    "label" column, else the last one); None when the file has no rows."""
    with open(task_dir(task) / "dev.tsv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    if len(rows) < 2:
        return None
    col = rows[0].index("label") if "label" in rows[0] else len(rows[0]) - 1
    labels = Counter(r[col] for r in rows[1:] if len(r) > col)
    return max(labels.values()) / sum(labels.values()) if labels else None


def task_learning(margin: float = 0.15) -> list[dict]:
    """For every bundled task with fine-tuned classifiers: task, chance (``task_chance``), the
    classifiers' recorded dev accuracies (name -> accuracy, from their permerge.json metrics) and
    learned: True when every one of them is at least ``margin`` above chance.  A task whose
    classifiers have no recorded accuracy (or whose dev.tsv is missing) has learned False."""
    out = []
    tasks = set(list_tasks())
    by_task: dict[str, list[dict]] = {}
    for e in list_checkpoints(kind="classifier"):
        by_task.setdefault(e["task"], []).append(e)
    for task, entries in sorted(by_task.items(), key=lambda kv: str(kv[0])):
        chance = task_chance(task) if task in tasks else None
        acc = {e["name"]: e["metrics"].get("dev_accuracy") for e in entries}
        learned = chance is not None and all(a is not None and a >= chance + margin for a in acc.values())
        out.append({"task": task, "chance": chance, "dev_accuracy": acc, "learned": learned})
    return out


def learned_tasks(margin: float = 0.15) -> list[str]:
    """Bundled tasks whose fine-tuned classifiers all reach a dev accuracy at least ``margin`` above
    chance (see ``task_learning``)."""
    return [t["task"] for t in task_learning(margin) if t["learned"]]
