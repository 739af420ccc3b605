"""The shape of a loss curve along lambda, and the paper's Table 3 for fine-tuned classifiers.

* ``dips``: the stretches of a curve whose loss lies below both endpoints, with the lambda of each
  stretch's lowest point.
* ``curve_shape``: the dips and whether the curve is M-shaped (two dips, parted by a rise).
* ``shapes_frame``: the shape of every curve of a study (task, pair, method).
* ``table3``: per task, vanilla against aligned barrier (mean and standard error over pairs), which
  pairs are M-shaped, and which pairs alignment made worse.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .interpolate import mean_sem
from .verdicts import change, fmt


def dips(lambdas, losses, tol: float = 0.0) -> list[dict]:
    """Maximal runs of interior points whose loss is below both endpoints by more than ``tol``.
    Each dip: ``lambda`` and ``loss`` of its lowest point, ``depth`` (how far below the lower
    endpoint), and the first and last lambda of the run (``start``, ``end``)."""
    lam = np.asarray(lambdas, dtype=float)
    loss = np.asarray(losses, dtype=float)
    if len(lam) != len(loss):
        raise ValueError("lambdas and losses differ in length")
    o = np.argsort(lam)
    lam, loss = lam[o], loss[o]
    if len(lam) < 3:
        return []
    floor = min(loss[0], loss[-1]) - tol
    below = np.zeros(len(lam), dtype=bool)
    below[1:-1] = loss[1:-1] < floor
    out, i = [], 1
    while i < len(lam) - 1:
        if not below[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(lam) - 1 and below[j + 1]:
            j += 1
        k = i + int(np.argmin(loss[i:j + 1]))
        out.append({"lambda": float(lam[k]), "loss": float(loss[k]), "depth": float(min(loss[0], loss[-1]) - loss[k]),
                    "start": float(lam[i]), "end": float(lam[j])})
        i = j + 1
    return out


def curve_shape(lambdas, losses, tol: float = 0.0) -> dict:
    """``dips`` of the curve, ``m_shaped`` (at least two dips: two stretches below both ends parted by
    a rise) and a short ``text`` ("M-shaped: dips at λ = 0.15, 0.85", "one dip below both ends at
    λ = 0.20", "no dip below the ends")."""
    d = dips(lambdas, losses, tol)
    at = ", ".join(f"{x['lambda']:.2f}" for x in d)
    if len(d) >= 2:
        text = f"M-shaped: dips below both ends at λ = {at}"
    elif d:
        text = f"one dip below both ends at λ = {at}"
    else:
        text = "no dip below the ends"
    return {"dips": d, "m_shaped": len(d) >= 2, "text": text}


def shapes_frame(curves: pd.DataFrame, value: str = "loss") -> pd.DataFrame:
    """The shape of every curve in ``curves`` (columns lambda, ``value``, method, and optionally task
    and pair): one row per curve with its dips' lambdas, m_shaped and text."""
    keys = [k for k in ("task", "pair", "method") if k in curves]
    rows = []
    for ident, g in curves.groupby(keys, sort=False):
        ident = ident if isinstance(ident, tuple) else (ident,)
        s = curve_shape(g["lambda"], g[value])
        rows.append({**dict(zip(keys, ident)), "dips": [x["lambda"] for x in s["dips"]],
                     "dip_losses": [x["loss"] for x in s["dips"]], "m_shaped": s["m_shaped"], "shape": s["text"]})
    return pd.DataFrame(rows, columns=keys + ["dips", "dip_losses", "m_shaped", "shape"])


def one_pair_tasks(table: pd.DataFrame) -> list[str]:
    """The tasks of a Table 3 with one pair: no standard error over pairs there."""
    return [str(t) for t, n in zip(table["task"], table["pairs"]) if int(n) < 2]


def _pm(m: float, se: float) -> str:
    if m != m:
        return "-"
    return f"{fmt(m)} ± {fmt(se)}" if se == se else fmt(m)


def table3(curves: pd.DataFrame, bars: pd.DataFrame, vanilla: str = "vanilla", aligned: str | None = None) -> pd.DataFrame:
    """The paper's Table 3 on these pairs: per task, the vanilla and the aligned barrier as mean ±
    standard error over pairs (no standard error for one pair), the number of pairs, the pairs whose
    vanilla or aligned curve is M-shaped, the pairs whose barrier alignment raised ("aligned is
    worse": ``worse_pairs``) and the alignment tokens used per pair.  ``aligned``: the aligned
    method's label (the other method)."""
    if aligned is None:
        aligned = next(m for m in dict.fromkeys(bars["method"]) if m != vanilla)
    shapes = shapes_frame(curves)
    rows = []
    for task in dict.fromkeys(bars["task"]):
        b = bars[bars["task"] == task]
        v = b[b["method"] == vanilla].set_index("pair")["barrier"]
        a = b[b["method"] == aligned].set_index("pair")["barrier"]
        vm, vse = mean_sem(v)
        am, ase = mean_sem(a)
        s = shapes[shapes["task"] == task]
        m_van = list(s.loc[(s["method"] == vanilla) & s["m_shaped"], "pair"])
        m_al = list(s.loc[(s["method"] == aligned) & s["m_shaped"], "pair"])
        worse = [w["pair"] + (" (within one s.e.)" if w["within_se"] else "")
                 for w in worse_pairs(b, vanilla) if w["method"] == aligned]
        rows.append({"task": task, "pairs": int(len(v)), "vanilla barrier": _pm(vm, vse),
                     "aligned barrier": _pm(am, ase),
                     "M-shaped (vanilla)": ", ".join(m_van) or "none",
                     "M-shaped (aligned)": ", ".join(m_al) or "none",
                     "aligned is worse": ", ".join(worse) or "none",
                     "tokens used": ", ".join(f"{int(t):,}" for t in b.loc[b["method"] == aligned, "tokens"]
                                              if t == t and t is not None) or "-"})
    return pd.DataFrame(rows)


def worse_pairs(bars: pd.DataFrame, vanilla: str = "vanilla") -> list[dict]:
    """The (task, pair) whose aligned barrier is higher than vanilla's by more than ``verdicts.change``
    counts as noise (1 %, or one standard error when ``barrier_se`` is given), with both figures and
    the change's text."""
    out = []
    keys = [k for k in ("task", "pair") if k in bars]
    for ident, g in bars.groupby(keys, sort=False):
        ident = ident if isinstance(ident, tuple) else (ident,)
        van = g[g["method"] == vanilla]
        for _, r in g[g["method"] != vanilla].iterrows():
            if len(van):
                se = (van["barrier_se"].iloc[0], r["barrier_se"]) if "barrier_se" in g else (None, None)
                c = change(float(van["barrier"].iloc[0]), float(r["barrier"]), *se)
                if c["word"] == "higher":
                    out.append({**dict(zip(keys, ident)), "method": r["method"], "vanilla": float(van["barrier"].iloc[0]),
                                "aligned": float(r["barrier"]), "text": c["text"], "within_se": c["within_se"]})
    return out
