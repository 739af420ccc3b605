"""Assignment solvers and the attention / residual variants: numpy correlation in, index vectors out.

``perm[i] = j``: unit i of A is matched to unit j of B, and unit i of B' is unit j of B.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ATTENTION_VARIANTS = ("vanilla", "monotonic", "ignore-heads", "head-perm")
RESIDUAL_VARIANTS = ("identity", "first", "last", "all", "separate")
# Variants that move units across a boundary the function depends on.
NON_PRESERVING = {("attention", "ignore-heads"), ("residual", "separate")}


def assign(C: np.ndarray, absolute: bool = False) -> np.ndarray:
    """Exact linear assignment maximising sum_i C[i, perm[i]] (Jonker-Volgenant via SciPy).

    SciPy's solver releases the GIL, so independent solves run concurrently in threads (see
    align.compute_alignment)."""
    from scipy.optimize import linear_sum_assignment  # imported on first use: scipy.optimize is slow to import

    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"assignment needs a square matrix, got {C.shape}")
    rows, cols = linear_sum_assignment(np.abs(C) if absolute else C, maximize=True)
    perm = np.empty(C.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def matched_score(C: np.ndarray, perm: np.ndarray) -> float:
    return float(np.asarray(C)[np.arange(len(perm)), perm].sum())


@dataclass
class AttentionMatch:
    perm: np.ndarray  # full d_model permutation
    head_cost: np.ndarray | None = None  # H x H: cost(j, k) = best inner matched sum of block C_jk
    outer: np.ndarray | None = None  # head j of A <- head outer[j] of B


def match_attention(C: np.ndarray, heads: int, variant: str, absolute: bool = False) -> AttentionMatch:
    d = C.shape[0]
    if d % heads:
        raise ValueError(f"width {d} is not divisible by {heads} heads")
    dk = d // heads
    if variant == "vanilla":
        return AttentionMatch(np.arange(d))
    if variant == "ignore-heads":
        return AttentionMatch(assign(C, absolute))
    if variant == "monotonic":
        perm = np.concatenate([h * dk + assign(C[h * dk:(h + 1) * dk, h * dk:(h + 1) * dk], absolute)
                               for h in range(heads)])
        return AttentionMatch(perm, outer=np.arange(heads))
    if variant == "head-perm":
        inner = {}
        cost = np.empty((heads, heads))
        for j in range(heads):
            for k in range(heads):
                block = C[j * dk:(j + 1) * dk, k * dk:(k + 1) * dk]
                p = assign(block, absolute)
                inner[j, k] = p
                cost[j, k] = matched_score(np.abs(block) if absolute else block, p)
        outer = assign(cost)
        perm = np.concatenate([outer[j] * dk + inner[j, outer[j]] for j in range(heads)])
        return AttentionMatch(perm, head_cost=cost, outer=outer)
    raise ValueError(f"unknown attention variant {variant!r}; choose one of {ATTENTION_VARIANTS}")


def residual_keys(points: list[str], variant: str) -> dict[str, str]:
    """Which correlation each residual point's permutation is solved on: the point itself
    ("separate"), the first or last point, or "pooled" (all points' statistics summed, "all");
    empty for "identity"."""
    if variant == "identity":
        return {}
    if variant == "separate":
        return {pt: pt for pt in points}
    key = {"first": points[0], "last": points[-1], "all": "pooled"}.get(variant)
    if key is None:
        raise ValueError(f"unknown residual variant {variant!r}; choose one of {RESIDUAL_VARIANTS}")
    return {pt: key for pt in points}


def match_residual(corr_at, points: list[str], variant: str, absolute: bool = False) -> dict[str, np.ndarray]:
    """Residual permutations per point.  ``corr_at(key)`` returns a correlation matrix for a point
    name, or for the key "pooled" (the statistics of all points summed before normalising)."""
    keys = residual_keys(points, variant)
    solved = {k: assign(corr_at(k), absolute) for k in dict.fromkeys(keys.values())}
    return {pt: solved[k] for pt, k in keys.items()}
