"""Figures to take away and the presenter view in a real browser (headless Chromium, the server and
driver of tests/test_browser.py): a chart's PNG and CSV downloaded from its Download menu, the
presenter view stepped with the arrow keys, and a lecture pack opened with the network switched off.
Saves screenshots to artifacts/screenshots/ (pack-*.png)."""
import re

import pytest

from test_browser import (CHROMIUM, DRIVER, HAVE_PAIR, assert_no_exception, body, browser, click_text,  # noqa: F401
                          server, shot, title_is, wait_for)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="chromium and chromedriver not installed (apt-get install -y chromium chromium-driver)"),
    pytest.mark.skipif(not HAVE_PAIR, reason="the bundled default pair (mlm-seed1, mlm-seed2) is not built"),
]


def _plots(drv) -> int:
    from selenium.webdriver.common.by import By

    return len(drv.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg"))


def _sidebar_shown(drv) -> bool:
    from selenium.webdriver.common.by import By

    return any(e.is_displayed() for e in drv.find_elements(By.CSS_SELECTOR, 'section[data-testid="stSidebar"]'))


def test_downloads_presenter_view_and_lecture_pack(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    drv = browser
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    drv.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    drv.get(server)
    wait_for(drv, lambda: title_is(drv, "Start here") and _plots(drv) >= 1, 60, "the start page's chart")

    # the chart's Download menu: PNG (rendered by kaleido on request) and its data as CSV
    click_text(drv, "button", "Download")
    wait_for(drv, lambda: "PNG image" in body(drv) and "Data (CSV)" in body(drv), 15, "the download menu")
    shot(drv, "pack-01-download-menu")
    for label, name, magic in (("PNG image", "loss-along-lambda__bundled-pair.png", b"\x89PNG"),
                               ("Data (CSV)", "loss-along-lambda__bundled-pair.csv", b"lambda,method,loss")):
        if not any(b.is_displayed() for b in drv.find_elements(By.XPATH, f'//button[contains(., "{label}")]')):
            click_text(drv, "button", "Download")
        click_text(drv, "button", label)
        f = downloads / name
        wait_for(drv, lambda: f.is_file() and f.stat().st_size > 0, 60, f"the downloaded {name}")
        assert f.read_bytes().startswith(magic), (name, f.read_bytes()[:40])
    drv.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)

    # the presenter view: no sidebar, larger type, the tour on the arrow keys
    assert _sidebar_shown(drv)
    size = float(drv.execute_script("return parseFloat(getComputedStyle(document.documentElement).fontSize)"))
    click_text(drv, "label", "Presenter view")
    wait_for(drv, lambda: "Step 1 of 5: Start here." in body(drv), 20, "the tour's first step")
    wait_for(drv, lambda: not _sidebar_shown(drv), 10, "the sidebar hidden")
    assert float(drv.execute_script("return parseFloat(getComputedStyle(document.documentElement).fontSize)")) > size
    drv.set_window_size(1600, 1000)  # a projector's shape
    shot(drv, "pack-02-presenter-start")
    for step, title in ((2, "See the permutation"), (3, "Correlations")):
        drv.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
        wait_for(drv, lambda: title_is(drv, title) and f"Step {step} of 5: {title}." in body(drv), 30, title)
        assert not _sidebar_shown(drv)
    shot(drv, "pack-03-presenter-step3")
    drv.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)
    wait_for(drv, lambda: title_is(drv, "See the permutation"), 30, "a step back")
    click_text(drv, "button", "Leave")
    wait_for(drv, lambda: _sidebar_shown(drv) and "Step 2 of 5" not in body(drv), 20, "the normal view")
    assert_no_exception(drv)
    drv.set_window_size(1500, 2000)

    # a lecture pack opens with the network off: everything it needs is inside the file
    from test_app_pack import _curve

    from permerge.report import lecture_pack

    page = lecture_pack(pair=("zoo:mlm-seed1", "zoo:mlm-seed2"), about="pair zoo:mlm-seed1 | zoo:mlm-seed2",
                        settings={"tokens": 2048}, curves=[_curve("vanilla"), _curve("FF + attn:head-perm", top=0.2)],
                        check={"equivalent": True, "max_rel_logit_error": 3e-7, "max_rel_logit_error_float64": 1e-15},
                        function_preserving=True)
    pack = tmp_path / "pack.html"
    pack.write_text(page)
    drv.execute_cdp_cmd("Network.enable", {})
    drv.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": -1,
                                                             "uploadThroughput": -1})
    try:
        drv.get(pack.as_uri())
        wait_for(drv, lambda: _plots(drv) >= 2, 30, "the lecture pack's charts, offline")
        assert "Equivalent." in body(drv) and re.search(r"67% lower", body(drv))
        shot(drv, "pack-04-lecture-pack", wait=False)
    finally:
        drv.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": False, "latency": 0,
                                                                 "downloadThroughput": -1, "uploadThroughput": -1})
