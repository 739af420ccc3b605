"""Weight matching (Ainsworth et al., "Git Re-Basin", 2023): permutations from the weights alone.

The objective is the Frobenius inner product of A's weights with B's permuted weights, summed over
every parameter the architecture table lists::

    J(P) = sum_w < W_A[w], P(W_B[w]) >

It is maximised by coordinate descent over the permutation *coordinates*: for one coordinate, with
every other held fixed, J is linear in its permutation, with the similarity matrix

    S = sum over (w, axis) carrying it of  unfold(W_A[w], axis) @ unfold(P_other(W_B[w]), axis)^T

(``P_other``: every other axis of ``w`` gathered by its current permutation, a tiled axis tile by
tile), so one linear assignment on S (``match.assign``, or ``match.match_attention`` for attention
groups, which keeps heads together exactly as for activations) gives the best permutation for that
coordinate.  Coordinates are visited in a seeded random order per sweep, from the identity, until a
sweep changes nothing or ``max_sweeps`` is reached.  A new permutation is kept only when it raises
J computed exactly on the parameters it touches, so J never decreases (the linear model is exact
unless one parameter carries the coordinate on two axes, e.g. the MLM transform under one shared
residual permutation).

Nothing here knows a family: the coordinates and the weights they touch come from ``ArchSpec.axes``,
so every family table works unchanged.  An axis moved by a derived gather (``arch.spec.View``: a
fused per-head projection, key/value heads) contributes to a unit the rows that belong to it (a
key/value row, shared by ``r`` query heads, with weight 1/r).  A RoPE attention group and its
query/key group are one coordinate: ``match.match_attention`` assigns their heads together, with
the query/key group's rotary dims held in place.  Which groups move follows ``AlignOptions`` as for
activations: FF groups (``ff``), attention groups (the attention variant), the pooler (``pooler``)
and the residual points (identity: none; all: one coordinate shared by every point; first / last:
one shared coordinate whose similarity is taken from the weights at the first / last point only;
separate: one coordinate per point, not function-preserving).  The function-preserving rules are
the activation path's.

The result is an ``align.Alignment``, so permuting, the B' check, evaluation and every plot are
shared with the activation path.  Its "correlation" per group is the cosine similarity of the
units' weight vectors (all the weights a unit owns, concatenated, the other axes under the final
permutations): the mean over units of A's unit i against B's unit i (before) and against its
match (after).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .align import AlignOptions, Alignment, GroupResult
from .arch import ArchSpec
from .arch.spec import axis_index, entry_groups, unit_rows
from .errors import PermergeError
from .match import AttentionMatch, assign, match_attention

MAX_SWEEPS = 100
SEED = 0


@dataclass
class WeightMatchTrace:
    """How the descent went: J after each sweep (index 0: the identity), and the sweeps run."""
    objective: list[float] = field(default_factory=list)
    sweeps: int = 0
    converged: bool = False


def coordinates(spec: ArchSpec, options: AlignOptions) -> dict[str, str]:
    """Spec group -> the coordinate whose permutation it takes (groups left alone are absent).  A
    query/key group (RoPE) is its own coordinate, solved together with its attention group's."""
    if options.absolute:
        raise PermergeError("weight matching has no |correlation| to match on: leave --absolute out")
    out = {}
    for name, g in spec.groups.items():
        if (g.kind == "ff" and options.ff) or (g.kind in ("att", "qk") and options.attention != "vanilla") \
                or (g.kind == "pooler" and options.pooler):
            out[name] = name
        elif g.kind == "res" and options.residual != "identity":
            out[name] = name if options.residual == "separate" else "res"
    return out


def _unfold(w: torch.Tensor, axis: int, rows: torch.Tensor) -> torch.Tensor:
    """[units, everything else]: per unit, the slices of ``w`` along ``axis`` that belong to it
    (``rows``: units x k indices; a tiled or fused axis gives k slices per unit, side by side)."""
    w = w.movedim(axis, 0)
    return w[rows.reshape(-1)].reshape(rows.shape[0], -1)


class WeightMatcher:
    """The descent on one pair.  ``weights_a`` / ``weights_b``: parameter name -> tensor, as
    ``model.named_parameters()`` gives them (tied weights once)."""

    def __init__(self, spec: ArchSpec, weights_a: dict, weights_b: dict, options: AlignOptions):
        self.spec, self.options = spec, options
        self.coord_of = coordinates(spec, options)
        self.wa = {n: weights_a[n].detach().to("cpu", torch.float32) for n in spec.axes}
        self.wb = {n: weights_b[n].detach().to("cpu", torch.float32) for n in spec.axes}
        for n in spec.axes:
            if self.wa[n].shape != self.wb[n].shape:
                raise PermergeError(f"the checkpoints' {n} differ in shape: {tuple(self.wa[n].shape)} (A) vs "
                                    f"{tuple(self.wb[n].shape)} (B)")
        # per coordinate: its size, its groups, the (param, axis, entry, group) it moves, and which
        # of those enter its similarity (first / last: only the weights at that residual point)
        keys = list(dict.fromkeys(self.coord_of.values()))
        # a query/key group linked to an attention group is solved with it, never on its own
        self.linked = {c: spec.groups[c].qk for c in keys
                       if c in spec.groups and spec.groups[c].qk in self.coord_of}
        self.coords = [c for c in keys if c not in self.linked.values()]
        self.size = {c: spec.groups[g].size for g, c in self.coord_of.items()}
        self.touch: dict[str, list] = {c: [] for c in keys}
        self.by_group: dict[str, list] = {g: [] for g in spec.groups}
        for n, axes in spec.axes.items():
            for ax, entry in enumerate(axes):
                for g in entry_groups(entry):
                    if g is None:
                        continue
                    self.by_group[g].append((n, ax, entry, g))
                    if g in self.coord_of:
                        self.touch[self.coord_of[g]].append((n, ax, entry, g))
        key_point = {"first": spec.residual_points[0], "last": spec.residual_points[-1]}.get(options.residual)
        self.solve_on = {c: self.touch[c] for c in keys}
        if key_point is not None and "res" in self.solve_on:
            self.solve_on["res"] = list(self.by_group[key_point])
        self.perm = {c: np.arange(self.size[c]) for c in keys}
        self._idx: dict = {}

    # --- permutations on tensors ---------------------------------------------------------
    def _current(self) -> dict[str, np.ndarray]:
        return {g: self.perm[c] for g, c in self.coord_of.items()}

    def _index(self, entry) -> torch.Tensor | None:
        perms = {g: self.perm[self.coord_of[g]] for g in entry_groups(entry) if g in self.coord_of}
        if not perms:
            return None
        key = (entry, tuple((g, p.tobytes()) for g, p in sorted(perms.items())))
        if key not in self._idx:
            if len(self._idx) > 4096:
                self._idx.clear()
            self._idx[key] = torch.as_tensor(np.asarray(axis_index(entry, perms)), dtype=torch.long)
        return self._idx[key]

    def _permuted_b(self, name: str, skip_axis: int | None = None) -> torch.Tensor:
        w = self.wb[name]
        for ax, entry in enumerate(self.spec.axes[name]):
            if ax == skip_axis or entry is None:
                continue
            idx = self._index(entry)
            if idx is not None:
                w = w.index_select(ax, idx)
        return w

    # --- the objective and the similarity ------------------------------------------------
    def _inner(self, names) -> float:
        return float(sum(torch.dot(self.wa[n].reshape(-1).double(), self._permuted_b(n).reshape(-1).double())
                         for n in names))

    def objective(self) -> float:
        """J: sum over every parameter of <W_A, P(W_B)>, in float64."""
        return self._inner(self.spec.axes)

    def _rows(self, n: str, ax: int, entry, g: str) -> tuple[torch.Tensor, float]:
        rows, weight = unit_rows(entry, g, self.wa[n].shape[ax])
        return torch.as_tensor(rows, dtype=torch.long), weight

    def similarity(self, entries) -> np.ndarray:
        """S[i, j] = <A's unit i, B's unit j> over the given (param, axis, entry, group), the other
        axes under the current permutations."""
        S = None
        for n, ax, entry, g in entries:
            rows, weight = self._rows(n, ax, entry, g)
            a = _unfold(self.wa[n], ax, rows)
            b = _unfold(self._permuted_b(n, skip_axis=ax), ax, rows)
            prod = (a @ b.T).double() * weight
            S = prod if S is None else S + prod
        return S.numpy()

    def _solve(self, coord: str, S: np.ndarray | None = None) -> AttentionMatch:
        """The best permutation of one coordinate (an attention group: with its query/key group)."""
        S = self.similarity(self.solve_on[coord]) if S is None else S
        if not np.isfinite(S).all():  # products of very large (finite) weights overflow float32
            from .errors import StatisticsError

            names = sorted({e[0] for e in self.solve_on.get(coord, ())})
            big = max((float(self.wa[n].abs().max()) for n in names), default=float("nan"))
            raise StatisticsError(f"weight matching: the similarity of {coord} is not finite (weights too large "
                                  f"to multiply in float32: max |w| of A there is {big:.3g}); rescale the checkpoints "
                                  "or use activation matching")
        g = self.spec.groups.get(coord)
        if g is not None and g.kind == "att":
            qk = self.linked.get(coord)
            return match_attention(S, g.heads, self.options.attention, kv_heads=g.kv_heads,
                                   qk=self.similarity(self.touch[qk]) if qk else None,
                                   fixed=self.spec.groups[qk].fixed if qk else 0)
        return AttentionMatch(assign(S))

    # --- the descent ---------------------------------------------------------------------
    def run(self, max_sweeps: int = MAX_SWEEPS, seed: int = SEED, progress=None) -> WeightMatchTrace:
        rng = np.random.default_rng(seed)
        trace = WeightMatchTrace([self.objective()])
        touched_names = {c: list(dict.fromkeys(n for n, *_ in self.touch[c] + self.touch.get(self.linked.get(c), [])))
                         for c in self.coords}
        for sweep in range(max_sweeps):
            changed = False
            order = [self.coords[i] for i in rng.permutation(len(self.coords))]
            for k, c in enumerate(order):
                am = self._solve(c)
                qk = self.linked.get(c)
                if np.array_equal(am.perm, self.perm[c]) and (qk is None or np.array_equal(am.qk, self.perm[qk])):
                    continue
                old = {x: self.perm[x] for x in (c, qk) if x}
                before = self._inner(touched_names[c])
                self.perm[c] = am.perm
                if qk:
                    self.perm[qk] = am.qk
                after = self._inner(touched_names[c])
                if after > before + 1e-12 * max(1.0, abs(before)):
                    changed = True
                else:
                    self.perm.update(old)
                if progress:
                    progress("weight matching", k + 1, len(order), group=c, sweep=sweep + 1)
            trace.objective.append(self.objective())
            trace.sweeps = sweep + 1
            if not changed:
                trace.converged = True
                break
        return trace

    # --- the result ------------------------------------------------------------------------
    def group_perms(self) -> dict[str, np.ndarray]:
        """Spec group -> permutation (identity for groups left alone)."""
        return {g: (self.perm[self.coord_of[g]].copy() if g in self.coord_of else np.arange(grp.size))
                for g, grp in self.spec.groups.items()}

    def alignment(self) -> Alignment:
        out = Alignment(self.options)
        owner = {q: c for c, q in self.linked.items()}
        for g, grp in self.spec.groups.items():
            entries = self.by_group[g]
            S = self.similarity(entries) if entries else np.zeros((grp.size, grp.size))
            cos = _cosine(self, entries, S)
            if g in self.coord_of:
                c = self.coord_of[g]
                perm = self.perm[c].copy()
                am = AttentionMatch(perm)
                if grp.kind in ("att", "qk"):  # the head assignment of the final permutation
                    solver = owner.get(c, c)
                    head_cost = self._solve(solver).head_cost if solver in self.coords else None
                    am = AttentionMatch(perm, head_cost, _outer(perm, grp.heads))
            else:
                am = AttentionMatch(np.arange(grp.size))
                perm = am.perm
            idx = np.arange(grp.size)
            out.groups[g] = GroupResult(g, grp.kind, perm, float(cos[idx, idx].mean()), float(cos[idx, perm].mean()),
                                        g in self.coord_of, am.head_cost, am.outer)
        return out


def _outer(perm: np.ndarray, heads: int) -> np.ndarray | None:
    """Head j of A <- head outer[j] of B, when the permutation keeps heads together (else None)."""
    dk = len(perm) // heads
    blocks = perm.reshape(heads, dk) // dk
    if not (blocks == blocks[:, :1]).all():
        return None
    return blocks[:, 0].copy()


def _cosine(m: WeightMatcher, entries, S: np.ndarray) -> np.ndarray:
    """S divided by the norms of A's and B's unit vectors over the same weights."""
    if not entries:
        return S
    na = np.zeros(S.shape[0])
    nb = np.zeros(S.shape[0])
    for n, ax, entry, g in entries:
        rows, weight = m._rows(n, ax, entry, g)
        na += weight * (_unfold(m.wa[n], ax, rows).double() ** 2).sum(1).numpy()
        nb += weight * (_unfold(m.wb[n], ax, rows).double() ** 2).sum(1).numpy()  # norms ignore the other axes' order
    return S / np.maximum(np.sqrt(np.outer(na, nb)), 1e-30)


def weight_alignment(spec: ArchSpec, model_a, model_b, options: AlignOptions, progress=None,
                     max_sweeps: int = MAX_SWEEPS, seed: int = SEED) -> tuple[Alignment, WeightMatchTrace]:
    """Permutations of B's units into A's order from the weights alone (see the module docstring)."""
    if options.matcher != "weight":
        raise ValueError("weight_alignment needs options with matcher='weight'")
    m = WeightMatcher(spec, dict(model_a.named_parameters()), dict(model_b.named_parameters()), options)
    with torch.no_grad():
        trace = m.run(max_sweeps, seed, progress)
        return m.alignment(), trace
