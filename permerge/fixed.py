"""What a permutation may not move, in words: the rotary query/key dims (RoPE) and grouped key/value
heads, read from the family table (``Family.rotary``, ``Family.kv_heads``) or from a built spec
(``Group.fixed``, ``Group.kv_heads``).  Used by the pair summary and the alignment report."""
from __future__ import annotations

CHECK = ("B′ is checked against B after every alignment: with any of these dims moved its logits would "
         "differ (the check fails), with them in place they agree to rounding")


def config_facts(fam, cfg) -> dict:
    """Rows for the pair summary (empty for a family without RoPE or grouped heads)."""
    s = fam.sizes(cfg)
    heads = s["heads"]
    dk = s.get("head_dim") or s["hidden"] // max(heads, 1)
    out = {}
    if fam.rotary:
        rot = fam.rotary(cfg)
        out["rotary q/k dims per head (kept in place)"] = f"{rot} of {dk}"
    if fam.kv_heads:
        kv = fam.kv_heads(cfg)
        if kv != heads:
            out["key/value heads (each moves with its query heads)"] = f"{kv} ({heads // kv} query heads each)"
    return out


def describe(spec) -> str | None:
    """One paragraph on what stays fixed inside the attention of a spec and why (None: nothing does)."""
    qk = [g for g in spec.groups.values() if g.kind == "qk"]
    att = [g for g in spec.groups.values() if g.kind == "att"]
    if not qk and not any(g.kv_heads for g in att):
        return None
    parts = []
    if qk:
        g = qk[0]
        dk = g.size // g.heads
        free = dk - g.fixed
        parts.append(f"Inside every head the first {g.fixed} of {dk} query/key dims are rotary: RoPE turns them "
                     "in pairs at fixed frequencies, so they stay in place"
                     + (f"; the other {free} are permuted, identically in queries and keys" if free else
                        " (all of them: query/key dims move only with their head)")
                     + "; value dims are free, with the output projection's columns. Heads move as wholes.")
    grouped = next((g for g in att if g.kv_heads), None)
    if grouped is not None:
        r = grouped.heads // grouped.kv_heads
        parts.append(f"{grouped.kv_heads} key/value heads serve {r} query heads each: a key/value head and its "
                     "query heads move as one block, query heads only within their block, with one value and "
                     "one query/key permutation per block.")
    return " ".join(parts) + f" {CHECK}."
