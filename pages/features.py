"""Mean feature correlation per layer, before vs after alignment (paper Fig. 5)."""
import pandas as pd
import streamlit as st

from dashboard.state import (about_caption, job_key, job_result, jobs, name, pair_title, pick_pairs,
                             registry, require_run, section_result, start, study_base)
from dashboard.figures import fig_name, show_figure
from dashboard.text import md
from permerge import plots, runs, work
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
res = job_result(key, "Solving / loading the alignment")
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

# --- several pairs of the family: mean ± standard error over pairs ------------------------------------
st.subheader("Several pairs: mean ± standard error")
st.markdown("The same bars averaged over pairs of one family (the bundled seeds, or every pair of a folder of "
            "your checkpoints), with the standard error over pairs as error bars; each pair uses this run's data "
            "and settings and the alignment shown above.")
pairs = pick_pairs(run, "feat")
if pairs:
    st.caption("Pairs: " + "; ".join(f"{md(name(a))} | {md(name(b))}" for a, b in pairs))
    base = study_base(run)
    keyf = job_key("features_family", base=base.to_dict(), pairs=pairs, options=options.to_dict())
    if st.button("Compute over these pairs", key="feat_family_btn", disabled=len(pairs) < 2,
                 help="One statistics pass per pair not computed yet (cached afterwards)." if len(pairs) > 1 else
                      "Choose at least two pairs (bundled family or a folder) for a mean over pairs."):
        start("features_family", run, keyf, runs.recipe("features_family_work", base=base, pairs=pairs,
                                                        options=options), "feature correlation over pairs",
              runs.depends(run.job))
    if len(pairs) < 2:
        st.caption("One pair: choose the bundled family or a folder of your checkpoints above for a mean over pairs.")
    fam = section_result("features_family", run, "Feature correlation over pairs")
    if fam is not None:
        fdf, n = fam["frame"], len(fam["frames"])
        if fam["about"].get("options") != options.label():
            st.caption(f"Computed with {md(fam['about'].get('options', ''))}, not the alignment shown above: "
                       "press the button again for this one.")
        show_figure(plots.layer_corr(fdf, title=f"Mean feature correlation over {n} pairs (± standard error over pairs)",
                                     method=fam["about"].get("options"), view=view if res is not None else "bars"),
                    fig_name(run, "fig5-feature-correlation", f"{n}pairs", view if res is not None else "bars"), fdf)
        st.caption(f"Mean over {n} pairs" + ("; error bars: the standard error over the pairs." if n > 1 else
                                             "; one pair has no standard error over pairs."))
        with st.expander("Every pair"):
            st.dataframe(pd.concat([f.assign(pair=p) for p, f in fam["frames"].items()]),
                         width="stretch", hide_index=True)
        about_caption(fam["about"])
