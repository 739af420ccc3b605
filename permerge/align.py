"""From statistics to permutations: the alignment options and their result.

Every attention and residual variant is derived from the same StatsResult, so switching variants
never needs a second pass over the data.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field

import numpy as np

from .arch import ArchSpec
from .errors import PermergeError
from .match import ATTENTION_VARIANTS, NON_PRESERVING, RESIDUAL_VARIANTS, AttentionMatch, assign, \
    match_attention, residual_keys

MATCHERS = ("activation", "weight")
from .stats import PairStats, pooled


@dataclass(frozen=True)
class AlignOptions:
    ff: bool = True
    attention: str = "head-perm"
    residual: str = "identity"
    pooler: bool = False
    absolute: bool = False  # match on |correlation| instead of signed correlation
    # "activation": correlations of features over data; "weight": the weights alone (weight_match.py)
    matcher: str = "activation"

    def __post_init__(self):
        if self.attention not in ATTENTION_VARIANTS:
            raise ValueError(f"unknown attention variant {self.attention!r}; choose one of {ATTENTION_VARIANTS}")
        if self.residual not in RESIDUAL_VARIANTS:
            raise ValueError(f"unknown residual variant {self.residual!r}; choose one of {RESIDUAL_VARIANTS}")
        if self.matcher not in MATCHERS:
            raise PermergeError(f"unknown matcher {self.matcher!r}; choose one of {', '.join(MATCHERS)}")
        if self.matcher == "weight" and self.absolute:
            raise PermergeError("--absolute matches on |correlation|, which weight matching has none of; "
                                "leave --absolute out or use --matcher activation")
        if self.matcher == "weight" and not self.aligns_anything:
            object.__setattr__(self, "matcher", "activation")  # nothing to match: vanilla either way

    @property
    def aligns_anything(self) -> bool:
        return self.ff or self.attention != "vanilla" or self.residual != "identity" or self.pooler

    @property
    def function_preserving(self) -> bool:
        return ("attention", self.attention) not in NON_PRESERVING and ("residual", self.residual) not in NON_PRESERVING

    def label(self) -> str:
        parts = (["FF"] if self.ff else []) + ([f"attn:{self.attention}"] if self.attention != "vanilla" else []) \
            + ([f"res:{self.residual}"] if self.residual != "identity" else []) + (["pooler"] if self.pooler else [])
        label = " + ".join(parts) if parts else "vanilla"
        return f"weights: {label}" if self.matcher == "weight" else label

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.matcher == "activation":  # the default stays out: keys and reports as before the option
            d.pop("matcher")
        return {**d, "function_preserving": self.function_preserving}


VANILLA = AlignOptions(ff=False, attention="vanilla", residual="identity", pooler=False)


@dataclass
class GroupResult:
    name: str
    kind: str
    perm: np.ndarray
    corr_before: float  # mean of diag(C)
    corr_after: float  # mean of C(i, perm(i))
    aligned: bool  # False: identity because the options leave this group alone
    head_cost: np.ndarray | None = None
    outer: np.ndarray | None = None


@dataclass
class Alignment:
    options: AlignOptions
    groups: dict[str, GroupResult] = field(default_factory=dict)
    trace: object = None  # weight matching: its WeightMatchTrace (objective per sweep)

    @property
    def perms(self) -> dict[str, np.ndarray]:
        return {g: r.perm for g, r in self.groups.items()}

    def summary(self) -> dict:
        return {g: {"kind": r.kind, "aligned": r.aligned, "mean_corr_before": r.corr_before,
                    "mean_corr_after": r.corr_after} for g, r in self.groups.items()}


def _mean_matched(C: np.ndarray, perm: np.ndarray) -> float:
    return float(C[np.arange(len(perm)), perm].mean())


def assignment_workers() -> int:
    """Threads for the assignments: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def compute_alignment(spec: ArchSpec, points: dict[str, PairStats], options: AlignOptions,
                      progress=None, workers: int | None = None) -> Alignment:
    """Permutations for every group of ``spec`` (identity where the options leave it alone).

    The groups' correlation matrices and assignments are independent: they run on ``workers``
    threads (default: every CPU; SciPy's solver and numpy release the GIL), the widest first, so
    the wall time approaches that of the largest single solve.  The result is exactly that of
    solving them one after another."""
    names = [g for g in spec.groups if g in points]
    res_keys = residual_keys(list(spec.residual_points), options.residual)
    corr_cache: dict[str, np.ndarray] = {}
    lock = threading.Lock()

    def corr(key: str) -> np.ndarray:
        with lock:
            if key in corr_cache:
                return corr_cache[key]
        C = correlation(points, spec, key)
        with lock:
            return corr_cache.setdefault(key, C)

    def solve_group(name: str):
        grp = spec.groups[name]
        C = corr(name)
        if grp.kind == "ff" and options.ff:
            am, aligned = AttentionMatch(assign(C, options.absolute)), True
        elif grp.kind == "att" and options.attention != "vanilla":
            linked = spec.groups.get(grp.qk) if grp.qk else None
            am, aligned = match_attention(C, grp.heads, options.attention, options.absolute, grp.kv_heads,
                                          corr(grp.qk) if linked is not None and grp.qk in points else None,
                                          linked.fixed if linked is not None else 0), True
        elif grp.kind == "pooler" and options.pooler:
            am, aligned = AttentionMatch(assign(C, options.absolute)), True
        else:
            am, aligned = None, False  # a residual point (its permutation comes from res_keys) or left alone
        if grp.kind in ("res", "qk"):  # its permutation may be solved elsewhere (residual, attention): keep C
            return am, aligned, None
        # summarised now and let go: the correlation matrices of every group at once would hold as
        # much memory as the float64 statistics themselves (1.08 GB for bert-base)
        perm = am.perm if am is not None else np.arange(grp.size)
        summary = (float(np.mean(np.diag(C))), _mean_matched(C, perm))
        with lock:
            corr_cache.pop(name, None)
        return am, aligned, summary

    tasks = [(("res", k), k) for k in dict.fromkeys(res_keys.values())] + [(("group", g), g) for g in names]
    width = lambda key: spec.hidden if key == "pooled" else spec.groups[key].size  # noqa: E731
    tasks.sort(key=lambda t: -width(t[1]))  # longest first: the pool ends when the largest solve does
    results: dict[tuple, object] = {}
    done_groups = 0

    def run(task):
        kind, key = task
        if kind == "group":
            return solve_group(key)
        perm = assign(corr(key), options.absolute)
        if key not in spec.groups or spec.groups[key].kind != "res":  # e.g. the pooled statistics of All
            with lock:
                corr_cache.pop(key, None)
        return perm

    def finished(task, value):
        nonlocal done_groups
        results[task] = value
        if task[0] == "group":
            done_groups += 1
            if progress:
                progress("assignment", done_groups, len(names), group=task[1])

    n_workers = min(workers or assignment_workers(), len(tasks)) if tasks else 1
    if n_workers <= 1:
        for task, _ in tasks:
            finished(task, run(task))
    else:
        with ThreadPoolExecutor(n_workers, thread_name_prefix="permerge-assign") as pool:
            pending = {pool.submit(run, task): task for task, _ in tasks}
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        finished(pending.pop(f), f.result())
            except BaseException:  # a cancelled run (or a failed solve) stops what has not started
                for f in pending:
                    f.cancel()
                raise

    out = Alignment(options)
    for name in names:
        grp = spec.groups[name]
        am, aligned, summary = results["group", name]
        if grp.kind == "res" and name in res_keys:
            am, aligned = AttentionMatch(results["res", res_keys[name]]), True
        if grp.kind == "qk":  # solved with its attention group: the same heads, its own inner permutation
            owner = next((g for g in names if spec.groups[g].qk == name), None)
            got = results.get(("group", owner), (None, False, None)) if owner else (None, False, None)
            if got[0] is not None and got[0].qk is not None:
                am, aligned = AttentionMatch(got[0].qk, got[0].head_cost, got[0].outer), True
        if am is None:
            am = AttentionMatch(np.arange(grp.size))
        if summary is None:
            C = corr(name)
            summary = (float(np.mean(np.diag(C))), _mean_matched(C, am.perm))
        out.groups[name] = GroupResult(name, grp.kind, am.perm, summary[0], summary[1], aligned, am.head_cost,
                                       am.outer)
    return out


def correlation(points: dict[str, PairStats], spec: ArchSpec, key: str) -> np.ndarray:
    """Correlation matrix for a group name, or "pooled" for all residual points together."""
    if key == "pooled":
        return pooled([points[p] for p in spec.residual_points]).correlation()
    return points[key].correlation()
