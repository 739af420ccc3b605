"""Loss and pseudo-perplexity along lambda: this pair, the paper's Fig. 4 variants, a family of pairs, classifiers."""
import streamlit as st

from dashboard import presenter

from dashboard.state import (about_caption, job_key, name, pair_title, pick_pairs, recall, require_run, run_result,
                             section_result, start, study_base)
from dashboard.figures import fig_name, show_figure
from dashboard.finetune import classifier_tasks, make_pair_panel, user_pairs
from dashboard.text import md, plot_text
from permerge import plots, runs, tour, zoo
from permerge.align import VANILLA, AlignOptions
from permerge.shapes import one_pair_tasks, shapes_frame, table3, worse_pairs
from permerge.study import FIG4, band, barriers_frame, curves_frame, family_pairs

st.title("Interpolation")
st.markdown(
    "The merged model θ(λ) = λ·A + (1−λ)·B′ evaluated along λ (λ = 0 is B′, λ = 1 is A). A hump in the middle "
    "is the **loss barrier**: the higher it is, the worse plain averaging works. Alignment should flatten it. "
    "Hover a curve for its values; dashed curves are not function-preserving. Barriers are shown ± one "
    "standard error over the scored tokens.")
run = require_run("the interpolation curves")


def value_views(df):
    return ["loss"] + [c for c in ("pseudo_perplexity", "perplexity", "accuracy") if c in df.columns and df[c].notna().any()]


def show_curves(results, title, key):
    df, bars = curves_frame(results), barriers_frame(results)
    tabs = st.tabs([v.replace("_", "-") for v in value_views(df)])
    for tab, v in zip(tabs, value_views(df)):
        with tab:
            show_figure(plots.curves(df, v, bars if v == "loss" else None, title=f"{title}: {v.replace('_', '-')}",
                                     log_y=v.endswith("perplexity")), fig_name(run, "curves" if key == "mine" else f"{key}-curves", v), df)
    st.dataframe(bars[["method", "barrier", "barrier_se", "barrier_lambda", "loss_a", "loss_b", "function_preserving"]],
                 width="stretch", hide_index=True,
                 column_config={"barrier_se": st.column_config.NumberColumn("± s.e.", format="%.4f")})


# --- this run -----------------------------------------------------------------------------------------
st.subheader("This pair: " + pair_title(run.job))
res = run_result(run)
if res is not None and res["vanilla"] is None:
    st.info("This run has no evaluation data with labels, so there is no curve. Pick a task to evaluate on.")
    st.stop()
if res is not None:
    show_curves([res["vanilla"]] + ([res["aligned"]] if res["aligned"] is not res["vanilla"] else []), "This run", "mine")
    van, al = res["vanilla"], (res["aligned"] if res["aligned"] is not res["vanilla"] else None)
    presenter.tell("Interpolation", tour.barrier_marks(
        van.barrier, van.barrier_lambda, al.barrier if al else None, al.barrier_lambda if al else None,
        md(al.method) if al else "", van.barrier_se, al.barrier_se if al else None))
    about_caption(res["about"])
is_mlm = res is not None and res.get("eval_kind") == "mlm"

# --- Fig. 4 ---------------------------------------------------------------------------------------------
if is_mlm:
    st.subheader("Paper Fig. 4: which components to align")
    st.markdown("Vanilla averaging, FF only, attention only (Head-Perm) and FF + attention on this pair, "
                "same statistics (only the assignments and the curves are new).")
    key4 = job_key("fig4", job=run.job.to_dict(), lambdas=run.lambdas)
    if st.button("Compute the Fig. 4 variants", key="fig4_btn"):
        start("fig4", run, key4, runs.recipe("curves_work", job=run.job, options=FIG4, lambdas=run.lambdas),
              "Fig. 4 variants", runs.depends(run.job, lambdas=run.lambdas))
    res4 = section_result("fig4", run, "Fig. 4 variants")
    if res4 is not None:
        show_curves(res4["curves"], "Fig. 4", "fig4")
        about_caption(res4["about"])

# --- family ---------------------------------------------------------------------------------------------
st.subheader("Several pairs: mean ± standard error")
st.markdown("Each curve is the mean over pairs with a shaded ± standard-error band (over pairs). Pairs come "
            "from this run, from a folder of your own checkpoints (all its pairs), or from the bundled family; "
            "every pair uses this run's data and settings.")
pairs = pick_pairs(run, "fam")
if pairs:
    c1, c2 = st.columns(2)
    fam_lambdas = c1.number_input("λ points", 3, max(41, run.lambdas), run.lambdas, step=2, key="fam_lambdas",
                                  help="The run's λ points by default.")
    choices = {o.label(): o for o in FIG4 + [run.options] if o.function_preserving or o == run.options}
    picked = c2.multiselect("Variants", list(choices), default=["vanilla", AlignOptions().label()], key="fam_opts")
    st.caption("Pairs: " + "; ".join(f"{md(name(a))} | {md(name(b))}" for a, b in pairs))
    base = study_base(run)
    opts = [choices[p] for p in picked]
    keyf = job_key("family", base=base.to_dict(), pairs=pairs, options=[o.label() for o in opts],
                   lambdas=int(fam_lambdas))
    if st.button("Compute the curves over pairs", key="fam_btn", disabled=not opts):
        start("family", run, keyf, runs.recipe("family_work", base=base, pairs=pairs, options=opts,
                                                lambdas=int(fam_lambdas)), "pairs", runs.depends(run.job))
    resf = section_result("family", run, "Curves over pairs")
    if resf is not None:
        curves_df, bars_df = resf["curves"], resf["bars"]
        views = [v for v in ("loss", "pseudo_perplexity", "perplexity", "accuracy") if v in curves_df and curves_df[v].notna().any()]
        tabs = st.tabs([v.replace("_", "-") for v in views])
        for tab, v in zip(tabs, views):
            with tab:
                show_figure(plots.band(band(curves_df, v), f"Mean ± s.e. over {bars_df['pair'].nunique()} pair(s): "
                                       f"{v.replace('_', '-')}", y_title=v.replace("_", "-")),
                            fig_name(run, "pairs-mean-se", v, f"{bars_df['pair'].nunique()}pairs"), band(curves_df, v))
        st.dataframe(bars_df[["pair", "method", "barrier", "barrier_se", "barrier_lambda", "function_preserving"]],
                     width="stretch", hide_index=True)
        about_caption(resf["about"])

# --- classifiers ----------------------------------------------------------------------------------------
st.subheader("Fine-tuned classifiers per task (paper Fig. 8)")
st.markdown("Classifiers fine-tuned from different pre-training seeds, merged vanilla and with FF + Head-Perm + "
            "pooler, loss on the task's dev set. The curves can be **M-shaped**: lower loss than both endpoints "
            "near λ ≈ 0.15 and 0.85.")
make_pair_panel(run)
learning = {t["task"]: t for t in zoo.task_learning()}
bundled_pairs = {}
# tasks whose bundled classifiers learned (dev accuracy well above chance) first
for task in sorted(zoo.list_tasks(), key=lambda t: not learning.get(t, {}).get("learned", False)):
    paths = [e["path"] for e in zoo.list_checkpoints(kind="classifier", task=task)]
    if len(paths) >= 2:
        bundled_pairs[task] = family_pairs(paths)
task_pairs, task_dirs = classifier_tasks(bundled_pairs)  # the user's pairs first in their tasks
yours = list(dict.fromkeys(e["task"] for e in user_pairs()))
if not task_pairs:
    st.info("No task has two bundled classifiers; make a fine-tuned pair or add your own above.")
else:
    near = [t for t in task_pairs if t in bundled_pairs and t not in yours
            and not learning.get(t, {}).get("learned", False)]
    if near:
        st.caption("Near chance (the bundled classifiers did not learn the task, so their curves say little): "
                   + "; ".join(f"{md(t)}: dev accuracy "
                               + ", ".join(f"{a:.2f}" for a in learning[t]["dev_accuracy"].values() if a is not None)
                               + (f" vs {learning[t]['chance']:.2f} by always answering the commonest label"
                                  if learning[t]["chance"] is not None else "")
                               if t in learning else md(t) for t in near) + ".")
    learned = [t for t in task_pairs if t not in near]
    c1, c2, c3 = st.columns(3)
    picked_tasks = c1.multiselect("Tasks", list(task_pairs), default=(yours or learned or list(task_pairs))[:1],
                                  key="cls_tasks", help="Your pairs' tasks, then the tasks whose bundled classifiers "
                                                        "learned (dev accuracy at least 0.15 above chance).")
    n_cls = c2.number_input("Pairs per task", 1, max(len(p) for p in task_pairs.values()), 1, key="cls_pairs")
    cls_lambdas = c3.number_input("λ points", 3, max(41, run.lambdas), run.lambdas, step=2, key="cls_lambdas",
                                  help="The run's λ points by default.")
    sel = {t: task_pairs[t][: int(n_cls)] for t in picked_tasks}
    cls_opts = [VANILLA, AlignOptions(ff=True, attention="head-perm", pooler=True)]
    keyc = job_key("tasks", tasks=sel, tokens=run.job.tokens, device=run.job.device, lambdas=int(cls_lambdas))
    if st.button("Compute the classifier curves", key="cls_btn", disabled=not sel):
        start("classifiers", run, keyc, runs.recipe(
            "tasks_work", tasks=sel, task_dirs={t: str(task_dirs[t]) for t in sel}, tokens=run.job.tokens,
            device=run.job.device, options=cls_opts, lambdas=int(cls_lambdas), eval_examples=None),
            "classifier curves", {})
    # Classifier curves belong to their tasks and settings, not to the run: kept across runs.
    shown_key = recall("classifiers", run)
    resc = section_result("classifiers", run, "Classifier curves")
    if resc is not None:
        if shown_key != keyc:
            st.caption("Shown: the classifier curves computed last in this session; the settings above differ "
                       "from them.")
        curves_df, bars_df = resc["curves"], resc["bars"]
        shapes_df = shapes_frame(curves_df)
        view = st.radio("View", ["loss"] + [c for c in ("accuracy", "f1", "mcc", "pearson", "spearman")
                                            if c in curves_df and curves_df[c].notna().any()],
                        horizontal=True, key="cls_view",
                        help="Beside the loss, each GLUE task's own metric: F1 (MRPC, QQP), Matthews correlation "
                             "(CoLA), Pearson and Spearman (STS-B).")
        for task in dict.fromkeys(curves_df["task"]):
            sub = curves_df[curves_df["task"] == task]
            if view not in sub or not sub[view].notna().any():
                st.caption(f"{md(task)}: no {view} for this task.")
                continue
            pairs_here = list(dict.fromkeys(sub["pair"]))
            if len(pairs_here) > 1:
                show_figure(plots.band(band(sub, view), f"{plot_text(task)}: {view} (mean ± s.e. over {len(pairs_here)} "
                                       "pairs)", y_title=view), fig_name(None, "fig8-classifiers", task, view),
                            band(sub, view), key=f"fig8-band::{task}::{view}")
            for pair in pairs_here:
                one = sub[sub["pair"] == pair]
                b = bars_df[(bars_df["task"] == task) & (bars_df["pair"] == pair)]
                fig = plots.curves(one, view, b if view == "loss" else None,
                                   title=f"{plot_text(task)}, pair {plot_text(pair)}: {view}", y_title=f"dev-set {view}")
                sh = shapes_df[(shapes_df["task"] == task) & (shapes_df["pair"] == pair)]
                show_figure(plots.mark_dips(fig, one, sh, view), fig_name(None, "fig8", task, pair, view), one,
                            key=f"fig8::{task}::{pair}::{view}")
                st.caption(f"{md(task)}, {md(pair)}: " + "; ".join(f"{r['method']}: {r['shape']}" for _, r in sh.iterrows())
                           + ". Triangles mark where the loss dips below both ends (the M shape of the paper's "
                             "Fig. 8 has two such dips).")
        st.markdown("**Paper Table 3 on these pairs**: barrier per task, vanilla against aligned with "
                    f"{cls_opts[1].label()} (mean ± standard error over pairs; one pair has no standard error), which "
                    "pairs are M-shaped, and where alignment made a pair worse.")
        t3 = table3(curves_df, bars_df)
        st.dataframe(t3, width="stretch", hide_index=True)
        if one_pair_tasks(t3):
            st.caption(f"No standard error for {md(', '.join(one_pair_tasks(t3)))}: one pair per task, and a standard "
                       "error over pairs needs at least two. Raise **Pairs per task** above for one.")
        worse = worse_pairs(bars_df)
        if worse:
            st.caption("Alignment raised the barrier of " + "; ".join(
                f"{md(w['task'])} ({md(w['pair'])}: {w['text']})" for w in worse)
                + ". Alignment matches units by their correlation on the alignment text; it does not minimise the "
                  "loss, and when the vanilla barrier is already small (fine-tuned classifiers), the noise of a "
                  "matching estimated from a few thousand tokens can cost more than the matching gains. \"Within "
                  "one standard error\" (over the dev examples) means the rise may be noise of the dev set.")
        with st.expander("Every pair's barriers"):
            st.dataframe(bars_df[["task", "pair", "method", "barrier", "barrier_se", "barrier_lambda"]],
                         width="stretch", hide_index=True)
        st.caption(f"Classifiers of {md(', '.join(resc['about']['tasks']))}; each task's own train/dev data "
                   "(alignment tokens used per pair: Table 3's last column); "
                   f"{resc['about']['lambdas']} λ points.")
