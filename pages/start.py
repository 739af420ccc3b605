"""Start here: what a loss barrier is, what alignment changes, what the paper found, what this pair shows."""
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import streamlit as st

from permerge import plots, runs, tour, verdicts
from permerge.study import TABLE2, barriers_frame, curves_frame, table_label
from dashboard import presenter
from dashboard.state import about_caption, current_run, job_key, jobs, pair_title, section_result, start
from dashboard.figures import fig_name, show_figure
from dashboard.text import md

FIGURE_DIR = Path(__file__).resolve().parents[1] / "docs" / "figures"

st.title("Start here")
st.markdown(
    "**Merging two transformers.** Take two transformer models **A** and **B** (BERTs, say) trained the same way but from different random starts. Average their "
    "weights, θ(λ) = λ·A + (1−λ)·B, and measure the loss as λ goes from 0 (B) to 1 (A). The loss usually rises "
    "in the middle: the **loss barrier** is how far the worst point of that path lies above the mean of the two "
    "ends, max over λ of L(θ(λ)) − (L(A) + L(B)) / 2. A barrier near zero means the two models sit in one "
    "connected valley of the loss landscape, and averaging them works.")


def figure_data():
    """The current run if it has finished, else the bundled measurement (and a label saying which)."""
    run = current_run()
    h = jobs().get(run.key) if run is not None else None
    if h is not None and h.state == "done" and isinstance(h.result, dict) and h.result.get("vanilla") is not None:
        van, al = h.result["vanilla"], h.result["aligned"]
        results = [van] if al is van else [van, al]
        tokens = (f"{h.result['tokens']:,} alignment tokens" if h.result["tokens"]  # as used, not the bound asked for
                  else "weight matching (no alignment data)")
        label = f"Measured on your current run: {pair_title(run.job)}, {tokens}, {run.lambdas} λ points."
        return curves_frame(results), barriers_frame(results), label, True
    curve = FIGURE_DIR / "default-pair-curve.csv"
    bars = FIGURE_DIR / "default-pair-barrier.json"
    if not (curve.is_file() and bars.is_file()):
        return None, None, "", False
    meta = json.loads(bars.read_text())
    bdf = pd.DataFrame([{"method": m, "barrier": v["barrier"], "barrier_lambda": v["lambda"], "loss_a": v["loss_a"],
                         "loss_b": v["loss_b"], "function_preserving": v["function_preserving"]}
                        for m, v in meta.items()])
    df = pd.read_csv(curve).merge(bdf[["method", "function_preserving"]], on="method")
    label = ("Not your run: measured on the bundled pair mlm-seed1 (A) vs mlm-seed2 (B) with the command in "
             "docs/method.md (16,384 alignment tokens, 21 λ points, 64 held-out blocks). Run an alignment "
             "and this picture shows your pair.")
    return df, bdf, label, False


df, bdf, label, mine = figure_data()
if df is not None:
    show_figure(plots.curves(df, "loss", bdf, title="Loss along the straight path from B (λ = 0) to A (λ = 1)",
                             y_title="dev-set loss (classifier)" if "accuracy" in df.columns else "MLM loss (nats)"),
                fig_name(current_run() if mine else None, "loss-along-lambda", "" if mine else "bundled-pair"), df)
    st.caption(label + " Each vertical bar is a barrier: from the dotted endpoint mean up to the top of its curve.")

st.subheader("What alignment changes")
st.markdown(
    "Inside a layer, the order of the hidden units is arbitrary: list B's units in another order (moving the "
    "rows that compute them and the columns that read them) and B computes exactly the same function. Two models "
    "from different starts learn similar units in different orders, so plain averaging (**vanilla**) mixes unit "
    "*i* of A with an unrelated unit *i* of B. **Alignment** first renames B's units to match A's: it runs both "
    "models on the same text, correlates every unit of A with every unit of B, and picks the one-to-one "
    "matching with the highest total correlation. The renamed model **B′** still computes B, but now averaging "
    "it with A combines like with like, and the barrier drops. Attention needs care: a head's units must stay "
    "together, so the best variant (**Head-Perm**) first matches units inside every pair of heads and then "
    "matches the heads.")

st.subheader("What the paper found")
st.markdown(
    "Verma & Elbayad (2024), *Merging Text Transformer Models from Different Initializations*, on ten "
    "MultiBERTs (12 layers, width 768):\n"
    "* Aligning the feed-forward and attention layers lowers the barrier. Among the attention variants "
    "(their Table 1, feed-forward layers aligned in every row) the barrier falls in the order **Vanilla averaging > Monotonic > Ignore-Heads > Head-Perm**: "
    "respecting heads *and* letting them change places works best.\n"
    "* The paper reported that permuting the **residual stream** raised the barrier (their Table 2): one "
    "permutation must then serve every layer's input and output, and its First, Last and All variants all gave "
    "higher barriers than leaving the stream alone (Identity). What a pair of your own shows can differ; see "
    "below.\n"
    "* Between classifiers fine-tuned on GLUE tasks the barriers are smaller, and some curves are "
    "**M-shaped**: points near λ ≈ 0.15 and 0.85 have *lower* loss than either model.")

st.subheader("What this pair shows")
if df is None:
    st.info("Run an alignment on **Pick and run** to see your pair here.")
else:
    b = bdf.set_index("method")["barrier"]
    van = float(b.get("vanilla", float("nan")))
    others = [m for m in b.index if m != "vanilla"]
    who = "Your pair" if mine else "The bundled pair"
    if others:
        m = others[0]
        se = bdf.set_index("method")["barrier_se"] if "barrier_se" in bdf else {}
        c = verdicts.change(van, float(b[m]), se.get("vanilla"), se.get(m))
        st.markdown(f"{who}: vanilla averaging has a barrier of **{van:.3f}** nats; after alignment "
                    f"({m}) it is **{c['text']}**: {verdicts.sentence(c, 'alignment')}"
                    + (" The bundled models are small and briefly trained, so their numbers are far from the "
                       "paper's; the shapes are what to compare." if not mine else ""))
        presenter.tell("Start here", tour.barriers(van, float(b[m]), md(m), se.get("vanilla"), se.get(m)))
    else:
        st.markdown(f"{who}: vanilla averaging has a barrier of **{van:.3f}** nats (this run aligned nothing).")
        presenter.tell("Start here", tour.barriers(van, None, ""))

st.subheader("The residual stream: the paper and this pair")
RESIDUAL_VARIANTS = [o for o in TABLE2 if o.function_preserving]  # Identity, First, Last, All
st.markdown(
    "**What the paper reported** (Table 2, residual stream permuted alone): First, Last and All each gave a "
    "higher barrier than Identity.  \n"
    "**Why a pair here can differ:** the paper's public code permutes the residual stream without the MLM "
    "head's transform (a dense layer and a LayerNorm that read the stream before the vocabulary), so its B′ "
    "no longer computes B: its logits differ from B's, and that error adds to the barrier it measures for "
    "every residual variant. permerge permutes the transform too (docs/method.md, *the MLM head's transform*), "
    "so B′ computes B and only the alignment itself is measured. Small, briefly trained models and other "
    "data can differ from the paper's twelve-layer BERTs as well.")
run = current_run()
if run is None or not mine:
    st.markdown("**What this pair shows:** run an alignment, then measure Table 2's residual variants on your "
                "pair here (or on several pairs on **Methods**).")
else:
    opts = list(RESIDUAL_VARIANTS)
    own = run.options.residual != "identity" and run.options not in RESIDUAL_VARIANTS
    if own:  # the run's own options with and without the residual permutation
        opts += [replace(run.options, residual="identity"), run.options]
    key = job_key("start_residual", job=run.job.to_dict(), options=[o.label() for o in opts], lambdas=run.lambdas)
    if st.button("Measure the residual variants on this pair", key="start_residual_btn",
                 help="Identity, First, Last and All (residual stream only, as in Table 2), and this run's own "
                      "options without the residual permutation when it has one; from this run's statistics."):
        start("start_residual", run, key, runs.recipe("curves_work", job=run.job, options=opts, lambdas=run.lambdas),
              "residual variants", runs.depends(run.job, run.options if own else None, run.lambdas))
    found = section_result("start_residual", run, "Residual variants on this pair")
    if found is None:
        st.markdown("**What this pair shows:** not measured yet; the button above computes it.")
    else:
        bars = {c.method: c.barrier for c in found["curves"]}
        ses = {c.method: c.barrier_se for c in found["curves"]}
        rows = verdicts.residual_rows(bars, RESIDUAL_VARIANTS[0].label(),
                                      {o.label(): table_label(o) for o in RESIDUAL_VARIANTS[1:]}, ses)
        summary = verdicts.residual_summary(rows)
        st.markdown(f"**What this pair shows** (barrier against Identity, {bars[RESIDUAL_VARIANTS[0].label()]:.3f}): "
                    f"{summary['sentence']}. This {summary['paper']}.")
        if own:
            c = verdicts.change(bars[opts[-2].label()], bars[run.options.label()], ses.get(opts[-2].label()),
                                ses.get(run.options.label()))
            st.markdown(f"This run's options with the residual permutation ({run.options.label()}) against the same "
                        f"options without it ({opts[-2].label()}): {c['text']}; the residual permutation "
                        f"{c['verdict']} here.")
        st.caption("A change under 1 % of the barrier it is compared with counts as no clear difference; "
                   "\"within one standard error\" marks a change that may be noise of the evaluation text.")
        about_caption(found["about"])

st.subheader("Where to look next")
c1, c2 = st.columns(2)
with c1:
    st.page_link("pages/run.py", label="Pick and run: choose two models and align them", icon=":material/play_arrow:")
    st.page_link("pages/permutation.py", label="See the permutation: what moves in the weights",
                 icon=":material/swap_vert:")
    st.page_link("pages/correlations.py", label="Correlations: the matched pairs on the diagonal",
                 icon=":material/grid_on:")
    st.page_link("pages/features.py", label="Feature correlation: every layer before and after",
                 icon=":material/show_chart:")
with c2:
    st.page_link("pages/interpolation.py", label="Interpolation: the curves, the paper's Fig. 4, classifiers",
                 icon=":material/timeline:")
    st.page_link("pages/methods.py", label="Methods: the paper's Tables 1 and 2 on a family of pairs",
                 icon=":material/table_chart:")
    st.page_link("pages/data_amount.py", label="Amount of data: how much text matching needs",
                 icon=":material/bar_chart:")
    st.page_link("pages/export.py", label="Export: save the merged model", icon=":material/save:")
