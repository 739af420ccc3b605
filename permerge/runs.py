"""Runs as addresses: a finished run's settings, and the studies computed for it, kept on disk under a
short id, so that a page address (``?run=<id>``) finds the same run again after a reload, in a second
tab or from a bookmark, and a list of recent runs can be offered.

A record is a small JSON file ``<cache>/runs/<id>.json``: the job, the alignment options, the lambda
points, the run page's form, and the studies started while it was current.  A study is kept as a
*recipe* (the name of a ``permerge.work`` function and its arguments as JSON) with what it depends on
(``depends``: a subset of the run's job, options and lambda points), so that

* a study belongs to every run that agrees with it on what it depends on (a new residual variant keeps
  Fig. 4, which does not depend on the options), and
* a server that has not got the result any more rebuilds the work from the recipe; the work's stages
  then come from the result cache, not from a new computation.

No Streamlit here: ``dashboard.state`` reads and writes these records.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from pathlib import Path

from .align import AlignOptions
from .errors import PermergeError
from .locations import default_cache_dir
from .pipeline import Job

ID_LENGTH = 10
_ID = re.compile(r"^[0-9a-f]{%d}$" % ID_LENGTH)
KEEP = 200  # records kept on disk; the oldest beyond are removed when a new one is written
# The permerge.work functions a recipe may name (nothing else is ever called from a record).
RECIPES = ("pair_work", "curves_work", "family_work", "tasks_work", "data_amount_work", "matchers_work",
           "alignment_work", "steps_work", "features_family_work")


def runs_dir() -> Path:
    """``runs`` in the result cache folder (``$PERMERGE_CACHE``, else the checkout's ``cache/``, else
    the user's cache folder)."""
    return default_cache_dir() / "runs"


def run_id(key: str) -> str:
    """The short id of a run (its job key hashed): the same settings give the same id."""
    return hashlib.sha256(key.encode()).hexdigest()[:ID_LENGTH]


def valid_id(rid) -> bool:
    return isinstance(rid, str) and bool(_ID.match(rid))


# --- JSON for jobs and options --------------------------------------------------------------------

def encode(x):
    """Jobs, options, tuples, lists and dicts as JSON values (tuples are marked, so that pairs come
    back as tuples)."""
    if isinstance(x, Job):
        return {"__job__": encode(x.to_dict())}
    if isinstance(x, AlignOptions):
        return {"__options__": {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}}
    if isinstance(x, tuple):
        return {"__tuple__": [encode(v) for v in x]}
    if isinstance(x, list):
        return [encode(v) for v in x]
    if isinstance(x, dict):
        return {str(k): encode(v) for k, v in x.items()}
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"cannot keep {type(x).__name__} in a run record")


def decode(x):
    if isinstance(x, list):
        return [decode(v) for v in x]
    if isinstance(x, dict):
        if set(x) == {"__job__"}:
            d = decode(x["__job__"])
            known = {f.name for f in dataclasses.fields(Job)}
            d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
            return Job(**d)
        if set(x) == {"__options__"}:
            known = {f.name for f in dataclasses.fields(AlignOptions)}
            return AlignOptions(**{k: v for k, v in x["__options__"].items() if k in known})
        if set(x) == {"__tuple__"}:
            return tuple(decode(v) for v in x["__tuple__"])
        return {k: decode(v) for k, v in x.items()}
    return x


def recipe(fn: str, **kwargs) -> dict:
    """A study's work as data: ``cook(registry, recipe(...))`` is ``work.<fn>(registry, **kwargs)``."""
    if fn not in RECIPES:
        raise ValueError(f"not a recipe: {fn}")
    return {"fn": fn, "args": encode(kwargs)}


def cook(registry, rec: dict):
    """The ``fn(progress)`` a recipe describes."""
    from . import work

    fn = rec.get("fn") if isinstance(rec, dict) else None
    if fn not in RECIPES:
        raise PermergeError(f"a run record names unknown work {fn!r}")
    return getattr(work, fn)(registry, **decode(rec["args"]))


# --- what a study depends on ------------------------------------------------------------------------

def depends(job: Job | None = None, options: AlignOptions | None = None, lambdas: int | None = None) -> dict:
    """The parts of a run a study depends on, as JSON (what is left out, it does not depend on)."""
    out = {}
    if job is not None:
        out["job"] = encode(job)
    if options is not None:
        out["options"] = encode(options)
    if lambdas is not None:
        out["lambdas"] = int(lambdas)
    return out


def belongs(dep: dict, job: Job, options: AlignOptions, lambdas: int) -> bool:
    """Whether a study that depends on ``dep`` belongs to the run (job, options, lambdas)."""
    have = depends(job, options, lambdas)
    return all(have.get(k) == v for k, v in dep.items())


# --- records ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Record:
    id: str
    key: str
    job: Job
    options: AlignOptions
    lambdas: int
    form: dict = dataclasses.field(default_factory=dict)
    studies: list = dataclasses.field(default_factory=list)  # [{section, key, label, depends, recipe}]
    saved: float = 0.0

    def to_json(self) -> dict:
        return {"id": self.id, "key": self.key, "job": encode(self.job), "options": encode(self.options),
                "lambdas": int(self.lambdas), "form": _jsonable(self.form), "studies": self.studies,
                "saved": self.saved}

    @classmethod
    def from_json(cls, d: dict) -> "Record":
        return cls(id=d["id"], key=d["key"], job=decode(d["job"]), options=decode(d["options"]),
                   lambdas=int(d["lambdas"]), form=dict(d.get("form") or {}), studies=list(d.get("studies") or []),
                   saved=float(d.get("saved") or 0.0))


def _jsonable(form: dict) -> dict:
    return {k: v for k, v in form.items() if v is None or isinstance(v, (bool, int, float, str))}


def _path(rid: str, folder: Path | None = None) -> Path:
    if not valid_id(rid):
        raise PermergeError(f"not a run id: {rid!r}")
    return (folder or runs_dir()) / f"{rid}.json"


def save(rec: Record, folder: Path | None = None) -> None:
    """Writes the record (atomically: another process never reads half of it)."""
    folder = folder or runs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    rec.saved = time.time()
    tmp = folder / f".{rec.id}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(rec.to_json(), sort_keys=True))
    os.replace(tmp, _path(rec.id, folder))
    old = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    for p in old[:-KEEP]:
        p.unlink(missing_ok=True)


def load(rid: str, folder: Path | None = None) -> Record | None:
    """The record of a run id, or None (unknown id, unreadable or damaged record)."""
    if not valid_id(rid):
        return None
    try:
        return Record.from_json(json.loads(_path(rid, folder).read_text()))
    except (OSError, ValueError, KeyError, TypeError, PermergeError):
        return None


def recent(n: int = 6, folder: Path | None = None) -> list[Record]:
    """The ``n`` runs saved last, newest first."""
    folder = folder or runs_dir()
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        rec = load(p.stem, folder)
        if rec is not None:
            out.append(rec)
        if len(out) >= n:
            break
    return out


def add_study(rec: Record, study: dict) -> None:
    """Keeps ``study`` in ``rec`` (the newest of a section and key replaces an older one)."""
    rec.studies = [s for s in rec.studies if (s["section"], s["key"]) != (study["section"], study["key"])]
    rec.studies.append(study)


def studies_for(rec: Record, studies: list[dict]) -> list[dict]:
    """Of ``studies``, those that belong to the run of ``rec`` (by what each depends on)."""
    return [s for s in studies if belongs(s.get("depends") or {}, rec.job, rec.options, rec.lambdas)]
