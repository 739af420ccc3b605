"""From statistics to permutations: the alignment options and their result.

Every attention and residual variant is derived from the same StatsResult, so switching variants
never needs a second pass over the data.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .arch import ArchSpec
from .match import ATTENTION_VARIANTS, NON_PRESERVING, RESIDUAL_VARIANTS, AttentionMatch, assign, \
    match_attention, match_residual
from .stats import PairStats, pooled


@dataclass(frozen=True)
class AlignOptions:
    ff: bool = True
    attention: str = "head-perm"
    residual: str = "identity"
    pooler: bool = False
    absolute: bool = False  # match on |correlation| instead of signed correlation

    def __post_init__(self):
        if self.attention not in ATTENTION_VARIANTS:
            raise ValueError(f"unknown attention variant {self.attention!r}; choose one of {ATTENTION_VARIANTS}")
        if self.residual not in RESIDUAL_VARIANTS:
            raise ValueError(f"unknown residual variant {self.residual!r}; choose one of {RESIDUAL_VARIANTS}")

    @property
    def function_preserving(self) -> bool:
        return ("attention", self.attention) not in NON_PRESERVING and ("residual", self.residual) not in NON_PRESERVING

    def label(self) -> str:
        parts = (["FF"] if self.ff else []) + ([f"attn:{self.attention}"] if self.attention != "vanilla" else []) \
            + ([f"res:{self.residual}"] if self.residual != "identity" else []) + (["pooler"] if self.pooler else [])
        return " + ".join(parts) if parts else "vanilla"

    def to_dict(self) -> dict:
        return {**asdict(self), "function_preserving": self.function_preserving}


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

    @property
    def perms(self) -> dict[str, np.ndarray]:
        return {g: r.perm for g, r in self.groups.items()}

    def summary(self) -> dict:
        return {g: {"kind": r.kind, "aligned": r.aligned, "mean_corr_before": r.corr_before,
                    "mean_corr_after": r.corr_after} for g, r in self.groups.items()}


def _mean_matched(C: np.ndarray, perm: np.ndarray) -> float:
    return float(C[np.arange(len(perm)), perm].mean())


def compute_alignment(spec: ArchSpec, points: dict[str, PairStats], options: AlignOptions,
                      progress=None) -> Alignment:
    """Permutations for every group of ``spec`` (identity where the options leave it alone)."""
    corr_cache: dict[str, np.ndarray] = {}

    def corr(key: str) -> np.ndarray:
        if key not in corr_cache:
            corr_cache[key] = correlation(points, spec, key)
        return corr_cache[key]

    res = match_residual(corr, list(spec.residual_points), options.residual, options.absolute)
    out = Alignment(options)
    names = [g for g in spec.groups if g in points]
    for i, name in enumerate(names):
        grp = spec.groups[name]
        C = corr(name)
        am = AttentionMatch(np.arange(grp.size))
        aligned = False
        if grp.kind == "ff" and options.ff:
            am, aligned = AttentionMatch(assign(C, options.absolute)), True
        elif grp.kind == "att" and options.attention != "vanilla":
            am, aligned = match_attention(C, grp.heads, options.attention, options.absolute), True
        elif grp.kind == "res" and name in res:
            am, aligned = AttentionMatch(res[name]), True
        elif grp.kind == "pooler" and options.pooler:
            am, aligned = AttentionMatch(assign(C, options.absolute)), True
        out.groups[name] = GroupResult(name, grp.kind, am.perm, float(np.mean(np.diag(C))),
                                       _mean_matched(C, am.perm), aligned, am.head_cost, am.outer)
        if progress:
            progress("assignment", i + 1, len(names), group=name)
    return out


def correlation(points: dict[str, PairStats], spec: ArchSpec, key: str) -> np.ndarray:
    """Correlation matrix for a group name, or "pooled" for all residual points together."""
    if key == "pooled":
        return pooled([points[p] for p in spec.residual_points]).correlation()
    return points[key].correlation()
