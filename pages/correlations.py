"""Correlation matrices of one permutation group, before and after alignment."""
import streamlit as st

from dashboard import presenter
from dashboard.state import about_caption, job_key, latest_only, pair_title, registry, require_run
from dashboard.figures import fig_name, show_figure
from dashboard.text import md
from permerge import plots, views

st.title("Correlations")
st.markdown(
    "Each cell is the correlation of unit *i* of A with unit *j* of B over the alignment tokens (red = +1, "
    "blue = −1, white = 0). **Before**: B's units in their own order, so a good partner sits anywhere in "
    "its row. **After**: column *i* is B′'s unit *i*, the unit of B matched to A's unit *i*, so the matched "
    "pairs run down the **diagonal**. Black lines mark attention-head boundaries.")
run = require_run("the correlation matrices")
st.caption("Pair: " + pair_title(run.job))
kinds = {"ff": "feed-forward", "att": "attention", "qk": "query/key (RoPE)", "res": "residual", "pooler": "pooler"}
known = st.session_state.get("corr_groups", {}).get(run.key)  # the group list, once the first result is in
if known:
    groups, sizes, gkinds = known
    wanted = st.selectbox("Permutation group", groups,
                          index=next((i for i, g in enumerate(groups) if g.startswith("att.")), 0), key="corr_group",
                          format_func=lambda g: f"{g}  ({kinds.get(gkinds[g], gkinds[g])}, {sizes[g]} units)")
else:
    wanted = None
key = job_key("correlations", job=run.job.to_dict(), options=run.options.to_dict(), group=wanted)
out = latest_only("corr_job", key, views.correlation_work(registry(), run.job, run.options, wanted), "correlations",
                  "Loading statistics and permutations")
if not known:
    st.session_state.setdefault("corr_groups", {})[run.key] = (out["groups"], out["sizes"], out["kinds"])
    st.rerun()  # now with the group picker
group, grp, res, C, after = out["group"], out["spec_group"], out["result"], out["C"], out["after"]
heads = grp.heads if grp.kind in ("att", "qk") else None

c1, c2, c3 = st.columns(3)
c1.metric("Mean matched correlation before", f"{res.corr_before:.3f}", help="mean of diag(C): unit i with unit i")
c2.metric("after", f"{res.corr_after:.3f}", delta=f"{res.corr_after - res.corr_before:+.3f}")
c3.metric("aligned by these options", "yes" if res.aligned else "no (identity)")
if not res.aligned:
    st.info(f"The options of this run ({run.options.label()}) leave {group} alone, so before and after are the same.")

d = grp.size
o1, o2, o3 = st.columns([2, 2, 1])
order = o1.radio("Order of the units", views.ORDERS, key="corr_order",
                 help="Clustering puts A's units with similar correlation patterns next to each other and moves "
                      "each unit's matched partner of B with it, so the diagonal stays the matched pairs.")
lo, hi = (o2.slider("Units shown (positions in this order)", 0, d, (0, views.default_window(d, heads)),
                    key=f"corr_window_{group}",
                    help="A window of the matrix: fewer units, bigger cells, a clearer diagonal.")
          if d > 64 else (0, d))
max_pixels = o3.select_slider("Pixel limit per side", [256, 512, 1024, 2048], value=512,
                              help="Bigger matrices are averaged over blocks down to this size.")


@st.cache_data(show_spinner="Clustering the units …", max_entries=8)
def ordered(matrix, how):
    return views.ordered(matrix, how)


shown, rows, cols = ordered(after, order)
clustered = order != views.ORDERS[0]
win = slice(lo, hi)
dk = d // heads if heads else None
grid = (hi - lo) // dk if heads and not clustered and lo % dk == 0 and hi % dk == 0 else None
left, right = st.columns(2)
with left:
    show_figure(plots.heatmap(C[win, win], grid, f"{group}: before (B in its own order)", max_pixels,
                              x_title="unit of B", offset=(lo, lo)),
                fig_name(run, "correlation-before", group, f"units{lo}-{hi - 1}"), C[win, win])
with right:
    show_figure(plots.heatmap(shown[win, win], grid,
                                  f"{group}: after" + (", A's units clustered" if clustered else " (B′ = B permuted)"),
                                  max_pixels, x_title="matched unit of B′" + (" (clustered order)" if clustered else ""),
                                  y_title="unit of A" + (" (clustered order)" if clustered else ""), offset=(lo, lo),
                                  row_ids=rows[win] if clustered else None, col_ids=rows[win] if clustered else None),
                fig_name(run, "correlation-after", group, "clustered" if clustered else "", f"units{lo}-{hi - 1}"),
                shown[win, win])
st.caption(("Clustered: rows and columns are in the same new order, so the diagonal is still unit i of A "
            "with its matched partner; blocks of red show groups of units that behave alike in both models. "
            if clustered else "")
           + ("" if (lo, hi) == (0, d) else f"Showing positions {lo}–{hi - 1} of {d}. ")
           + plots.render_note(hi - lo, max_pixels))
show_figure(plots.diagonal_histogram(after, C, f"{group}: matched pairs against all other pairs"),
            fig_name(run, "matched-pairs-histogram", group))
ds = views.diagonal_summary(after)
presenter.tell("Correlations", f"Left and right heatmaps of {md(group)}: after alignment each unit of A sits on the "
               f"diagonal with its matched unit of B (mean correlation {res.corr_before:.2f} → {res.corr_after:.2f}); "
               f"for {ds['share_row_best']:.0%} of A's units that is also the unit of B it correlates best with.")
st.caption(
    f"How the diagonal stands out, even where the picture cannot show it. Red: the {d} matched pairs after "
    f"alignment (mean {ds['mean_matched']:.3f}). Blue: every other pair of units (mean {ds['mean_other']:.3f}, "
    f"spread ± {ds['std_other']:.2f}). Grey: unit i with unit i before alignment, about as good as a random pair, "
    f"because the two models learned their units in different orders. For {ds['share_row_best']:.0%} of A's units "
    f"the matched partner is also the single best-correlated unit of B in its row"
    + (f"; {ds['share_other_above_mean_matched']:.0%} of the other pairs correlate more than the average matched "
       "pair, which is why the diagonal is hard to see cell by cell here (the matching must be one-to-one"
       + (", and units inside a head tend to vary together)." if heads else ").")
       if ds["share_other_above_mean_matched"] > 0.02 else "."))

if heads:
    st.subheader("Heads")
    dk = grp.size // heads
    st.markdown(
        "For every head pair (j of A, k of B) the inner d_k × d_k assignment is solved on block C_jk; its "
        "matched sum is the **cost** below. The outer assignment (boxed in red) picks which head of B each "
        "head of A gets. Only Head-Perm chooses it; Monotonic fixes head j ↔ head j.")
    if res.head_cost is not None:
        show_figure(plots.head_cost(res.head_cost, res.outer, f"{group}: head-pair cost"),
                    fig_name(run, "head-pair-cost", group), res.head_cost)
    else:
        st.caption(f"No head-pair cost for the attention variant '{run.options.attention}' "
                   "(only Head-Perm computes one).")
    c1, c2 = st.columns(2)
    j = c1.number_input("Head of A", 0, heads - 1, 0)
    k_default = int(res.outer[j]) if res.outer is not None else int(j)
    k = c2.number_input("Head of B", 0, heads - 1, k_default, help="Defaults to the head the outer assignment chose.")
    z1, z2 = st.columns(2)
    with z1:
        show_figure(plots.heatmap(plots.head_block(C, heads, j, k), None,
                                  f"before: A head {j} × B head {k}", offset=(j * dk, k * dk)),
                    fig_name(run, "head-block-before", group, f"A-head{j}-B-head{k}"), plots.head_block(C, heads, j, k))
    with z2:
        show_figure(plots.heatmap(plots.head_block(after, heads, j, j), None,
                                  f"after: A head {j} × B′ head {j}", offset=(j * dk, j * dk),
                                  x_title="unit of B′"),
                    fig_name(run, "head-block-after", group, f"head{j}"), plots.head_block(after, heads, j, j))
    st.caption(f"One d_k × d_k = {dk} × {dk} block. After alignment, B′'s head {j} holds B's head "
               f"{int(res.outer[j]) if res.outer is not None else j}'s units, inner-matched to A's head {j}.")

st.subheader("Which weights this permutation touches")
st.markdown(f"Permuting **{group}** gathers these parameters of B along the given axis "
            "(from the architecture table `spec.params_of`).")
st.dataframe(plots.params_table(out["params"]), width="stretch", hide_index=True)
st.page_link("pages/permutation.py", label="See how the permutation moves these weights", icon=":material/swap_vert:")
about_caption(out["about"])
