"""The presenter view on a 1280x720 projector, in a real browser: after a small run, every step of
the tour brings its chart into view under the tour bar, the bar stays in view while the page is
scrolled, and step 3 states the measured share of units whose matched partner is also their
best-correlated one.  Screenshots go to artifacts/screenshots/presenter-1280x720-*.png.  Uses the
server and browser of tests/test_browser.py."""
import re

import pytest

from dashboard.figures import PLOTLY_PRELOAD
from test_browser import (BROWSER_MARKS, NEEDS_PAIR, assert_no_exception, browser, click_text, idle,  # noqa: F401
                          server, shot, title_is, wait_for)

pytestmark = [*BROWSER_MARKS, NEEDS_PAIR]

IN_VIEW = """
const bar = document.querySelector('.st-key-presenter_bar');
const chart = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
              .find(e => !e.closest('.st-key-%s'));  // not the hidden chart that loads Plotly
if (!bar || !chart) { return null; }
const b = bar.getBoundingClientRect(), c = chart.getBoundingClientRect();
return {bar_top: b.top, bar_bottom: b.bottom, chart_top: c.top, chart_bottom: c.bottom, height: window.innerHeight};
""" % PLOTLY_PRELOAD

BUTTONS = """
const bar = document.querySelector('.st-key-presenter_bar').getBoundingClientRect();
const leave = document.querySelector('.st-key-presenter_leave button').getBoundingClientRect();
return {bar_right: bar.right, leave_right: leave.right, width: window.innerWidth};
"""


def body(drv) -> str:
    from selenium.webdriver.common.by import By

    return drv.find_element(By.TAG_NAME, "body").text


def test_presenter_view_at_1280x720(server, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    drv = browser
    drv.get(server + "/?tokens=2048&lambdas=3&eval_blocks=2&device=cpu")
    wait_for(drv, lambda: drv.find_element(By.CSS_SELECTOR, 'input[aria-label="Alignment tokens"]')
             .get_attribute("value") == "2048", 60, "the settings from the address")
    wait_for(drv, lambda: "Compatible" in body(drv), 60, "the compatibility check")
    click_text(drv, "button", "Run alignment")
    wait_for(drv, lambda: "Barrier, vanilla averaging" in body(drv), 240, "the result")
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # the page sees a 1280x720 projector
                        {"width": 1280, "height": 720, "deviceScaleFactor": 1, "mobile": False})
    drv.execute_script("window.scrollTo(0, 0)")
    click_text(drv, "label", "Presenter view")
    wait_for(drv, lambda: "not on the tour" in body(drv), 20, "the tour bar")
    drv.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)  # off the tour (Pick and run): Next starts it
    for step, title in enumerate(("Start here", "See the permutation", "Correlations", "Interpolation", "Methods"), 1):
        wait_for(drv, lambda: title_is(drv, title) and f"Step {step} of 5: {title}." in body(drv), 60, title)
        if title != "Methods":  # Methods draws its tables once computed
            wait_for(drv, lambda: (g := drv.execute_script(IN_VIEW)) is not None
                     and g["bar_top"] >= -1 and g["bar_bottom"] <= g["height"]
                     and g["chart_top"] >= g["bar_bottom"] - 2 and g["chart_top"] < g["height"] * 0.6,
                     30, f"the chart of step {step} in view under the bar")
        if title == "Correlations":
            wait_for(drv, lambda: re.search(r"for \d+% of A's units that is also the unit of B it correlates best with",
                                            body(drv)), 30, "the measured share in step 3")
        idle(drv, 30)
        shot(drv, f"presenter-1280x720-step{step}")
        edges = drv.execute_script(BUTTONS)  # the bar inside the window, its buttons clear of its right edge
        assert edges["bar_right"] <= edges["width"] and edges["leave_right"] <= edges["bar_right"] - 16, edges
        if title == "Interpolation":  # scrolled further down, the bar stays in view
            drv.execute_script("document.querySelector('[data-testid=\"stMain\"]')?.scrollBy(0, 1500)")
            geo = drv.execute_script(IN_VIEW)
            assert geo["bar_top"] >= -1 and geo["bar_bottom"] <= geo["height"], geo
            shot(drv, "presenter-1280x720-step4-scrolled")
        assert_no_exception(drv)
        if step < 5:
            drv.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    click_text(drv, "button", "Leave")
    drv.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
