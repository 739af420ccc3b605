"""Loss and pseudo-perplexity along lambda: this pair, the paper's Fig. 4 variants, the family, classifiers."""
import streamlit as st

from permerge import plots, zoo
from permerge.align import VANILLA, AlignOptions
from permerge.pipeline import Job
from permerge.study import FIG4, band, barriers_frame, curves_frame, family_pairs
from permerge.ui_state import (curves_work, family_work, job_key, job_outcome, job_panel, jobs, require_run,
                               short, tasks_work)

st.title("Interpolation")
st.markdown(
    "The merged model θ(λ) = λ·A + (1−λ)·B′ evaluated along λ (λ = 0 is B′, λ = 1 is A). A hump in the middle "
    "is the **loss barrier**: the higher it is, the worse plain averaging works. Alignment should flatten it. "
    "Hover a curve for its values; dashed curves are not function-preserving.")
run = require_run("the interpolation curves")
pipe = run.pipe


def value_views(df):
    return ["loss"] + [c for c in ("pseudo_perplexity", "perplexity", "accuracy") if c in df.columns and df[c].notna().any()]


def show_curves(results, title):
    df, bars = curves_frame(results), barriers_frame(results)
    tabs = st.tabs([v.replace("_", "-") for v in value_views(df)])
    for tab, v in zip(tabs, value_views(df)):
        with tab:
            st.plotly_chart(plots.curves(df, v, bars if v == "loss" else None, title=f"{title}: {v.replace('_', '-')}",
                                         log_y=v.endswith("perplexity")), width="stretch")
    st.dataframe(bars[["method", "barrier", "barrier_lambda", "loss_a", "loss_b", "function_preserving"]],
                 width="stretch", hide_index=True)


def started(section: str, key: str, fn, label: str) -> None:
    jobs().submit(key, fn, label)
    st.session_state[f"{section}_key"] = key


def section_result(section: str, title: str):
    """Progress while the section's job runs; its result once done (None otherwise)."""
    key = st.session_state.get(f"{section}_key")
    if key is None:
        return None
    job_panel(key, title)
    return job_outcome(key)


# --- this run -----------------------------------------------------------------------------------------
st.subheader(f"This pair: {short(run.job.model_a)} (A) vs {short(run.job.model_b)} (B)")
with st.spinner("Loading curves (from the cache) …"):
    mine = [pipe.curve(VANILLA, run.lambdas)] + ([pipe.curve(run.options, run.lambdas)] if run.options != VANILLA else [])
show_curves(mine, "This run")

# --- Fig. 4 ---------------------------------------------------------------------------------------------
is_mlm = pipe.prepared.evalset.kind == "mlm"
if is_mlm:
    st.subheader("Paper Fig. 4: which components to align")
    st.markdown("Vanilla averaging, FF only, attention only (Head-Perm) and FF + attention on this pair, "
                "same statistics (only the assignments and the curves are new).")
    key4 = job_key("fig4", job=run.job.to_dict(), lambdas=run.lambdas)
    if st.button("Compute the Fig. 4 variants", key="fig4_btn"):
        started("fig4", key4, curves_work(run.job, FIG4, run.lambdas), "Fig. 4 variants")
    res4 = section_result("fig4", "Fig. 4 variants")
    if res4 is not None:
        show_curves(res4, "Fig. 4")

# --- family ---------------------------------------------------------------------------------------------
st.subheader("The bundled family: every pair of MLMs")
mlms = zoo.list_checkpoints(kind="mlm")
pairs = family_pairs([e["path"] for e in mlms])
st.markdown(f"{len(mlms)} bundled MLM(s) give {len(pairs)} pair(s). Each curve is the mean over pairs with a "
            "shaded ± standard-error band. Slow on CPU (about a minute per new pair): pick how many pairs.")
if len(pairs) == 0:
    st.info("The family needs at least two bundled MLMs; more are being built.")
else:
    c1, c2, c3 = st.columns(3)
    n_pairs = c1.number_input("Pairs", 1, len(pairs), min(3, len(pairs)), key="fam_pairs")
    fam_lambdas = c2.number_input("λ points", 3, 41, 11, step=2, key="fam_lambdas")
    choices = {o.label(): o for o in FIG4 + [run.options] if o.function_preserving or o == run.options}
    picked = c3.multiselect("Variants", list(choices), default=["vanilla", AlignOptions().label()], key="fam_opts")
    chosen_pairs = pairs[: int(n_pairs)]
    st.caption("Pairs: " + "; ".join(f"{short(a)} | {short(b)}" for a, b in chosen_pairs))
    base = Job(model_a="", model_b="", data=str(zoo.align_text()), eval_data=str(zoo.eval_text()),
               tokens=run.job.tokens, device=run.job.device, eval_blocks=run.job.eval_blocks)
    opts = [choices[p] for p in picked]
    keyf = job_key("family", base=base.to_dict(), pairs=chosen_pairs, options=[o.label() for o in opts],
                   lambdas=int(fam_lambdas))
    if st.button("Compute the family curves", key="fam_btn", disabled=not opts):
        started("family", keyf, family_work(base, chosen_pairs, opts, int(fam_lambdas)), "family")
    resf = section_result("family", "Family curves")
    if resf is not None:
        curves_df, bars_df = resf
        tabs = st.tabs(["loss", "pseudo-perplexity"])
        for tab, v in zip(tabs, ["loss", "pseudo_perplexity"]):
            with tab:
                st.plotly_chart(plots.band(band(curves_df, v), f"Family mean ± s.e.: {v.replace('_', '-')}",
                                           y_title=v.replace("_", "-")), width="stretch")
        st.dataframe(bars_df[["pair", "method", "barrier", "barrier_lambda", "function_preserving"]],
                     width="stretch", hide_index=True)

# --- classifiers ----------------------------------------------------------------------------------------
st.subheader("Fine-tuned classifiers per task (paper Fig. 8)")
st.markdown("Classifiers fine-tuned from different pre-training seeds, merged vanilla and with FF + Head-Perm + "
            "pooler, loss on the task's dev set. The curves can be **M-shaped**: lower loss than both endpoints "
            "near λ ≈ 0.15 and 0.85.")
task_pairs = {}
for task in zoo.list_tasks():
    paths = [e["path"] for e in zoo.list_checkpoints(kind="classifier", task=task)]
    if len(paths) >= 2:
        task_pairs[task] = family_pairs(paths)
if not task_pairs:
    st.info("No task has two bundled classifiers yet; they are being built.")
else:
    c1, c2, c3 = st.columns(3)
    picked_tasks = c1.multiselect("Tasks", list(task_pairs), default=list(task_pairs)[:1], key="cls_tasks")
    n_cls = c2.number_input("Pairs per task", 1, max(len(p) for p in task_pairs.values()), 1, key="cls_pairs")
    cls_lambdas = c3.number_input("λ points", 3, 41, 11, step=2, key="cls_lambdas")
    sel = {t: task_pairs[t][: int(n_cls)] for t in picked_tasks}
    cls_opts = [VANILLA, AlignOptions(ff=True, attention="head-perm", pooler=True)]
    keyc = job_key("tasks", tasks=sel, tokens=run.job.tokens, device=run.job.device, lambdas=int(cls_lambdas))
    if st.button("Compute the classifier curves", key="cls_btn", disabled=not sel):
        started("cls", keyc, tasks_work(sel, run.job.tokens, run.job.device, cls_opts, int(cls_lambdas), None),
                "classifier curves")
    resc = section_result("cls", "Classifier curves")
    if resc is not None:
        curves_df, bars_df = resc
        view = st.radio("View", ["loss", "accuracy"], horizontal=True, key="cls_view")
        for task in dict.fromkeys(curves_df["task"]):
            sub = curves_df[curves_df["task"] == task]
            if view not in sub or not sub[view].notna().any():
                st.caption(f"{task}: no {view} (regression task).")
                continue
            st.plotly_chart(plots.band(band(sub, view), f"{task}: {view} (mean ± s.e. over pairs)", y_title=view),
                            width="stretch")
        st.dataframe(bars_df[["task", "pair", "method", "barrier", "barrier_lambda"]], width="stretch",
                     hide_index=True)
