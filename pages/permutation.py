"""What a permutation does to B's weights, on the current run's pair, one group at a time."""
import numpy as np
import pandas as pd
import streamlit as st

from permerge import plots, views
from dashboard.state import job_key, job_outcome, job_panel, jobs, registry, require_run, short

st.title("See the permutation")
st.markdown(
    "A permutation `perm` renames B's hidden units: **unit i of B′ is unit perm[i] of B**. A unit lives in "
    "two places in the weights: the **rows** of the matrix that computes it (its *in-projection*) and the "
    "**columns** of the matrix that reads it (its *out-projection*). Moving a unit means moving its row and "
    "its column together, nothing else: no value changes, so B′ computes exactly what B computes, only with "
    "its units listed in A's order. Step through one unit, one attention head, then the whole group.")
run = require_run("the permutation")
pipe = run.pipe
with st.spinner("Loading the models and the permutations (from the cache) …"):
    spec = pipe.spec
    al = pipe.alignment(run.options)
    model_a, model_b = pipe.pair[0].model, pipe.pair[1].model

kinds = {"ff": "feed-forward", "att": "attention", "pooler": "pooler"}
groups = [g for g in al.groups if spec.groups[g].kind in kinds]
aligned = [g for g in groups if al.groups[g].aligned]
default = next((g for g in aligned if g.startswith("att.")), aligned[0] if aligned else groups[0])
c1, c2 = st.columns([2, 3])
group = c1.selectbox("Permutation group", groups, index=groups.index(default), key="perm_group",
                     format_func=lambda g: f"{g}  ({kinds[spec.groups[g].kind]}, {spec.groups[g].size} units)"
                                           + ("" if al.groups[g].aligned else ", left alone by this run"))
grp, res = spec.groups[group], al.groups[group]
perm = np.asarray(res.perm)
d = grp.size
heads = grp.heads if grp.kind == "att" else None
dk = d // heads if heads else None
steps = ["one unit"] + (["one head"] if heads else []) + ["the whole group"]
step = c2.radio("Step", steps, horizontal=True, key="perm_step")
if not res.aligned:
    st.info(f"This run's options ({run.options.label()}) leave {group} alone: its permutation is the identity, "
            "so nothing moves. Pick another group, or a run that aligns this one.")

weights = views.group_weights(spec, views.state_of(model_a), views.state_of(model_b), al.perms, group)
ins = [w for w in weights if w.axis == 0]
outs = [w for w in weights if w.axis == 1]

# --- the current step: which rows / columns to outline --------------------------------------------
if step == "one unit":
    moved = np.flatnonzero(perm != np.arange(d))
    i = int(st.number_input("Unit of B′", 0, d - 1, int(moved[0]) if len(moved) else 0, key=f"perm_unit_{group}"))
    p = int(perm[i])
    boxes_a, boxes_b, boxes_bp, rows_hl = [(i, i + 1)], [(p, p + 1)], [(i, i + 1)], [(i, i + 1)]
    st.markdown(f"**Unit {i} of B′ is unit {p} of B.** Row {p} of B's in-projection becomes row {i} of B′'s; "
                f"column {p} of B's out-projection becomes column {i} of B′'s. A's unit {i} is the one it was "
                "matched to.")
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
if ins:
    pick = st.selectbox("In-projection (computes the units: rows move)", [w.name for w in ins], key=f"perm_in_{group}")
    w = next(x for x in ins if x.name == pick)
    st.plotly_chart(plots.weight_panels([("A", w.a), ("B (before)", w.b), ("B′ (after)", w.bp)], 0,
                                        [boxes_a, boxes_b, boxes_bp],
                                        f"{w.name}: rows = units of {group} (first 96 columns shown)"),
                    width="stretch")
for w in outs:
    st.plotly_chart(plots.weight_panels([("A", w.a), ("B (before)", w.b), ("B′ (after)", w.bp)], 1,
                                        [boxes_a, boxes_b, boxes_bp],
                                        f"{w.name}: columns = units of {group} (first 96 rows shown)"),
                    width="stretch")
st.caption("Outlined: the current step in A, where it sits in B, and where it lands in B′. The other axis "
           "belongs to the residual stream" + (", which this run permutes too, so those entries move as well."
                                              if run.options.residual != "identity" else
                                              ", which this run leaves in place."))
if step == "one unit" and ins:
    w = ins[0]
    n = min(8, w.b.shape[1])
    b_row = w.b[p] if w.other is None else w.b[p][w.other]
    st.dataframe(pd.DataFrame({f"A row {i}": w.a[i, :n], f"B row {i}": w.b[i, :n],
                               f"B row {p}" + ("" if w.other is None else " (entries in B′'s residual order)"): b_row[:n],
                               f"B′ row {i}": w.bp[i, :n]}).T.rename(columns=lambda c: f"entry {c}"),
                 width="stretch")
    st.caption(f"The first {n} entries of {w.name}: B′'s row {i} is B's row {p}, digit for digit"
               + ("." if w.other is None else ", once its entries are put in the residual stream's new order."))

left, right = st.columns([3, 2])
with left:
    st.plotly_chart(plots.permutation_matrix(perm, heads, f"{group}: the permutation", rows_hl), width="stretch")
with right:
    st.markdown("One dot per unit of B′, in the column of the unit of B it takes."
                + (" Head lines split the matrix into head blocks: when every head of B′ takes one whole head "
                   "of B, each band of rows has its dots inside one block." if heads else ""))
    if heads:
        st.dataframe(pd.DataFrame(views.head_moves(perm, heads)), width="stretch", hide_index=True)

# --- the checks ----------------------------------------------------------------------------------------
st.subheader("Checks")
checks = pd.DataFrame([{"weight": x.name, "moves": "rows" if x.axis == 0 else "columns",
                        **views.gather_checks(x, perm)} for x in weights])
exact = bool(checks["all_exact"].all())
st.dataframe(checks.rename(columns={"slices": "units", "exact": "equal bit for bit", "all_exact": "all equal"}),
             width="stretch", hide_index=True)
(st.success if exact else st.error)(
    f"Every row / column of B′ touched by {group} is the matching row / column of B, bit for bit."
    if exact else "Some moved rows or columns differ from B's: please report this.")

h = jobs().get(run.key)
check = h.result.get("check") if h is not None and h.state == "done" and isinstance(h.result, dict) else None
if check is None:  # e.g. after a server restart: measure it again in the background
    key = job_key("function_check", job=run.job.to_dict(), options=run.options.to_dict())
    if jobs().get(key) is None:
        jobs().submit(key, lambda progress: registry().get(run.job).function_check(run.options), "B′ vs B check")
    job_panel(key, "Comparing B′ with B")
    check = job_outcome(key)
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
st.caption(f"Run: {short(run.job.model_a)} (A) vs {short(run.job.model_b)} (B), {run.options.label()}.")
