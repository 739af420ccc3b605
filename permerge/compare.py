"""Activation matching against weight matching on one pair: the two option sets, and how much
the two matchers' permutations agree, group by group.

Agreement of a group is the share of its units that both matchers send to the same unit of B
(``perm_act[i] == perm_weight[i]``).  Two unrelated random permutations of n units agree on 1/n of
them on average, so anything well above 1/n means the weights and the activations point to the same
correspondence.  For an attention group (heads kept together) the head assignment of each matcher
is given too, and the share of A's heads that both give the same head of B.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from .align import Alignment, AlignOptions
from .arch import ArchSpec


def matcher_options(options: AlignOptions) -> tuple[AlignOptions, AlignOptions]:
    """The run's alignment options with each matcher (weight matching has no |correlation|)."""
    return replace(options, matcher="activation"), replace(options, matcher="weight", absolute=False)


def _heads(outer) -> str:
    return "-" if outer is None else " ".join(str(int(h)) for h in outer)


def agreement(activation: Alignment, weight: Alignment, spec: ArchSpec) -> pd.DataFrame:
    """One row per group aligned by both: group, kind, layer, units, ``agree`` (share of identical
    entries), ``chance`` (1 / units), and for attention groups the two head assignments (head j of
    A <- head outer[j] of B) and ``heads_agree`` (share of identical head assignments)."""
    rows = []
    for g, grp in spec.groups.items():
        ra, rw = activation.groups.get(g), weight.groups.get(g)
        if ra is None or rw is None or not (ra.aligned and rw.aligned):
            continue
        pa, pw = np.asarray(ra.perm), np.asarray(rw.perm)
        row = {"group": g, "kind": grp.kind, "layer": grp.layer, "units": len(pa),
               "agree": float(np.mean(pa == pw)), "chance": 1.0 / len(pa)}
        if grp.kind == "att":
            row["heads_activation"] = _heads(ra.outer)
            row["heads_weight"] = _heads(rw.outer)
            row["heads_agree"] = (float(np.mean(np.asarray(ra.outer) == np.asarray(rw.outer)))
                                  if ra.outer is not None and rw.outer is not None else None)
        rows.append(row)
    cols = ["group", "kind", "layer", "units", "agree", "chance", "heads_activation", "heads_weight", "heads_agree"]
    return pd.DataFrame(rows).reindex(columns=cols)


def with_feature_correlations(al: Alignment, spec: ArchSpec, points: dict) -> Alignment:
    """The same permutations with each group's mean *feature* correlation before and after
    (activation statistics ``points``), e.g. for weight matching, whose own figures are cosine
    similarities of weights: the Feature correlation view then measures both matchers alike."""
    from .align import correlation

    out = Alignment(al.options, trace=al.trace)
    for g, r in al.groups.items():
        if g not in points:
            out.groups[g] = r
            continue
        C = correlation(points, spec, g)
        idx = np.arange(len(r.perm))
        out.groups[g] = replace(r, corr_before=float(C[idx, idx].mean()), corr_after=float(C[idx, r.perm].mean()))
    return out
