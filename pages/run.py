"""Pick two checkpoints, data and alignment options; run the alignment and see the barrier."""
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard.state import (ATTENTION_LABELS, FORM_STATE, PENDING_STATE, RUN_STATE, Run, about_caption,
                             config_summary, job_key, job_outcome, job_panel, job_result, jobs, name, name_md, pair_check,
                             pair_facts, pair_title, registry, residual_labels, settle_pending)
from dashboard.deadline import within_deadline
from dashboard.figures import fig_name, show_figure
from dashboard.hubpick import KNOWN, downloads_switch, known
from dashboard import estimate as job_estimate
from dashboard.text import md
from permerge import plots, work, zoo
from permerge.align import AlignOptions
from permerge.pipeline import Job
from permerge.study import barriers_frame, curves_frame

st.title("Pick and run")
st.markdown(
    "Choose two checkpoints **A** (reference) and **B** (to be permuted into A's basis, giving **B′**), the "
    "data their activations are compared on, and which parts to align. The run collects correlation "
    "statistics, solves the permutations, and evaluates the merged model θ(λ) = λ·A + (1−λ)·B′ along λ. "
    "The **loss barrier** is the highest loss on that path above the mean of the two endpoints: lower is better.")
top = st.container()  # the progress of a running job shows here, where the reader is looking

ss = st.session_state
qp = st.query_params  # defaults can come from the address (?tokens=2048&lambdas=5&eval_blocks=8&device=cpu)


def q_int(key: str, default: int, lo: int, hi: int) -> int:
    try:
        return min(max(int(qp.get(key, default)), lo), hi)
    except ValueError:
        return default


# The form's widgets have keys; their values are kept in FORM_STATE while other pages are shown, so
# that coming back shows the settings of the current run (not the defaults).
current = ss.get(RUN_STATE)
for k, v in (ss.get(FORM_STATE) or (current.form if current is not None else {})).items():
    if k not in ss:
        ss[k] = v

bundled = zoo.list_checkpoints()
names = [e["name"] for e in bundled]
by_name = {e["name"]: e for e in bundled}


def pick_model(side: str, default: str) -> str | None:
    ss.setdefault(f"src_{side}", "bundled family" if names else "local folder or hub id")
    src = st.radio(f"Model {side}", ["bundled family", "local folder or hub id", KNOWN], horizontal=True,
                   key=f"src_{side}")
    if src == KNOWN:
        return known(side)
    if src == "bundled family" and names:
        ss.setdefault(f"bundled_{side}", default if default in names else names[min(len(names) - 1, side == "B")])
        pick = st.selectbox(f"{side}: bundled checkpoint", names, key=f"bundled_{side}",
                            help="Small BERTs trained by permerge.zoo.")
        return by_name[pick]["path"]
    if src == "bundled family":
        st.warning("No bundled checkpoints found; give a folder or hub id.")
    value = st.text_input(f"{side}: folder or hub id", key=f"path_{side}",
                          placeholder="/path/to/checkpoint, google/multiberts-seed_1 or NAME@REVISION")
    return value.strip() or None


downloads_switch()
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
    shown = {f"{side}: {name(src)}": {k: (f"{v:,}" if isinstance(v, int) else str(v))
                                       for k, v in summaries[side].items() if v is not None}
             for side, src in (("A", model_a), ("B", model_b)) if side in summaries}
    st.dataframe(pd.DataFrame(shown), width="stretch")
reason = pair_check(model_a, model_b) if len(summaries) == 2 else None
if problems:
    for p in problems:
        st.error(md(p))
elif reason:
    st.error(f"Not compatible: {md(reason)}")
else:
    st.success("Compatible: same architecture and shapes.")
if model_a and model_a == model_b:
    st.warning("A and B are the same checkpoint: the barrier will be zero.")

heads = {s.get("head") for s in summaries.values()}
is_classifier = heads == {"classifier"}
# The labels below follow the pair's family: its spec, built from A's config (no weights read).
facts = pair_facts(model_a) if "A" in summaries else None
family = facts["family"] if facts else None
evaluation = facts["evaluation"] if facts else None
loss_name = {"mlm": "Masked-LM", "causal-lm": "Causal-LM"}.get(evaluation)
has_pooler = bool(facts and facts["pooler"]) and is_classifier

# --- data --------------------------------------------------------------------------------------------
EVAL_CHOICES = ["bundled evaluation text", "a text file", "the tail of the alignment data"]


def pick_eval_text(data_kind: str, data: str | None) -> str | None:
    """The evaluation text of a language-model pair, as the command line's --eval-data: the bundled
    evaluation text, a file, or (None) the last evaluation blocks of the alignment data, held out."""
    if ss.get("_eval_for") != data_kind:  # a new kind of data: its natural evaluation text
        ss["eval_kind"] = EVAL_CHOICES[0] if data_kind == "bundled alignment text" else EVAL_CHOICES[2]
        ss["_eval_for"] = data_kind
    kind = st.radio("Evaluation text", EVAL_CHOICES, horizontal=True, key="eval_kind",
                    help="Where the " + ("next-token" if evaluation == "causal-lm" else "masked-LM") + " loss along λ "
                         "is measured. The tail of the alignment data is held out: never used for alignment.")
    what = "next-token loss" if evaluation == "causal-lm" else "masked-LM loss (fixed masks)"
    if kind == EVAL_CHOICES[0]:
        st.caption(f"The {what} is measured on the held-out English text bundled with permerge "
                   f"({md(work.data_label(str(zoo.eval_text())))}).")
        return str(zoo.eval_text())
    if kind == EVAL_CHOICES[1]:
        path = st.text_input("Evaluation text file", placeholder="/path/to/eval.txt", key="eval_path").strip()
        if path:
            st.caption(f"The {what} is measured on {md(work.data_label(path))}.")
        return path or None
    st.caption(f"The {what} is measured on the last evaluation blocks of "
               f"{md(work.data_label(data)) if data else 'the alignment data'}, held out from the alignment.")
    return None


st.subheader("Data")
tasks = zoo.list_tasks()
task_of_a = next((e.get("task") for e in bundled if e["path"] == model_a), None)
data_choices = ["bundled alignment text", "text file", "GLUE-format task folder"]
if ss.get("_form_head") != is_classifier:  # a new kind of pair: its natural data
    ss["data_kind"] = data_choices[2] if is_classifier else data_choices[0]
    if task_of_a in tasks:
        ss["task"] = task_of_a
    ss["_form_head"] = is_classifier
data_kind = st.radio("Alignment data", data_choices, horizontal=True, key="data_kind",
                     help="Alignment needs text only; a classifier's loss curve needs labels (a task folder's dev.tsv).")
eval_data = None
task_choices = tasks + ["other folder…"]
if data_kind == "bundled alignment text":
    data = str(zoo.align_text())
elif data_kind == "text file":
    data = st.text_input("Text file path", placeholder="/path/to/text.txt", key="data_path").strip()
if data_kind != "GLUE-format task folder" and not is_classifier:  # where the language-model loss is measured
    eval_data = pick_eval_text(data_kind, data)
elif data_kind == "GLUE-format task folder":
    ss.setdefault("task", task_of_a if task_of_a in tasks else task_choices[0])
    t = st.selectbox("Task", task_choices, key="task")
    data = str(zoo.task_dir(t)) if t in tasks else st.text_input("Task folder", placeholder="/path/to/task",
                                                                  key="task_path").strip()
if is_classifier and data_kind != "GLUE-format task folder":
    ss.setdefault("eval_task", "none (align only)")
    et = st.selectbox("Evaluate the classifiers on (labels)", ["none (align only)"] + task_choices, key="eval_task",
                      help="The permutations and the B′ check need no labels; the loss curve needs a task's dev.tsv.")
    if et in tasks:
        eval_data = str(zoo.task_dir(et))
    elif et == "other folder…":
        eval_data = st.text_input("Evaluation task folder", placeholder="/path/to/task", key="eval_task_path").strip() or None

# --- options -----------------------------------------------------------------------------------------
st.subheader("What to align")
for k, v in (("ff", True), ("attention", "head-perm"), ("residual", "identity"), ("tokens", q_int("tokens", 16384, 256, 10_000_000)),
             ("lambdas", q_int("lambdas", 21, 3, 101)), ("eval_blocks", q_int("eval_blocks", 64, 1, 4096)),
             ("device", qp.get("device") if qp.get("device") in ("auto", "cpu", "cuda") else "auto"),
             ("eval_examples", 0), ("exclude_special", False), ("precision", "auto")):
    ss.setdefault(k, v)
ss["pooler"] = ss.get("pooler", has_pooler) and has_pooler
c1, c2, c3 = st.columns(3)
with c1:
    ff = st.checkbox("Feed-forward layers (FF)", key="ff")
    pooler = st.checkbox("Pooler (classifiers)", key="pooler", disabled=not has_pooler,
                         help="Permute the pooler's units and the classifier's columns; classifiers only.")
    if is_classifier and facts and not has_pooler:
        st.caption(f"{family} classifiers have no pooler: their head reads the last residual point, "
                   "which the residual options align.")
with c2:
    attention = st.selectbox("Attention", list(ATTENTION_LABELS), format_func=ATTENTION_LABELS.get, key="attention")
with c3:
    res_labels = residual_labels(facts)
    residual = st.selectbox("Residual stream", list(res_labels), format_func=res_labels.get, key="residual")
ss.setdefault("matcher", "activation")
matcher = st.radio("Matcher", ["activation", "weight"], horizontal=True, key="matcher",
                   format_func={"activation": "activation matching (correlations over the data)",
                                "weight": "weight matching (the weights alone, no statistics)"}.get,
                   help="Weight matching (Git Re-Basin) finds the permutations from the weights; the data is then "
                        "used for evaluation only. The page 'Activation vs weight matching' compares the two.")
options = AlignOptions(ff=ff, attention=attention, residual=residual, pooler=pooler and has_pooler, matcher=matcher)
if not options.function_preserving:
    st.warning("⚠ **Not function-preserving**: with "
               + " and ".join(x for x, bad in (("Ignore-Heads", attention == "ignore-heads"),
                                                 ("Separate", residual == "separate")) if bad)
               + ", B′ no longer computes what B computes (units cross a head or a residual boundary). The "
                 "barrier is still measured against the ORIGINAL B's loss, as in the paper.")

c1, c2, c3 = st.columns(3)
with c1:
    tokens = st.number_input("Alignment tokens", min_value=256, max_value=10_000_000, step=1024, key="tokens",
                             help="Upper bound on the tokens of statistics collected (fewer if the data is shorter).")
with c2:
    lambdas = st.number_input("λ points", min_value=3, max_value=101, step=2, key="lambdas",
                              help="Points of the interpolation grid, 0 and 1 included (the paper uses 21).")
with c3:
    device = st.selectbox("Device", ["auto", "cpu", "cuda"], key="device", help="auto: a CUDA GPU when there is one.")
with st.expander("Advanced"):
    eval_blocks = st.number_input(
        f"{loss_name or 'Language-model'} evaluation blocks (128 tokens each)", min_value=1,
        max_value=4096, key="eval_blocks",
        help={"mlm": "64, as the command line: about 1,200 masked tokens.",
              "causal-lm": "64, as the command line: every token after the first of each block is scored."}.get(
            evaluation, "Used by masked-LM and causal-LM pairs; this pair is not evaluated on text blocks."))
    eval_examples = st.number_input("Classifier dev examples (0 = all)", min_value=0, key="eval_examples")
    specials = facts["specials"] if facts else True
    if not specials:
        ss["exclude_special"] = False
    shown = facts.get("special_tokens") if facts else None
    exclude_special = st.checkbox(
        f"Exclude the special tokens ({shown}) from the statistics" if shown else
        "Exclude the tokenizer's special tokens from the statistics", key="exclude_special", disabled=not specials)
    if not specials:
        st.caption(f"{family} text blocks are plain token runs: there are no special tokens to exclude.")
    precision = st.selectbox(
        "Statistics-pass precision", ["auto", "fp32", "fp16", "bf16"], key="precision",
        help="Precision of the two models' forward passes while statistics are collected (the products and sums "
             "stay float32/float64), and of the evaluation along lambda (losses in float32). auto: fp16 on a GPU, "
             "fp32 on the CPU. bf16 is faster on some GPUs but its "
             "correlations are measurably less exact (see bench/README.md).")

ss[FORM_STATE] = {k: ss[k] for k in list(ss.keys()) if isinstance(k, str) and k in (
    "src_A", "src_B", "bundled_A", "bundled_B", "path_A", "path_B", "data_kind", "data_path", "task", "task_path",
    "eval_task", "eval_task_path", "ff", "pooler", "attention", "residual", "tokens", "lambdas", "device",
    "eval_blocks", "eval_examples", "exclude_special", "precision", "_form_head", "matcher")}

ss[FORM_STATE].update({k: ss[k] for k in ("eval_kind", "eval_path", "_eval_for") if k in ss})
ss[FORM_STATE].update({k: ss[k] for k in list(ss.keys()) if isinstance(k, str) and k.startswith("known_")})

data_problem = None
for what, path in (("data", data), ("evaluation data", eval_data)):
    if path and not Path(path).expanduser().exists():
        data_problem = f"{what} not found: {path}"
if not data_problem and data and data_kind == "GLUE-format task folder" and not (Path(data).expanduser() / "dev.tsv").is_file():
    data_problem = f"not a GLUE-format task folder (no dev.tsv): {data}"
elif not data_problem and data:  # regular files and folders only, nothing under /proc, /etc, ...
    from permerge.data import check_data_path
    from permerge.errors import PermergeError
    try:
        within_deadline(check_data_path, data, "the data path", what=f"the data path {data}")
        if eval_data:
            within_deadline(check_data_path, eval_data, "the evaluation data path", what=f"the path {eval_data}")
    except PermergeError as e:
        data_problem = str(e)
if not data_problem and not eval_data and not is_classifier and data_kind != "GLUE-format task folder" \
        and ss.get("eval_kind") == EVAL_CHOICES[1]:
    data_problem = "evaluation text file: give its path (or pick another evaluation text)"
if data_problem:
    st.error(md(data_problem))
ready = bool(model_a and model_b and data) and not problems and not reason and not data_problem
job = None
if ready:
    job = Job(model_a=model_a, model_b=model_b, data=data, eval_data=eval_data, tokens=int(tokens),
              precision=precision,
              device=device, eval_blocks=int(eval_blocks), eval_examples=int(eval_examples) or None,
              exclude_special=exclude_special)
key = job_key("pair", job=job.to_dict() if job else None, options=options.to_dict(), lambdas=int(lambdas))
job_estimate.show(job, options, int(lambdas))  # time and peak memory before Run; quick settings

pending = ss.get(PENDING_STATE)
running = pending is not None and jobs().get(pending.key) is not None and jobs().get(pending.key).active
if st.button("Run alignment", type="primary", disabled=not ready or running, icon=":material/play_arrow:",
             help="A run is going: wait for it or cancel it." if running else None):
    jobs().submit(key, work.pair_work(registry(), job, options, int(lambdas)), label=pair_title(job))
    ss[PENDING_STATE] = Run(job, options, int(lambdas), key, dict(ss[FORM_STATE]))
    st.rerun()  # drawn again with the Run button disabled while the run goes

# --- progress and result -------------------------------------------------------------------------------
pending = ss.get(PENDING_STATE)
if pending is not None:
    h = jobs().get(pending.key)
    if h is not None and h.active:
        job_panel(pending.key, f"Aligning {pair_title(pending.job)}", where=top)
    elif h is not None and h.state == "done":  # finished during this script run (app.py settles it before)
        settle_pending()  # the address names it now (?run=<id>)
        st.rerun()  # so that the sidebar, drawn before this page, shows the new run too
    else:
        with top:
            job_outcome(pending.key)
        del ss[PENDING_STATE]

run = ss.get(RUN_STATE)
if run is not None:
    h = jobs().get(run.key)
    if h is None or h.state != "done":  # e.g. after a server restart: recompute from the disk cache
        jobs().submit(run.key, work.pair_work(registry(), run.job, run.options, run.lambdas), label=pair_title(run.job))
    res = job_result(run.key, "Loading the result", where=top)
    if res is not None:
        st.divider()
        st.subheader("Result: " + pair_title(run.job))
        st.markdown(f"A: {name_md(run.job.model_a)} &nbsp; B: {name_md(run.job.model_b)}", unsafe_allow_html=True)
        if run.key != key:
            st.caption("Shown: the last finished run. The settings above differ from it; press Run to use them.")
        van, al, chk = res["vanilla"], res["aligned"], res["check"]
        if van is not None:
            m1, m2, m3 = st.columns(3)
            se = (lambda c: f" ± {c.barrier_se:.4f}" if getattr(c, "barrier_se", None) is not None else "")
            m1.metric("Barrier, vanilla averaging", f"{van.barrier:.4f}{se(van)}",
                      help=f"at λ = {van.barrier_lambda:.2f}; ± one standard error over the {van.items or 0:,} "
                           "scored tokens or examples")
            m2.metric(f"Barrier, {al.method}", f"{al.barrier:.4f}{se(al)}", delta=f"{al.barrier - van.barrier:+.4f}",
                      delta_color="inverse", help=f"at λ = {al.barrier_lambda:.2f}; ± one standard error")
        else:
            m3 = st.columns(3)[2]
            st.info("No evaluation data with labels was given: the permutations and the B′ check are computed, "
                    "the loss curve is not. Pick a task to evaluate on to see it.")
        m3.metric("Max |logit error| of B′ vs B", f"{chk['max_abs_logit_error']:.2e}",
                  help=f"float32, relative {chk['max_rel_logit_error']:.2e}; the same check in float64: "
                       f"{chk['max_rel_logit_error_float64']:.1e} relative")
        if run.options.function_preserving:
            ok = chk["equivalent"]
            (st.success if ok else st.error)(
                f"B′ computes B's function: in float64 the logits agree to {chk['max_rel_logit_error_float64']:.1e} "
                f"relative (float32 rounding alone gives {chk['max_rel_logit_error']:.1e})." if ok else
                f"B′ should compute B's function but does not (float64 relative error "
                f"{chk['max_rel_logit_error_float64']:.1e}, above {chk['equivalence_tolerance']:.0e}): please report this.")
        else:
            st.warning("Not function-preserving: the logit error above is expected to be large.")
        if van is not None:
            results = [van, al] if al is not van else [van]
            df, bars = curves_frame(results), barriers_frame(results)
            value_col = next(c for c in ("pseudo_perplexity", "perplexity", "accuracy") if c in df)
            t1, t2 = st.tabs(["loss", value_col.replace("_", "-")])
            with t1:
                show_figure(plots.curves(df, "loss", bars, title="Loss along λ"), fig_name(run, "curves", "loss"), df)
            with t2:
                show_figure(plots.curves(df, value_col, title=f"{value_col.replace('_', '-')} along λ",
                                         log_y=value_col.endswith("perplexity")), fig_name(run, "curves", value_col), df)
        st.caption((f"{res['tokens']:,} tokens of statistics ({res['sentences']:,} sequences)" if res["tokens"] else
                    "Weight matching: no statistics") + f" on {res['device']}. "
                   "λ = 0 is B′ (B permuted), λ = 1 is A. Dashed lines are not function-preserving. "
                   "Other pages show this run in detail.")
        about_caption(res["about"])
elif pending is None:
    st.info("Press **Run alignment** to start. The first run of a pair makes one pass over the alignment data; "
            "its progress and the time left (measured as it goes) show at the top of this page. Variants that "
            "reuse the statistics are much faster.")
