"""What a permutation does to B's weights, on the current run's pair, one group at a time."""
import numpy as np
import pandas as pd
import streamlit as st

from dashboard import presenter

from dashboard.state import (about_caption, job_key, latest_only, pair_title, registry, require_run,
                             run_result)
from dashboard.figures import fig_name, show_figure
from dashboard.text import md
from permerge import plots, tour, views

st.title("See the permutation")
st.markdown(
    "A permutation `perm` renames B's hidden units: **unit i of B′ is unit perm[i] of B**. A unit lives in "
    "two places in the weights: the **rows** of the matrix that computes it (its *in-projection*) and the "
    "**columns** of the matrix that reads it (its *out-projection*). Moving a unit means moving its row and "
    "its column together, nothing else: no value changes, so B′ computes exactly what B computes, only with "
    "its units listed in A's order. Step through one unit, one attention head, then the whole group.")
run = require_run("the permutation")
st.caption("Pair: " + pair_title(run.job))
kinds = {"ff": "feed-forward", "att": "attention", "qk": "query/key (RoPE)", "pooler": "pooler"}
known = st.session_state.get("perm_groups", {}).get(run.key)  # (groups, labels, default) once known
c1, c2 = st.columns([2, 3])
wanted = None
if known:
    groups, labels, default = known
    wanted = c1.selectbox("Permutation group", groups, index=groups.index(default), key="perm_group",
                          format_func=labels.get)
key = job_key("permutation", job=run.job.to_dict(), options=run.options.to_dict(), group=wanted)
out = latest_only("perm_job", key, views.permutation_work(registry(), run.job, run.options, wanted), "permutation",
                  "Loading the models and the permutations")
if not known:
    labels = {g: f"{g}  ({kinds.get(out['kinds'][g], out['kinds'][g])}, {out['sizes'][g]} units"
              + (")" if g in out["aligned"] else ", left alone by this run)") for g in out["groups"]}
    st.session_state.setdefault("perm_groups", {})[run.key] = (out["groups"], labels, out["default"])
    st.rerun()  # now with the group picker
group, grp, perm = out["group"], out["spec_group"], out["perm"]
d = grp.size
heads = grp.heads if grp.kind in ("att", "qk") else None
dk = d // heads if heads else None
steps = ["one unit"] + (["one head"] if heads else []) + ["the whole group"]
step = c2.radio("Step", steps, horizontal=True, key="perm_step")
if not out["group_aligned"]:
    st.info(f"This run's options ({run.options.label()}) leave {group} alone: its permutation is the identity, "
            "so nothing moves. Pick another group, or a run that aligns this one.")

weights = out["weights"]
WORD = {0: "rows", 1: "columns"}
ins = [w for w in weights if w.role == "in"]
outs = [w for w in weights if w.role == "out"]

# --- the current step: which rows / columns to outline --------------------------------------------
if step == "one unit":
    moved = np.flatnonzero(perm != np.arange(d))
    i = int(st.number_input("Unit of B′", 0, d - 1, int(moved[0]) if len(moved) else 0, key=f"perm_unit_{group}"))
    p = int(perm[i])
    boxes_a, boxes_b, boxes_bp, rows_hl = [(i, i + 1)], [(p, p + 1)], [(i, i + 1)], [(i, i + 1)]
    w_in = WORD[ins[0].axis][:-1] if ins else "row"
    w_out = WORD[outs[0].axis][:-1] if outs else "column"
    st.markdown(f"**Unit {i} of B′ is unit {p} of B.** {w_in.capitalize()} {p} of B's in-projection becomes "
                f"{w_in} {i} of B′'s; {w_out} {p} of B's out-projection becomes {w_out} {i} of B′'s. A's unit {i} "
                "is the one it was matched to.")
elif step == "one head":
    j = int(st.number_input("Head of B′", 0, heads - 1, 0, key=f"perm_head_{group}"))
    src = sorted(set(int(u) // dk for u in perm[j * dk:(j + 1) * dk]))
    boxes_a, boxes_bp, rows_hl = [(j * dk, (j + 1) * dk)], [(j * dk, (j + 1) * dk)], [(j * dk, (j + 1) * dk)]
    boxes_b = [(k * dk, (k + 1) * dk) for k in src]
    if len(src) == 1:
        st.markdown(f"**Head {j} of B′ is head {src[0]} of B**, moved as one block of d_k = {dk} rows (and "
                    "reordered inside the block by the inner assignment). A head's units must stay together: "
                    "attention mixes them through one softmax per head.")
    else:
        st.warning(f"Head {j} of B′ takes units from heads {', '.join(map(str, src))} of B: this variant breaks "
                   "heads apart, so B′ no longer computes B's function.")
else:
    boxes_a = boxes_b = boxes_bp = rows_hl = []
    st.markdown(f"**All {d} units of {group}** move at once: every row of the in-projection and every column of "
                "the out-projection, by the same permutation.")

# --- the weights -----------------------------------------------------------------------------------


def spec_axis_label(w) -> str:
    return next((c["moves"] for c in out["checks"] if c["weight"] == w.name), "derived")


def panels(w, title):
    """A, B and B' side by side, the current step outlined (in every tile of a fused matrix)."""
    # an axis moved by a derived gather (key/value heads, per-head fused blocks) is shown without outlines
    boxes = [[] if w.derived else views.tile_ranges(bx, d, w.tiles) for bx in (boxes_a, boxes_b, boxes_bp)]
    rest = WORD[1 - w.axis]
    tiles = f", {w.tiles} tiles side by side" if w.tiles > 1 else ""
    if w.derived:
        tiles = f", {spec_axis_label(w)}"
    show_figure(plots.weight_panels([("A", w.a), ("B (before)", w.b), ("B′ (after)", w.bp)], w.axis, boxes,
                                    w.name, subtitle=f"{WORD[w.axis]} = units of {group}{tiles} "
                                                     f"(first 96 {rest} shown)"),
                fig_name(run, "weights", w.name, step.replace(" ", "-")), {"A": w.a, "B": w.b, "B-prime": w.bp})


if ins:
    pick = st.selectbox("In-projection (computes the units)", [w.name for w in ins], key=f"perm_in_{group}")
    panels(next(x for x in ins if x.name == pick), "in")
for w in outs:
    panels(w, "out")
st.caption("Outlined: the current step in A, where it sits in B, and where it lands in B′. The other axis "
           "belongs to the residual stream" + (", which this run permutes too, so those entries move as well."
                                              if run.options.residual != "identity" else
                                              ", which this run leaves in place."))
plain_ins = [w for w in ins if not w.derived]
if step == "one unit" and plain_ins:
    w = plain_ins[0]
    word = WORD[w.axis][:-1]
    row = lambda m, k: views.slice_of(m, w.axis, k)  # noqa: E731
    n = min(8, w.b.shape[1 - w.axis])
    b_row = row(w.b, p) if w.other is None else row(w.b, p)[w.other]
    st.dataframe(pd.DataFrame({f"A {word} {i}": row(w.a, i)[:n], f"B {word} {i}": row(w.b, i)[:n],
                               f"B {word} {p}" + ("" if w.other is None else " (entries in B′'s residual order)"):
                                   b_row[:n],
                               f"B′ {word} {i}": row(w.bp, i)[:n]}).T.rename(columns=lambda c: f"entry {c}"),
                 width="stretch")
    st.caption(f"The first {n} entries of {w.name}: B′'s {word} {i} is B's {word} {p}, digit for digit"
               + ("." if w.other is None else ", once its entries are put in the residual stream's new order."))

left, right = st.columns([3, 2])
with left:
    show_figure(plots.permutation_matrix(perm, heads, f"{group}: the permutation", rows_hl),
                fig_name(run, "permutation", group), pd.DataFrame({"unit_of_B_prime": range(d), "unit_of_B": perm}))
with right:
    st.markdown("One dot per unit of B′, in the column of the unit of B it takes."
                + (" Head lines split the matrix into head blocks: when every head of B′ takes one whole head "
                   "of B, each band of rows has its dots inside one block." if heads else ""))
    if heads:
        st.dataframe(pd.DataFrame(views.head_moves(perm, heads)), width="stretch", hide_index=True)

# --- the checks ----------------------------------------------------------------------------------------
st.subheader("Checks")
checks = pd.DataFrame(out["checks"])
exact = bool(checks["all_exact"].all())
st.dataframe(checks.rename(columns={"slices": "units", "exact": "equal bit for bit", "all_exact": "all equal"}),
             width="stretch", hide_index=True)
(st.success if exact else st.error)(
    f"Every row / column of B′ touched by {group} is the matching row / column of B, bit for bit."
    if exact else "Some moved rows or columns differ from B's: please report this.")

result = run_result(run)  # the run's own check (recomputed from the cache after a restart)
check = result.get("check") if isinstance(result, dict) else None
if check is not None:
    rel = check["max_rel_logit_error"]
    st.metric("Largest logit difference of B′ vs B, relative to B's largest logit", f"{rel:.1e}",
              help=f"absolute {check['max_abs_logit_error']:.2e}, on a probe batch of the alignment data")
    if run.options.function_preserving:
        ok = check["equivalent"]  # judged in float64, where rounding cannot pass for a break
        (st.success if ok else st.error)(
            "B′ computes B: the whole model, with every group of this run permuted, gives B's outputs up to "
            f"rounding (float64 relative error {check['max_rel_logit_error_float64']:.0e})." if ok else
            "B′ should compute B's function but does not: please report this.")
    else:
        st.warning(f"{run.options.label()} is not function-preserving: it moves units between heads or gives "
                   "residual points different orders, so B′ is a different function and a large difference "
                   "is expected.")
presenter.tell("See the permutation", tour.permutation(
    md(group), step, d, int(np.sum(perm != np.arange(d))),
    unit=i if step == "one unit" else None, source=p if step == "one unit" else None,
    head=j if step == "one head" else None, source_heads=src if step == "one head" else None, head_size=dk,
    exact=exact, rel_error=check["max_rel_logit_error"] if check is not None else None,
    preserving=run.options.function_preserving))
about_caption(out["about"])
