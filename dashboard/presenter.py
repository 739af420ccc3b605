"""Presenter view: for a projector, larger type, no sidebar, and a guided tour through the pages
that tell the story (Start here -> See the permutation -> Correlations -> Interpolation -> Methods),
each step one sentence of what to look at; Back / Next buttons, also on the left / right arrow keys.
"""
from __future__ import annotations

import streamlit as st

STATE = "presenter_view"  # session_state key: True while the presenter view is on

# (page script, page title, what to look at): the order of the tour
TOUR = [
    ("pages/start.py", "Start here",
     "Look at the hump of the grey curve: that is the loss barrier of plain averaging; the curve after "
     "alignment should bulge less."),
    ("pages/permutation.py", "See the permutation",
     "Follow the outlined row: unit i of B′ is unit perm[i] of B, moved with its row and its column, so B′ "
     "still computes exactly what B computes."),
    ("pages/correlations.py", "Correlations",  # the page tells the measured share (``tell``)
     "Compare the left and right heatmaps: after alignment each unit of A sits on the diagonal with the unit "
     "of B it was matched to."),
    ("pages/interpolation.py", "Interpolation",
     "Compare the grey curve (vanilla averaging) with the aligned one: the vertical bars are the two barriers, "
     "and the lower the better."),
    ("pages/methods.py", "Methods",
     "Read the tables top to bottom: which attention and residual variants lower the barrier on these pairs, "
     "and which of them keep B′ equal to B."),
]

CSS = """
<style>
html { font-size: 21px; }
section[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], [data-testid="stSidebarNav"],
header[data-testid="stHeader"], [data-testid="stToolbar"] { display: none !important; }
.block-container, [data-testid="stMainBlockContainer"] { padding-top: 6.2rem; max-width: 96vw; }
.st-key-presenter_bar { background: #f0f2f6; border-radius: 0.5rem; padding: 0.4rem 1.6rem 0.4rem 0.9rem;
                         position: fixed; top: 0.3rem; left: 2vw; right: 2vw; width: auto !important; z-index: 1000;
                         box-sizing: border-box;
                         box-shadow: 0 2px 6px rgba(0, 0, 0, 0.15); }
[data-testid="stPlotlyChart"] { scroll-margin-top: 6.5rem; }
.st-key-presenter_bar [data-testid="stHorizontalBlock"] { width: 100%; max-width: 100%; box-sizing: border-box; }
.st-key-presenter_bar button { white-space: nowrap; padding-left: 0.6rem; padding-right: 0.6rem; }
</style>
"""
TEXT = "_presenter_text"  # session_state: the tour bar's sentence slot of this script run

# Scrolls the step's chart (the page's first chart) under the tour bar once it is drawn, and keeps it there
# for the first seconds while the bar's sentence and the charts above settle; runs once
# per page visit (the frame's text changes with the page and the visit).
SCROLL = """<script>
const doc = window.parent.document; let tries = 0, settle = 0;
const go = () => { const c = [...doc.querySelectorAll('[data-testid="stPlotlyChart"]')]
                          .find(e => !e.closest('.st-key-%s'));  /* not the hidden chart that loads Plotly */
  const bar = doc.querySelector('.st-key-presenter_bar');
  const main = doc.querySelector('[data-testid="stMain"]') || doc.scrollingElement;
  if (c) { const below = bar ? bar.getBoundingClientRect().bottom + 8 : 0;
           main.scrollBy(0, c.getBoundingClientRect().top - below);
           if (settle++ < 6) { setTimeout(go, 400); } }  /* again while the bar's sentence and charts settle */
  else if (tries++ < 60) { setTimeout(go, 250); } };
setTimeout(go, 300);
</script><!-- %s -->"""


def presenting() -> bool:
    return bool(st.session_state.get(STATE, False))


def step_of(title: str) -> int | None:
    """The tour step (0-based) of a page title, None for a page off the tour."""
    return next((i for i, (_, t, _) in enumerate(TOUR) if t == title), None)


def toggle() -> None:
    """The switch in the sidebar that turns the presenter view on."""
    def start():
        st.session_state[STATE] = True
        st.session_state["presenter_toggle"] = False  # off again for when the view is left

    st.toggle("Presenter view", key="presenter_toggle", on_change=start,
              help="For a projector: larger type, no sidebar, and a guided tour through the pages with "
                   "Back / Next (or the ← / → keys).")


def bar(title: str) -> None:
    """In the presenter view: the larger type, the hidden sidebar, and the tour bar at the top of the
    page (this step's sentence, Back, Next, Leave)."""
    if not presenting():
        return
    st.markdown(CSS, unsafe_allow_html=True)
    k = step_of(title)
    with st.container(key="presenter_bar"):
        text, buttons = st.columns([5, 3], vertical_alignment="center", gap="small")
        with text:
            slot = st.empty()
            st.session_state[TEXT] = (slot, _this_run())
            if k is None:
                slot.markdown(f"**{title}** is not on the tour. **Next** starts it at *{TOUR[0][1]}*.")
            else:
                slot.markdown(f"**Step {k + 1} of {len(TOUR)}: {title}.** {TOUR[k][2]}")
        with buttons:
            back, nxt, leave = st.columns(3)
            if back.button("Back", shortcut="Left", disabled=not k, width="stretch",
                           key="presenter_back", help="Previous step (← key)"):
                st.switch_page(TOUR[k - 1][0])
            last = k is not None and k == len(TOUR) - 1
            if nxt.button("Next", shortcut="Right", disabled=last, width="stretch",
                          key="presenter_next", type="primary", help="Next step (→ key)"):
                st.switch_page(TOUR[0 if k is None else k + 1][0])
            if leave.button("Leave", key="presenter_leave", width="stretch",
                            help="Back to the normal view with the sidebar"):
                st.session_state[STATE] = False
                st.rerun()
    scroll_to_chart(title)


def tell(title: str, sentence: str) -> None:
    """In the presenter view, the tour bar of page ``title`` says ``sentence``: what to look at, with
    the figures the page has just measured (called by the page once it has them)."""
    k = step_of(title)
    slot, drawn_in = st.session_state.get(TEXT) or (None, None)
    if presenting() and k is not None and slot is not None and drawn_in is _this_run():
        slot.markdown(f"**Step {k + 1} of {len(TOUR)}: {title}.** {sentence}")


def _this_run():
    """A token of the current script run (its element cursors, new every run): a tour bar's sentence
    slot is written only in the run that drew it, never into a stale one."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.cursors if ctx is not None else None


def scroll_to_chart(title: str) -> None:
    """In the presenter view, brings the step's chart into view under the tour bar (once per visit)."""
    if not presenting() or step_of(title) is None:
        return
    import streamlit.components.v1 as components

    from dashboard.figures import PLOTLY_PRELOAD

    visit = st.session_state.get("_presenter_visit", (None, 0))
    if visit[0] != title:
        visit = (title, visit[1] + 1)
        st.session_state["_presenter_visit"] = visit
    components.html(SCROLL % (PLOTLY_PRELOAD, f"{title} {visit[1]}"), height=0)
