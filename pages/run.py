"""Pick two checkpoints, data and alignment options; run the alignment and see the barrier."""
from pathlib import Path

import pandas as pd
import streamlit as st

from permerge import plots, zoo
from permerge.align import AlignOptions
from permerge.pipeline import Job
from permerge.study import barriers_frame, curves_frame
from permerge.ui_state import (ATTENTION_LABELS, PENDING_STATE, RESIDUAL_LABELS, RUN_STATE, Run, config_summary,
                               job_key, job_outcome, job_panel, jobs, pair_check, pair_work, short)

st.title("Pick and run")
st.markdown(
    "Choose two checkpoints **A** (reference) and **B** (to be permuted into A's basis, giving **B′**), the "
    "data their activations are compared on, and which parts to align. The run collects correlation "
    "statistics, solves the permutations, and evaluates the merged model θ(λ) = λ·A + (1−λ)·B′ along λ. "
    "The **loss barrier** is the highest loss on that path above the mean of the two endpoints: lower is better.")

# Defaults can come from the address (e.g. ?tokens=2048&lambdas=5&eval_blocks=8&device=cpu): shareable links.
qp = st.query_params


def q_int(name: str, default: int, lo: int, hi: int) -> int:
    try:
        return min(max(int(qp.get(name, default)), lo), hi)
    except ValueError:
        return default


bundled = zoo.list_checkpoints()
names = [e["name"] for e in bundled]
by_name = {e["name"]: e for e in bundled}


def pick_model(side: str, default: str) -> str | None:
    src = st.radio(f"Model {side}", ["bundled family", "local folder or hub id"], horizontal=True,
                   key=f"src_{side}", index=0 if names else 1)
    if src == "bundled family" and names:
        idx = names.index(default) if default in names else min(len(names) - 1, 0 if side == "A" else 1)
        name = st.selectbox(f"{side}: bundled checkpoint", names, index=idx, key=f"bundled_{side}",
                            help="Small BERTs trained by permerge.zoo; more appear as the family is built.")
        return by_name[name]["path"]
    if src == "bundled family":
        st.warning("No bundled checkpoints found yet; give a folder or hub id.")
    value = st.text_input(f"{side}: folder or hub id", key=f"path_{side}",
                          placeholder="/path/to/checkpoint or google/multiberts-seed_1")
    return value.strip() or None


col_a, col_b = st.columns(2)
with col_a:
    model_a = pick_model("A", zoo.DEFAULT_PAIR[0])
with col_b:
    model_b = pick_model("B", zoo.DEFAULT_PAIR[1])

# --- summaries and compatibility (configs only: cheap) ---------------------------------------------
summaries, problems = {}, []
for side, src in (("A", model_a), ("B", model_b)):
    if not src:
        problems.append(f"model {side}: not chosen")
        continue
    try:
        summaries[side] = config_summary(src)
    except Exception as e:  # CheckpointError: a one-line message
        problems.append(f"model {side}: {e}")
if summaries:
    shown = {f"{side}: {short(src)}": {k: (f"{v:,}" if isinstance(v, int) else str(v))
                                        for k, v in summaries[side].items() if v is not None}
             for side, src in (("A", model_a), ("B", model_b)) if side in summaries}
    st.dataframe(pd.DataFrame(shown), width="stretch")
reason = pair_check(model_a, model_b) if len(summaries) == 2 else None
if problems:
    for p in problems:
        st.error(p)
elif reason:
    st.error(f"Not compatible: {reason}")
else:
    st.success("Compatible: same architecture and shapes.")
if model_a and model_a == model_b:
    st.warning("A and B are the same checkpoint: the barrier will be zero.")

is_classifier = bool(summaries) and all(s["architecture"] == "BertForSequenceClassification" for s in summaries.values())

# --- data --------------------------------------------------------------------------------------------
st.subheader("Data")
tasks = zoo.list_tasks()
task_of_a = next((e.get("task") for e in bundled if e["path"] == model_a), None)
data_choices = ["bundled alignment text", "text file", "GLUE-format task folder"]
data_kind = st.radio("Alignment data", data_choices, index=2 if is_classifier else 0, horizontal=True,
                     help="Classifier pairs need a task folder (train.tsv for alignment, dev.tsv for evaluation).")
eval_data = None
if data_kind == "bundled alignment text":
    data = str(zoo.align_text())
    eval_data = str(zoo.eval_text())
    st.caption("Held-out English text bundled with permerge; the MLM loss is measured on the bundled "
               "evaluation text with fixed masks.")
elif data_kind == "text file":
    data = st.text_input("Text file path", placeholder="/path/to/text.txt").strip()
    st.caption("The tail of the file is held out for evaluation.")
else:
    options_t = tasks + ["other folder…"]
    default_t = options_t.index(task_of_a) if task_of_a in tasks else 0
    t = st.selectbox("Task", options_t, index=default_t)
    data = str(zoo.task_dir(t)) if t in tasks else st.text_input("Task folder", placeholder="/path/to/task").strip()

# --- options -----------------------------------------------------------------------------------------
st.subheader("What to align")
c1, c2, c3 = st.columns(3)
with c1:
    ff = st.checkbox("Feed-forward layers (FF)", value=True)
    pooler = st.checkbox("Pooler (classifiers)", value=is_classifier, disabled=not is_classifier,
                         help="Permute the pooler's units and the classifier's columns; classifiers only.")
with c2:
    attention = st.selectbox("Attention", list(ATTENTION_LABELS), index=3, format_func=ATTENTION_LABELS.get)
with c3:
    residual = st.selectbox("Residual stream", list(RESIDUAL_LABELS), index=0, format_func=RESIDUAL_LABELS.get)
options = AlignOptions(ff=ff, attention=attention, residual=residual, pooler=pooler and is_classifier)
if not options.function_preserving:
    st.warning("⚠ **Not function-preserving**: with "
               + " and ".join(x for x, bad in (("Ignore-Heads", attention == "ignore-heads"),
                                                 ("Separate", residual == "separate")) if bad)
               + ", B′ no longer computes what B computes (units cross a head or a residual boundary). The "
                 "barrier is still measured against the ORIGINAL B's loss, as in the paper.")

c1, c2, c3 = st.columns(3)
with c1:
    tokens = st.number_input("Alignment tokens", min_value=256, max_value=10_000_000, value=q_int("tokens", 16384, 256, 10_000_000), step=1024,
                             help="Upper bound on the tokens of statistics collected (fewer if the data is shorter).")
with c2:
    lambdas = st.number_input("λ points", min_value=3, max_value=101, value=q_int("lambdas", 21, 3, 101), step=2,
                              help="Points of the interpolation grid, 0 and 1 included (the paper uses 21).")
with c3:
    devices = ["auto", "cpu", "cuda"]
    device = st.selectbox("Device", devices, index=devices.index(qp.get("device", "auto")) if qp.get("device") in devices
                          else 0, help="auto: a CUDA GPU when there is one.")
with st.expander("Advanced"):
    eval_blocks = st.number_input("MLM evaluation blocks (128 tokens each)", min_value=1, max_value=4096,
                                  value=q_int("eval_blocks", 16, 1, 4096))
    eval_examples = st.number_input("Classifier dev examples (0 = all)", min_value=0, value=0)
    exclude_special = st.checkbox("Exclude [CLS]/[SEP] from the statistics", value=False)

data_problem = None
if data and not Path(data).expanduser().exists():
    data_problem = f"data not found: {data}"
elif data and data_kind == "GLUE-format task folder" and not (Path(data).expanduser() / "dev.tsv").is_file():
    data_problem = f"not a GLUE-format task folder (no dev.tsv): {data}"
elif data:  # regular files and folders only, nothing under /proc, /etc, ...
    from permerge.data import check_data_path
    from permerge.errors import DataError
    try:
        check_data_path(data, "the data path")
    except DataError as e:
        data_problem = str(e)
if data_problem:
    st.error(data_problem)
ready = bool(model_a and model_b and data) and not problems and not reason and not data_problem
job = None
if ready:
    job = Job(model_a=model_a, model_b=model_b, data=data, eval_data=eval_data, tokens=int(tokens),
              device=device, eval_blocks=int(eval_blocks), eval_examples=int(eval_examples) or None,
              exclude_special=exclude_special)
key = job_key("pair", job=job.to_dict() if job else None, options=options.to_dict(), lambdas=int(lambdas))

if st.button("Run alignment", type="primary", disabled=not ready, icon=":material/play_arrow:"):
    jobs().submit(key, pair_work(job, options, int(lambdas)), label=f"{short(model_a)} vs {short(model_b)}")
    st.session_state[PENDING_STATE] = Run(job, options, int(lambdas), key)

# --- progress and result -------------------------------------------------------------------------------
pending = st.session_state.get(PENDING_STATE)
if pending is not None:
    h = jobs().get(pending.key)
    if h is not None and h.active:
        job_panel(pending.key, "Aligning")
    elif h is not None and h.state == "done":
        st.session_state[RUN_STATE] = pending
        del st.session_state[PENDING_STATE]
        st.rerun()  # so that the sidebar, drawn before this page, shows the new run too
    else:
        job_outcome(pending.key)
        del st.session_state[PENDING_STATE]

run = st.session_state.get(RUN_STATE)
if run is not None:
    h = jobs().get(run.key)
    if h is None or h.state != "done":  # e.g. after a server restart: recompute from the disk cache
        jobs().submit(run.key, pair_work(run.job, run.options, run.lambdas))
        job_panel(run.key, "Loading the result")
    res = job_outcome(run.key)
    if res is not None:
        st.divider()
        st.subheader(f"Result: {short(run.job.model_a)} (A) vs {short(run.job.model_b)} (B)")
        if run.key != key:
            st.caption("Shown: the last finished run. The settings above differ from it; press Run to use them.")
        van, al, chk = res["vanilla"], res["aligned"], res["check"]
        m1, m2, m3 = st.columns(3)
        m1.metric("Barrier, vanilla averaging", f"{van.barrier:.4f}", help=f"at λ = {van.barrier_lambda:.2f}")
        m2.metric(f"Barrier, {al.method}", f"{al.barrier:.4f}", delta=f"{al.barrier - van.barrier:+.4f}",
                  delta_color="inverse", help=f"at λ = {al.barrier_lambda:.2f}")
        m3.metric("Max |logit error| of B′ vs B", f"{chk['max_abs_logit_error']:.2e}",
                  help=f"relative {chk['max_rel_logit_error']:.2e}; float32 rounding is ~1e-6 relative")
        if run.options.function_preserving:
            ok = chk["max_rel_logit_error"] < 1e-5
            (st.success if ok else st.error)(
                "B′ computes B's function (relative error < 1e-5)." if ok else
                "B′ should compute B's function but does not: please report this.")
        else:
            st.warning("Not function-preserving: the logit error above is expected to be large.")
        df = curves_frame([van, al] if al is not van else [van])
        bars = barriers_frame([van, al] if al is not van else [van])
        value_col = "pseudo_perplexity" if "pseudo_perplexity" in df else "accuracy"
        t1, t2 = st.tabs(["loss", value_col.replace("_", "-")])
        with t1:
            st.plotly_chart(plots.curves(df, "loss", bars, title="Loss along λ"), width="stretch")
        with t2:
            st.plotly_chart(plots.curves(df, value_col, title=f"{value_col.replace('_', '-')} along λ",
                                         log_y=value_col == "pseudo_perplexity"), width="stretch")
        st.caption(f"{res['tokens']:,} tokens of statistics ({res['sentences']:,} sequences) on {res['device']}. "
                   "λ = 0 is B′ (B permuted), λ = 1 is A. Dashed lines are not function-preserving. "
                   "Other pages show this run in detail.")
elif pending is None:
    st.info("Press **Run alignment** to start. The default pair on CPU takes about a minute; later visits "
            "and variants that reuse the statistics are much faster.")
