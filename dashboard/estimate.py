"""The Pick page's estimate of the whole job (time and peak memory) before Run, and its quick
settings: Streamlit widgets around ``permerge.estimate``, which does the counting."""
from __future__ import annotations

import streamlit as st

from permerge.estimate import QUICK_TARGET_S, calibrate, duration, estimate, quick_settings, sizes_of

QUICK_KEYS = ("tokens", "lambdas", "eval_blocks")


@st.cache_data(show_spinner=False, max_entries=64, ttl=300)
def _sizes(source: str):
    return sizes_of(source)


@st.cache_resource(show_spinner=False, max_entries=16)
def _rates(hidden: int, intermediate: int, device: str):
    return calibrate(hidden, intermediate, device)


def _apply(values: dict) -> None:
    """on_click: runs before the page is drawn again, so the widgets take the new values."""
    for k in QUICK_KEYS:
        st.session_state[k] = int(values[k])


def show(job, options, lambdas: int) -> None:
    """The estimate of ``job`` with ``options`` and ``lambdas``, and a button for quick settings when
    the chosen ones take longer to the first complete curve than QUICK_TARGET_S."""
    if job is None or not job.model_a:
        return
    try:
        sizes = _sizes(job.model_a)
        device = job.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        rates = _rates(sizes.hidden, sizes.intermediate, "cuda" if device.startswith("cuda") else "cpu")
    except Exception as e:  # a checkpoint the page reports above; no estimate for it
        st.caption(f"No estimate for this pair ({type(e).__name__}).")
        return
    opts = {"aligned": options.aligns_anything, "attention": options.attention, "residual": options.residual,
            "ff": options.ff, "matcher": options.matcher}
    e = estimate(sizes, tokens=job.tokens or 16384, lambdas=int(lambdas), eval_blocks=job.eval_blocks, rates=rates,
                 **opts)
    where = f"{rates.device}, {rates.threads} thread{'s' if rates.threads != 1 else ''}"
    memory = "peak memory" if rates.device == "cpu" else "peak host memory as on a CPU run"
    st.info(f"**Estimated for these settings on this machine** ({where}): about {duration(e.seconds)} for the whole "
            f"job, the first complete curve after about {duration(e.first_curve_s)}; {memory} about "
            f"{e.peak_bytes / 1e9:.1f} GB (during the {e.peak_stage}). From the pair's sizes and a timed forward "
            "on this machine; other work on the machine makes it slower.")
    if e.first_curve_s is None or e.first_curve_s <= QUICK_TARGET_S:
        return
    q = quick_settings(sizes, rates, **opts)
    qe = q["estimate"]
    if all(int(q[k]) == int(v) for k, v in zip(QUICK_KEYS, (job.tokens, lambdas, job.eval_blocks))):
        return
    c1, c2 = st.columns([1, 3])
    c1.button("Quick settings", key="quick_settings", on_click=_apply, args=({k: q[k] for k in QUICK_KEYS},),
              icon=":material/bolt:", help=f"A first complete curve within {duration(QUICK_TARGET_S)} on this machine.")
    c2.caption(f"Quick settings: {q['tokens']:,} alignment tokens, {q['lambdas']} λ points, {q['eval_blocks']} "
               f"evaluation blocks: first complete curve after about {duration(qe.first_curve_s)}, the whole job "
               f"about {duration(qe.seconds)} (fewer tokens and points: a coarser, noisier curve).")
