"""Barrier against the amount of alignment data (paper Fig. 7)."""
import streamlit as st

from permerge import plots
from permerge.ui_state import data_amount_work, job_key, job_outcome, job_panel, jobs, require_run, short

st.title("Amount of data")
st.markdown(
    "How much alignment data does matching need? The statistics pass keeps snapshots after the first 1%, 3%, "
    "10%, 30% of its batches; each snapshot gives its own permutations and its own barrier. The barrier is "
    "plotted against the tokens seen, with vanilla averaging (no alignment) as the dashed reference "
    "(paper Fig. 7). No second pass over the data is needed.")
run = require_run("the data-amount study")
lambdas = st.number_input("λ points", 3, 41, min(11, run.lambdas), step=2)
key = job_key("data_amount", job=run.job.to_dict(), options=run.options.to_dict(), lambdas=int(lambdas))
if st.button("Compute", type="primary"):
    jobs().submit(key, data_amount_work(run.job, run.options, int(lambdas)), "amount of data")
    st.session_state["amount_key"] = key
skey = st.session_state.get("amount_key")
if skey is None:
    st.info(f"Press **Compute** to evaluate {run.options.label()} at every data snapshot of this run "
            f"({short(run.job.model_a)} vs {short(run.job.model_b)}).")
else:
    job_panel(skey, "Amount of data")
    df = job_outcome(skey)
    if df is not None:
        st.plotly_chart(plots.data_amount(df, f"Barrier vs alignment tokens: {df['method'].iloc[0]}"), width="stretch")
        if df["tokens"].nunique() < len(df):
            st.caption("Some snapshots have the same number of tokens: with few alignment tokens, the first "
                       "fractions fall inside one batch. Raise the alignment tokens on the run page for a wider range.")
        st.dataframe(df, width="stretch", hide_index=True)
