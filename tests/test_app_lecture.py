"""The dashboard in a lecture: the Start page's verdicts derived from the figures it shows (the
residual stream: what the paper reported, what this pair shows, why they can differ), an evaluation
text on Pick and run, the classifier curves' M shape and Table 3, one progress line for a whole job,
and the smaller defects a teacher trips over.  Pages are driven under AppTest with results put into
the job manager directly (no model runs), so the module takes seconds; the library functions behind
the verdicts, shapes and the job plan are tested on their own."""
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from permerge import plots, shapes, verdicts, views  # noqa: E402
from permerge.align import VANILLA, AlignOptions  # noqa: E402
from permerge.pipeline import CurveResult, Job  # noqa: E402
from permerge.plan import JobPlan  # noqa: E402
from conftest import page_charts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("app_env")  # this module's own result cache (conftest)

# Checkpoint paths that do not exist: a job these tests forget to put in place fails at once
# instead of starting real work.
FAKE_A, FAKE_B = "/nonexistent/lecture/seedA", "/nonexistent/lecture/seedB"


def fresh() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def texts(at) -> str:
    parts = [e.value for e in list(at.markdown) + list(at.caption) + list(at.subheader) + list(at.success)
             + list(at.info) + list(at.warning) + list(at.error)]
    return "\n".join(str(p) for p in parts)


def figures(at) -> list:
    import plotly.io as pio

    return [pio.from_json(c.proto.spec) for c in page_charts(at)]


def put(key: str, result) -> None:
    """A finished job under ``key`` in the dashboard's job manager."""
    from dashboard.state import jobs

    jobs().forget(key)
    h = jobs().submit(key, lambda progress: result, "test")
    t0 = time.time()
    while h.active and time.time() - t0 < 10:
        time.sleep(0.01)
    assert h.state == "done"


def curve(options: AlignOptions, barrier: float, se: float = 0.004, lambdas: int = 5) -> CurveResult:
    rows = [{"lambda": float(x), "loss": 6.0 + 4 * barrier * x * (1 - x),
             "pseudo_perplexity": float(np.exp(6.0 + 4 * barrier * x * (1 - x)))} for x in np.linspace(0, 1, lambdas)]
    return CurveResult(options.label(), options.to_dict(), rows, barrier, 0.5, 6.0, 6.0, options.function_preserving,
                       1.0, None, se, 1000)


def fake_run(options: AlignOptions, vanilla: float, aligned: float, tokens_used: int = 16512, tag: str = "1"):
    """A finished run of a pair that does not exist, with the given barriers, as the session's run."""
    from dashboard.state import Run, job_key
    from permerge import work

    job = Job(model_a=FAKE_A + tag, model_b=FAKE_B + tag, data="/nonexistent/lecture/align.txt", tokens=16384,
              device="cpu", eval_blocks=4)
    key = job_key("pair", job=job.to_dict(), options=options.to_dict(), lambdas=5)
    van = curve(VANILLA, vanilla)
    al = curve(options, aligned) if options != VANILLA else van
    put(key, {"vanilla": van, "aligned": al, "tokens": tokens_used, "sentences": 129, "device": "cpu", "task": None,
              "eval_kind": "mlm", "summaries": [], "check": {"max_abs_logit_error": 1e-6, "max_rel_logit_error": 1e-7,
                                                               "max_rel_logit_error_float64": 1e-15, "equivalent": True,
                                                               "equivalence_tolerance": 1e-9},
              "about": work.about(job, options, 5, tokens_used=tokens_used)})
    return Run(job, options, 5, key, {})


def with_run(run, page: str | None = None) -> AppTest:
    at = fresh()
    at.session_state["run"] = run
    at.run()
    if page:
        at.switch_page(page).run()
    assert_clean(at)
    return at


# --- 1. the Start page: claims that match what it shows -----------------------------------------------

RES_ALL = AlignOptions(ff=True, attention="head-perm", residual="all")


def residual_study(run, barriers: dict[str, float], se: float = 0.004):
    """The Start page's residual measurement for ``run``, put in place under the key the page uses."""
    from dataclasses import replace

    from dashboard.state import job_key
    from permerge import work
    from permerge.study import TABLE2

    opts = [o for o in TABLE2 if o.function_preserving]
    if run.options.residual != "identity" and run.options not in opts:
        opts += [replace(run.options, residual="identity"), run.options]
    key = job_key("start_residual", job=run.job.to_dict(), options=[o.label() for o in opts], lambdas=run.lambdas)
    put(key, {"curves": [curve(o, barriers[o.label()], se) for o in opts],
              "about": work.about(run.job, None, run.lambdas, variants=[o.label() for o in opts])})
    return [{"section": "start_residual", "key": key, "label": "residual variants", "depends": {}, "recipe": None}]


def test_start_page_derives_its_verdicts_from_the_figures_it_shows():
    run = fake_run(RES_ALL, 0.615, 0.203)
    at = with_run(run, "pages/start.py")
    text = texts(at)
    # what this pair shows, in words derived from the figures (0.203 vs 0.615: 67 % lower)
    assert "0.203, 67% lower than 0.615" in text and "alignment helps" in text
    assert "16,512 alignment tokens" in text and "16,384" not in text  # the tokens as used
    # what the paper reported, said as the paper's, and why a pair can differ
    assert "The paper reported that permuting the **residual stream** raised the barrier" in text
    assert "Permuting the **residual stream** hurts" not in text
    assert "MLM head's transform" in text and "docs/method.md" in text
    assert any(b.label == "Measure the residual variants on this pair" for b in at.button)
    assert "not measured yet" in text

    # measured: First and All lower the barrier below Identity here, Last raises it
    at.session_state["results"] = residual_study(run, {"vanilla": 0.615, "res:first": 0.5, "res:last": 0.7,
                                                       "res:all": 0.3, "FF + attn:head-perm": 0.25,
                                                       RES_ALL.label(): 0.203})
    at.run()
    assert_clean(at)
    text = texts(at)
    assert "First helps (0.500, 19% lower than 0.615)" in text
    assert "Last hurts (0.700, 14% higher than 0.615)" in text
    assert "All helps (0.300, 51% lower than 0.615)" in text
    assert "agrees with the paper for some variants and not for others" in text
    assert "the residual permutation helps here" in text  # 0.203 against 0.25 without it


def test_start_page_says_when_a_pair_agrees_with_the_paper():
    run = fake_run(RES_ALL, 0.4, 0.45, tag="2")
    at = with_run(run, "pages/start.py")
    assert "0.450, 12% higher than 0.400" in texts(at) and "alignment hurts" in texts(at)
    at.session_state["results"] = residual_study(run, {"vanilla": 0.4, "res:first": 0.5, "res:last": 0.45,
                                                       "res:all": 0.6, "FF + attn:head-perm": 0.3,
                                                       RES_ALL.label(): 0.45})
    at.run()
    text = texts(at)
    assert "This agrees with what the paper reported" in text
    assert "the residual permutation hurts here" in text


def test_verdicts():
    c = verdicts.change(0.615, 0.203)
    assert c["word"] == "lower" and c["verdict"] == "helps" and c["text"] == "0.203, 67% lower than 0.615"
    assert verdicts.change(0.4, 0.42)["verdict"] == "hurts"
    assert verdicts.change(0.4, 0.402)["word"] == "about the same"  # under 1 %
    noisy = verdicts.change(0.402, 0.431, 0.026, 0.033)
    assert noisy["word"] == "higher" and noisy["within_se"] and noisy["text"].endswith("within one standard error")
    assert verdicts.change(float("nan"), 0.3)["word"] == "unknown"
    assert verdicts.change(0.00793, 0.00802)["text"] == "0.00802, 1% higher than 0.00793"
    assert verdicts.sentence(c, "alignment") == "on this pair alignment helps."
    assert verdicts.sentence(verdicts.change(0.4, 0.42), "alignment").startswith("on this pair alignment hurts (small")
    assert "within one standard error" in verdicts.sentence(noisy, "alignment")
    assert verdicts.sentence(verdicts.change(float("nan"), 0.3), "alignment") == \
        "on this pair the effect of alignment is not measured."
    rows = verdicts.residual_rows({"vanilla": 1.0, "res:first": 1.2, "res:all": 0.8}, "vanilla",
                                  {"res:first": "First", "res:last": "Last", "res:all": "All"})
    assert [r["variant"] for r in rows] == ["First", "All"]  # Last was not measured
    assert verdicts.residual_summary(rows)["agrees"] is None
    assert verdicts.residual_summary(rows[:1])["agrees"] is True
    assert verdicts.residual_summary(rows[1:])["paper"] == "differs from what the paper reported"
    assert verdicts.residual_summary(rows)["sentence"] == ("First hurts (1.200, 20% higher than 1.000); "
                                                           "All helps (0.800, 20% lower than 1.000)")


# --- 2. an evaluation text on Pick and run -------------------------------------------------------------

def test_run_page_offers_an_evaluation_text(monkeypatch, tmp_path):
    from dashboard import state
    from permerge import zoo

    if not zoo.list_checkpoints(kind="mlm"):
        pytest.skip("no bundled checkpoints")
    submitted = []
    monkeypatch.setattr(state.JobManager, "submit", lambda self, key, fn, label="": submitted.append(key))
    at = fresh().run().switch_page("pages/run.py").run()
    radio = at.radio(key="eval_kind")
    assert radio.label == "Evaluation text"
    assert list(radio.options) == ["bundled evaluation text", "a text file", "the tail of the alignment data"]
    assert radio.value == "bundled evaluation text"
    ev = tmp_path / "lecture" / "eval.txt"
    ev.parent.mkdir()
    ev.write_text("some held-out text .\n" * 50)
    radio.set_value("a text file").run()
    run_button = lambda: [b for b in at.button if b.label == "Run alignment"][0]  # noqa: E731
    assert run_button().disabled and "evaluation text file: give its path" in texts(at)
    at.text_input(key="eval_path").set_value(str(ev)).run()
    assert_clean(at)
    assert "lecture/eval.txt" in texts(at)
    run_button().click().run()
    assert f'"eval_data": "{ev}"' in submitted[-1]
    at.radio(key="eval_kind").set_value("the tail of the alignment data").run()
    run_button().click().run()
    assert '"eval_data": null' in submitted[-1]


def test_captions_tell_same_named_files_apart():
    from permerge import work, zoo

    a = work.describe_about({"data": "/x/pairA/align.txt", "eval_data": "/x/pairA/eval.txt", "tokens": 16384,
                             "tokens_used": 16512})
    b = work.describe_about({"data": "/y/pairB/align.txt", "tokens": 16384})
    assert "pairA/align.txt" in a and "pairB/align.txt" in b and "evaluated on pairA/eval.txt" in a
    assert "16,512 alignment tokens" in a and "16,384" not in a  # as used
    assert "up to 16,384 alignment tokens" in b
    assert work.data_label(str(zoo.align_text())) == "bundled align.txt"


# --- 3. classifier curves: the M shape and Table 3 -----------------------------------------------------

def test_dips_and_m_shape():
    lam = np.linspace(0, 1, 11)
    m = [0.50, 0.45, 0.48, 0.60, 0.70, 0.75, 0.70, 0.60, 0.47, 0.44, 0.50]
    s = shapes.curve_shape(lam, m)
    assert s["m_shaped"] and [d["lambda"] for d in s["dips"]] == [0.1, 0.9]
    assert s["dips"][0]["depth"] == pytest.approx(0.05)
    one = shapes.curve_shape(lam, [0.5, 0.4, 0.45, 0.6, 0.7, 0.75, 0.7, 0.65, 0.6, 0.55, 0.52])
    assert not one["m_shaped"] and [d["lambda"] for d in one["dips"]] == [0.1]
    hump = shapes.curve_shape(lam, 0.5 + lam * (1 - lam))
    assert hump["dips"] == [] and hump["text"] == "no dip below the ends"
    # a long stretch below both ends is one dip, at its lowest point; the order of the points is irrelevant
    wide = shapes.dips(lam[::-1], [0.5, 0.3, 0.2, 0.25, 0.3, 0.35, 0.3, 0.2, 0.1, 0.2, 0.6][::-1])
    assert len(wide) == 1 and wide[0]["lambda"] == pytest.approx(0.8)


M_LOSS = [0.50, 0.45, 0.48, 0.60, 0.70, 0.75, 0.70, 0.60, 0.47, 0.44, 0.50]


def cls_result():
    """Two style pairs: vanilla M-shaped; alignment raises the barrier of the first pair."""
    lam = np.linspace(0, 1, 11)
    curves, bars = [], []
    aligned = "FF + attn:head-perm + pooler"
    for pair, shift, (bv, ba) in (("style-seed1 | style-seed2", 0.0, (0.402, 0.470)),
                                  ("style-seed1 | style-seed3", 0.01, (0.380, 0.300))):
        for method, loss in (("vanilla", np.array(M_LOSS) + shift), (aligned, 0.5 + 0.2 * lam * (1 - lam) + shift)):
            curves += [{"task": "style", "pair": pair, "method": method, "function_preserving": True, "lambda": x,
                        "loss": y, "accuracy": 0.8} for x, y in zip(lam, loss)]
        bars += [{"task": "style", "pair": pair, "method": m, "barrier": b, "barrier_se": 0.01, "barrier_lambda": 0.5,
                  "loss_a": 0.5 + shift, "loss_b": 0.5 + shift, "function_preserving": True, "tokens": t}
                 for m, b, t in (("vanilla", bv, None), (aligned, ba, 2085))]
    return {"curves": pd.DataFrame(curves), "bars": pd.DataFrame(bars),
            "about": {"tasks": ["style"], "tokens": 2048, "lambdas": 11}}


def test_table3():
    r = cls_result()
    t = shapes.table3(r["curves"], r["bars"])
    row = t.iloc[0]
    assert row["task"] == "style" and row["pairs"] == 2
    assert row["vanilla barrier"] == "0.391 ± 0.011"
    assert row["M-shaped (vanilla)"] == "style-seed1 | style-seed2, style-seed1 | style-seed3"
    assert row["M-shaped (aligned)"] == "none"
    assert row["aligned is worse"] == "style-seed1 | style-seed2"
    assert row["tokens used"] == "2,085, 2,085"


def test_classifier_section_marks_the_m_shape_and_keeps_its_curves_across_runs():
    run = fake_run(AlignOptions(), 0.6, 0.5, tag="3")
    put("tasks:lecture-test", cls_result())
    at = fresh()
    at.session_state["run"] = run
    at.session_state["results"] = [{"section": "classifiers", "key": "tasks:lecture-test", "label": "classifier curves",
                                    "depends": {}, "recipe": None}]  # depends on nothing of the run
    at.run()
    at.switch_page("pages/interpolation.py").run()
    assert_clean(at)

    def check():
        figs = [f for f in figures(at) if (f.layout.title.text or "").startswith("style, pair")]
        assert len(figs) == 2, [f.layout.title.text for f in figures(at)]
        marks = [t for t in figs[0].data if (t.name or "").startswith("M shape")]
        assert len(marks) == 1 and list(marks[0].x) == [0.1, 0.9] and list(marks[0].text) == ["λ = 0.10", "λ = 0.90"]
        assert [t for t in figs[0].data if t.showlegend is False and len(t.y) == 2]  # barrier bars as on MLM charts
        assert any("(L(A) + L(B)) / 2" in (a.text or "") for a in figs[0].layout.annotations)  # endpoint mean
        table = [d.value for d in at.dataframe if "M-shaped (vanilla)" in d.value.columns]
        assert table and table[0]["aligned is worse"].iloc[0] == "style-seed1 | style-seed2"
        text = texts(at)
        # names reach the page as plain text: the Markdown source escapes the "|" (drawn as typed)
        assert "Alignment raised the barrier of style (style-seed1 \\| style-seed2: 0.470, 17% higher than 0.402)" in text
        assert "M-shaped: dips below both ends at λ = 0.10, 0.90" in text

    check()
    at.session_state["run"] = fake_run(AlignOptions(), 0.7, 0.5, tag="4")  # another run: the curves stay
    at.run()
    assert_clean(at)
    check()


def test_dip_marks_and_plain_log_ticks():
    df = pd.DataFrame([{"method": "vanilla", "lambda": x, "loss": y, "pseudo_perplexity": np.exp(y * 10),
                        "function_preserving": True} for x, y in zip(np.linspace(0, 1, 11), M_LOSS)])
    fig = plots.mark_dips(plots.curves(df, "loss"), df, shapes.shapes_frame(df))
    assert [list(t.x) for t in fig.data if t.name == "M shape (vanilla)"] == [[0.1, 0.9]]
    two = pd.concat([df, df.assign(method="FF + attn:head-perm")])
    fig2 = plots.mark_dips(plots.curves(two, "loss"), two, shapes.shapes_frame(two))
    marks = [t for t in fig2.data if (t.name or "").startswith("M shape")]
    assert len(marks) == 2 and marks[0].x[0] < marks[1].x[0]  # side by side, not on top of each other
    assert [list(t.text) for t in marks] == [["λ = 0.10", "λ = 0.90"], ["", ""]]  # each lambda labelled once
    log = plots.curves(df, "pseudo_perplexity", log_y=True)  # 81 ... 1808: no lone digits as ticks
    ticks = list(log.layout.yaxis.ticktext)
    assert ticks == ["100", "200", "500", "1,000"], ticks
    assert "log scale" in log.layout.yaxis.title.text


# --- 4. a run you can plan around ------------------------------------------------------------------------

def test_job_plan_counts_stages_and_the_time_left_for_the_whole_job(monkeypatch):
    import permerge.plan as plan_mod

    now = [1000.0]
    monkeypatch.setattr(plan_mod.time, "time", lambda: now[0])
    plan = JobPlan([("load", "load", 0), ("statistics", "statistics", 100), ("curve 1", "curve", 50),
                    ("curve 2", "curve", 50)])
    seen = []
    unsized = JobPlan([("load", "load", 0), ("statistics", "statistics", 0)])
    unsized.report(lambda *a, **k: seen.append(k["job"]), 0, "loading", 0, 0)
    assert seen[-1]["eta_s"] is None  # nothing sized yet: unknown, not "0 s left"
    cb = plan.callback(lambda *a, **k: seen.append(k["job"]), 2, {"statistics": 1})
    cb("statistics", 1, 10)  # warm-up step: not timed
    assert seen[-1]["stage"] == 2 and seen[-1]["stages"] == 4 and seen[-1]["eta_s"] is None
    now[0] += 2.0
    cb("statistics", 2, 10)  # 10 units in 2 s: 0.2 s per unit
    s = seen[-1]
    assert s["fraction"] == pytest.approx(20 / 200)
    assert s["eta_s"] == pytest.approx((80 + 50 + 50) * 0.2)
    now[0] += 1.0
    cb("interpolation", 1, 5)  # curve 1 reached: statistics done (e.g. the rest came from the cache)
    s = seen[-1]
    assert s["stage"] == 3 and s["name"] == "curve 1" and s["fraction"] == pytest.approx((100 + 10) / 200)
    now[0] += 1.0
    cb("interpolation", 2, 5)  # 10 curve units in 1 s: the curves' own rate
    # and curve 2's lead-in, as long as curve 1's (from the last statistics event to its first point: 1 s)
    assert seen[-1]["eta_s"] == pytest.approx((30 + 50) * 0.1 + 1.0)


def test_family_progress_maps_study_events_to_stages():
    from permerge.work import family_progress, family_stages

    opts = [VANILLA, AlignOptions()]
    plan = JobPlan(family_stages([("a", "b"), ("a", "c")], opts))
    assert len(plan.stages) == 6 and plan.stages[3].name == "pair 2/2: statistics pass"
    seen = []
    cb = family_progress(plan, lambda stage, d, t, **k: seen.append(k["job"]["stage"]), len(opts))
    cb("pair 1/2: statistics", 1, 4, overall=(0, 4))
    cb("pair 1/2: interpolation", 1, 5, overall=(0, 4))
    cb("family", 1, 4)
    cb("pair 1/2: assignment", 1, 3, overall=(1, 4))
    cb("pair 2/2: statistics", 1, 4, overall=(2, 4))
    cb("pair 2/2: interpolation", 1, 5, overall=(3, 4))
    assert seen == [1, 2, 2, 3, 4, 6]


def test_one_progress_line_for_the_job_and_no_second_run_meanwhile():
    """A run going on Pick and run: the bar says stage k of n and the time left for the whole job, and
    the Run button is disabled until the run ends."""
    from dashboard.state import Run, jobs
    from permerge.plan import JobPlan

    release = threading.Event()
    plan = JobPlan([("loading checkpoints and data", "load", 0), ("statistics pass", "statistics", 100),
                    ("assignments", "assignment", 0), ("vanilla curve", "curve", 100_000), ("B′ check", "check", 0)])

    def work(progress):
        cb = plan.callback(progress, 1)
        for i in range(1, 4):
            cb("statistics", i, 10, tokens=2048 * i)
            time.sleep(0.05)
        release.wait(30)
        return {}

    job = Job(model_a=FAKE_A, model_b=FAKE_B, data="/nonexistent/lecture/align.txt", tokens=2048, device="cpu")
    key = "pair:lecture-progress"
    jobs().forget(key)
    h = jobs().submit(key, work, "test")
    try:
        t0 = time.time()
        while h.snapshot()["done"] < 3 and time.time() - t0 < 10:
            time.sleep(0.02)
        at = fresh()
        at.session_state["pending_run"] = Run(job, AlignOptions(), 5, key, {})
        at.run()
        at.switch_page("pages/run.py").run()
        assert_clean(at)
        bars = [p.text for p in at.get("progress")]
        assert bars and "stage 2 of 5 (statistics pass)" in bars[0] and "left for the whole job" in bars[0], bars
        assert ", 0% of the job done" in bars[0], bars  # 30 of the 100,100 units
        assert [b for b in at.button if b.label == "Run alignment"][0].disabled
    finally:
        release.set()
    t0 = time.time()
    while h.active and time.time() - t0 < 10:
        time.sleep(0.02)
    jobs().forget(key)


# --- 7. smaller defects ------------------------------------------------------------------------------------

def fake_correlations(run, group: str, kind: str, size: int, heads: int | None):
    from dashboard.state import job_key
    from permerge import work

    rng = np.random.default_rng(0)
    C = rng.normal(0, 0.3, (size, size)).clip(-1, 1)
    after = C.copy()
    np.fill_diagonal(after, 0.3)
    key = job_key("correlations", job=run.job.to_dict(), options=run.options.to_dict(), group=group)
    put(key, {"groups": ["att.0", "ff.0"], "sizes": {"att.0": 128, "ff.0": 96}, "kinds": {"att.0": "att", "ff.0": "ff"},
              "group": group, "spec_group": SimpleNamespace(size=size, kind=kind, heads=heads), "C": C, "after": after,
              "result": SimpleNamespace(corr_before=0.0, corr_after=0.3, aligned=True, head_cost=None, outer=None),
              "params": [], "about": work.about(run.job, run.options, group=group)})


def test_correlations_window_in_whole_heads_and_no_heads_on_a_feed_forward_group():
    run = fake_run(AlignOptions(), 0.6, 0.5, tag="5")
    fake_correlations(run, "att.0", "att", 128, 2)  # two heads of 64 units
    fake_correlations(run, "ff.0", "ff", 96, None)
    at = fresh()
    at.session_state["run"] = run
    at.session_state["corr_groups"] = {run.key: (["att.0", "ff.0"], {"att.0": 128, "ff.0": 96},
                                                 {"att.0": "att", "ff.0": "ff"})}
    at.run()
    at.switch_page("pages/correlations.py").run()
    assert_clean(at)
    assert at.slider(key="corr_window_att.0").value == (0, 128)  # both heads, not one
    assert views.default_window(768, 12) == 128 and views.default_window(128, 4) == 64
    assert views.default_window(3072, None) == 64
    at.selectbox(key="corr_group").set_value("ff.0").run()
    assert_clean(at)
    caption = [c.value for c in at.caption if "How the diagonal stands out" in c.value][0]
    assert "one-to-one" in caption and "head" not in caption


def test_every_group_aligned_says_it_uses_separate():
    from dashboard.state import job_key

    run = fake_run(AlignOptions(), 0.6, 0.5, tag="6")
    every = AlignOptions(ff=True, attention="head-perm", residual="separate")
    for o in (run.options, every):
        put(job_key("features", job=run.job.to_dict(), options=o.to_dict()),
            {"frame": pd.DataFrame([{"group": "ff.0", "kind": "ff", "layer": 0, "point": None, "position": None,
                                     "before": 0.1, "after": 0.5, "aligned": True}]),
             "about": {"data": "x", "options": o.label()}})
    at = with_run(run, "pages/features.py")
    assert "Separate" not in texts(at)
    at.radio[0].set_value("every group aligned").run()
    assert_clean(at)
    assert "aligns the residual points with **Separate**" in texts(at)
    assert "**not function-preserving**" in texts(at)


def test_run_page_shows_the_current_runs_residual():
    """Coming back to Pick and run shows the current run's residual option, also when the form's
    saved values are gone (the run keeps the form that made it)."""
    from dashboard.state import Run

    run = fake_run(RES_ALL, 0.6, 0.5, tag="7")
    run = Run(run.job, run.options, run.lambdas, run.key, {"residual": "all", "attention": "head-perm", "ff": True})
    at = with_run(run, "pages/run.py")
    assert [s for s in at.selectbox if s.label == "Residual stream"][0].value == "all"


def test_the_share_of_a_job_never_goes_back(monkeypatch):
    """An assignment solved inside a curve's stage (a study's variant) does not move that stage's share:
    before, 3/3 assignments read as the whole curve done, and the curve's first point took it back."""
    import permerge.plan as plan_mod
    from permerge.work import family_progress, family_stages

    now = [1000.0]
    monkeypatch.setattr(plan_mod.time, "time", lambda: now[0])
    opts = [VANILLA, AlignOptions()]
    plan = JobPlan(family_stages([("a", "b"), ("a", "c")], opts))
    for k, s in enumerate(plan.stages):
        plan.set_units(k, 100 if s.kind == "statistics" else 50)
    shares = []
    cb = family_progress(plan, lambda stage, d, t, **k: shares.append(k["job"]["fraction"]), len(opts))
    for stage, done, total, curve in (("pair 1/2: statistics", 4, 4, 0), ("pair 1/2: interpolation", 5, 5, 0),
                                      ("pair 1/2: assignment", 3, 3, 1), ("pair 1/2: interpolation", 1, 5, 1),
                                      ("pair 1/2: interpolation", 3, 5, 1), ("pair 2/2: statistics", 1, 4, 2),
                                      ("pair 2/2: assignment", 2, 3, 3), ("pair 2/2: interpolation", 1, 5, 3)):
        now[0] += 1.0
        cb(stage, done, total, overall=(curve, 4))
    assert shares == sorted(shares), shares
    assert shares[3] == pytest.approx((100 + 50 + 10) / 400)  # the first point of the aligned curve, not 3/3


def test_a_check_measured_by_an_earlier_job_counts_in_the_next_jobs_time_left(monkeypatch):
    import permerge.plan as plan_mod
    from permerge.plan import History

    now = [1000.0]
    monkeypatch.setattr(plan_mod.time, "time", lambda: now[0])
    history = History()
    stages = [("load", "load", 0), ("curve", "curve", 100), ("B′ check", "check", 0)]
    first = JobPlan(stages, history)
    for done in (1, 2, 3):
        now[0] += 1.0
        first.report(None, 1, "interpolation", done, 10)
    first.reach(2)
    now[0] += 4.0  # the check takes 4 s
    first.finish()
    assert history["durations"]["check"] == pytest.approx(4.0) and history["rates"]["curve"] == pytest.approx(0.1)
    second, seen = JobPlan(stages, history), []
    second.report(lambda *a, **k: seen.append(k["job"]), 0, "loading", 0, 0)
    assert seen[-1]["eta_s"] == pytest.approx(100 * 0.1 + 4.0)  # known before this job measured anything
    without = JobPlan(stages)  # no history: unknown until measured
    without.report(lambda *a, **k: seen.append(k["job"]), 0, "loading", 0, 0)
    assert seen[-1]["eta_s"] is None
