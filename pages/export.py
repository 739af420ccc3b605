"""Export the merged model, the permutations, the curves and the figures."""
from pathlib import Path

import streamlit as st

from permerge import plots
from permerge.align import VANILLA
from permerge.cache import default_dir
from permerge.checkpoints import save_model
from permerge.errors import PermergeError
from permerge.outputs import check_out, staged
from permerge.study import barriers_frame, curve_table, curves_frame

from dashboard.state import (default_export_dir, job_key, job_outcome, job_panel, jobs, merged_model,
                             permutations_bytes, require_run, short)

st.title("Export")
st.markdown(
    "Keep what this run produced: the **merged model** θ(λ) = λ·A + (1−λ)·B′ as a Hugging Face checkpoint "
    "folder, the **permutations** (one int64 index vector per group: unit *i* of B′ is unit `perm[i]` of B), "
    "the **curves** as CSV, and the **figures**.")
run = require_run("the export")
pipe = run.pipe
name = f"{short(run.job.model_a)}__{short(run.job.model_b)}"

st.subheader("Merged model")
lam = st.slider("λ (0 = B′, 1 = A)", 0.0, 1.0, 0.5, 0.05)
default_out = default_export_dir(run, lam)
exports_root = Path(default_out).parent
out = st.text_input("Folder to write", value=default_out,
                    help=f"A new folder (a relative path is taken under {exports_root}); written with "
                         "save_pretrained (safetensors) plus the tokenizer, atomically. The same rules as the "
                         "command line's --out: never a folder holding the checkpoints, the data or the cache.")
replace = st.checkbox("Replace an earlier export in that folder", value=False,
                      help="Only a folder that permerge itself wrote (it holds a .permerge-output file) is replaced.")
if not run.options.function_preserving:
    st.warning("This run's options are not function-preserving: B′ is not B, so the merge mixes A with a "
               "different model.")


def _check(target: Path, overwrite: bool) -> Path:
    """The command line's --out rules (permerge.outputs.check_out), with this run's inputs."""
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
    target = typed if typed.is_absolute() else exports_root / typed
    try:  # the same checks as --out, before any work
        target = _check(target, replace)
    except PermergeError as e:
        st.error(f"Cannot export there: {e}")
    else:
        key = job_key("export", run=run.key, lam=lam, target=str(target), replace=replace)
        h = jobs().get(key)
        if h is not None and not h.active:
            jobs().forget(key)  # a new click is a new export
        jobs().submit(key, _export_work(run, lam, target, replace), label="export")
        st.session_state["export_key"] = key
export_key = st.session_state.get("export_key")
if export_key:
    job_panel(export_key, "Exporting")
    saved = job_outcome(export_key)
    if saved:
        st.success(f"Saved to {saved}")

st.subheader("Permutations and curves")
c1, c2 = st.columns(2)
with c1:
    st.download_button("Permutations (.safetensors)", permutations_bytes(run), file_name=f"{name}__permutations.safetensors",
                       mime="application/octet-stream", help="Load with safetensors.torch.load_file.")
results = [pipe.curve(VANILLA, run.lambdas)] + ([pipe.curve(run.options, run.lambdas)] if run.options != VANILLA else [])
with c2:
    st.download_button("Curves (.csv)", curve_table(results).to_csv(index=False).encode(), file_name=f"{name}__curves.csv",
                       mime="text/csv")

st.subheader("Figures")
df, bars = curves_frame(results), barriers_frame(results)
fig = plots.curves(df, "loss", bars, title=f"Loss along λ: {short(run.job.model_a)} vs {short(run.job.model_b)}")
st.plotly_chart(fig, width="stretch")
c1, c2 = st.columns(2)
with c1:
    st.download_button("Figure (.html, interactive, works offline)", plots.to_html(fig).encode(),
                       file_name=f"{name}__curves.html", mime="text/html")
png = None
if st.checkbox("Also offer PNG / SVG (rendered with kaleido, needs Chrome/Chromium)", value=False):
    with st.spinner("Rendering with kaleido …"):
        png = plots.to_image(fig, "png")
        svg = plots.to_image(fig, "svg") if png is not None else None
    with c2:
        if png is None:
            st.caption("PNG/SVG are not available: kaleido found no Chrome/Chromium to render with. The HTML file "
                       "has a camera button that saves a PNG from the browser.")
        else:
            st.download_button("Figure (.png)", png, file_name=f"{name}__curves.png", mime="image/png")
            st.download_button("Figure (.svg)", svg, file_name=f"{name}__curves.svg", mime="image/svg+xml")
st.caption("Offered: interactive HTML always; PNG and SVG when kaleido can render (tick the box). Every chart in "
           "the dashboard also has a camera button (top right, on hover) that downloads a PNG.")
