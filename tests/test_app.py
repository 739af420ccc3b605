"""Every dashboard page under Streamlit's AppTest: without a result, then after a real run on the
bundled default pair (small settings: 2048 tokens, 5 lambdas, 4 evaluation blocks)."""
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from permerge import zoo  # noqa: E402

PAGES = {
    "pages/correlations.py": "Correlations",
    "pages/features.py": "Feature correlation",
    "pages/interpolation.py": "Interpolation",
    "pages/methods.py": "Methods",
    "pages/data_amount.py": "Amount of data",
    "pages/export.py": "Export",
}
HAVE_PAIR = all(n in {e["name"] for e in zoo.list_checkpoints()} for n in zoo.DEFAULT_PAIR)


@pytest.fixture(scope="module", autouse=True)
def app_env(tmp_path_factory):
    """A fresh result cache for this module, and the app's working directory."""
    old = os.environ.get("PERMERGE_CACHE")
    os.environ["PERMERGE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    cwd = os.getcwd()
    os.chdir(ROOT)
    from permerge import ui_state

    ui_state.registry.clear()  # the per-process registry must use this module's cache
    yield
    ui_state.registry.clear()
    os.chdir(cwd)
    if old is None:
        os.environ.pop("PERMERGE_CACHE", None)
    else:
        os.environ["PERMERGE_CACHE"] = old


ROOT = Path(__file__).resolve().parents[1]


def fresh() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)


def run_page() -> AppTest:
    """The app opened on the run page (the app itself opens on the start page)."""
    return fresh().run().switch_page("pages/run.py").run()


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not [e for e in at.error if "fail" in e.value.lower()], [e.value for e in at.error]


def test_run_page_without_result():
    at = run_page()
    assert_clean(at)
    assert at.title[0].value == "Pick and run"
    labels = {w.label for w in at.number_input}
    assert {"Alignment tokens", "λ points"} <= labels
    assert {w.label for w in at.selectbox} >= {"Attention", "Residual stream", "Device"}
    assert any(b.label == "Run alignment" for b in at.button)
    if HAVE_PAIR:
        assert any("Compatible" in s.value for s in at.success)
        assert at.dataframe  # the two config summaries


def test_non_preserving_choice_is_marked():
    at = run_page()
    [s for s in at.selectbox if s.label == "Attention"][0].set_value("ignore-heads").run()
    assert_clean(at)
    assert any("Not function-preserving" in w.value for w in at.warning)


def test_incompatible_pair_reason(tmp_path):
    at = run_page()
    at.radio(key="src_B").set_value("local folder or hub id").run()
    at.text_input(key="path_B").set_value(str(tmp_path / "missing")).run()
    assert_clean(at)
    assert any("not found" in e.value for e in at.error)
    assert [b for b in at.button if b.label == "Run alignment"][0].disabled


def test_missing_data_file_is_reported(tmp_path):
    at = run_page()
    at.radio[2].set_value("text file").run()
    at.text_input[0].set_value(str(tmp_path / "nope.txt")).run()
    assert_clean(at)
    assert any("data not found" in e.value for e in at.error)
    assert [b for b in at.button if b.label == "Run alignment"][0].disabled


@pytest.mark.parametrize("page", list(PAGES))
def test_pages_without_result(page):
    at = fresh().run()
    at.switch_page(page).run()
    assert_clean(at)
    assert at.title[0].value == PAGES[page]
    assert any("run an alignment first" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def _set(at, label, value):
    [w for w in at.number_input if w.label == label][0].set_value(value)


def start_small_run(lambdas: int):
    """The default pair on the CPU with 2048 tokens and 4 evaluation blocks; press Run."""
    at = run_page()
    _set(at, "Alignment tokens", 2048)
    _set(at, "λ points", lambdas)
    _set(at, "MLM evaluation blocks (128 tokens each)", 4)
    [s for s in at.selectbox if s.label == "Device"][0].set_value("cpu")
    at.run()
    [b for b in at.button if b.label == "Run alignment"][0].click().run()
    return at


@pytest.mark.skipif(not HAVE_PAIR, reason="the bundled default pair (mlm-seed1, mlm-seed2) is not built")
def test_run_then_every_page(tmp_path):
    at = start_small_run(5)
    assert_clean(at)
    t0 = time.time()
    while "run" not in at.session_state and time.time() - t0 < 120:
        time.sleep(1.0)
        at.run()
        assert_clean(at)
    assert "run" in at.session_state, "the run did not finish in time"
    at.run()
    metrics = {m.label: m.value for m in at.metric}
    assert "Barrier, vanilla averaging" in metrics and "Max |logit error| of B′ vs B" in metrics
    assert any("computes B's function" in s.value for s in at.success)
    assert len(at.get("plotly_chart")) == 2

    at.switch_page("pages/correlations.py").run()
    assert_clean(at)
    assert len(at.get("plotly_chart")) == 6  # before, after, histogram, head cost, two head blocks
    assert at.dataframe  # parameters the group touches
    at.selectbox[0].set_value("ff.0").run()
    assert_clean(at)
    assert len(at.get("plotly_chart")) == 3

    at.switch_page("pages/features.py").run()
    assert_clean(at)
    assert len(at.get("plotly_chart")) == 1
    at.radio[0].set_value("every group aligned").run()
    assert_clean(at)

    at.switch_page("pages/interpolation.py").run()
    assert_clean(at)
    assert len(at.get("plotly_chart")) == 2
    [b for b in at.button if b.label == "Compute the Fig. 4 variants"][0].click().run()
    _wait(at, "fig4_key")
    assert len(at.get("plotly_chart")) == 4
    at.number_input(key="fam_pairs").set_value(1)
    at.number_input(key="fam_lambdas").set_value(5)  # same pair and settings as the run: served from the cache
    at.run()
    [b for b in at.button if b.label == "Compute the family curves"][0].click().run()
    _wait(at, "family_key")
    assert len(at.get("plotly_chart")) == 6

    at.switch_page("pages/data_amount.py").run()
    assert_clean(at)
    at.number_input[0].set_value(3)
    [b for b in at.button if b.label == "Compute"][0].click().run()
    _wait(at, "amount_key")
    assert len(at.get("plotly_chart")) == 1

    at.switch_page("pages/export.py").run()
    assert_clean(at)
    labels = [b.label for b in at.get("download_button")]
    assert any("Permutations" in x for x in labels) and any(".csv" in x for x in labels)
    assert len(at.get("plotly_chart")) == 1
    out = tmp_path / "merged"
    at.text_input[0].set_value(str(out)).run()
    [b for b in at.button if b.label == "Save merged model"][0].click().run()
    _wait(at, "export_key")  # the export runs as a job, off the script thread
    assert any("Saved to" in s.value for s in at.success)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()

    at.switch_page("pages/methods.py").run()
    assert_clean(at)
    at.multiselect[0].set_value(["Table 1"])
    [w for w in at.number_input if w.label == "Pairs"][0].set_value(1)
    [w for w in at.number_input if w.label == "λ points"][0].set_value(3)
    at.run()
    [b for b in at.button if b.label == "Compute the tables"][0].click().run()
    _wait(at, "methods_key")
    assert at.dataframe and len(at.get("plotly_chart")) == 1


def _wait(at, state_key, timeout=90):
    from permerge.ui_state import jobs

    key = at.session_state[state_key]
    key = key[0] if isinstance(key, tuple) else key
    t0 = time.time()
    while jobs().get(key).active and time.time() - t0 < timeout:
        time.sleep(0.5)
    assert jobs().get(key).state == "done", jobs().get(key).snapshot()
    at.run()
    assert_clean(at)


@pytest.mark.skipif(not HAVE_PAIR, reason="the bundled default pair (mlm-seed1, mlm-seed2) is not built")
def test_cancel_shows_a_note():
    """Same pair and statistics as above, more lambda points: cancelled during interpolation."""
    at = start_small_run(41)
    cancel = [b for b in at.button if b.label == "Cancel"]
    assert cancel, "no Cancel button while the job runs"
    cancel[0].click().run()
    from permerge.ui_state import jobs

    key = at.session_state["pending_run"].key
    t0 = time.time()
    while jobs().get(key).active and time.time() - t0 < 60:
        time.sleep(0.3)
    assert jobs().get(key).state == "cancelled"
    at.run()
    assert_clean(at)
    assert any("cancelled" in w.value for w in at.warning)
    jobs().forget(key)
