"""Mean feature correlation per layer, before vs after alignment (paper Fig. 5)."""
import streamlit as st

from dashboard.state import about_caption, job_key, job_outcome, job_panel, jobs, pair_title, registry, require_run
from dashboard.figures import fig_name, show_figure
from permerge import plots, work
from permerge.align import AlignOptions

st.title("Feature correlation")
st.markdown(
    "For every layer, the mean correlation between matched units of A and B: **before** pairs unit *i* with "
    "unit *i* (the models' own orders), **after** pairs unit *i* with the unit the permutation chose. A large "
    "gap means the two models learned similar features in different orders, which alignment recovers "
    "(paper Fig. 5). Residual points run from the embeddings (`res.emb`) through every attention (`.att`) "
    "and feed-forward (`.ff`) sub-layer output.")
run = require_run("the per-layer feature correlations")
st.caption("Pair: " + pair_title(run.job))
which = st.radio("Alignment shown", ["this run's options", "every group aligned"], horizontal=True,
                 help="'every group aligned' uses FF + Head-Perm + residual Separate (one assignment per "
                      "residual point: the best each point can reach; not function-preserving as a model).")
options = run.options if which == "this run's options" else AlignOptions(
    ff=True, attention="head-perm", residual="separate", pooler=run.options.pooler)
if which != "this run's options":
    st.caption("⚠ \"Every group aligned\" aligns the residual points with **Separate**: one permutation per point, "
               "the best each point can reach on its own. That is **not function-preserving** (a model built with "
               "it would not compute B), so these residual correlations are an upper bound; a function-preserving "
               "run (residual All) shares one permutation over every point and reaches less.")
key = job_key("features", job=run.job.to_dict(), options=options.to_dict())
jobs().submit(key, work.alignment_work(registry(), run.job, options), "feature correlations")
job_panel(key, "Solving / loading the alignment")
res = job_outcome(key)
if res is not None:
    df = res["frame"]
    view = st.radio("View", ["bars", "lines"], horizontal=True, key="features_view",
                    help="Grouped bars per layer, before and after (the paper's Fig. 5), or lines.")
    show_figure(plots.layer_corr(df, method=options.label(), view=view),
                fig_name(run, "fig5-feature-correlation", "shown-" + options.label(), view), df)
    if not df["aligned"].all():
        st.caption("Groups that these options leave alone (identity) have equal before and after: "
                   + ", ".join(df.loc[~df["aligned"], "group"]) + ".")
    with st.expander("Table"):
        st.dataframe(df, width="stretch", hide_index=True)
    about_caption(res["about"])
