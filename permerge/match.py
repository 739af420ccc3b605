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
    qk: np.ndarray | None = None  # the permutation of the linked query/key space (RoPE), when given


def match_attention(C: np.ndarray, heads: int, variant: str, absolute: bool = False, kv_heads: int | None = None,
                    qk: np.ndarray | None = None, fixed: int = 0) -> AttentionMatch:
    """The attention variants on a head-major correlation ``C`` (head contexts).  With ``kv_heads``
    (grouped key/value heads) or ``qk`` (the correlation of a linked query/key space whose first
    ``fixed`` dims per head stay in place: RoPE) the constrained solver ``match_grouped`` runs."""
    if (kv_heads is not None and kv_heads != heads) or qk is not None:
        return match_grouped(C, heads, variant, absolute, kv_heads or heads, qk, fixed)
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


def _block(C: np.ndarray, dk: int, a: int, b: int) -> np.ndarray:
    return C[a * dk:(a + 1) * dk, b * dk:(b + 1) * dk]


def _inner(block: np.ndarray, fixed: int, absolute: bool) -> np.ndarray:
    """Assignment inside one head whose first ``fixed`` dims stay in place."""
    free = assign(block[fixed:, fixed:], absolute) + fixed if fixed < len(block) else np.empty(0, np.int64)
    return np.concatenate([np.arange(fixed), free]).astype(np.int64)


def _inner_score(block: np.ndarray, fixed: int, absolute: bool) -> float:
    b = np.abs(block) if absolute else block
    return float(np.trace(b[:fixed, :fixed])) + matched_score(b[fixed:, fixed:], _inner(block, fixed, absolute)[fixed:] - fixed)


def match_grouped(C: np.ndarray, heads: int, variant: str, absolute: bool, kv_heads: int,
                  qk: np.ndarray | None = None, fixed: int = 0) -> AttentionMatch:
    """Attention with grouped key/value heads and/or a linked query/key space, assigning only what
    keeps the function:

    * heads move as wholes, and a key/value head with its ``r = heads // kv_heads`` query heads
      as a block; query heads may be permuted within their block;
    * inside a head, the value dims (``C``) are free, with one permutation per key/value head (its
      query heads read the same values); the query/key dims (``qk``) are free except the first
      ``fixed`` of each head, which stay in place, again one permutation per key/value head (queries
      and keys take the same one).

    ``head-perm``: the cost of matching query head j of A to query head k of B is the best inner
    matched sum of the value block plus that of the query/key block (its fixed dims on the
    diagonal); the cost of a block of A to a block of B is the best bijection of their query heads
    under that cost; blocks are assigned on it, then each block's inner permutations are solved on
    the sum of its matched heads' blocks.  ``monotonic``: heads stay, inner permutations as above.
    ``ignore-heads`` (not function-preserving): the value dims are assigned freely across key/value
    heads (on the correlations summed over the query heads of a block, so that the key/value rows
    still take one permutation), the query/key space stays as it is.
    Returns the context permutation, the head assignment (query heads), the head costs and ``qk``'s
    permutation (None without ``qk``)."""
    d = C.shape[0]
    if d % heads or heads % kv_heads:
        raise ValueError(f"width {d} over {heads} heads and {kv_heads} key/value heads does not divide")
    dk, r = d // heads, heads // kv_heads
    ident = np.arange(d)
    if variant == "vanilla":
        return AttentionMatch(ident, qk=None if qk is None else ident.copy())
    if variant == "ignore-heads":
        Ckv = sum(C[np.ix_(np.concatenate([np.arange((s * r + q) * dk, (s * r + q + 1) * dk) for s in range(kv_heads)]),
                           np.concatenate([np.arange((s * r + q) * dk, (s * r + q + 1) * dk) for s in range(kv_heads)]))]
                  for q in range(r))
        kvp = assign(Ckv, absolute)  # over kv_heads * dk units: (s, i) of A <- kvp of B
        perm = np.empty(d, dtype=np.int64)
        for s in range(kv_heads):
            for q in range(r):
                for i in range(dk):
                    sb, ib = divmod(int(kvp[s * dk + i]), dk)
                    perm[(s * r + q) * dk + i] = (sb * r + q) * dk + ib
        return AttentionMatch(perm, qk=None if qk is None else ident.copy())
    if variant not in ("monotonic", "head-perm"):
        raise ValueError(f"unknown attention variant {variant!r}; choose one of {ATTENTION_VARIANTS}")
    if variant == "monotonic":
        hmap = np.arange(heads)
        cost = None
    else:
        cost = np.empty((heads, heads))
        for j in range(heads):
            for k in range(heads):
                blk = _block(C, dk, j, k)
                c = matched_score(np.abs(blk) if absolute else blk, assign(blk, absolute))
                if qk is not None:
                    c += _inner_score(_block(qk, dk, j, k), fixed, absolute)
                cost[j, k] = c
        within = {}
        gcost = np.empty((kv_heads, kv_heads))
        for s in range(kv_heads):
            for t in range(kv_heads):
                sub = cost[s * r:(s + 1) * r, t * r:(t + 1) * r]
                within[s, t] = assign(sub)
                gcost[s, t] = matched_score(sub, within[s, t])
        gmap = assign(gcost)
        hmap = np.concatenate([gmap[s] * r + within[s, gmap[s]] for s in range(kv_heads)])
    perm = np.empty(d, dtype=np.int64)
    qperm = np.empty(d, dtype=np.int64) if qk is not None else None
    for s in range(kv_heads):
        hs = range(s * r, (s + 1) * r)
        v_inner = assign(sum(_block(C, dk, j, hmap[j]) for j in hs), absolute)
        q_inner = _inner(sum(_block(qk, dk, j, hmap[j]) for j in hs), fixed, absolute) if qk is not None else None
        for j in hs:
            perm[j * dk:(j + 1) * dk] = hmap[j] * dk + v_inner
            if qperm is not None:
                qperm[j * dk:(j + 1) * dk] = hmap[j] * dk + q_inner
    return AttentionMatch(perm, head_cost=cost, outer=hmap.copy(), qk=qperm)


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
