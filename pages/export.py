"""Export the merged model, the permutations, the curves and the figures."""
from pathlib import Path

import streamlit as st

from permerge import plots
from permerge.align import VANILLA
from permerge.cache import default_dir
from permerge.checkpoints import save_model
from permerge.errors import DataError, PermergeError
from permerge.outputs import check_out, staged
from permerge.study import barriers_frame, curve_table, curves_frame

from dashboard.state import (default_export_dir, exports_root, job_key, job_result, jobs, merged_model,
                             permutations_bytes, require_run, short)
from dashboard.figures import fig_name, lecture_pack_button, show_figure
from dashboard.text import md, plot_text

st.title("Export")
st.markdown(
    "Keep what this run produced: the **merged model** θ(λ) = λ·A + (1−λ)·B′ as a Hugging Face checkpoint "
    "folder, the **permutations** (one int64 index vector per group: unit *i* of B′ is unit `perm[i]` of B), "
    "the **curves** as CSV, and the **figures**.")
run = require_run("the export")
pipe = run.pipe
name = fig_name(run, "")

st.subheader("Lecture pack")
st.markdown("One HTML file of this run for a lecture: the curves and barriers, the B′ verdict, the paper's "
            "figures on this pair and its Tables 1 and 2 on the pairs chosen on Methods (those computed on their pages so "
            "far, each saying which pairs), captions, the settings and "
            "permerge's version. It opens in any browser without a network.")
lecture_pack_button(run)

st.subheader("Merged model")
lam = st.slider("λ (0 = B′, 1 = A)", 0.0, 1.0, 0.5, 0.05)
default_out = default_export_dir(run, lam)
root = exports_root()
out = st.text_input("Folder to write", value=default_out,
                    help=f"A new folder inside {md(root)} (a relative path is taken there); written with "
                         "save_pretrained (safetensors) plus the tokenizer, atomically. The same rules as the "
                         "command line's --out: never a folder holding the checkpoints, the data or the cache.")
replace = st.checkbox("Replace an earlier export in that folder", value=False,
                      help="Only a folder that permerge itself wrote (it holds a .permerge-output file) is replaced.")
if not run.options.function_preserving:
    st.warning("This run's options are not function-preserving: B′ is not B, so the merge mixes A with a "
               "different model.")


def _check(target: Path, overwrite: bool) -> Path:
    """The command line's --out rules (permerge.outputs.check_out), with this run's inputs; and the
    dashboard writes nowhere but inside the exports folder (a browser must not choose server paths)."""
    inside = target.expanduser().resolve()
    if inside == root or root not in inside.parents:
        raise PermergeError(f"{target} is not a new folder inside the exports folder {root}")
    job = run.job
    inputs = {"checkpoint A": job.model_a, "checkpoint B": job.model_b, "the data": job.data,
              "the evaluation data": job.eval_data}
    return check_out(target, overwrite, inputs=inputs, cache_dir=default_dir(), what="the export folder",
                     replace_hint="the Replace box")


def _export_work(run, lam: float, target: Path, overwrite: bool):
    def work(progress):
        progress("interpolating the merged model", 0, 2)
        model, tok = merged_model(run, lam)
        progress("saving the merged model", 1, 2)
        _check(target, overwrite)  # again: the folder may have appeared meanwhile
        with staged(target, overwrite) as tmp:
            save_model(model, tok, tmp)
        progress("saved", 2, 2)
        return str(target)
    return work


if st.button("Save merged model", type="primary"):
    typed = Path(out.strip()).expanduser() if out.strip() else Path(default_out)
    target = typed if typed.is_absolute() else root / typed
    try:  # the same checks as --out, before any work
        target = _check(target, replace)
    except PermergeError as e:
        st.session_state.pop("export_key", None)  # an earlier "Saved to" must not stand under a refusal
        st.error(f"Cannot export there: {md(e)}")
    else:
        key = job_key("export", run=run.key, lam=lam, target=str(target), replace=replace)
        h = jobs().get(key)
        if h is not None and not h.active:
            jobs().forget(key)  # a new click is a new export
        jobs().submit(key, _export_work(run, lam, target, replace), label="export")
        st.session_state["export_key"] = key
export_key = st.session_state.get("export_key")
if export_key:
    saved = job_result(export_key, "Exporting")
    if saved:
        st.success(f"Saved to {md(saved)}")

st.subheader("Permutations and curves")
c1, c2 = st.columns(2)
with c1:
    st.download_button("Permutations (.safetensors)", permutations_bytes(run), file_name=f"{name}__permutations.safetensors",
                       mime="application/octet-stream", help="Load with safetensors.torch.load_file.")
try:
    results = [pipe.curve(VANILLA, run.lambdas)] + ([pipe.curve(run.options, run.lambdas)] if run.options != VANILLA else [])
except DataError:  # e.g. a classifier pair aligned on unlabelled text: nothing to evaluate the curve on
    results = None
    st.info("This run has no evaluation data with labels, so it has no loss curve to export; the merged model "
            "and the permutations above are complete. Pick a task to evaluate on (Pick and run) for curves.")
if results is not None:
    with c2:
        st.download_button("Curves (.csv)", curve_table(results).to_csv(index=False).encode(),
                           file_name=f"{name}__curves.csv", mime="text/csv")

    st.subheader("Figures")
    df, bars = curves_frame(results), barriers_frame(results)
    fig = plots.curves(df, "loss", bars, title=plot_text(f"Loss along λ: {short(run.job.model_a)} vs "
                                                         f"{short(run.job.model_b)}"))
    show_figure(fig, fig_name(run, "curves", "loss"), df)
    st.download_button("Figure (.html, interactive, works offline)", plots.to_html(fig).encode(),
                       file_name=f"{fig_name(run, 'curves', 'loss')}.html", mime="text/html")
    st.caption("Offered: interactive HTML here; under every chart of the dashboard a Download menu with the chart "
               "as PNG or SVG (rendered on the server with kaleido, a few seconds the first time) and the data "
               "behind it as CSV.")
