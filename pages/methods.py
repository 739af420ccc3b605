"""Tables 1 and 2 of the paper: barrier per attention and residual variant, on this run's pair or over pairs."""
import pandas as pd
import streamlit as st

from dashboard import presenter

from dashboard.state import (about_caption, job_key, name, pick_pairs, recall, require_run, section_result, start,
                             study_base)
from dashboard.figures import fig_name, show_figure
from dashboard.text import md
from permerge import plots, runs, tour
from permerge.study import TABLE1, TABLE2, methods_table

st.title("Methods")
st.markdown(
    "Loss barrier (lower is better) of each alignment method. With one pair, the barrier is shown ± its "
    "standard error over the scored tokens; over several pairs, as the **mean ± standard error over pairs**. "
    "**Table 1** compares the attention variants, with the feed-forward layers aligned too; **Table 2** aligns "
    "the residual stream only. Rows marked *NO* are not function-preserving: their B′ is not B, so their "
    "barrier is not a fair comparison (the paper reports them for their extra freedom).")
run = require_run("the methods tables")

pairs = pick_pairs(run, "methods", max_default=3)
if not pairs:
    st.stop()
c1, c2 = st.columns(2)
lambdas = c1.number_input("λ points", 3, max(41, run.lambdas), run.lambdas, step=2, help="The run's λ points by default.")
which = c2.multiselect("Tables", ["Table 1", "Table 2"], default=["Table 1", "Table 2"])
st.caption("Pairs: " + "; ".join(f"{md(name(a))} | {md(name(b))}" for a, b in pairs))
options = (TABLE1 if "Table 1" in which else []) + (TABLE2 if "Table 2" in which else [])
base = study_base(run)
key = job_key("methods", base=base.to_dict(), pairs=pairs, options=[o.label() for o in options], lambdas=int(lambdas))
if st.button("Compute the tables", type="primary", disabled=not options):
    start("methods", run, key, runs.recipe("family_work", base=base, pairs=pairs, options=options, lambdas=int(lambdas)),
          "methods tables", runs.depends(run.job))

res = section_result("methods", run, "Methods tables")
if res is None:
    if recall("methods", run) is None:  # not while it runs (its progress line is above)
        st.info("Press **Compute the tables** to run every method on the chosen pairs in the background.")
else:
    bars = res["bars"]
    n_pairs = bars["pair"].nunique()
    told = []  # (title, rows) of the tables shown, for the presenter's sentence
    for title, opts in (("Table 1: attention variants (FF aligned too)", TABLE1),
                        ("Table 2: residual variants (residual only)", TABLE2)):
        if not set(o.label() for o in opts) <= set(bars["method"]):
            continue
        st.subheader(title)
        table = methods_table(bars, opts)
        told.append((title.split(":")[0], table.to_dict("records")))
        shown = table.assign(std_err=[("-" if v is None or pd.isna(v) else f"{v:.4f}") for v in table["std_err"]])
        left, right = st.columns([3, 2])
        with left:
            st.dataframe(shown, width="stretch", hide_index=True,
                         column_config={"barrier": st.column_config.NumberColumn("barrier" + (" (mean)" if n_pairs > 1 else ""),
                                                                                 format="%.4f"),
                                        "std_err": "standard error", "function_preserving": "function-preserving"})
        with right:
            show_figure(plots.methods_bar(table), fig_name(run, title.split(":")[0].replace(" ", "").lower(),
                                                           f"{n_pairs}pairs"), table)
    presenter.tell("Methods", tour.methods(told, n_pairs))
    if n_pairs == 1:
        st.caption("One pair: the standard error is over the scored tokens of that pair (how much the barrier "
                   "would move with other evaluation text), not over pairs; '-' where it cannot be computed.")
    else:
        st.caption(f"Mean and standard error over {n_pairs} pairs. Hatched bars: not function-preserving.")
    about_caption(res["about"])
    with st.expander("Every pair"):
        st.dataframe(bars, width="stretch", hide_index=True)
