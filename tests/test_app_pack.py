"""Figures to take away (PNG / SVG / CSV under every chart, the lecture pack), the presenter view,
user strings shown as plain text, and the Export page's folder rules."""
import html as htmlmod
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from permerge import zoo  # noqa: E402
from conftest import page_charts  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")  # this module's own result cache (conftest)
ROOT = Path(__file__).resolve().parents[1]
HOSTILE = ["![p](http://x/y.png)", "**bold**", "<img src=x onerror=alert(1)>", "[link](http://x)", "$x^2$",
           ":smile: :red[red]", "# heading", "- item\n1. item", "a_b_c *d* ~~e~~ `f` | g", "www.example.com",
           "me@example.com", "&amp; &lt;", "back\\slash", "zoo:red[x] y:blue :small[s] :help[h]",
           "https://example.com/x"]


def render(markdown: str) -> str:
    """CommonMark (with GFM tables and strikethrough) as HTML: what a Markdown renderer makes of it."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(markdown)


def text_of(rendered: str) -> str:
    return htmlmod.unescape(re.sub(r"<[^>]+>", "", rendered)).replace("\u200b", "").strip()


TAGS = re.compile(r"<(img|a|strong|em|h\d|li|ol|ul|del|s|table|code|script)\b", re.I)


@pytest.mark.parametrize("value", HOSTILE)
def test_md_shows_a_users_string_as_typed(value):
    from dashboard.text import md, plot_text

    out = render(md(value))
    assert not TAGS.search(out), (value, out)
    assert text_of(out).split() == value.split(), (value, out)
    assert "$" not in md(value).replace("\\$", "")  # no LaTeX
    assert not re.search(r":[\w/+-]+:", md(value).replace("\\", ""))  # no emoji short code
    assert not re.search(r"(?<!\\)://|[wW]{3}\.", md(value))  # no bare web address
    assert not re.search(r"(?<!\\):(red|blue|small|help)\b", md(value))  # no colour or other directive
    assert "<" not in plot_text(value) and (">" not in plot_text(value))


def test_md_leaves_plain_names_alone():
    from dashboard.text import md

    assert md("zoo:mlm-seed1") == "zoo:mlm-seed1" and md("/data/run 3/align.txt") == "/data/run 3/align.txt"


def fresh() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)


def assert_clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_hostile_paths_reach_the_run_page_as_plain_text(tmp_path):
    at = fresh().run().switch_page("pages/run.py").run()
    bad = f"{tmp_path}/![p](http://x/y.png) **bold** :red[r]"  # typed, so the // stays
    at.radio(key="src_A").set_value("local folder or hub id").run()
    at.text_input(key="path_A").set_value(bad).run()
    at.radio(key="data_kind").set_value("text file").run()
    at.text_input(key="data_path").set_value(f"{tmp_path}/**data** ![q](http://x/q.png).txt").run()
    assert_clean(at)
    errors = [e.value for e in at.error]
    assert len(errors) >= 2, errors
    for e in errors:
        out = render(e)
        assert not TAGS.search(out), out
    shown = " ".join(text_of(render(e)) for e in errors)
    assert "![p](http://x/y.p" in shown and "**data** ![q](http://x/q.png).txt" in shown  # as typed


def test_safe_file_names():
    from permerge.report import MAX_NAME, safe_name

    n = safe_name("../../etc/passwd", "![p](http://x/y.png)", "FF + attn:head-perm", "x" * 400)
    assert re.fullmatch(r"[A-Za-z0-9._+-]+", n) and len(n) <= MAX_NAME, n
    assert not n.startswith((".", "-")) and "/" not in n and ".." not in n.split("__")[0][:2]
    assert safe_name("mlm-seed1", "mlm-seed2", "curves", "loss") == "mlm-seed1__mlm-seed2__curves__loss"
    assert safe_name("FF + attn:head-perm") == "FF+attn-head-perm"
    assert safe_name("", None, "///") == "figure"


def test_chart_data_as_csv():
    from permerge import plots
    from permerge.report import figure_table, table_csv

    C = np.arange(6.0).reshape(2, 3) / 10
    t = figure_table(plots.heatmap(C))
    assert len(t) == 6 and set(t.columns) >= {"row", "column", "value"}
    assert np.allclose(sorted(t["value"]), sorted(C.ravel()))
    csv = table_csv(C).decode().splitlines()
    assert csv[0] == "row,0,1,2" and len(csv) == 3
    assert table_csv(pd.DataFrame({"a": [1]})).decode().splitlines() == ["a", "1"]


def _curve(method, fp=True, top=0.6):
    from permerge.pipeline import CurveResult

    rows = [{"lambda": x, "loss": 2 + top * (1 - (2 * x - 1) ** 2), "pseudo_perplexity": 9.0} for x in (0, 0.5, 1)]
    return CurveResult(method=method, options={}, rows=rows, barrier=top, barrier_lambda=0.5, loss_a=2.0,
                       loss_b=2.0, function_preserving=fp, barrier_se=0.01, items=100)


def test_lecture_pack_is_one_offline_page_with_the_runs_results():
    from permerge import __version__
    from permerge.report import lecture_pack

    evil = "<script>alert(1)</script>![p](http://x/y.png)"
    bars = pd.DataFrame([{"pair": "a | b", "method": o.label(), "barrier": 0.5, "barrier_se": 0.01}
                         for o in __import__("permerge.study", fromlist=["TABLE1"]).TABLE1])
    page = lecture_pack(pair=(evil, "zoo:mlm-seed2"), about="pair x | y; data align.txt", settings={"tokens": 2048},
                        curves=[_curve("vanilla"), _curve("FF + attn:head-perm", top=0.2)],
                        check={"equivalent": True, "max_rel_logit_error": 3e-7, "max_rel_logit_error_float64": 1e-15},
                        function_preserving=True, methods=bars)
    assert page.startswith("<!DOCTYPE html>")
    # no address to fetch: every script and stylesheet is inline
    assert not re.search(r"<(script|link|img|iframe)[^>]*(src|href)\s*=\s*[\"']?(https?:)?//", page, re.I)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js inlined
    assert "Equivalent." in page and "1.0e-15" in page
    assert f"permerge {__version__}" in page
    assert "0.600" in page and "0.200" in page and "67% lower" in page  # the figures, and the verdict from them
    assert "Table 1: attention variants" in page
    assert "To include Fig. 4: open Interpolation" in page and "To include Fig. 7: open Amount of data" in page


def test_download_menu_under_a_chart_and_presenter_view():
    """(AppTest reruns only the page script after the first run, so the tour's Next / arrow keys are
    checked in the browser test; here the first run of each view.)"""
    at = fresh().run()
    assert_clean(at)
    assert at.title[0].value == "Start here"
    assert at.toggle(key="presenter_toggle").value is False  # offered in the sidebar
    if page_charts(at):  # the bundled measurement is drawn: its downloads are offered
        labels = [b.label for b in at.get("download_button")]
        assert {"PNG image", "SVG image", "Data (CSV)"} <= set(labels), labels
        names = [text_of(render(b.proto.help)) for b in at.get("download_button")]  # the help names the file
        assert "loss-along-lambda__bundled-pair.png" in names, names
        assert all(b.proto.deferred_file_id for b in at.get("download_button"))  # made on request only

    at = fresh()
    at.session_state["presenter_view"] = True
    at.run()
    assert_clean(at)
    text = " ".join(m.value for m in at.markdown)
    assert "Step 1 of 5: Start here." in text
    css = " ".join(m.value for m in at.markdown if "<style>" in m.value)
    assert "font-size" in css and "stSidebar" in css  # larger type, the sidebar's controls hidden
    assert at.button(key="presenter_next").proto.shortcut.lower() in ("right", "arrowright")
    assert at.button(key="presenter_back").disabled
    assert at.button(key="presenter_leave")


def _wait_run(at, timeout=180):
    t0 = time.time()
    while "pending_run" in at.session_state and time.time() - t0 < timeout:
        time.sleep(0.5)
        at.run()
        assert_clean(at)
    assert "run" in at.session_state, "the run did not finish in time"
    at.run()


def _wait_export(at, timeout=90):
    from dashboard.state import jobs

    key = at.session_state["export_key"]
    t0 = time.time()
    while jobs().get(key).active and time.time() - t0 < timeout:
        time.sleep(0.3)
    at.run()


@pytest.mark.slow
@pytest.mark.skipif(len(zoo.list_checkpoints(kind="classifier", task="style")) < 2,
                    reason="the bundled style classifiers are not built")
def test_export_page_for_a_classifier_run_without_labels_and_its_folder_rules(tmp_path):
    """A classifier pair aligned on unlabelled text: one clear line instead of a DataError box; the
    default folder is under PERMERGE_CACHE; `../escape` is refused and clears an earlier "Saved to"."""
    import shutil

    a, b = [e["name"] for e in zoo.list_checkpoints(kind="classifier", task="style")][:2]
    hostile = tmp_path / "**bold** ![p](x.png) :red[r] $x$"  # A, under a name a page must not render
    shutil.copytree(zoo.get_checkpoint(a)["path"], hostile)
    at = fresh().run().switch_page("pages/run.py").run()
    at.radio(key="src_A").set_value("local folder or hub id").run()
    at.text_input(key="path_A").set_value(str(hostile)).run()
    at.selectbox(key="bundled_B").set_value(b).run()
    at.radio(key="data_kind").set_value("bundled alignment text").run()
    at.selectbox(key="eval_task").set_value("none (align only)")
    at.number_input(key="tokens").set_value(256)
    at.number_input(key="lambdas").set_value(3)
    at.selectbox(key="device").set_value("cpu")
    at.run()
    [x for x in at.button if x.label == "Run alignment"][0].click().run()
    _wait_run(at)
    assert_clean(at)
    shown = [e.value for e in list(at.markdown) + list(at.caption) + list(at.subheader) + list(at.success)
             + list(at.info) + list(at.warning) + list(at.error) if "<style>" not in e.value]
    assert any(str(hostile) in text_of(render(v)) for v in shown), shown  # the name is shown, as typed
    with_name = [v for v in shown if "bold" in v]  # the elements that show A's name
    assert len(with_name) >= 2, with_name
    for v in with_name:  # (the sidebar and the result line put names in <code title="full path">)
        out = render(re.sub(r'<code title="[^"]*">|</code>', "", v))
        assert not TAGS.search(out) and "$x$" not in re.sub(r'title="[^"]*"', "", v), v

    at.switch_page("pages/export.py").run()
    assert_clean(at)
    assert any("no evaluation data with labels" in i.value for i in at.info)
    exports = Path(os.environ["PERMERGE_CACHE"]).resolve() / "exports"
    folder = at.text_input[0]
    assert Path(folder.value).parent == exports, folder.value
    assert "Lecture pack (.html)" in [x.label for x in at.get("download_button")]

    folder.set_value("first").run()
    [x for x in at.button if x.label == "Save merged model"][0].click().run()
    _wait_export(at)
    assert any("Saved to" in s.value for s in at.success)
    assert (exports / "first" / "config.json").is_file()

    for bad in ("../escape", str(exports.parent / "outside"), str(exports)):
        at.text_input[0].set_value(bad).run()
        [x for x in at.button if x.label == "Save merged model"][0].click().run()
        assert_clean(at)
        assert any("Cannot export there" in e.value and "exports folder" in e.value for e in at.error), bad
        assert not any("Saved to" in s.value for s in at.success), bad  # no stale success under a refusal
    assert not (exports.parent / "escape").exists() and not (exports.parent / "outside").exists()


def test_lecture_pack_has_heatmaps_residual_verdict_matchers_and_classifiers():
    import numpy as np

    from permerge.report import lecture_pack
    from permerge.study import TABLE2, barriers_frame, curves_frame

    residual = [_curve(o.label(), top=t) for o, t in zip([o for o in TABLE2 if o.function_preserving],
                                                         (0.6, 0.5, 0.7, 0.3))]
    match = [_curve("vanilla"), _curve("FF + attn:head-perm", top=0.2), _curve("weights: FF + attn:head-perm", top=0.3)]
    cls = [_curve("vanilla", top=0.3), _curve("FF + attn:head-perm + pooler", top=0.25)]
    ccurves = curves_frame(cls, pair="style-seed1 | style-seed2").assign(task="style")
    cbars = barriers_frame(cls, pair="style-seed1 | style-seed2").assign(task="style")
    page = lecture_pack(pair=("zoo:mlm-seed1", "zoo:mlm-seed2"), about="pair x | y", settings={"data": "bundled align.txt"},
                        curves=None, check=None, function_preserving=True,
                        heatmap={"group": "att.0", "C": np.eye(8), "after": np.eye(8), "heads": 2},
                        residual=residual, matchers={"curves": curves_frame(match), "bars": barriers_frame(match)},
                        classifiers={"curves": ccurves, "bars": cbars})
    assert "att.0: before (B in its own order)" in page and "att.0: after" in page
    assert "First helps" in page and "Last hurts" in page  # the residual verdict from its figures
    assert "Activation vs weight matching on zoo:mlm-seed1 vs zoo:mlm-seed2" in page
    assert "style, pair style-seed1 | style-seed2: dev-set loss" in page
    assert "No standard error for style: one pair per task" in page
    assert "Not computed for this run yet" not in page.split("<h2>Correlation heatmaps")[1]  # the new sections are all there

