"""Activation matching against weight matching on the run's pair: barriers, curves, agreement."""
import streamlit as st

from dashboard.state import about_caption, job_key, name, pair_title, require_run, section_result, start
from dashboard.figures import fig_name, show_figure
from dashboard.text import md, plot_text
from permerge import plots, plots_matchers, runs
from permerge.compare import matcher_options

st.title("Activation vs weight matching")
st.markdown(
    "Two ways to find the permutation of B's units. **Activation matching** (the paper's) correlates the two "
    "models' features over the alignment data. **Weight matching** (Ainsworth et al., *Git Re-Basin*, 2023) "
    "needs no data: it permutes B's weights to be as close as possible to A's, one group at a time, until no "
    "group improves. Both use the run's components and variants (heads kept together by Head-Perm); both are "
    "evaluated on the same text.")
run = require_run("the matcher comparison")
act, wgt = matcher_options(run.options)
pair = pair_title(run.job)
st.caption(f"Pair: {md(name(run.job.model_a))} | {md(name(run.job.model_b))}; alignment {act.label()} by each matcher.")
if not run.options.aligns_anything:
    st.info("The run aligns nothing (vanilla): choose components to align on Pick and run to compare the matchers.")
    st.stop()

lambdas = st.number_input("λ points", 3, max(41, run.lambdas), run.lambdas, step=2, help="The run's λ points by default.")
key = job_key("matchers", job=run.job.to_dict(), options=act.to_dict(), lambdas=int(lambdas))
if st.button("Compare the matchers", type="primary"):
    start("matchers", run, key, runs.recipe("matchers_work", job=run.job, options=run.options, lambdas=int(lambdas)),
          "matcher comparison", runs.depends(run.job, run.options))

res = section_result("matchers", run, "Matcher comparison")
if res is None:
    st.info("Press **Compare the matchers** to align the run's pair both ways and evaluate both along λ "
            "(the activation statistics and the vanilla curve come from the cache when the run computed them).")
    st.stop()

st.subheader(f"Barriers: {pair}")
bars = res["bars"]
left, right = st.columns([1, 1])
with left:
    shown = bars[["method", "barrier", "barrier_se", "barrier_lambda", "function_preserving"]]
    st.dataframe(shown, width="stretch", hide_index=True,
                 column_config={"barrier": st.column_config.NumberColumn(format="%.4f"),
                                "barrier_se": st.column_config.NumberColumn("standard error", format="%.4f"),
                                "barrier_lambda": st.column_config.NumberColumn("at λ", format="%.2f"),
                                "function_preserving": "function-preserving"})
with right:
    show_figure(plots_matchers.barriers(bars, title="Barrier by matcher"), fig_name(run, "matchers-barriers"), bars)
st.caption(f"{pair}: the standard error is over the scored tokens (or examples) of this pair. "
           f"Weight matching ran {res['sweeps']} sweep(s) over the groups.")

st.subheader(f"Loss along λ: {pair}")
curve_title = f"Loss along λ: {plot_text(name(run.job.model_a))} vs {plot_text(name(run.job.model_b))}"
show_figure(plots.curves(res["curves"], "loss", bars, title=curve_title), fig_name(run, "matchers-curves"), res["curves"])

st.subheader(f"Do the two matchers agree? {pair}")
agree = res["agreement"]
if agree.empty:
    st.info("No group is aligned by both matchers with these options.")
else:
    show_figure(plots_matchers.agreement(agree, title="Share of identical permutation entries"),
                fig_name(run, "matchers-agreement"), agree)
    st.caption("Agreement of a group: the share of A's units that both matchers pair with the same unit of B. "
               "1 means the data and the weights find the same correspondence; two unrelated random permutations "
               "agree on about 1 / (number of units), the black tick. For attention, the table gives each "
               "matcher's head assignment (position j: the head of B that becomes head j) and the share of heads "
               "assigned alike; units can agree only inside heads assigned alike. Residual points share one "
               "permutation under the residual variants First, Last and All, so their rows repeat.")
    att = agree[agree["kind"] == "att"]
    if len(att):
        st.dataframe(att[["group", "heads_activation", "heads_weight", "heads_agree", "agree"]], width="stretch",
                     hide_index=True,
                     column_config={"heads_activation": "heads (activation)", "heads_weight": "heads (weight)",
                                    "heads_agree": st.column_config.NumberColumn("heads alike", format="%.2f"),
                                    "agree": st.column_config.NumberColumn("units alike", format="%.3f")})
about_caption(res["about"])
