"""Barrier against the amount of alignment data (paper Fig. 7)."""
import dataclasses

import streamlit as st

from dashboard.state import about_caption, job_key, pair_title, recall, require_run, section_result, start
from dashboard.figures import fig_name, show_figure
from permerge import plots, runs
from permerge.compare import matcher_options
from permerge.study import data_amount_job

st.title("Amount of data")
st.markdown(
    "How much alignment data does matching need? The statistics pass keeps snapshots after the first 1%, 3%, "
    "10%, 30% of its batches; each snapshot gives its own permutations and its own barrier. The barrier is "
    "plotted against the tokens seen, with vanilla averaging (no alignment) as the dashed reference "
    "(paper Fig. 7). No second pass over the data is needed beyond the one for the amount chosen here.")
run = require_run("the data-amount study")
session_run = run  # the study is kept with the session's run (its own options)
if run.options.matcher == "weight":  # weight matching reads no data: the study is of activation matching
    run = dataclasses.replace(run, options=matcher_options(run.options)[0])
    st.caption("This run used weight matching, which reads no data: shown here is activation matching with the "
               "same components and variants.")
st.caption("Pair: " + pair_title(run.job) + f"; {run.options.label()}.")
c1, c2 = st.columns(2)
MIN_TOKENS, MAX_TOKENS = 2048, 10_000_000  # the study's pass: enough batches for distinct snapshots
tokens = c1.number_input("Alignment tokens (the whole pass)", MIN_TOKENS, MAX_TOKENS,
                         min(max(int(run.job.tokens or 16384), MIN_TOKENS), MAX_TOKENS), step=8192,
                         help="The snapshots are fractions of this pass, cut in batches small enough that the "
                              "first snapshots differ (at least 64 batches).")
lambdas = c2.number_input("λ points", 3, max(41, run.lambdas), run.lambdas, step=2, help="The run's λ points by default.")
job = data_amount_job(run.job, int(tokens))
key = job_key("data_amount", job=job.to_dict(), options=run.options.to_dict(), lambdas=int(lambdas))
if st.button("Compute", type="primary"):
    start("amount", session_run, key, runs.recipe("data_amount_work", job=job, options=run.options, lambdas=int(lambdas)),
          "amount of data", runs.depends(run.job, session_run.options))
res = section_result("amount", session_run, "Amount of data")
if res is None:
    if recall("amount", session_run) is None:  # not while it runs (its progress line is above)
        st.info(f"Press **Compute** to evaluate {run.options.label()} at every data snapshot of a statistics pass over "
                f"up to {int(tokens):,} tokens of this run's data ({pair_title(run.job)}).")
else:
    df = res["frame"]
    show_figure(plots.data_amount(df, f"Barrier vs alignment tokens: {df['method'].iloc[0]}"),
                fig_name(run, "fig7-barrier-vs-tokens", f"{int(tokens)}tokens"), df)
    if df["tokens"].nunique() < len(df):
        st.caption("Some snapshots have the same number of tokens: with few alignment tokens, the first "
                   "fractions fall inside one batch. Raise the alignment tokens above for a wider range.")
    about_caption(res["about"])
    st.dataframe(df, width="stretch", hide_index=True)
