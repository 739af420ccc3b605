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
from .arch.spec import View
from .permute import permute_state_dict

ORDERS = ("B′ order (matched pairs on the diagonal)", "A's units clustered (matched columns follow)")


def default_window(d: int, heads: int | None = None, units: int = 64) -> int:
    """The end of the unit window a correlation matrix opens on: about ``units`` units, in whole heads
    and at least two of them for an attention group (so that a head boundary shows), all of a
    smaller group."""
    if heads and heads > 1 and d % heads == 0:
        dk = d // heads
        return min(d, max(2, -(-units // dk)) * dk)
    return min(d, units)


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
    """One permuted matrix of a group in A, B and B' (numpy, float32 as stored)."""
    name: str
    axis: int  # the stored tensor's axis this group gathers
    role: str  # "in": the group's units are its outputs (it computes them); "out": it reads them
    a: np.ndarray
    b: np.ndarray
    bp: np.ndarray
    index: np.ndarray  # the gather along ``axis`` (the permutation, tiled when the axis holds copies)
    tiles: int = 1  # e.g. 3 for a fused query-key-value matrix
    other: np.ndarray | None = None  # the gather of the other axis (a residual group), if it moves
    derived: bool = False  # the axis moves by a gather derived from attention groups (key/value heads, fused per head)


def _gather(spec: ArchSpec, perms: dict, entry) -> np.ndarray | None:
    from .arch.spec import axis_index

    return axis_index(entry, perms)


def group_weights(spec: ArchSpec, state_a: dict, state_b: dict, perms: dict[str, np.ndarray],
                  group: str) -> list[GroupWeights]:
    """Every matrix (2-D weight) that the group permutes, A's, B's and B''s, with the group's axis,
    read through the architecture table (layouts: a ``conv1d`` weight is stored [in, out]; fused
    matrices hold the group ``tiles`` times).  B' is computed by ``permute_state_dict`` with all of
    the run's permutations, exactly as the aligned model is built."""
    names = [(p, ax) for p, ax in spec.params_of(group) if p in state_b and state_b[p].dim() == 2]
    permuted = permute_state_dict({p: state_b[p] for p, _ in names}, spec, perms)
    out = []
    for p, ax in names:
        entries = spec.axes[p]
        out_axis = 1 if spec.layouts.get(p) == "conv1d" else 0
        idx = _gather(spec, perms, entries[ax])
        other = _gather(spec, perms, entries[1 - ax])
        if other is not None and np.array_equal(other, np.arange(len(other))):
            other = None
        tiles = entries[ax][1] if isinstance(entries[ax], tuple) else 1
        out.append(GroupWeights(p, ax, "in" if ax == out_axis else "out", state_a[p].detach().float().cpu().numpy(),
                                state_b[p].detach().float().cpu().numpy(), permuted[p].detach().float().cpu().numpy(),
                                idx, tiles, other, derived=isinstance(entries[ax], View)))
    return out


def tile_ranges(ranges: list[tuple[int, int]], size: int, tiles: int) -> list[tuple[int, int]]:
    """Index ranges of units, repeated in every tile of a fused axis."""
    return [(lo + k * size, hi + k * size) for k in range(tiles) for lo, hi in ranges]


def slice_of(m: np.ndarray, axis: int, i: int) -> np.ndarray:
    """Row ``i`` (axis 0) or column ``i`` (axis 1) of a matrix."""
    return np.take(m, i, axis=axis)


def gather_checks(w: GroupWeights, perm=None) -> dict:
    """Whether B''s slice i along the group's axis is bit for bit B's slice index[i], for every i (with
    the other axis gathered by its own permutation when the run permutes the residual stream too)."""
    idx = w.index if perm is None or w.tiles > 1 or w.derived else np.asarray(perm)
    bp = np.moveaxis(w.bp, w.axis, 0)
    b = np.moveaxis(w.b, w.axis, 0)
    if w.other is not None:
        b = b[:, w.other]
    equal = [bool(np.array_equal(bp[i], b[idx[i]])) for i in range(len(idx))]
    return {"slices": len(idx), "exact": int(sum(equal)), "all_exact": all(equal)}


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


# --- background work for the teaching pages (``fn(progress)`` for ``jobs.JobManager.submit``) ----------

def correlation_work(registry, job, options, group: str):
    """One group's correlation matrix before and after alignment, its matching result and the weights it
    touches (from the architecture table)."""
    from .align import correlation
    from .work import about, tokens_used

    def work(progress):
        pipe = registry.get(job)
        stats = pipe.stats(progress)
        al = pipe.alignment(options, progress=progress)
        spec = pipe.spec
        groups = [g for g in spec.groups if g in stats.points]
        g = group if group in groups else next((x for x in groups if x.startswith("att.")), groups[0])
        C = correlation(stats.points, spec, g)
        res = al.groups[g]
        return {"groups": groups, "sizes": {x: spec.groups[x].size for x in groups},
                "kinds": {x: spec.groups[x].kind for x in groups}, "group": g,
                "spec_group": spec.groups[g], "C": C,
                "after": np.asarray(C)[:, np.asarray(res.perm)],  # column i: B's unit perm[i] = B′'s unit i
                "result": res,
                "params": [(p, ax, spec.axis_label(p, ax)) for p, ax in spec.params_of(g)],
                "about": about(job, options, group=g, tokens_used=tokens_used(pipe))}
    return work


def permutation_work(registry, job, options, group: str | None):
    """What one group's permutation does to the weights: the group list, the group's permutation and
    heads, every matrix it moves in A, B and B', and the gather checks."""
    from .work import about

    def work(progress):
        pipe = registry.get(job)
        al = pipe.alignment(options, progress=progress)
        spec = pipe.spec
        kinds = ("ff", "att", "qk", "pooler")
        groups = [g for g in al.groups if spec.groups[g].kind in kinds]
        aligned = [g for g in groups if al.groups[g].aligned]
        default = next((g for g in aligned if g.startswith("att.")), aligned[0] if aligned else groups[0])
        g = group if group in groups else default
        model_a, model_b = pipe.pair[0].model, pipe.pair[1].model
        weights = group_weights(spec, state_of(model_a), state_of(model_b), al.perms, g)
        perm = np.asarray(al.groups[g].perm)
        return {"groups": groups, "sizes": {x: spec.groups[x].size for x in groups},
                "kinds": {x: spec.groups[x].kind for x in groups}, "aligned": aligned,
                "default": default, "group": g,
                "spec_group": spec.groups[g], "perm": perm, "group_aligned": al.groups[g].aligned,
                "weights": weights, "checks": [{"weight": w.name, "moves": spec.axis_label(w.name, w.axis),
                                                **gather_checks(w, perm)} for w in weights],
                "about": about(job, options, group=g)}
    return work


def settle(handle, seconds: float = 3.0) -> None:
    """Wait up to ``seconds`` for a job to finish, so that a result served from the cache shows in the
    same page run; longer work stays in the background (the page then shows its progress)."""
    import time

    t0 = time.time()
    while handle.active and time.time() - t0 < seconds:
        time.sleep(0.05)
