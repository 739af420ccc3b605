"""permerge dashboard: align two transformer checkpoints of one family by permutation matching,
merge them along lambda, and see what happened.  Start with ``make run`` (or ``streamlit run app.py``)."""
import streamlit as st

from dashboard import offline, presenter

offline.patch()  # no look-up of this machine's addresses on the network (also under `streamlit run app.py`)

st.set_page_config(page_title="permerge", page_icon=":material/merge:", layout="wide")

# Sections of the navigation; a new page is one more st.Page in one of these lists.
# A shareable link with settings in the address (?tokens=...) opens the run page; otherwise start here.
# The address also names the session's run (?run=<id>): a reload, a second tab or a bookmark finds it.
settings_link = any(k != "run" for k in st.query_params)  # ?run=<id> names a run: any page
PAGES = {
    "Align": [st.Page("pages/start.py", title="Start here", icon=":material/school:", default=not settings_link),
              st.Page("pages/run.py", title="Pick and run", icon=":material/play_arrow:", default=settings_link)],
    "What happened": [
        st.Page("pages/permutation.py", title="See the permutation", icon=":material/swap_vert:"),
        st.Page("pages/correlations.py", title="Correlations", icon=":material/grid_on:"),
        st.Page("pages/features.py", title="Feature correlation", icon=":material/show_chart:"),
        st.Page("pages/interpolation.py", title="Interpolation", icon=":material/timeline:"),
        st.Page("pages/methods.py", title="Methods", icon=":material/table_chart:"),
        st.Page("pages/matchers.py", title="Activation vs weight matching", icon=":material/compare_arrows:"),
        st.Page("pages/data_amount.py", title="Amount of data", icon=":material/bar_chart:"),
        st.Page("pages/steps.py", title="Training steps", icon=":material/stacked_line_chart:"),
    ],
    "Keep": [st.Page("pages/export.py", title="Export", icon=":material/save:")],
}
page = st.navigation(PAGES)  # before the heavy imports below: the sidebar shows the titles at once

from dashboard.figures import preload_plotly  # noqa: E402
from dashboard.state import (current_run, freeze_imports, name_md, open_run, recent_runs,  # noqa: E402 (torch)
                             record_label, run_id, settle_pending, sync_address, top_progress)

sync_address()
settle_pending()  # a run that has just finished is the current run before the sidebar is drawn
with st.sidebar:
    run = current_run()
    if run is None:
        st.caption("No alignment in this session yet.")
    else:
        st.caption(f"**Current run**  \nA: {name_md(run.job.model_a)}  \nB: {name_md(run.job.model_b)}  \n"
                   f"{run.options.label()}, {run.lambdas} λ points", unsafe_allow_html=True)
        if not run.options.function_preserving:
            st.caption("⚠ not function-preserving")
    others = [r for r in recent_runs(6) if run is None or r.id != run_id(run)][:5]
    if others:
        with st.expander("Recent runs", icon=":material/history:"):
            for rec in others:
                if st.button(record_label(rec), key=f"recent::{rec.id}", width="stretch",
                             help=f"Open this run (address ?run={rec.id}); its studies come back with it."):
                    open_run(rec.id)
                    st.rerun()
    presenter.toggle()
    preload_plotly()  # hidden: the browser has Plotly's code ready before any job's first chart
presenter.bar(page.title)
# every running job of this session, at the top of whichever page is shown (the run page shows its run there)
top_progress(skip=(st.session_state["pending_run"].key,) if page.title == "Pick and run" and "pending_run" in st.session_state
             else ())

try:
    page.run()
finally:  # once per server process, after the first page's imports: full collections skip them
    freeze_imports()
