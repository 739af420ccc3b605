"""Words a page may say about figures it shows ("lower", "helps", "hurts", "67 % lower"), derived from
those figures here, so that no verdict is typed into a page as prose.

* ``change``: how a barrier moved from one figure to another (relative change, word, verdict).
* ``residual_rows``: Table 2's residual variants against Identity on one pair, each with its verdict.
* ``residual_summary``: one sentence for those rows, and whether they agree with what the paper reported.
"""
from __future__ import annotations

import math

TOLERANCE = 0.01  # a relative change below 1 % counts as no change


def _finite(*xs) -> bool:
    return all(x is not None and math.isfinite(float(x)) for x in xs)


def fmt(x: float) -> str:
    """A barrier as shown: three decimals, or three significant digits below 0.1 (0.00793)."""
    x = float(x)
    return f"{x:.3f}" if abs(x) >= 0.1 or x == 0 else f"{x:.3g}"


def change(before: float, after: float, se_before: float | None = None, se_after: float | None = None,
           tol: float = TOLERANCE) -> dict:
    """How a barrier moved from ``before`` to ``after`` (lower is better).

    Returns ``relative`` ((after - before) / |before|, None when before is 0 or a figure is missing),
    ``word`` ("lower", "higher", "about the same" for a change under ``tol`` of ``before``,
    "unknown"), ``verdict`` ("helps", "hurts", "makes no clear difference", "unknown"),
    ``within_se`` (the change is at most one combined standard error, when both are given: it may
    be noise) and ``text`` ("0.203, 67 % lower than 0.615")."""
    if not _finite(before, after):
        return {"relative": None, "word": "unknown", "verdict": "unknown", "within_se": False, "text": "not measured"}
    before, after = float(before), float(after)
    diff = after - before
    rel = diff / abs(before) if before != 0 else None
    if abs(diff) <= tol * abs(before):
        word, verdict = "about the same", "makes no clear difference"
    elif diff < 0:
        word, verdict = "lower", "helps"
    else:
        word, verdict = "higher", "hurts"
    within = _finite(se_before, se_after) and abs(diff) <= math.hypot(float(se_before), float(se_after))
    if word == "about the same":
        text = f"{fmt(after)}, about the same as {fmt(before)}"
    elif rel is None:
        text = f"{fmt(after)} vs {fmt(before)}"
    else:
        text = f"{fmt(after)}, {abs(rel):.0%} {word} than {fmt(before)}"
    if within and word != "about the same":
        text += ", within one standard error"
    return {"relative": rel, "word": word, "verdict": verdict, "within_se": bool(within), "text": text}


def sentence(c: dict, what: str) -> str:
    """One sentence saying what ``what`` did on this pair, from a ``change`` result: its verdict, a
    caveat when the change is within one standard error, and a note when it raised the barrier."""
    if c["verdict"] == "unknown":
        return f"on this pair the effect of {what} is not measured."
    out = f"on this pair {what} {c['verdict']}"
    if c["within_se"]:
        out += ", though the change is within one standard error (it may be noise of the evaluation text)"
    elif c["word"] == "higher":
        out += " (small or weakly trained models can behave so)"
    return out + "."


def residual_rows(barriers: dict[str, float], identity: str, variants: dict[str, str],
                  ses: dict[str, float] | None = None) -> list[dict]:
    """Each residual variant against Identity on one pair.  ``barriers``: method label -> barrier;
    ``identity``: the label of the row without a residual permutation; ``variants``: label -> the
    name shown ("First", "Last", "All").  Variants without a figure are left out."""
    ses = ses or {}
    base = barriers.get(identity)
    rows = []
    for label, shown in variants.items():
        if label not in barriers or base is None:
            continue
        c = change(base, barriers[label], ses.get(identity), ses.get(label))
        rows.append({"variant": shown, "barrier": float(barriers[label]), "identity": float(base), **c})
    return rows


def residual_summary(rows: list[dict]) -> dict:
    """One sentence for ``residual_rows`` and how it compares with the paper, which reported that
    every residual variant raised the barrier above Identity: ``agrees`` is True when every variant
    hurts here, False when none does, None when the pair is mixed (or nothing was measured), and
    ``paper`` says so in words."""
    if not rows:
        return {"sentence": "", "agrees": None, "verdicts": {}, "paper": ""}
    parts = [f"{r['variant']} {r['verdict']} ({r['text']})" for r in rows]
    verdicts = {r["variant"]: r["verdict"] for r in rows}
    hurts = [v == "hurts" for v in verdicts.values()]
    agrees = True if all(hurts) else False if not any(hurts) else None
    paper = {True: "agrees with what the paper reported", False: "differs from what the paper reported",
             None: "agrees with the paper for some variants and not for others"}[agrees]
    return {"sentence": "; ".join(parts), "agrees": agrees, "verdicts": verdicts, "paper": paper}
