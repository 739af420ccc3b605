"""Figures to take away and the presenter view in a real browser (headless Chromium, the server and
driver of tests/test_browser.py): a chart's PNG and CSV downloaded from its Download menu, the
presenter view stepped with the arrow keys, a lecture pack opened with the network switched off, and
(after a small alignment on the bundled pair) the classifier curves of one task with their dip marks.
Saves screenshots to artifacts/screenshots/ (pack-*.png)."""
import re

import pytest

from test_browser import (BROWSER_MARKS, NEEDS_PAIR, assert_no_exception, body, browser, click_text,  # noqa: F401
                          goto, idle, plotly_count, server, set_number, shot, title_is, wait_for)

pytestmark = [*BROWSER_MARKS, NEEDS_PAIR]


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
    wait_for(drv, lambda: title_is(drv, "Start here") and plotly_count(drv) >= 1, 60, "the start page's chart")

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
        wait_for(drv, lambda: plotly_count(drv) >= 2, 30, "the lecture pack's charts, offline")
        assert "Equivalent." in body(drv) and re.search(r"67% lower", body(drv))
        shot(drv, "pack-04-lecture-pack", wait=False)
    finally:
        drv.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": False, "latency": 0,
                                                                 "downloadThroughput": -1, "uploadThroughput": -1})


CLS_SECTION = "Fine-tuned classifiers per task (paper Fig. 8)"
CLS_TITLE = "paraphrase, pair paraphrase-seed1 | paraphrase-seed2: loss"


def _tasks_box(drv):
    from selenium.webdriver.common.by import By

    boxes = [b for b in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stMultiSelect"]') if "Tasks" in b.text]
    assert boxes, "no multiselect 'Tasks'"
    return boxes[0]


def _chosen_tasks(drv) -> list[str]:
    from selenium.webdriver.common.by import By

    return [t.get_attribute("aria-label") for t in _tasks_box(drv).find_elements(By.CSS_SELECTOR, ".react-aria-ComboBox [data-tag]")]


def _chart_titled(drv, title: str):
    from selenium.webdriver.common.by import By

    for plot in drv.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"):
        if any(title in (t.get_attribute("textContent") or "") for t in plot.find_elements(By.CSS_SELECTOR, ".gtitle")):
            return plot
    return None


def test_classifier_curves_with_their_dips(server, browser):
    """One small alignment on the bundled pair (the classifier section needs a run), then the classifier
    curves of the task paraphrase (one pair, 11 λ points): the chart, the dip caption, Table 3, and the
    triangles that mark where the loss dips below both ends."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    drv = browser
    drv.get(server + "/?tokens=2048&lambdas=5&eval_blocks=2&device=cpu")  # small settings through the address
    wait_for(drv, lambda: drv.find_element(By.CSS_SELECTOR, 'input[aria-label="Alignment tokens"]')
             .get_attribute("value") == "2048", 60, "the settings from the address")
    wait_for(drv, lambda: "Compatible" in body(drv), 30, "the compatibility check")
    set_number(drv, "λ points", 3)
    click_text(drv, "button", "Run alignment")
    wait_for(drv, lambda: "Barrier, vanilla averaging" in body(drv), 240, "the result")

    goto(drv, "Interpolation")
    wait_for(drv, lambda: CLS_SECTION in body(drv) and "Compute the classifier curves" in body(drv), 60,
             "the classifier section")
    idle(drv, 30)
    box = _tasks_box(drv)
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
    # only paraphrase: the default task out (its remove button), paraphrase typed in and picked
    chosen = _chosen_tasks(drv)
    assert chosen and "paraphrase" not in chosen, chosen
    for task in chosen:
        idle(drv, 30)
        _tasks_box(drv).find_element(By.CSS_SELECTOR, f'.react-aria-ComboBox button[aria-label="Remove {task}"]').click()
        wait_for(drv, lambda: task not in _chosen_tasks(drv), 15, f"{task} removed")
    wait_for(drv, lambda: _chosen_tasks(drv) == [], 15, "no task chosen")
    idle(drv, 30)
    field = _tasks_box(drv).find_element(By.CSS_SELECTOR, 'input[aria-label="Tasks"]')
    field.click()
    field.send_keys("paraphrase")
    wait_for(drv, lambda: [o for o in drv.find_elements(By.CSS_SELECTOR, '[role="option"]')
                           if o.text.strip() == "paraphrase"], 10, "the option paraphrase")
    [o for o in drv.find_elements(By.CSS_SELECTOR, '[role="option"]') if o.text.strip() == "paraphrase"][0].click()
    wait_for(drv, lambda: _chosen_tasks(drv) == ["paraphrase"], 15, "paraphrase chosen")
    drv.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    idle(drv, 30)
    assert _chosen_tasks(drv) == ["paraphrase"]
    assert drv.find_element(By.CSS_SELECTOR, 'input[aria-label="Pairs per task"]').get_attribute("value") == "1"
    values = [e.get_attribute("value") for e in drv.find_elements(By.CSS_SELECTOR, 'input[aria-label="λ points"]')]
    assert values and values[-1] == "3", values  # the classifier section's (the last on the page): the run's λ points
    field = drv.find_elements(By.CSS_SELECTOR, 'input[aria-label="λ points"]')[-1]
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("11", Keys.ENTER)
    wait_for(drv, lambda: drv.find_elements(By.CSS_SELECTOR, 'input[aria-label="λ points"]')[-1]
             .get_attribute("value") == "11", 15, "11 λ points for the classifiers")
    idle(drv, 30)

    click_text(drv, "button", "Compute the classifier curves")
    wait_for(drv, lambda: _chart_titled(drv, CLS_TITLE), 240, "the paraphrase classifier chart")
    wait_for(drv, lambda: "one dip below both ends at λ = 0.90" in body(drv)
             and "Paper Table 3 on these pairs" in body(drv), 30, "the dip caption and Table 3")
    idle(drv, 30)
    assert_no_exception(drv)
    plot = _chart_titled(drv, CLS_TITLE)
    legend = " ".join(t.get_attribute("textContent") or "" for t in plot.find_elements(By.CSS_SELECTOR, ".legendtext"))
    assert "dip below both ends" in legend or "M shape" in legend, legend
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", plot)
    shot(drv, "pack-05-classifier-dips")
