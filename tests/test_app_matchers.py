"""The "Activation vs weight matching" page under Streamlit's AppTest, and the run page's matcher."""
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from conftest import HAVE_PAIR, page_charts  # noqa: E402
from permerge import zoo  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")  # this module's own result cache (conftest)
ROOT = Path(__file__).resolve().parents[1]
PAGE = "pages/matchers.py"


def fresh() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_the_page_asks_for_a_run_first():
    at = fresh().run()
    at.switch_page(PAGE).run()
    assert_clean(at)
    assert at.title[0].value == "Activation vs weight matching"
    assert any("run an alignment first" in i.value for i in at.info)
    assert not page_charts(at)


def test_the_run_page_offers_the_matcher_and_the_job_carries_it(monkeypatch):
    from dashboard import state

    submitted = []
    monkeypatch.setattr(state.JobManager, "submit", lambda self, key, fn, label="": submitted.append(key))
    at = fresh().run().switch_page("pages/run.py").run()
    box = at.radio(key="matcher")
    assert box.value == "activation"
    box.set_value("weight").run()
    assert_clean(at)
    [b for b in at.button if b.label == "Run alignment"][0].click().run()
    assert submitted and '"matcher": "weight"' in submitted[0]


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_PAIR, reason="the bundled default pair (mlm-seed1, mlm-seed2) is not built")
def test_both_matchers_on_the_runs_pair():
    from dashboard import state
    from dashboard.state import Run
    from permerge.align import AlignOptions
    from permerge.pipeline import Job

    a, b = zoo.DEFAULT_PAIR
    paths = {e["name"]: e["path"] for e in zoo.list_checkpoints()}
    job = Job(paths[a], paths[b], str(zoo.align_text()), tokens=2048, eval_data=str(zoo.eval_text()), eval_blocks=4,
              device="cpu")
    at = fresh()
    at.session_state["run"] = Run(job, AlignOptions(), 3, "test-matchers")
    at.run().switch_page(PAGE).run()
    assert_clean(at)
    assert not page_charts(at)
    [w for w in at.number_input if w.label == "λ points"][0].set_value(3)
    [x for x in at.button if x.label == "Compare the matchers"][0].click().run()
    # The result can show in a run that began while the job was still marked running: that run also
    # draws the job's partial curve.  So the final run is one that began after the job had ended.
    t0 = time.time()
    while True:
        ended = not any(h.active for k, h in list(state.jobs()._jobs.items()) if k.startswith("matchers:"))
        at.run()
        assert_clean(at)
        if ended and any(s.value.startswith("Barriers") for s in at.subheader):
            break
        assert time.time() - t0 < 600, "the matcher comparison did not finish in 10 minutes"
        time.sleep(1.0)
    assert len(page_charts(at)) == 3  # barriers, curves, agreement (no partial curve)
    pair = "zoo:mlm-seed1 | zoo:mlm-seed2"
    for sub in at.subheader:  # every result names the pair it belongs to
        assert "mlm-seed1" in sub.value and "mlm-seed2" in sub.value, sub.value
    captions = "\n".join(c.value for c in at.caption)
    assert pair in captions and "share of A's units" in captions and "random permutations" in captions
    bars = at.dataframe[0].value
    assert list(bars["method"]) == ["vanilla", "FF + attn:head-perm", "weights: FF + attn:head-perm"]
    assert bars["barrier_se"].notna().all()
    heads = at.dataframe[1].value
    assert len(heads) == 4 and heads["heads_weight"].str.split().map(len).eq(4).all()  # 4 layers, 4 heads each


def test_the_page_is_a_thin_view():
    """No computation on the page: the work and the agreement come from the library."""
    src = (ROOT / PAGE).read_text()
    for bad in ("run.pipe", ".curve(", ".alignment(", ".stats(", "np.", "numpy", "mean(", "weight_match"):
        assert bad not in src, bad
    assert 'st.Page("pages/matchers.py"' in (ROOT / "app.py").read_text()


def test_a_weight_matched_run_studies_the_amount_of_data_with_activation_matching():
    from dashboard.state import Run
    from permerge.align import AlignOptions
    from permerge.pipeline import Job

    job = Job("a", "b", str(zoo.align_text()), tokens=2048)
    at = fresh()
    at.session_state["run"] = Run(job, AlignOptions(matcher="weight"), 3, "test-weight-run")
    at.run().switch_page("pages/data_amount.py").run()
    assert not at.exception
    text = "\n".join(c.value for c in at.caption) + "\n".join(i.value for i in at.info)
    assert "reads no data" in text and "Press **Compute** to evaluate FF + attn:head-perm at" in text
