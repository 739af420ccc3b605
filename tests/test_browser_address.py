"""A run is an address, in a real browser: after a run and a study (Fig. 4), the page address names the
run (?run=<id>); a reload and a second tab show the same run's result and its study at once, without
pressing anything.  Uses the server and browser of tests/test_browser.py (a module of its own: a cold
server with an empty cache)."""
import re
import time

import pytest

from test_browser import (BROWSER_MARKS, NEEDS_PAIR, assert_no_exception, browser, click_text, goto, idle,  # noqa: F401
                          plotly_count, server, shot, title_is, wait_for)

pytestmark = [*BROWSER_MARKS, NEEDS_PAIR]


def body(drv) -> str:
    from selenium.webdriver.common.by import By

    return drv.find_element(By.TAG_NAME, "body").text


def chart_titles(drv) -> list[str]:
    from selenium.webdriver.common.by import By

    try:
        return [t.text for t in drv.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .gtitle")]
    except Exception:  # redrawn while read
        return []


def run_id(drv) -> str | None:
    m = re.search(r"[?&]run=([0-9a-f]{10})", drv.current_url)
    return m.group(1) if m else None


def test_reload_and_second_tab_find_the_run_and_its_studies(server, browser):  # noqa: F811
    drv = browser
    drv.get(server + "/?tokens=2048&lambdas=3&eval_blocks=2&device=cpu")
    from selenium.webdriver.common.by import By

    wait_for(drv, lambda: drv.find_element(By.CSS_SELECTOR, 'input[aria-label="Alignment tokens"]')
             .get_attribute("value") == "2048", 60, "the settings from the address")
    wait_for(drv, lambda: "Compatible" in body(drv), 60, "the compatibility check")
    click_text(drv, "button", "Run alignment")
    wait_for(drv, lambda: "Barrier, vanilla averaging" in body(drv), 240, "the result")
    rid = wait_for(drv, lambda: run_id(drv), 20, "the run's id in the address")

    goto(drv, "Interpolation")
    wait_for(drv, lambda: run_id(drv) == rid, 20, "the address naming the run on another page")
    click_text(drv, "button", "Compute the Fig. 4 variants")
    wait_for(drv, lambda: any(t.startswith("Fig. 4") for t in chart_titles(drv)), 180, "the Fig. 4 chart")
    idle(drv, 30)
    shot(drv, "address-01-fig4")

    drv.refresh()  # F5: a new session, the same address
    wait_for(drv, lambda: title_is(drv, "Interpolation"), 60, "the page after a reload")
    wait_for(drv, lambda: any(t.startswith("Fig. 4") for t in chart_titles(drv)), 60, "Fig. 4 after the reload")
    assert "No alignment in this session yet" not in body(drv)
    assert "run an alignment first" not in body(drv)
    assert "Compute the Fig. 4 variants" in body(drv)  # still offered, but nothing had to be pressed
    assert run_id(drv) == rid
    assert_no_exception(drv)
    shot(drv, "address-02-after-reload")

    first = drv.current_window_handle
    drv.switch_to.new_window("tab")  # a second tab from the address, e.g. a bookmark
    try:
        drv.get(server + f"/run?run={rid}")
        wait_for(drv, lambda: "Barrier, vanilla averaging" in body(drv), 60, "the run's result in a second tab")
        wait_for(drv, lambda: "Recent runs" in body(drv) or "Current run" in body(drv), 20, "the sidebar")
        assert "Current run" in body(drv)
        # the run page shows the run's own settings (from its record), not the defaults
        tokens = drv.find_element(By.CSS_SELECTOR, 'input[aria-label="Alignment tokens"]').get_attribute("value")
        assert tokens == "2048", tokens
        assert_no_exception(drv)
        shot(drv, "address-03-second-tab")
    finally:
        drv.close()
        drv.switch_to.window(first)
    time.sleep(0.2)
