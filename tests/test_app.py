"""Every dashboard page under Streamlit's AppTest: without a result, then after a real run on the
bundled default pair (small settings: 2048 tokens, 5 lambdas, 4 evaluation blocks)."""
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from conftest import HAVE_PAIR, page_charts  # noqa: E402
from permerge import zoo  # noqa: E402

PAGES = {
    "pages/correlations.py": "Correlations",
    "pages/features.py": "Feature correlation",
    "pages/interpolation.py": "Interpolation",
    "pages/methods.py": "Methods",
    "pages/data_amount.py": "Amount of data",
    "pages/export.py": "Export",
}
pytestmark = pytest.mark.usefixtures("app_env")  # this module's own result cache (conftest)


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
    assert not page_charts(at)


def _set(at, label, value):
    [w for w in at.number_input if w.label == label][0].set_value(value)


def start_small_run(lambdas: int):
    """The default pair on the CPU with 2048 tokens and 4 evaluation blocks; press Run."""
    at = run_page()
    _set(at, "Alignment tokens", 2048)
    _set(at, "λ points", lambdas)
    _set(at, "Masked-LM evaluation blocks (128 tokens each)", 4)
    [s for s in at.selectbox if s.label == "Device"][0].set_value("cpu")
    at.run()
    [b for b in at.button if b.label == "Run alignment"][0].click().run()
    return at


def _wait_run(at, timeout=180):
    t0 = time.time()
    while "pending_run" in at.session_state and time.time() - t0 < timeout:
        time.sleep(1.0)
        at.run()
        assert_clean(at)
    assert "run" in at.session_state and "pending_run" not in at.session_state, "the run did not finish in time"
    at.run()


def _texts(at) -> str:
    """Everything a reader sees as text on the page (markdown, captions, metrics, subheaders)."""
    parts = [e.value for e in list(at.markdown) + list(at.caption) + list(at.subheader) + list(at.success)
             + list(at.info) + list(at.warning)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    return "\n".join(str(p) for p in parts)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_PAIR, reason="the bundled default pair (mlm-seed1, mlm-seed2) is not built")
def test_run_then_every_page(tmp_path):
    at = start_small_run(5)
    assert_clean(at)
    _wait_run(at)
    metrics = {m.label: m.value for m in at.metric}
    assert "Barrier, vanilla averaging" in metrics and "Max |logit error| of B′ vs B" in metrics
    assert "±" in metrics["Barrier, vanilla averaging"]  # the barrier's standard error beside it
    assert any("computes B's function" in s.value and "float64" in s.value for s in at.success)
    assert len(page_charts(at)) == 2
    assert "zoo:mlm-seed1" in _texts(at)  # an unambiguous name

    at.switch_page("pages/correlations.py").run()
    assert_clean(at)
    assert len(page_charts(at)) == 6  # before, after, histogram, head cost, two head blocks
    assert at.dataframe  # parameters the group touches
    at.selectbox[0].set_value("ff.0").run()
    assert_clean(at)
    assert len(page_charts(at)) == 3

    at.switch_page("pages/features.py").run()
    assert_clean(at)
    _wait_job(at, lambda: _key_of("features"))
    assert len(page_charts(at)) == 1
    at.radio[0].set_value("every group aligned").run()
    _wait_job(at, lambda: _key_of("features"))
    import plotly.io as pio

    from permerge import plots

    fig = pio.from_json(page_charts(at)[0].proto.spec)
    assert {t.type for t in fig.data} == {"bar"}  # grouped bars per layer by default
    after = {t.marker.color for t in fig.data if t.name == "after"}
    assert after == {plots.method_color("FF + attn:head-perm + res:separate")}  # the shown options' colour
    before = {t.marker.color for t in fig.data if t.name == "before"}
    assert before == {plots.method_color("vanilla")}

    at.switch_page("pages/interpolation.py").run()
    assert_clean(at)
    assert len(page_charts(at)) == 2
    if zoo.list_checkpoints(kind="classifier"):  # the classifier section opens on a task the models learned
        picked = at.multiselect(key="cls_tasks").value
        assert picked and set(picked) <= set(zoo.learned_tasks()), picked
        for t in {e["task"] for e in zoo.list_checkpoints(kind="classifier")} - set(zoo.learned_tasks()):
            assert any("Near chance" in c.value and f"{t}: dev accuracy" in c.value for c in at.caption), t
    [b for b in at.button if b.label == "Compute the Fig. 4 variants"][0].click().run()
    _wait_section(at, "fig4")
    assert len(page_charts(at)) == 4
    at.number_input(key="fam_lambdas").set_value(5)  # this run's pair and settings: served from the cache
    at.run()
    [b for b in at.button if b.label == "Compute the curves over pairs"][0].click().run()
    _wait_section(at, "family")
    assert len(page_charts(at)) == 6
    assert "zoo:mlm-seed1 | zoo:mlm-seed2" in _texts(at)

    at.switch_page("pages/data_amount.py").run()
    assert_clean(at)
    at.number_input[1].set_value(3)
    [b for b in at.button if b.label == "Compute"][0].click().run()
    _wait_section(at, "amount")
    assert len(page_charts(at)) == 1
    amount = at.dataframe[-1].value
    assert amount["tokens"].nunique() > 3, amount  # the default amount gives more than 3 distinct points

    at.switch_page("pages/export.py").run()
    assert_clean(at)
    labels = [b.label for b in at.get("download_button")]
    assert any("Permutations" in x for x in labels) and any(".csv" in x for x in labels)
    assert len(page_charts(at)) == 1
    out = Path(os.environ["PERMERGE_CACHE"]).resolve() / "exports" / "merged"  # the page writes only there
    at.text_input[0].set_value("merged").run()
    [b for b in at.button if b.label == "Save merged model"][0].click().run()
    _wait(at, "export_key")  # the export runs as a job, off the script thread
    assert any("Saved to" in s.value for s in at.success)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()

    at.switch_page("pages/methods.py").run()
    assert_clean(at)
    at.multiselect[0].set_value(["Table 1"])
    [w for w in at.number_input if w.label == "λ points"][0].set_value(3)
    at.run()
    [b for b in at.button if b.label == "Compute the tables"][0].click().run()
    _wait_section(at, "methods")
    assert at.dataframe and len(page_charts(at)) == 1
    table = at.dataframe[0].value
    assert "None" not in table.astype(str).values and "nan" not in table.astype(str).values
    assert any("One pair" in c.value for c in at.caption)
    # a folder of the user's checkpoints gives all its pairs (here: links to three bundled seeds)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for n in ("mlm-seed1", "mlm-seed2", "mlm-seed3"):
        (seeds / n).symlink_to(zoo.get_checkpoint(n)["path"])
    at.radio(key="methods_source").set_value("a folder of checkpoints (all its pairs)").run()
    at.text_input(key="methods_folder").set_value(str(seeds)).run()
    assert_clean(at)
    assert at.number_input(key="methods_n").max == 3  # three seeds, three pairs
    assert any("Pairs: " in c.value and "zoo:mlm-seed2 | zoo:mlm-seed3" in c.value for c in at.caption)  # links resolve

    # back on Pick and run: the form shows the run's settings, not the defaults
    at.switch_page("pages/run.py").run()
    assert_clean(at)
    assert [w for w in at.number_input if w.label == "Alignment tokens"][0].value == 2048
    assert [w for w in at.number_input if w.label == "λ points"][0].value == 5
    assert not any("settings above differ" in c.value for c in at.caption)

    # a second pair: no page shows the first pair's figures under its title
    first = at.session_state["run"]
    at.selectbox(key="bundled_B").set_value("mlm-seed3").run()
    [b for b in at.button if b.label == "Run alignment"][0].click().run()
    _wait_run(at)
    assert at.session_state["run"].key != first.key
    assert "zoo:mlm-seed3" in _texts(at)
    at.switch_page("pages/interpolation.py").run()
    _wait_job(at, lambda: at.session_state["run"].key)
    assert len(page_charts(at)) == 2  # this pair only: the first pair's Fig. 4 and family are not shown
    text = _texts(at)
    assert "zoo:mlm-seed3" in text and "zoo:mlm-seed2" not in text
    for page in ("pages/methods.py", "pages/data_amount.py"):
        at.switch_page(page).run()
        assert_clean(at)
        assert not page_charts(at), page  # the first pair's result belongs to the first run
        assert "zoo:mlm-seed2" not in _texts(at), page


def _key_of(prefix):
    from dashboard.state import jobs

    return [k for k in jobs()._jobs if k.startswith(prefix + ":")][-1]


def _wait_job(at, key_fn, timeout=120):
    from dashboard.state import jobs

    key = key_fn()
    t0 = time.time()
    while jobs().get(key).active and time.time() - t0 < timeout:
        time.sleep(0.5)
    assert jobs().get(key).state == "done", jobs().get(key).snapshot()
    at.run()
    assert_clean(at)


def _wait(at, state_key, timeout=90):
    """Wait for the job whose key a page keeps in session_state[state_key]."""
    _wait_job(at, lambda: at.session_state[state_key], timeout)


def _wait_section(at, section, timeout=120):
    _wait_job(at, lambda: next(s["key"] for s in reversed(at.session_state["results"]) if s["section"] == section),
              timeout)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_PAIR, reason="the bundled default pair (mlm-seed1, mlm-seed2) is not built")
def test_cancel_shows_a_note():
    """Same pair and statistics as above, more lambda points: cancelled during interpolation."""
    at = start_small_run(41)
    cancel = [b for b in at.button if b.label == "Cancel"]
    assert cancel, "no Cancel button while the job runs"
    cancel[0].click().run()
    from dashboard.state import jobs

    key = at.session_state["pending_run"].key
    t0 = time.time()
    while jobs().get(key).active and time.time() - t0 < 60:
        time.sleep(0.3)
    assert jobs().get(key).state == "cancelled"
    at.run()
    assert_clean(at)
    assert any("cancelled" in w.value for w in at.warning)
    jobs().forget(key)


MY_PAGES = ["app.py", "pages/run.py", "pages/interpolation.py", "pages/methods.py", "pages/data_amount.py",
            "pages/features.py", "pages/steps.py"]


def fresh_python(code: str) -> str:
    """What ``code`` prints in a fresh interpreter (in the repository), which must not fail."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.slow
def test_the_package_never_imports_streamlit():
    code = ("import importlib, pkgutil, sys, permerge\n"
            "for m in pkgutil.walk_packages(permerge.__path__, 'permerge.'):\n"
            "    if '.zoo.' not in m.name and not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
            "print('streamlit' in sys.modules)")
    assert fresh_python(code) == "False"
    assert not (ROOT / "permerge" / "ui_state.py").exists()


@pytest.mark.parametrize("page", MY_PAGES)
def test_pages_are_thin_views(page):
    """Computation goes through the job manager (no pipeline calls on the script thread) and no
    page names a model class."""
    src = (ROOT / page).read_text()
    for bad in ("BertFor", "run.pipe", ".curve(", ".alignment(", ".stats(", "function_check"):
        assert bad not in src, (page, bad)


def test_idle_server_does_not_watch_files():
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["fileWatcherType"] == "none"


def test_no_full_garbage_collection_after_each_script_run():
    """A running job's progress line reruns part of the page every second or two; Streamlit's
    collection after each run (a full gc.collect over torch's and transformers' objects, a tenth of
    a second or more holding the interpreter lock) slowed the job itself.  Off in the checkout's
    config, and `permerge dashboard` passes every setting of that config on its command line."""
    import tomllib

    from permerge import serve

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["runner"]["postScriptGC"] is False
    argv = serve.streamlit_argv(ROOT / "app.py")
    given = {}
    for k, v in zip(argv[5::2], argv[6::2]):
        given.setdefault(k, []).append(v)
    for section, options in cfg.items():
        for name, value in options.items():
            want = [str(x) for x in value] if isinstance(value, list) else [str(value).lower() if isinstance(value, bool)
                                                                            else str(value)]
            assert given.get(f"--{section}.{name}") == want, (section, name, given.get(f"--{section}.{name}"))


def test_statistics_precision_is_offered_and_reaches_the_job(monkeypatch):
    """The run page offers the statistics-pass precision and the job it starts carries the choice."""
    from dashboard import state

    submitted = []
    monkeypatch.setattr(state.JobManager, "submit", lambda self, key, fn, label="": submitted.append(key))
    at = run_page()
    box = [s for s in at.selectbox if s.label == "Statistics-pass precision"]
    assert box and box[0].value == "auto"
    box[0].set_value("bf16").run()
    assert_clean(at)
    [b for b in at.button if b.label == "Run alignment"][0].click().run()
    assert submitted and '"precision": "bf16"' in submitted[0]


@pytest.mark.slow
def test_the_first_page_freezes_the_imported_modules_for_the_collector():
    """After a fresh process's first page, full collections skip the imported modules (torch,
    transformers, permerge, Streamlit): they are in the permanent generation, few objects are left
    for the collector to walk, and a second page freezes nothing more (the count only shrinks as
    frozen objects are freed)."""
    code = ("import gc\n"
            "from streamlit.testing.v1 import AppTest\n"
            "at = AppTest.from_file('app.py', default_timeout=120).run()\n"
            "assert not at.exception, [e.value for e in at.exception]\n"
            "frozen = gc.get_freeze_count()\n"
            "at.run()\n"
            "print(frozen > 100_000, gc.get_freeze_count() <= frozen, len(gc.get_objects()) < frozen // 10)")
    assert fresh_python(code) == "True True True"


def test_the_cache_stores_curves_without_importing_the_pipeline():
    """The cache knows the values it stores (permerge.results), not the stages that compute them: a
    curve goes through the cache and back with permerge.pipeline never imported."""
    code = ("import sys\n"
            "from permerge.cache import decode, encode\n"
            "from permerge.results import CurveResult\n"
            "c = CurveResult('vanilla', {}, [{'lambda': 0.0, 'loss': 1.5}], 0.1, 0.5, 1.0, 1.2, True)\n"
            "assert decode(encode(c)) == c\n"
            "print('permerge.pipeline' in sys.modules)")
    assert fresh_python(code) == "False"
