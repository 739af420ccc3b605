"""Small Streamlit helpers shared by the dashboard pages: the per-process registry and job manager,
the run stored in the session, results kept per run, names of checkpoints, and the progress panel.
No computation here: pages submit the library's work functions (``permerge.work``) to the job
manager and draw what comes back.
"""
from __future__ import annotations

import contextlib
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from permerge import runs, safeio, work, zoo
from permerge.bidi import escape_bidi
from permerge.align import AlignOptions
from permerge.cache import ResultCache
from permerge.jobs import JobManager
from permerge.locations import exports_dir
from permerge.pipeline import Job
from permerge.study import PipelineRegistry

from .deadline import within_deadline
from .text import md

RUN_PAGE = "pages/run.py"
RUN_STATE = "run"  # session_state key of the finished run shown by every page
PENDING_STATE = "pending_run"
RESULTS_STATE = "results"  # [study]: each with the job key, recipe and what it depends on (see start)
RUN_PARAM = "run"  # the page address's run id (?run=<id>)
FORM_STATE = "run_form"  # the Pick-and-run form's values, kept while other pages are shown

ATTENTION_LABELS = {"vanilla": "vanilla (plain average)", "monotonic": "monotonic (head j ↔ head j)",
                    "ignore-heads": "ignore-heads ⚠ NOT function-preserving", "head-perm": "head-perm (paper's best)"}
# Family-neutral; residual_labels() names the chosen pair's own residual points.
RESIDUAL_LABELS = {"identity": "identity (no residual permutation)", "first": "first (the embedding output)",
                   "last": "last (the final layer's output)", "all": "all (pooled over every residual point)",
                   "separate": "separate ⚠ NOT function-preserving"}


def residual_labels(facts: dict | None) -> dict:
    """RESIDUAL_LABELS in the words of one pair's spec (see ``pair_facts``): what its first and last
    residual points are, and how many points "all" pools."""
    if not facts:
        return dict(RESIDUAL_LABELS)
    n = facts["residual_points"]
    if facts["norm"] == "post-ln":  # the points are LayerNorm outputs
        first, last, every = "embedding LayerNorm", "final layer's LayerNorm", f"{n} LayerNorm outputs"
    else:  # pre-LN: the raw sum, read where it enters a norm or leaves a block
        first, last = "embedding sum", "final block's output"
        every = f"{n} points: embedding sum, input of each {facts['mid_point']}, block outputs"
    if facts["projected"]:  # a narrower embedding mapped into the stream: the first point is the map's output
        first = "embedding projection"
        every = f"{n} points: embedding projection, then LayerNorm outputs"
    return {**RESIDUAL_LABELS, "first": f"first ({first})", "last": f"last ({last})", "all": f"all (pooled over {every})"}


@st.cache_resource(show_spinner=False)
def registry() -> PipelineRegistry:
    """One pipeline registry (and disk cache) per server process."""
    return PipelineRegistry(ResultCache())


@st.cache_resource(show_spinner=False)
def jobs() -> JobManager:
    return JobManager()


@st.cache_resource(show_spinner=False)
def freeze_imports() -> int:
    """Once per server process, after torch, transformers and permerge are imported (on the first
    page): the objects alive then, nearly all of them the imported modules', go to the collector's
    permanent generation (``gc.freeze``).  Full collections then skip them: the job manager's one
    after every job, which holds the interpreter lock just when the page would draw the job's
    result, and the automatic ones that the server's script runs add.  On the bundled pair each took
    0.15 s to 0.2 s, and 0.003 s once frozen (``bench/bench_dashboard.py --collector``).  Returns how
    many objects were frozen."""
    import gc

    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@dataclass(frozen=True)
class Run:
    """What a finished run on the run page leaves in the session for the other pages."""
    job: Job
    options: AlignOptions
    lambdas: int
    key: str
    form: dict = field(default_factory=dict, compare=False, hash=False)  # the form that made it

    @property
    def pipe(self):
        return registry().get(self.job)

    @property
    def about(self) -> dict:
        return work.about(self.job, self.options, self.lambdas)


def job_key(kind: str, **parts) -> str:
    return kind + ":" + json.dumps(parts, sort_keys=True, default=str)


def current_run() -> Run | None:
    return st.session_state.get(RUN_STATE)


def settle_pending() -> None:
    """A pending run whose job has finished becomes the session's run, before the sidebar is drawn:
    the one rerun that follows the job's end shows it in the sidebar and in the address at once
    (a second full rerun for the sidebar made the result appear later)."""
    pending = st.session_state.get(PENDING_STATE)
    if pending is None:
        return
    h = jobs().get(pending.key)
    if h is not None and h.state == "done":
        make_current(pending)
        del st.session_state[PENDING_STATE]


def require_run(what: str = "this page") -> Run:
    """The session's run, or a friendly note with a link to the run page (and the page stops)."""
    run = current_run()
    if run is None:
        st.info(f"No alignment yet: run an alignment first, then come back to {what}.", icon=":material/info:")
        st.page_link(RUN_PAGE, label="Go to Pick and run", icon=":material/play_arrow:")
        st.stop()
    return run


# --- names ---------------------------------------------------------------------------------------------

def _bundled() -> dict[str, str]:
    return {str(Path(e["path"]).resolve()): e["name"] for e in zoo.list_checkpoints()}


def name(path: str) -> str:
    """An unambiguous display name: a bundled checkpoint's zoo name (``zoo:mlm-seed1``), else the
    path as given (home folder shortened to ``~``)."""
    p = str(path)
    try:
        bundled = _bundled().get(str(Path(p).expanduser().resolve()))
    except OSError:
        bundled = None
    if bundled:
        return f"zoo:{bundled}"
    home = str(Path.home())
    # display only: bidirectional controls written as escapes (tables and titles are not Markdown)
    return escape_bidi("~" + p[len(home):] if p.startswith(home + "/") else p)


def short(path: str) -> str:
    """The last path component (for file names); see ``name`` for display."""
    return str(path).rstrip("/").split("/")[-1]


def name_md(path: str) -> str:
    """``name(path)`` as inline HTML with the full path on hover (use with unsafe_allow_html)."""
    full = html.escape(escape_bidi(str(Path(str(path)).expanduser().resolve()) if Path(str(path)).expanduser().exists()
                                   else str(path)), quote=True)
    return f'<code title="{full}">{md(name(path))}</code>'


def pair_title(job: Job) -> str:
    """The pair as Markdown-safe text (for captions, titles and progress lines)."""
    return f"{md(name(job.model_a))} (A) vs {md(name(job.model_b))} (B)"


def about_caption(about: dict) -> None:
    """The caption every result carries: which pair, data and options it belongs to."""
    a = dict(about)
    if a.get("model_a"):
        a["pair"] = f"{name(a['model_a'])} | {name(a['model_b'])}"
    st.caption("Computed for " + md(work.describe_about(a)) + ".")


# --- results kept by what they depend on ----------------------------------------------------------------
# A study is kept in the session (and in the run's record on disk, ``permerge.runs``) with the parts of the
# run it depends on; it belongs to every run that agrees with it there, so a new residual variant keeps the
# studies that do not depend on the options.

def _studies() -> list:
    return st.session_state.setdefault(RESULTS_STATE, [])


def _entry(section: str, run: Run) -> dict | None:
    for s in reversed(_studies()):
        if s["section"] == section and runs.belongs(s.get("depends") or {}, run.job, run.options, run.lambdas):
            return s
    return None


def recall(section: str, run: Run) -> str | None:
    """The job key of the study ``section`` computed last for a run like ``run`` (None if none)."""
    s = _entry(section, run)
    return s["key"] if s else None


def start(section: str, run: Run, key: str, recipe: dict, label: str, depends: dict) -> None:
    """Starts a study (``recipe``: ``permerge.runs.recipe``) that depends on ``depends`` of the run
    (``permerge.runs.depends``) and keeps it with the run, in the session and on disk."""
    jobs().submit(key, runs.cook(registry(), recipe), label)
    study = {"section": section, "key": key, "label": label, "depends": depends, "recipe": recipe}
    studies = [s for s in _studies() if (s["section"], s["key"]) != (section, key)]
    st.session_state[RESULTS_STATE] = studies + [study]
    rec = runs.load(run_id(run))
    if rec is not None:
        runs.add_study(rec, study)
        runs.save(rec)


def _ensure(study: dict) -> None:
    """A study this server has not got (e.g. after a restart) is rebuilt from its recipe; its stages
    come from the result cache."""
    if jobs().get(study["key"]) is None and study.get("recipe"):
        try:
            fn = runs.cook(registry(), study["recipe"])
        except Exception as e:  # a damaged record: said once, not retried
            st.error(f"The study {md(study.get('label', ''))} cannot be restored: {md(e)}")
            return
        jobs().submit(study["key"], fn, study.get("label", ""))


def section_result(section: str, run: Run, title: str, where=None):
    """Progress while the run's job for ``section`` runs; its result once done (None otherwise).
    Results of another run are never returned: a study is found only by what it depends on."""
    study = _entry(section, run)
    if study is None:
        return None
    _ensure(study)
    key = study["key"]
    res = job_result(key, title, where=where)
    if res is not None and "about" in res and res["about"].get("model_a") not in (None, "", run.job.model_a):
        return None  # defensive: a result always names its pair
    return res


# --- a run is an address: ?run=<id> --------------------------------------------------------------------

def run_id(run: Run) -> str:
    return runs.run_id(run.key)


def make_current(run: Run) -> None:
    """``run`` becomes the session's run: its record is written (with the session's studies that
    belong to it) and the page address names it."""
    st.session_state[RUN_STATE] = run
    rec = runs.load(run_id(run)) or runs.Record(run_id(run), run.key, run.job, run.options, run.lambdas)
    rec.form = dict(run.form)
    for s in runs.studies_for(rec, _studies()):
        runs.add_study(rec, s)
    runs.save(rec)
    st.query_params[RUN_PARAM] = rec.id


def _from_record(rec) -> Run:
    return Run(rec.job, rec.options, rec.lambdas, rec.key, dict(rec.form))


def open_run(rid: str) -> bool:
    """Makes the run of a saved id the session's run, with its studies; False for an unknown id."""
    rec = runs.load(rid)
    if rec is None:
        return False
    st.session_state[RUN_STATE] = _from_record(rec)
    st.session_state[FORM_STATE] = dict(rec.form)  # the run page shows this run's settings
    for k, v in rec.form.items():
        st.session_state[k] = v
    known = {(s["section"], s["key"]) for s in _studies()}
    st.session_state[RESULTS_STATE] = _studies() + [s for s in rec.studies if (s["section"], s["key"]) not in known]
    st.query_params[RUN_PARAM] = rec.id
    return True


def sync_address() -> None:
    """Called first on every page: an address naming a run opens it in a new session (reload, second
    tab, bookmark); otherwise the address names the session's run."""
    rid = st.query_params.get(RUN_PARAM)
    run = current_run()
    if run is None and rid is not None:
        if not open_run(rid):
            st.warning(f"The address names run {md(rid)}, which this server does not know (its cache folder "
                       "may have been cleared): run it again on Pick and run.")
            del st.query_params[RUN_PARAM]
    elif run is not None and rid != run_id(run):
        st.query_params[RUN_PARAM] = run_id(run)


def recent_runs(n: int = 6) -> list:
    """The runs saved last (``permerge.runs.Record``), newest first."""
    return runs.recent(n)


def record_label(rec) -> str:
    return f"{name(rec.job.model_a)} | {name(rec.job.model_b)}: {rec.options.label()}, {rec.lambdas} λ"


def run_result(run: Run):
    """The run's own result (vanilla and aligned curves, check), recomputed from the disk cache
    through the job manager when this server has not got it (e.g. after a restart)."""
    h = jobs().get(run.key)
    if h is None or h.state not in ("done", "queued", "running"):
        jobs().submit(run.key, work.pair_work(registry(), run.job, run.options, run.lambdas),
                      label=pair_title(run.job))
    return job_result(run.key, "Loading this run's result")


# --- model summaries from configs (cheap: no weights) ----------------------------------------------

def _downloads() -> bool:
    from permerge.hub import downloads_allowed

    return downloads_allowed()


@contextlib.contextmanager
def _allowing(downloads: bool):
    """Downloads allowed (or not) for a cached call, as the session's switch says."""
    from permerge.hub import _allowed, allow_downloads

    token = allow_downloads(downloads)
    try:
        yield
    finally:
        _allowed.reset(token)


def config_summary(source: str) -> dict:
    """Layers, heads, widths and parameter count from a checkpoint's config alone (a hub id's
    config is fetched when the session allows downloads)."""
    return _config_summary(source, _downloads())


@st.cache_data(show_spinner=False, max_entries=64, ttl=60)
def _config_summary(source: str, downloads: bool) -> dict:
    from permerge.checkpoints import config_summary as summary

    with _allowing(downloads):
        return within_deadline(summary, source, what=f"checkpoint {source}")


def pair_facts(source: str) -> dict | None:
    return _pair_facts(source, _downloads())


@st.cache_data(show_spinner=False, max_entries=64, ttl=60)
def _pair_facts(source: str, downloads: bool) -> dict | None:
    """What the labels of the run page need from a checkpoint's spec (built from its config on the
    meta device): evaluation kind, special tokens in its text blocks, a pooler group, its residual
    points; None when the spec cannot be built (the page reports the checkpoint's problem)."""
    from permerge.checkpoints import config_spec

    try:
        with _allowing(downloads):
            spec = within_deadline(config_spec, source, what=f"checkpoint {source}")
    except Exception:
        return None
    mid = spec.groups["res.0.att"] if "res.0.att" in spec.groups else None
    return {"family": spec.family, "head": spec.head, "evaluation": spec.evaluation,
            "specials": spec.table.block_specials, "pooler": bool(spec.groups_of("pooler")),
            "norm": spec.norm, "residual_points": len(spec.residual_points), "projected": "emb" in spec.groups,
            "mid_point": mid.capture.rsplit(".", 1)[-1] if mid is not None else None,
            "special_tokens": within_deadline(_block_special_tokens, source, what=f"checkpoint {source}")
            if spec.table.block_specials else None}


def _block_special_tokens(source: str) -> str | None:
    """The start and end tokens of a text block ("[CLS]/[SEP]", "<s>/</s>") from a local checkpoint's
    tokenizer files, without loading the tokenizer; None when they are not written there."""
    folder = Path(source).expanduser()
    if not folder.is_dir():  # a hub id: its cached snapshot, if any
        from permerge.hub import local_snapshot

        try:
            folder = local_snapshot(source) or folder
        except Exception:
            pass
    found = {}
    for f in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            d = json.loads(safeio.read_bytes(folder / f))
        except (OSError, ValueError):
            continue
        for k in ("cls_token", "sep_token"):
            v = d.get(k)
            v = v.get("content") if isinstance(v, dict) else v
            if isinstance(v, str) and k not in found:
                found[k] = v
    return f"{found['cls_token']}/{found['sep_token']}" if len(found) == 2 else None


def pair_check(a: str, b: str) -> str | None:
    """None when compatible, else the one-line reason (also for unreadable checkpoints)."""
    return _pair_check(a, b, _downloads())


@st.cache_data(show_spinner=False, max_entries=64, ttl=60)
def _pair_check(a: str, b: str, downloads: bool) -> str | None:
    from permerge.checkpoints import read_config, validate_pair
    from permerge.errors import PermergeError

    try:
        with _allowing(downloads):
            within_deadline(lambda: validate_pair(read_config(a), read_config(b)), what="the pair")
    except PermergeError as e:
        return str(e)
    return None


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
    elif stage.startswith("downloading"):
        from permerge.hub import fmt_bytes

        txt = (f"{stage}: {fmt_bytes(done)} of {fmt_bytes(total)}"
               + (f" at {fmt_bytes(int(info['speed']))}/s" if info.get("speed") else "")
               + (f" ({info['file']})" if info.get("file") else ""))
    elif stage.endswith("interpolation"):
        txt = f"{stage}: {done}/{total} λ points evaluated" + (f" ({info['method']})" if info.get("method") else "")
    elif total:
        txt = f"{stage}: {done}/{total}"
    else:
        txt = stage
    if "overall" in info:
        k, n = info["overall"]
        txt += f" — {k}/{n} curves done"
    return txt


def overall_line(snap: dict) -> str:
    """The whole job in one line: stage k of n (its name), the share of the job done, and the time
    left for the job."""
    plan = snap["info"]["job"]
    left = snap.get("job_eta_s")
    done = min(plan["fraction"], 0.99)  # a job still running is not 100 % done
    return (f"stage {plan['stage']} of {plan['stages']} ({plan['name']}), {done:.0%} of the job done, "
            + ("time left: measuring …" if left is None else
               "finishing its last steps" if left < 1 else f"about {_fmt_s(left)} left for the whole job"))


def eta_line(snap: dict) -> str:
    eta = snap["eta_s"]
    return (f"Elapsed {_fmt_s(snap['elapsed_s'])}; the time left is estimated from the rates measured so far in "
            "this job" + (f" (this stage: about {_fmt_s(eta)})." if eta is not None else "."))


def _partial_chart(snap: dict) -> None:
    """The curve being evaluated, drawn as its points come in (coarse grid first)."""
    import pandas as pd

    from permerge import plots

    rows = snap["info"].get("rows")
    if not rows or len(rows) < 2:
        return
    sig = (snap["key"], snap["info"].get("method", ""), len(rows))
    kept = st.session_state.get("_partial_fig")
    if kept is None or kept[0] != sig:  # built again only when new points came in
        df = pd.DataFrame(rows).assign(method=snap["info"].get("method", ""), function_preserving=True)
        fig = plots.curves(df, "loss", title=f"{snap['info'].get('method', '')}: {len(rows)} λ points so far")
        lo, hi = plots.live_range(df["loss"])
        fig.update_xaxes(range=[-0.02, 1.02], autorange=False).update_yaxes(range=[lo, hi], autorange=False)
        kept = st.session_state["_partial_fig"] = (sig, fig)
    st.plotly_chart(kept[1], width="stretch", key=f"partial::{snap['key']}")


# Every update of a running job's progress costs the server a script run and the browser a redraw,
# CPU taken from the job on a two-core machine (bench/README.md, "The browser against the command line")
POLL_S = 2.0  # the progress line of a running job is read this often
CHART_POLL_S = 6.0  # and the curve being evaluated drawn again this often (when it has new points)


def _ends_within(h, left, seconds: float) -> bool:
    """When a job's time left is under ``seconds``, wait (at most that long) for it to end: True if
    it did.  The wait sleeps, so the job keeps the interpreter."""
    if left is None or left >= seconds:
        return False
    end = time.monotonic() + seconds
    while h.active and time.monotonic() < end:
        time.sleep(0.05)
    return not h.active


def job_panel(key: str, title: str = "Working", where=None) -> bool:
    """Live progress of a running job (read every POLL_S seconds) with a Cancel button; reruns the
    page when the job ends so that its result shows (when the job should end before the next reading,
    the reading waits for it, so that the result does not wait for the next one).  ``where``: a
    container (e.g. at the top of the page).  True when the job was running and its panel drawn."""
    h = jobs().get(key)
    if h is None or not h.active:
        return False

    @st.fragment(run_every=POLL_S)
    def poll():
        snap = h.snapshot()
        if not h.active:
            st.rerun()
        plan = snap["info"].get("job")
        if plan:  # one line for the whole job: stage k of n, and the time left for all of it
            st.progress(min(max(snap["fraction"], 0.0), 1.0), text=f"{title} — {overall_line(snap)}")
            st.caption(f"Now: {describe(snap)}. " + eta_line(snap))
        else:
            st.progress(min(max(snap["fraction"], 0.0), 1.0), text=f"{title} — {describe(snap)}")
            eta = snap["eta_s"]
            st.caption(f"elapsed {_fmt_s(snap['elapsed_s'])}"
                       + (f"; this stage: about {_fmt_s(eta)} left at the rate measured so far" if eta is not None else
                          "; time left: measuring …" if snap["total"] else ""))
        if st.button("Cancel", key=f"cancel::{key}", icon=":material/stop:"):
            h.cancel()
            st.toast("Cancelling at the next step …")
        elif _ends_within(h, snap.get("job_eta_s"), POLL_S):
            st.rerun()

    @st.fragment(run_every=CHART_POLL_S)
    def chart():  # apart from the line: a chart costs the server and the browser far more to redraw
        if h.active:
            _partial_chart(h.snapshot())

    if where is not None:
        with where:
            poll()
            chart()
    else:
        poll()
        chart()
    return True


def job_result(key: str, title: str = "Working", where=None):
    """``job_panel`` and then ``job_outcome``: the live panel while the job runs, its result once done.
    A job that ends between the two (the panel drawn, the job done by the time its result is read)
    runs the page again at once, so that its live panel and its result never show together."""
    h = jobs().get(key)
    if job_panel(key, title, where) and h is not None and not h.active:
        st.rerun()
    return job_outcome(key)


def _session_jobs() -> list[tuple[str, str]]:
    """(job key, title) of this session's running jobs: its pending run and its studies."""
    out = []
    pending = st.session_state.get(PENDING_STATE)
    if pending is not None:
        out.append((pending.key, f"Aligning {pair_title(pending.job)}"))
    out += [(s["key"], s.get("label", "study").capitalize()) for s in st.session_state.get(RESULTS_STATE, [])]
    return [(k, t) for k, t in out if (h := jobs().get(k)) is not None and h.active]


def top_progress(skip: tuple = ()) -> None:
    """At the top of every page: one line per running job of this session (the whole job's share
    and time left), wherever it was started; ``skip``: keys the page shows at its own top."""
    if not [k for k, _ in _session_jobs() if k not in skip]:
        return  # nothing running: no polling at all

    @st.fragment(run_every=POLL_S)
    def lines():
        running = [(k, t) for k, t in _session_jobs() if k not in skip]
        if not running:
            st.rerun()  # the last one ended: the page draws its result
        for key, title in running:
            snap = jobs().get(key).snapshot()
            frac = min(max(snap["fraction"], 0.0), 1.0)
            text = overall_line(snap) if snap["info"].get("job") else describe(snap)
            st.progress(frac, text=f"{title} — {text}")

    lines()


def latest_only(slot: str, key: str, fn, label: str, title: str):
    """Run ``fn`` as the page's one current job (the previous job in ``slot`` is forgotten: a group's
    matrices or weights can be large), show its progress, and return its result; the page stops
    while the job is still running or when it failed."""
    from permerge.views import settle

    previous = st.session_state.get(slot)
    if previous not in (None, key):
        jobs().forget(previous)
    st.session_state[slot] = key
    settle(jobs().submit(key, fn, label))
    out = job_result(key, title)
    if out is None:
        st.stop()
    return out


def job_outcome(key: str):
    """The result of a finished job (or None); shows its error or cancellation."""
    h = jobs().get(key)
    if h is None:
        return None
    if h.state == "done":
        return h.result
    if h.state == "error":
        st.error(f"The job failed: {md(h.error)}")
    elif h.state == "cancelled":
        st.warning("The job was cancelled; nothing was kept for the stopped stage. Start it again to resume "
                   "(finished stages come from the cache).")
    return None


# --- export helpers (the Export page) ------------------------------------------------------------------

def default_export_dir(run: Run, lam: float) -> str:
    return str(exports_root() / work.export_name(run.job, run.options, lam))


def exports_root() -> Path:
    """Where the Export page writes: the ``exports`` folder of the result cache (PERMERGE_CACHE when
    set; the checkout's cache/, or the user's cache folder when permerge is installed)."""
    return exports_dir().expanduser().resolve()


def merged_model(run: Run, lam: float):
    """theta(lambda) = lambda * A + (1 - lambda) * B' as a model, and its tokenizer."""
    return run.pipe.merged(run.options, lam), run.pipe.tokenizer


def permutations_bytes(run: Run) -> bytes:
    return work.permutations_bytes(run.pipe, run.options)


# --- which pairs a study runs on ---------------------------------------------------------------------

PAIR_SOURCES = ["this run's pair", "a folder of checkpoints (all its pairs)", "the bundled MLM family"]


def pick_pairs(run: Run, prefix: str, max_default: int = 3) -> list[tuple[str, str]]:
    """A study's pairs: the run's own pair, every pair of a folder of the user's checkpoints (one
    sub-folder per seed), or the bundled family; with the run's data and settings."""
    from permerge.errors import PermergeError
    from permerge.study import family_pairs, folder_pairs

    src = st.radio("Pairs", PAIR_SOURCES, horizontal=True, key=f"{prefix}_source",
                   help="Studies use this run's data, token budget and evaluation settings.")
    if src == PAIR_SOURCES[0]:
        return [(run.job.model_a, run.job.model_b)]
    if src == PAIR_SOURCES[1]:
        st.session_state.setdefault(f"{prefix}_folder", str(Path(run.job.model_a).expanduser().parent))
        folder = st.text_input("Folder whose sub-folders are checkpoints (e.g. seed1/, seed2/, …)", key=f"{prefix}_folder")
        try:
            pairs = folder_pairs(folder)
        except PermergeError as e:
            st.error(md(e))
            return []
        ok = [(a, b) for a, b in pairs if pair_check(a, b) is None]
        if len(ok) < len(pairs):
            st.warning(f"{len(pairs) - len(ok)} pair(s) of that folder are not compatible and are left out.")
        pairs = ok
    else:
        pairs = family_pairs([e["path"] for e in zoo.list_checkpoints(kind="mlm")])
    if not pairs:
        st.info("No pairs to run.")
        return []
    n = st.number_input("How many of its pairs", 1, len(pairs), min(max_default, len(pairs)), key=f"{prefix}_n",
                        help=f"{len(pairs)} pair(s); each new pair makes one statistics pass.")
    return pairs[: int(n)]


def study_base(run: Run) -> Job:
    """The run's data and settings, for other pairs."""
    return Job(**{**run.job.to_dict(), "model_a": "", "model_b": ""})
