"""Small computations behind the teaching views (no Streamlit, no plotting).

* ``cluster_order``: an order of A's units that puts similar units next to each other
  (hierarchical clustering of their correlation profiles), for heatmaps that show structure.
* ``ordered``: a correlation matrix in one of the dashboard's orders, with the unit numbers.
* ``group_weights``: for one permutation group, the weights it gathers in A, B and B', read
  through the architecture table (``ArchSpec.axes``), never by spelled-out names.
* ``gather_checks``: that B' is B gathered by the permutation, entry for entry (bit-exact).
* ``head_moves``: under a head-respecting permutation, which head of B each head of B' is.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .arch import ArchSpec
from .permute import permute_state_dict

ORDERS = ("B′ order (matched pairs on the diagonal)", "A's units clustered (matched columns follow)")


def cluster_order(C: np.ndarray) -> np.ndarray:
    """Leaves order of an average-linkage clustering of the rows of ``C`` by their correlation
    profiles (1 - Pearson correlation between rows).  Deterministic; constant rows go last."""
    from scipy.cluster.hierarchy import leaves_list, linkage

    X = np.asarray(C, dtype=float)
    n = X.shape[0]
    if n < 3:
        return np.arange(n)
    flat = X.std(axis=1) < 1e-12
    idx = np.flatnonzero(~flat)
    if len(idx) < 3:
        return np.concatenate([idx, np.flatnonzero(flat)])
    Z = linkage(X[idx], method="average", metric="correlation")
    return np.concatenate([idx[leaves_list(Z)], np.flatnonzero(flat)])


def ordered(C_after: np.ndarray, order: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``C_after`` (rows: A's units, column i: B's unit matched to A's unit i) in the chosen order:
    (matrix, row unit numbers of A, column positions of B′).  Clustering reorders rows and the
    matched columns together, so the matched pairs stay on the diagonal."""
    d = C_after.shape[0]
    if order == ORDERS[1]:
        o = cluster_order(C_after)
        return np.asarray(C_after)[np.ix_(o, o)], o, o
    return np.asarray(C_after), np.arange(d), np.arange(d)


@dataclass
class GroupWeights:
    """One permuted parameter of a group in A, B and B' (numpy, float32 as stored)."""
    name: str
    axis: int  # the axis this group gathers
    role: str  # "in" (the group's units are its rows: it computes them) or "out" (it reads them)
    a: np.ndarray
    b: np.ndarray
    bp: np.ndarray
    other: np.ndarray | None = None  # the permutation of the other axis (a residual group), if any


def group_weights(spec: ArchSpec, state_a: dict, state_b: dict, perms: dict[str, np.ndarray],
                  group: str) -> list[GroupWeights]:
    """Every matrix (2-D weight) that the group permutes, A's, B's and B''s, with the group's axis.
    B' is computed by ``permute_state_dict`` with all of the run's permutations, exactly as the
    aligned model is built."""
    names = [(p, ax) for p, ax in spec.params_of(group) if p in state_b and state_b[p].dim() == 2]
    sub = {p: state_b[p] for p, _ in names}
    permuted = permute_state_dict(sub, spec, perms)
    out = []
    for p, ax in names:
        g2 = spec.axes[p][1 - ax]
        other = np.asarray(perms[g2]) if g2 is not None and g2 in perms else None
        if other is not None and np.array_equal(other, np.arange(len(other))):
            other = None
        out.append(GroupWeights(p, ax, "in" if ax == 0 else "out", state_a[p].detach().float().cpu().numpy(),
                                state_b[p].detach().float().cpu().numpy(), permuted[p].detach().float().cpu().numpy(),
                                other))
    return out


def gather_checks(w: GroupWeights, perm) -> dict:
    """Whether B''s slice i along the group's axis is bit for bit B's slice perm[i], for every i (with
    the other axis gathered by its own permutation when the run permutes the residual stream too)."""
    perm = np.asarray(perm)
    bp = np.moveaxis(w.bp, w.axis, 0)
    b = np.moveaxis(w.b, w.axis, 0)
    if w.other is not None:
        b = b[:, w.other]
    equal = [bool(np.array_equal(bp[i], b[perm[i]])) for i in range(len(perm))]
    return {"slices": len(perm), "exact": int(sum(equal)), "all_exact": all(equal)}


def head_moves(perm, heads: int) -> list[dict]:
    """Per head j of B': the heads of B its units come from (one head, if heads move as blocks)."""
    perm = np.asarray(perm)
    dk = len(perm) // heads
    rows = []
    for j in range(heads):
        src = sorted(set(int(u) // dk for u in perm[j * dk:(j + 1) * dk]))
        rows.append({"head of B′": j, "comes from head(s) of B": ", ".join(map(str, src)),
                     "whole block": len(src) == 1})
    return rows


def state_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def diagonal_summary(C_after: np.ndarray) -> dict:
    """How much the matched pairs (the diagonal of the aligned matrix) stand out from the rest:
    mean diagonal and off-diagonal correlation, the spread of the off-diagonal entries, and the share
    of A's units whose matched partner is also the best-correlated unit of B in its row."""
    C = np.asarray(C_after, dtype=float)
    d = min(C.shape)
    diag = np.diag(C)[:d]
    off = C[~np.eye(C.shape[0], C.shape[1], dtype=bool)]
    row_best = C[:d].argmax(axis=1) == np.arange(d)
    return {"mean_matched": float(diag.mean()), "mean_other": float(off.mean()), "std_other": float(off.std()),
            "share_row_best": float(row_best.mean()),
            "share_other_above_mean_matched": float((off > diag.mean()).mean())}
