"""A job that ends between its live panel being drawn and its result being read: the page shows the
result alone (it runs again at once), never the live progress line beside the result."""
import time

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402


def _script():
    import streamlit as st

    from dashboard.state import job_result

    res = job_result("race-test", "Working")
    st.write(f"result {res}" if res is not None else "no result yet")


@pytest.fixture
def ending_job(monkeypatch):
    """A job that waits until its panel has been drawn, and has ended before job_result reads it."""
    import threading

    from dashboard import state

    state.jobs().forget("race-test")
    go = threading.Event()
    h = state.jobs().submit("race-test", lambda progress: (go.wait(30), 42)[1], "race")
    panel = state.job_panel
    drawn = []

    def panel_then_end(*a, **k):
        was_drawn = panel(*a, **k)
        drawn.append(was_drawn)
        go.set()
        t = time.monotonic()
        while h.active and time.monotonic() - t < 30:
            time.sleep(0.01)
        return was_drawn

    monkeypatch.setattr(state, "job_panel", panel_then_end)
    yield drawn
    go.set()
    state.jobs().forget("race-test")


def test_a_job_ending_after_its_panel_shows_only_its_result(ending_job):
    at = AppTest.from_function(_script, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert ending_job[0] is True  # the first script run drew the live panel ...
    assert ending_job[-1] is False  # ... and the page ran again, with the job done
    assert [m.value for m in at.markdown if m.value.startswith(("result", "no result"))] == ["result 42"]
    assert not at.get("progress"), "the live progress line shows beside the result"
