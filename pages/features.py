"""Mean feature correlation per layer, before vs after alignment (paper Fig. 5)."""
import streamlit as st

from permerge import plots
from permerge.align import AlignOptions
from permerge.study import layer_correlations
from permerge.ui_state import require_run, short

st.title("Feature correlation")
st.markdown(
    "For every layer, the mean correlation between matched units of A and B: **before** pairs unit *i* with "
    "unit *i* (the models' own orders), **after** pairs unit *i* with the unit the permutation chose. A large "
    "gap means the two models learned similar features in different orders, which alignment recovers "
    "(paper Fig. 5). Residual points run from the embeddings (`res.emb`) through every attention (`.att`) "
    "and feed-forward (`.ff`) sub-layer output.")
run = require_run("the per-layer feature correlations")
pipe = run.pipe
which = st.radio("Alignment shown", ["this run's options", "every group aligned"], horizontal=True,
                 help="'every group aligned' uses FF + Head-Perm + residual Separate (one assignment per "
                      "residual point: the best each point can reach; not function-preserving as a model).")
options = run.options if which == "this run's options" else AlignOptions(
    ff=True, attention="head-perm", residual="separate", pooler=run.options.pooler)
with st.spinner("Solving / loading the alignment (statistics come from the cache) …"):
    al = pipe.alignment(options)
    df = layer_correlations(al, pipe.spec)
st.plotly_chart(plots.layer_corr(df), width="stretch")
if not df["aligned"].all():
    st.caption("Groups that this run's options leave alone (identity) have equal before and after: "
               + ", ".join(df.loc[~df["aligned"], "group"]) + ".")
with st.expander("Table"):
    st.dataframe(df, width="stretch", hide_index=True)
st.caption(f"Run: {short(run.job.model_a)} vs {short(run.job.model_b)}, {options.label()}.")
