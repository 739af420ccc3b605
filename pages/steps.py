"""The loss barrier along training steps: two runs compared step by step, series side by side."""
import dataclasses

import streamlit as st

from dashboard.state import about_caption, job_key, require_run, section_result, start, study_base
from dashboard.figures import fig_name, show_figure
from permerge import plots_steps, runs, steps
from permerge.errors import PermergeError

st.title("Training steps")
st.markdown(
    "Where does a barrier come from? Give the checkpoints of two training runs at the same steps: each step "
    "pair is aligned and interpolated with this run's data, settings and options, and its barrier is drawn "
    "against the step. Two series side by side separate the causes: runs that differ only in their "
    "**initialisation** (the PolyPythias' `-weight-seed` runs) against runs that differ only in their "
    "**data order** (`-data-seed`). One checkpoint per line (a local folder, a hub id, `NAME@step1000` where "
    "revisions are supported), or one folder holding a folder per step (`step1000`, `step2000`, ...). Every "
    "step pair is cached like any other pair.")
run = require_run("the training-steps study")
DEFAULTS = (("weight-seed", "runs that differ in their initialisation"),
            ("data-seed", "runs that differ in their data order"))
series, problems = [], []
for col, (label, what) in zip(st.columns(2), DEFAULTS):
    with col:
        name = st.text_input("Series", label, key=f"steps_label_{label}", help=f"For example {what}.")
        a = st.text_area("Run A, one checkpoint per step", key=f"steps_a_{label}", height=120)
        b = st.text_area("Run B, the same steps", key=f"steps_b_{label}", height=120)
        if a.strip() or b.strip():
            try:
                s = steps.parse_series(name, a, b)
                series.append(s)
                st.caption(f"{len(s.steps)} step pairs: steps {', '.join(s.steps)}")
            except PermergeError as e:
                problems.append(str(e))
for p in problems:
    st.error(p)
lambdas = st.number_input("λ points", 3, max(41, run.lambdas), run.lambdas, step=2, help="The run's λ points by default.")
st.caption(f"Options: {run.options.label()} (from this run), with vanilla averaging as the reference.")
base = study_base(run)
key = job_key("steps", base=base.to_dict(), series=[s.__dict__ for s in series], options=run.options.to_dict(),
              lambdas=int(lambdas))
if st.button("Compute", type="primary", disabled=bool(problems) or not series):
    start("steps", run, key, runs.recipe("steps_work", base=base, series=[dataclasses.asdict(s) for s in series],
                                         options=run.options, lambdas=int(lambdas)),
          "training steps", runs.depends(run.job, run.options))

res = section_result("steps", run, "Training steps")
if res is None:
    st.info("Give the checkpoints of at least one series, then press **Compute**.")
else:
    bars, curves = res["barriers"], res["curves"]
    show_figure(plots_steps.barrier_along_steps(bars), fig_name(run, "steps-barrier", *res["about"]["series"]), bars)
    labels = list(dict.fromkeys(curves["series"]))
    for col, label in zip(st.columns(len(labels)), labels):
        with col:
            for method in dict.fromkeys(curves.loc[curves["series"] == label, "method"]):
                show_figure(plots_steps.curves_along_steps(curves, label, method),
                            fig_name(run, "steps-curves", label, method),
                            curves[(curves["series"] == label) & (curves["method"] == method)])
    about_caption(res["about"])
    st.dataframe(bars[["series", "step", "method", "barrier", "barrier_se", "loss_a", "loss_b"]], width="stretch",
                 hide_index=True)
