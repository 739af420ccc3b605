"""A run is an address: the run's record on disk (``permerge.runs``) under a short id that the page
address names (``?run=<id>``), so that a reload or a second tab finds the run and its studies; studies
kept by what they depend on, so that a new residual variant keeps Fig. 4 and the methods tables.
Pages run under AppTest with results put into the job manager (no model runs)."""
from dataclasses import replace

import pytest

pytest.importorskip("streamlit")

from permerge import runs  # noqa: E402
from permerge.align import VANILLA, AlignOptions  # noqa: E402
from permerge.errors import PermergeError  # noqa: E402
from permerge.pipeline import Job  # noqa: E402
from permerge.study import FIG4  # noqa: E402
from test_app_lecture import assert_clean, curve, fake_run, fresh, put, texts  # noqa: E402
from conftest import page_charts  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")  # this module's own result cache (conftest)


# --- the records, without Streamlit -------------------------------------------------------------------

def test_recipes_round_trip_jobs_options_and_pairs():
    job = Job(model_a="/x/a", model_b="/x/b", data="/x/t.txt", tokens=4096, eval_blocks=8)
    pairs = [("/x/a", "/x/b"), ("/x/a", "/x/c")]
    rec = runs.recipe("family_work", base=job, pairs=pairs, options=FIG4, lambdas=21)
    back = runs.decode(runs.encode(runs.decode(rec["args"])))  # and through JSON-able values again
    assert back["base"] == job and hash(back["base"]) == hash(job)  # fractions come back as a tuple
    assert back["pairs"] == pairs and all(isinstance(p, tuple) for p in back["pairs"])
    assert back["options"] == FIG4 and back["lambdas"] == 21
    with pytest.raises(ValueError):
        runs.recipe("os.system", cmd="true")
    with pytest.raises(PermergeError):
        runs.cook(None, {"fn": "__import__", "args": {}})


def test_a_study_belongs_to_every_run_that_agrees_on_what_it_depends_on():
    job = Job(model_a="/x/a", model_b="/x/b", data="/x/t.txt")
    first, other = AlignOptions(residual="first"), AlignOptions(residual="last")
    fig4 = runs.depends(job, lambdas=21)
    matchers = runs.depends(job, first)
    assert runs.belongs(fig4, job, first, 21) and runs.belongs(fig4, job, other, 21)
    assert not runs.belongs(fig4, job, first, 11)
    assert not runs.belongs(fig4, replace(job, tokens=999), first, 21)
    assert runs.belongs(matchers, job, first, 21) and not runs.belongs(matchers, job, other, 21)
    assert runs.belongs({}, job, other, 5)  # the classifier curves depend on nothing of the run


def test_records_are_saved_loaded_and_listed_newest_first(tmp_path):
    job = Job(model_a="/x/a", model_b="/x/b", data="/x/t.txt")
    ids = []
    for k, opts in enumerate((VANILLA, AlignOptions(), AlignOptions(residual="all"))):
        rid = runs.run_id(f"pair:{k}")
        ids.append(rid)
        runs.save(runs.Record(rid, f"pair:{k}", job, opts, 21, {"tokens": 4096}), tmp_path)
    assert [r.id for r in runs.recent(2, tmp_path)] == ids[::-1][:2]
    rec = runs.load(ids[1], tmp_path)
    assert rec.options == AlignOptions() and rec.job == job and rec.form == {"tokens": 4096}
    assert runs.load("../../etc/passwd", tmp_path) is None and runs.load("0" * 10, tmp_path) is None
    (tmp_path / f"{ids[0]}.json").write_text("{not json")
    assert runs.load(ids[0], tmp_path) is None  # a damaged record is no run
    assert ids[0] not in [r.id for r in runs.recent(5, tmp_path)]


# --- the dashboard -------------------------------------------------------------------------------------

def fig4_result(run):
    from permerge import work

    return {"curves": [curve(o, 0.5 - 0.1 * k) for k, o in enumerate(FIG4)],
            "about": work.about(run.job, None, run.lambdas, variants=[o.label() for o in FIG4])}


def saved_run_with_fig4(tag: str):
    """A finished run saved as a record, with a computed Fig. 4 study in it."""
    from dashboard.state import job_key

    run = fake_run(AlignOptions(residual="first"), 0.6, 0.3, tag=tag)
    key4 = job_key("fig4", job=run.job.to_dict(), lambdas=run.lambdas)
    put(key4, fig4_result(run))
    rec = runs.Record(runs.run_id(run.key), run.key, run.job, run.options, run.lambdas, {"tokens": 16384})
    runs.add_study(rec, {"section": "fig4", "key": key4, "label": "Fig. 4 variants",
                         "depends": runs.depends(run.job, lambdas=run.lambdas),
                         "recipe": runs.recipe("curves_work", job=run.job, options=FIG4, lambdas=run.lambdas)})
    runs.save(rec)
    return run, rec


def test_the_address_opens_the_run_and_its_studies_in_a_new_session():
    run, rec = saved_run_with_fig4("addr")
    at = fresh()
    at.query_params["run"] = rec.id  # a reload, a second tab or a bookmark: a new session, the same address
    at.run()
    assert_clean(at)
    assert at.session_state["run"] == run
    sidebar = "\n".join(c.value for c in at.sidebar.caption)
    assert "Current run" in sidebar and "seedAaddr" in sidebar
    at.switch_page("pages/interpolation.py").run()
    assert_clean(at)
    assert "Paper Fig. 4" in texts(at)
    titles = [f.get("layout", {}).get("title", {}).get("text", "") for f in _specs(at)]
    assert any(t.startswith("Fig. 4") for t in titles), titles  # drawn without pressing its button


def _specs(at):
    import json

    return [json.loads(c.proto.spec) for c in page_charts(at)]


def test_an_unknown_address_says_so():
    at = fresh()
    at.query_params["run"] = "0123456789"
    at.run()
    assert_clean(at)
    assert any("does not know" in w.value for w in at.warning)
    assert "run" not in at.session_state or at.session_state["run"] is None


def test_recent_runs_are_listed_in_the_sidebar_and_open():
    run, rec = saved_run_with_fig4("recent")
    at = fresh()
    at.run()
    assert_clean(at)
    button = next(b for b in at.sidebar.button if b.key == f"recent::{rec.id}")
    assert "seedArecent" in button.label and "res:first" in button.label
    # AppTest reruns the page it finished on without app.py; the sidebar is app.py's: run it from the top
    at._finished_page_script_hash = ""
    button.click().run()
    assert_clean(at)
    assert at.query_params["run"] == rec.id  # the address names the opened run
    assert at.session_state["run"] == run


def test_a_variant_change_keeps_the_studies_that_do_not_depend_on_it():
    run, rec = saved_run_with_fig4("variant")
    at = fresh()
    at.query_params["run"] = rec.id
    at.run()
    other = fake_run(AlignOptions(residual="last"), 0.6, 0.35, tag="variant")  # same pair and data
    assert other.job == run.job and other.key != run.key
    at.session_state["run"] = other
    at.switch_page("pages/interpolation.py").run()
    assert_clean(at)
    titles = [f.get("layout", {}).get("title", {}).get("text", "") for f in _specs(at)]
    assert any(t.startswith("Fig. 4") for t in titles), titles
    # another λ grid is another Fig. 4: not shown for it
    third = fake_run(AlignOptions(residual="last"), 0.6, 0.35, tag="variant")
    at.session_state["run"] = replace(third, lambdas=7)
    at.run()
    titles = [f.get("layout", {}).get("title", {}).get("text", "") for f in _specs(at)]
    assert not any(t.startswith("Fig. 4") for t in titles), titles


def test_a_running_study_shows_its_whole_job_line_at_the_top_of_every_page():
    import threading

    from dashboard.state import jobs
    from permerge.plan import JobPlan

    run = fake_run(AlignOptions(), 0.6, 0.3, tag="top")
    release = threading.Event()

    def slow(progress):
        plan = JobPlan([("load", "load", 0), ("vanilla curve", "curve", 100), ("aligned curve", "curve", 100)])
        plan.report(progress, 1, "interpolation", 5, 10)
        release.wait(30)
        return {"curves": []}

    key = "fig4:running-top-test"
    jobs().forget(key)
    jobs().submit(key, slow, "Fig. 4 variants")
    try:
        at = fresh()
        at.session_state["run"] = run
        at.session_state["results"] = [{"section": "fig4", "key": key, "label": "Fig. 4 variants", "depends": {},
                                        "recipe": None}]
        at._finished_page_script_hash = ""
        at.run()  # Start here: not the page the study was started on
        assert_clean(at)
        lines = [p.proto.text for p in at.get("progress")]
        assert any(t.startswith("Fig. 4 variants — stage 2 of 3") and "25% of the job done" in t for t in lines), lines
    finally:
        release.set()
