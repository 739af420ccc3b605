"""Export the merged model, the permutations, the curves and the figures."""
from pathlib import Path

import streamlit as st

from permerge import plots
from permerge.align import VANILLA
from permerge.checkpoints import save_model
from permerge.errors import PermergeError
from permerge.study import curve_table
from permerge.study import barriers_frame, curves_frame
from dashboard.state import default_export_dir, merged_model, permutations_bytes, require_run, short

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
out = st.text_input("Folder to write", value=default_export_dir(run, lam),
                    help="Written with save_pretrained (safetensors) plus the tokenizer; the folder must not exist yet.")
if not run.options.function_preserving:
    st.warning("This run's options are not function-preserving: B′ is not B, so the merge mixes A with a "
               "different model.")
if st.button("Save merged model", type="primary"):
    target = Path(out).expanduser()
    if target.exists() and any(target.iterdir()):
        st.error(f"{target} exists and is not empty; choose another folder.")
    else:
        try:
            with st.spinner("Interpolating and saving …"):
                model, tok = merged_model(run, lam)
                save_model(model, tok, target)
            st.success(f"Saved to {target}")
        except (PermergeError, OSError) as e:
            st.error(f"Could not save: {e}")

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
