"""The presenter view's sentences, each built from the figures of the page it describes, so that the
tour bar never says more than the chart under it shows (an aligned curve that bulges *more* is said
to bulge more).  Plain functions of numbers; the pages call them with what they have just drawn.

* ``barriers``: the loss along lambda of vanilla averaging and of an alignment (Start here).
* ``barrier_marks``: the two barrier bars of the run's curves, with where they sit (Interpolation).
* ``permutation``: the outlined unit, head or group of See the permutation, and the logit check.
* ``methods``: per table, the variant with the lowest barrier and whether it keeps B' equal to B.
"""
from __future__ import annotations

import math

from permerge.verdicts import change, fmt


def _finite(*xs) -> bool:
    return all(x is not None and math.isfinite(float(x)) for x in xs)


def _compare(vanilla: float, aligned: float, se_v=None, se_a=None) -> tuple[dict, str]:
    """The ``change`` from vanilla to aligned and how the aligned curve's hump compares, in words."""
    c = change(vanilla, aligned, se_v, se_a)
    shape = {"lower": "the aligned curve bulges less", "higher": "here the aligned curve bulges more",
             "about the same": "the two curves bulge about as much"}.get(c["word"], "")
    if c["within_se"] and c["word"] != "about the same":
        shape += ", though by less than the noise of the evaluation text may explain"
    return c, shape


def barriers(vanilla: float, aligned: float | None, method: str, se_v=None, se_a=None) -> str:
    """Start here: the hump of the grey curve (vanilla) against the aligned curve's."""
    if not _finite(vanilla):
        return "The loss of plain averaging along λ is not finite here, so there is no barrier to read."
    head = f"The hump of the grey curve is the loss barrier of plain averaging, {fmt(vanilla)} nats"
    if aligned is None or not _finite(aligned):
        return head + "; this run aligned nothing, so there is no second curve to compare."
    c, shape = _compare(vanilla, aligned, se_v, se_a)
    return f"{head}; after alignment ({method}) it is {c['text']}: {shape}."


def barrier_marks(vanilla: float, vanilla_at: float, aligned: float | None, aligned_at: float | None,
                  method: str, se_v=None, se_a=None) -> str:
    """Interpolation: the two vertical bars (barriers) of the run's curves, which is lower and by how much."""
    if not _finite(vanilla):
        return "The vanilla curve's loss is not finite here, so there is no barrier to compare."
    van = f"vanilla averaging (grey) peaks {fmt(vanilla)} above the endpoints' mean at λ = {vanilla_at:.2f}"
    if aligned is None or not _finite(aligned):
        return f"One vertical bar: {van}; this run aligned nothing."
    c, shape = _compare(vanilla, aligned, se_v, se_a)
    diff = abs(aligned - vanilla)
    if c["word"] == "lower":
        verdict = f"the aligned barrier is the lower one, by {fmt(diff)} ({abs(c['relative']):.0%})"
    elif c["word"] == "higher":
        verdict = (f"the aligned barrier is the higher one, by {fmt(diff)}"
                   + (f" ({abs(c['relative']):.0%})" if c["relative"] is not None else "")
                   + ": alignment did not help this pair")
    else:
        verdict = "the two barriers are about the same"
    if c["within_se"] and c["word"] != "about the same":
        verdict += ", within one standard error"
    return f"The vertical bars are the two barriers: {van}, {method} {fmt(aligned)} at λ = {aligned_at:.2f}; {verdict}."


def permutation(group: str, step: str, size: int, moved: int, unit: int | None = None, source: int | None = None,
                head: int | None = None, source_heads: list[int] | None = None, head_size: int | None = None,
                exact: bool = True, rel_error: float | None = None, preserving: bool = True) -> str:
    """See the permutation: what the outlined row (unit, head or whole group) shows, with the numbers."""
    if step == "one unit" and unit is not None and source is not None:
        what = (f"Follow the outlined row of {group}: unit {unit} of B′ is unit {source} of B, moved with its row "
                f"and its column" + (" (this unit stays in place)" if unit == source else ""))
    elif step == "one head" and head is not None and source_heads:
        if len(source_heads) == 1:
            what = (f"Follow the outlined block of {group}: head {head} of B′ is head {source_heads[0]} of B, "
                    f"moved as one block of {head_size} rows")
        else:
            what = (f"Follow the outlined block of {group}: head {head} of B′ takes units from heads "
                    f"{', '.join(map(str, source_heads))} of B, so this variant breaks heads apart")
    else:
        what = f"All {size} units of {group} move by one permutation"
    what += f"; {moved} of {size} units of {group} change place"
    if not exact:
        return what + ", and some moved rows or columns differ from B's: please report this."
    if not preserving:
        return what + "; these options are not function-preserving, so B′ is a different function from B."
    if rel_error is not None and _finite(rel_error):
        return what + f", and B′ still computes B (largest logit difference {rel_error:.1e} of B's largest logit)."
    return what + ", every moved row and column equal to B's bit for bit."


def methods(tables: list[tuple[str, list[dict]]], n_pairs: int) -> str:
    """Methods: for each table shown (title, rows with ``method``, ``barrier`` and
    ``function_preserving`` "yes"/"NO"), the lowest barrier and whether that variant keeps B′ = B."""
    over = f"the mean over {n_pairs} pairs" if n_pairs > 1 else "this pair"
    parts = []
    for title, rows in tables:
        rows = [r for r in rows if _finite(r.get("barrier"))]
        if not rows:
            continue
        best = min(rows, key=lambda r: r["barrier"])
        keeps = best["function_preserving"] == "yes"
        s = (f"{title}: {best['method']} has the lowest barrier ({fmt(best['barrier'])})"
             + (" and keeps B′ equal to B" if keeps else ", but it is not function-preserving (its B′ is not B)"))
        if not keeps:
            fair = [r for r in rows if r["function_preserving"] == "yes"]
            if fair:
                f = min(fair, key=lambda r: r["barrier"])
                s += f"; the lowest that keeps B′ = B is {f['method']} ({fmt(f['barrier'])})"
        parts.append(s)
    if not parts:
        return "No barrier was measured in these tables."
    return f"On {over}: " + ". ".join(parts) + "."
