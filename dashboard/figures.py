"""Every chart of the dashboard goes through ``show_figure``: the chart, and under it a small
Download menu with the chart as PNG and SVG and its data as CSV, named after the pair, the figure
and the options.  Images and CSV are made only when the user asks (Streamlit's deferred downloads),
so that a page draws as fast as without them.  ``lecture_pack_button`` offers the run's lecture pack
(``permerge.report.lecture_pack``).
"""
from __future__ import annotations

import functools

import streamlit as st

from dashboard.text import md
from permerge import report

MIME = {"png": "image/png", "svg": "image/svg+xml", "csv": "text/csv", "html": "text/html"}

# The key (a CSS class ``st-key-...`` in the page) of the hidden chart that loads Plotly with the page.
PLOTLY_PRELOAD = "plotly_preload"


def preload_plotly() -> None:
    """An empty-looking, hidden Plotly chart, so that the browser loads and starts Plotly's code with
    the page rather than when the page's first chart arrives.  Streamlit fetches that code on its
    first chart in a tab; in headless Chromium on two cores its first chart costs about 1.6 s of CPU
    against 0.3 s for each one after (bench/README.md), and on the run page the first chart is the
    live curve of the first job, whose work runs on the same cores.  The figure is a curve chart
    built once per server process, which also imports what the server's first chart needs (Plotly's
    data conversion) with the first page rather than in the middle of a job.  Later reruns send the
    same figure, which the browser does not draw again."""
    st.html(f"<style>.st-key-{PLOTLY_PRELOAD} {{ display: none; }}</style>")
    with st.container(key=PLOTLY_PRELOAD):
        st.plotly_chart(_preload_figure(), key=f"{PLOTLY_PRELOAD}_chart",
                        config={"staticPlot": True, "displayModeBar": False})


@functools.cache
def _preload_figure():
    import pandas as pd

    from permerge import plots

    df = pd.DataFrame({"lambda": [0.0, 1.0], "loss": [0.0, 0.0], "method": ["", ""], "function_preserving": True})
    return plots.curves(df, "loss").update_layout(height=50)


@st.cache_resource(show_spinner=False, ttl=300)
def _renderer() -> str | None:
    return report.image_renderer()


def fig_name(run, figure: str, *extra) -> str:
    """A file name (no extension): the run's pair (short names), the figure, the run's options and
    anything else that tells two downloads of one page apart (a group, a window, a view)."""
    from dashboard.state import short

    if run is None:
        return report.safe_name(figure, *extra)
    return report.safe_name(short(run.job.model_a), short(run.job.model_b), figure, run.options.label(), *extra)


def show_figure(fig, name: str, data=None, *, key: str | None = None) -> None:
    """``st.plotly_chart(fig)`` with PNG, SVG and CSV downloads.  ``name``: the file name without
    extension (see ``fig_name``); ``data``: the table behind the chart (a DataFrame, an array, a dict
    of arrays), else the figure's own traces.  ``key``: needed when one page draws the same
    ``name`` twice."""
    from dashboard.presenter import presenting

    ident = key or name
    shown, theme = fig, "streamlit"
    if presenting():  # a projector: larger type on the chart too (the downloads keep the normal size)
        import plotly.graph_objects as go

        theme = None  # Streamlit's chart theme would set its own (small) type
        shown = go.Figure(fig).update_layout(template="plotly_white", font_size=17, title_font_size=22,
                                             legend_font_size=16, hoverlabel_font_size=16)
        shown.update_xaxes(tickfont_size=15, title_font_size=17).update_yaxes(tickfont_size=15, title_font_size=17)
        for note in shown.layout.annotations:  # barrier labels, subplot titles: two points larger
            note.font.size = (note.font.size or 13) + 2
    st.plotly_chart(shown, width="stretch", key=f"chart::{ident}", theme=theme)
    renderer = _renderer()

    def image(fmt):
        return lambda: report.figure_image(fig, fmt)

    def table():
        return report.table_csv(data if data is not None else report.figure_table(fig))

    with st.popover("Download", icon=":material/download:"):
        for fmt, label, make in (("png", "PNG image", image("png")), ("svg", "SVG image", image("svg")),
                                 ("csv", "Data (CSV)", table)):
            needs_browser = fmt != "csv" and renderer is None
            st.download_button(label, data=make if not needs_browser else b"", file_name=f"{name}.{fmt}",
                               mime=MIME[fmt], key=f"dl::{fmt}::{ident}", on_click="ignore",
                               disabled=needs_browser, icon=":material/download:",
                               help="Needs Chrome or Chromium on the server (kaleido renders with it)."
                                    if needs_browser else md(f"{name}.{fmt}"))


def _quiet(*args, **info) -> None:
    """A progress callback that reports nothing (work done for a download)."""


PACK_SECTIONS = ("fig4", "methods", "amount", "start_residual", "matchers", "classifiers")


def pack_html(run, full_paths: bool, studies: dict, result: dict | None = None) -> str:
    """The run's lecture pack (``permerge.report.lecture_pack``): ``studies`` maps each of
    ``PACK_SECTIONS`` to its finished result (or None); ``result`` is the run's own (computed from the
    cache when None).  Checkpoints and data are named without local paths unless ``full_paths``."""
    from dashboard.state import name, registry
    from permerge import views, work

    reg = registry()

    def shown(path):
        if path is None or path == "":
            return path
        return str(path) if full_paths else (name(path) if name(path).startswith("zoo:") else work.data_label(path))

    res = result or work.pair_work(reg, run.job, run.options, run.lambdas)(_quiet)
    layers = work.alignment_work(reg, run.job, run.options)(_quiet)["frame"]
    fig4, methods, amount, residual, matchers, classifiers = (studies.get(s) for s in PACK_SECTIONS)
    try:  # the first attention group's heatmaps (statistics and permutations from the cache)
        corr = views.correlation_work(reg, run.job, run.options, None)(_quiet)
        g = corr["spec_group"]
        heatmap = {"group": corr["group"], "C": corr["C"], "after": corr["after"],
                   "heads": g.heads if g.kind == "att" else None}
    except Exception:  # e.g. weight matching without statistics: the pack says it is missing
        heatmap = None
    curves = None
    if res.get("vanilla") is not None:
        curves = [res["vanilla"]] + ([res["aligned"]] if res["aligned"] is not res["vanilla"] else [])
    about = dict(res["about"], pair=f"{shown(run.job.model_a)} | {shown(run.job.model_b)}")
    settings = {"checkpoint A": shown(run.job.model_a), "checkpoint B": shown(run.job.model_b),
                **{k: (shown(v) if k in ("data", "eval_data") else v)
                   for k, v in run.job.to_dict().items() if k not in ("model_a", "model_b")},
                "options": run.options.label(), "function-preserving": run.options.function_preserving,
                "λ points": run.lambdas}
    return report.lecture_pack(
        pair=(shown(run.job.model_a), shown(run.job.model_b)), about=work.describe_about(about),
        settings=settings, curves=curves, check=res.get("check"),
        function_preserving=run.options.function_preserving,
        fig4=fig4["curves"] if fig4 else None, layers=layers,
        methods=methods["bars"] if methods else None, amount=amount["frame"] if amount else None,
        heatmap=heatmap, residual=residual["curves"] if residual else None,
        matchers=matchers if matchers else None, classifiers=classifiers if classifiers else None)


def lecture_pack_button(run) -> None:
    """One click: the run's lecture pack as one static HTML file.  What the pages computed for this
    run so far (Fig. 4, the methods tables, the amount of data) is looked up now; the file itself is
    made only when the button is pressed (the run's curves and Fig. 5 come from the cache then)."""
    from dashboard.state import jobs, recall, short

    manager = jobs()
    sections = PACK_SECTIONS
    keys = {section: recall(section, run) for section in sections}
    full_paths = st.checkbox("Full local paths in the lecture pack", key="pack_full_paths",
                             help="Off: checkpoints and data by their names (zoo:mlm-seed1, the folder and file "
                                  "name), so that the pack can be handed out.")

    def done(key):
        h = manager.get(key) if key else None
        return h.result if h is not None and h.state == "done" else None

    def make() -> bytes:
        return pack_html(run, full_paths, {s: done(keys[s]) for s in sections}, done(run.key)).encode()

    have = [label for label, s in (("Fig. 4", "fig4"), ("Tables 1 and 2", "methods"), ("Fig. 7", "amount"),
                                   ("the residual verdict", "start_residual"), ("the matcher comparison", "matchers"),
                                   ("the classifier curves and Table 3", "classifiers"))
            if done(keys[s]) is not None]
    st.download_button("Lecture pack (.html)", data=make, file_name=report.pack_file_name(
        (short(run.job.model_a), short(run.job.model_b)), run.options.label()), mime=MIME["html"],
        on_click="ignore", type="primary", icon=":material/co_present:", key="dl::lecture-pack",
        help="The run's curves, the B′ check, Fig. 5 and a group's correlation heatmaps always; "
             + (", ".join(have) + " as computed on their pages." if have else
                "Fig. 4, Tables 1 and 2, Fig. 7, the residual verdict, the matcher comparison and the classifier "
                "curves once computed on their pages."))

