"""Small Streamlit helpers shared by the dashboard pages: the per-process registry and job manager,
the run stored in the session, background work wrappers, and the progress panel.  No math here:
the work functions only call into the library in the order a page needs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from . import zoo
from .align import VANILLA, AlignOptions
from .cache import ResultCache
from .jobs import JobManager
from .pipeline import Job
from .study import PipelineRegistry

RUN_PAGE = "pages/run.py"
RUN_STATE = "run"  # session_state key of the finished run shown by every page
PENDING_STATE = "pending_run"

ATTENTION_LABELS = {"vanilla": "vanilla (plain average)", "monotonic": "monotonic (head j ↔ head j)",
                    "ignore-heads": "ignore-heads ⚠ NOT function-preserving", "head-perm": "head-perm (paper's best)"}
RESIDUAL_LABELS = {"identity": "identity (no residual permutation)", "first": "first (embedding LayerNorm)",
                   "last": "last (final layer output)", "all": "all (pooled over 2L+1 points)",
                   "separate": "separate ⚠ NOT function-preserving"}


@st.cache_resource(show_spinner=False)
def registry() -> PipelineRegistry:
    """One pipeline registry (and disk cache) per server process."""
    return PipelineRegistry(ResultCache())


@st.cache_resource(show_spinner=False)
def jobs() -> JobManager:
    return JobManager()


@dataclass(frozen=True)
class Run:
    """What a finished run on the run page leaves in the session for the other pages."""
    job: Job
    options: AlignOptions
    lambdas: int
    key: str

    @property
    def pipe(self):
        return registry().get(self.job)


def job_key(kind: str, **parts) -> str:
    return kind + ":" + json.dumps(parts, sort_keys=True, default=str)


def current_run() -> Run | None:
    return st.session_state.get(RUN_STATE)


def require_run(what: str = "this page") -> Run:
    """The session's run, or a friendly note with a link to the run page (and the page stops)."""
    run = current_run()
    if run is None:
        st.info(f"No alignment yet: run an alignment first, then come back to {what}.", icon=":material/info:")
        st.page_link(RUN_PAGE, label="Go to Pick and run", icon=":material/play_arrow:")
        st.stop()
    return run


def short(path: str) -> str:
    return str(path).rstrip("/").split("/")[-1]


# --- model summaries from configs (cheap: no weights) ----------------------------------------------

@st.cache_data(show_spinner=False, max_entries=64, ttl=60)
def config_summary(source: str) -> dict:
    """Layers, heads, widths and parameter count from a checkpoint's config alone."""
    from .checkpoints import config_summary as summary

    return summary(source)


@st.cache_data(show_spinner=False, max_entries=64, ttl=60)
def pair_check(a: str, b: str) -> str | None:
    """None when compatible, else the one-line reason (also for unreadable checkpoints)."""
    from .checkpoints import read_config, validate_pair
    from .errors import PermergeError

    try:
        validate_pair(read_config(a), read_config(b))
    except PermergeError as e:
        return str(e)
    return None


# --- background work --------------------------------------------------------------------------------

def pair_work(job: Job, options: AlignOptions, lambdas: int):
    """Statistics, permutations, vanilla and aligned curves, and the B' vs B check for one pair."""
    def work(progress):
        pipe = registry().get(job)
        pipe.progress = progress  # per thread: each job runs on its own worker thread
        progress("loading checkpoints and data", 0, 0)
        pipe.stats()
        pipe.alignment(options)
        van = pipe.curve(VANILLA, lambdas)
        aligned = pipe.curve(options, lambdas) if options != VANILLA else van
        check = pipe.function_check(options)
        stats = pipe.stats()
        return {"vanilla": van, "aligned": aligned, "check": check, "tokens": stats.tokens,
                "sentences": stats.sentences, "device": pipe.device,
                "summaries": [c.summary() for c in pipe.pair]}
    return work


def curves_work(job: Job, options: list[AlignOptions], lambdas: int):
    from .study import pair_curves

    def work(progress):
        return pair_curves(registry().get(job), options, lambdas, progress=progress)
    return work


def family_work(base: Job, pairs: list[tuple[str, str]], options: list[AlignOptions], lambdas: int):
    from .study import family_curves

    def work(progress):
        return family_curves(registry(), base, pairs, options, lambdas, progress=progress)
    return work


def tasks_work(tasks: dict[str, list[tuple[str, str]]], tokens: int | None, device: str,
               options: list[AlignOptions], lambdas: int, eval_examples: int | None):
    """Classifier pairs per task (data = the task's folder): curves frames keyed by task."""
    import pandas as pd

    from .study import family_curves

    def work(progress):
        frames, bars = [], []
        for i, (task, pairs) in enumerate(tasks.items()):
            base = Job(model_a="", model_b="", data=str(zoo.task_dir(task)), tokens=tokens, device=device,
                       eval_examples=eval_examples)

            def sub(stage, done, total, _i=i, _t=task, **info):
                progress(f"task {_i + 1}/{len(tasks)} ({_t}) {stage}", done, total, **info)

            c, b = family_curves(registry(), base, pairs, options, lambdas, progress=sub)
            frames.append(c.assign(task=task))
            bars.append(b.assign(task=task))
        return pd.concat(frames, ignore_index=True), pd.concat(bars, ignore_index=True)
    return work


def data_amount_work(job: Job, options: AlignOptions, lambdas: int):
    from .study import data_amount

    def work(progress):
        return data_amount(registry().get(job), options, lambdas, progress=progress)
    return work


# --- progress display ---------------------------------------------------------------------------------

def _fmt_s(s) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def describe(snap: dict) -> str:
    stage, info, done, total = snap["stage"] or "starting", snap["info"], snap["done"], snap["total"]
    if stage.endswith("statistics"):
        txt = f"{stage}: batch {done}/{total}, {info.get('tokens', 0):,} tokens of statistics"
    elif stage.endswith("assignment"):
        txt = f"{stage}: {done}/{total} assignments solved" + (f" ({info['group']})" if "group" in info else "")
    elif stage.endswith("interpolation"):
        txt = f"{stage}: {done}/{total} λ points evaluated" + (f" ({info['method']})" if info.get("method") else "")
    elif total:
        txt = f"{stage}: {done}/{total}"
    else:
        txt = stage
    if "overall" in info:
        k, n = info["overall"]
        txt += f" — {k}/{n} curves of the study done"
    return txt


def job_panel(key: str, title: str = "Working") -> None:
    """Live progress of a running job (polled every second) with a Cancel button; reruns the page
    when the job ends so that its result shows."""
    h = jobs().get(key)
    if h is None or not h.active:
        return

    @st.fragment(run_every=1.0)
    def poll():
        snap = h.snapshot()
        if not h.active:
            st.rerun()
        frac = snap["done"] / snap["total"] if snap["total"] else 0.0
        st.progress(min(max(frac, 0.0), 1.0), text=f"{title} — {describe(snap)}")
        eta = snap["eta_s"]
        st.caption(f"elapsed {_fmt_s(snap['elapsed_s'])}"
                   + (f"; this stage's time left ≈ {_fmt_s(eta)} (later stages follow)" if eta is not None else ""))
        if st.button("Cancel", key=f"cancel::{key}", icon=":material/stop:"):
            h.cancel()
            st.toast("Cancelling at the next step …")

    poll()


def job_outcome(key: str):
    """The result of a finished job (or None); shows its error or cancellation."""
    h = jobs().get(key)
    if h is None:
        return None
    if h.state == "done":
        return h.result
    if h.state == "error":
        st.error(f"The job failed: {h.error}")
    elif h.state == "cancelled":
        st.warning("The job was cancelled; nothing was kept for the stopped stage. Start it again to resume "
                   "(finished stages come from the cache).")
    return None


def default_export_dir(run: Run, lam: float) -> str:
    root = Path(__file__).resolve().parents[1] / "cache" / "exports"
    return str(root / f"{short(run.job.model_a)}__{short(run.job.model_b)}__{run.options.label().replace(' ', '')}"
                      f"__lambda{lam:.2f}".replace(":", "-").replace("+", "_"))


def merged_model(run: Run, lam: float):
    """theta(lambda) = lambda * A + (1 - lambda) * B' as a model, and its tokenizer."""
    return run.pipe.merged(run.options, lam), run.pipe.tokenizer


def permutations_bytes(run: Run) -> bytes:
    from safetensors.torch import save

    from .pipeline import permutations_tensors

    return save(permutations_tensors(run.pipe.alignment(run.options)),
                metadata={"options": json.dumps(run.options.to_dict()), "model_a": run.job.model_a,
                          "model_b": run.job.model_b})
