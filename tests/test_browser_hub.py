"""A catalogue pick in a real browser against the loopback Hub: the download switch turned on, the
download size shown, the download's progress in the job's progress line, the result.  The
dashboard (`streamlit run app.py`) runs with HF_ENDPOINT at tests/hubserver.py and an empty HF_HOME.
Needs Debian's `chromium` and `chromium-driver`; skipped with a reason when they are absent."""
import os
import time

import pytest

from conftest import ROOT, free_port, write_text
from hubserver import LoopbackHub
from published import write_multiberts
from test_browser import BROWSER_MARKS, browser, click_text, idle, serve_dashboard, shot, wait_for  # noqa: F401

pytestmark = BROWSER_MARKS
MB = "google/multiberts-seed_{}"


@pytest.fixture(scope="module")
def hubsite(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    site = LoopbackHub(free_port())
    site.text = write_text(root / "text.txt", n_words=3000)
    for seed in (0, 1):
        site.add(MB.format(seed), write_multiberts(root / f"mb{seed}", seed))
    site.start()
    yield site
    site.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, hubsite):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
                                                            "PERMERGE_ALLOW_DOWNLOADS")}
    env.update({"PERMERGE_CACHE": str(tmp_path_factory.mktemp("cache")), "HF_ENDPOINT": hubsite.url,
                "HF_HOME": str(tmp_path_factory.mktemp("hf")), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    yield from serve_dashboard(env, tmp_path_factory.mktemp("log"))


def _body(drv) -> str:
    from selenium.webdriver.common.by import By

    return drv.find_element(By.TAG_NAME, "body").text


def _click_label(drv, text: str, nth: int = 0):
    """Click the ``nth`` radio option or switch whose label reads ``text`` (again if the page redrew
    under the click)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    idle(drv, 30)
    t0 = time.time()
    while True:
        try:
            found = [el for el in drv.find_elements(By.CSS_SELECTOR, "label") if el.text.strip() == text]
            assert len(found) > nth, f"no label {text!r} number {nth}"
            found[nth].click()
            break
        except (StaleElementReferenceException, AssertionError):
            if time.time() - t0 > 20:
                raise
            time.sleep(0.5)
    time.sleep(0.5)
    idle(drv, 30)


def test_catalogue_pick_downloads_and_runs_in_the_browser(server, browser, hubsite):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    drv = browser
    drv.get(server + "/?tokens=1024&lambdas=3&eval_blocks=2&device=cpu")
    wait_for(drv, lambda: drv.find_elements(By.CSS_SELECTOR, 'input[aria-label="Alignment tokens"]'), 60, "the run page")
    known = "known family (Hugging Face Hub)"
    _click_label(drv, known, 0)
    wait_for(drv, lambda: len([e for e in drv.find_elements(By.CSS_SELECTOR, "label") if e.text.strip() == known]) == 2,
             20, "B's source choice")
    _click_label(drv, known, 1)
    wait_for(drv, lambda: "not cached, about 441 MB to download" in _body(drv), 30, "the catalogue size")
    assert not hubsite.log  # the switch is off: nothing asked of the Hub
    _click_label(drv, "Download from the Hugging Face Hub")
    wait_for(drv, lambda: "6.4 MB to download" in _body(drv), 30, "the size from the Hub")
    wait_for(drv, lambda: "Compatible" in _body(drv), 30, "the compatibility check")
    shot(drv, "hub-01-known-family")
    _click_label(drv, "text file")
    box = wait_for(drv, lambda: drv.find_elements(By.CSS_SELECTOR, 'input[aria-label="Text file path"]'), 20,
                   "the text file field")[0]
    box.send_keys(str(hubsite.text), Keys.ENTER)
    wait_for(drv, lambda: "text.txt" in _body(drv) and "the tail of the alignment data" in _body(drv), 20,
             "the data's caption")
    idle(drv, 30)
    hubsite.throttle = 0.05  # a slow link, so that the download's progress can be seen
    click_text(drv, "button", "Run alignment")
    wait_for(drv, lambda: f"downloading {MB.format(0)}:" in _body(drv), 60, "the download's progress")
    line = [s for s in _body(drv).splitlines() if "downloading" in s][0]
    assert " of 6.4 MB" in line and "/s" in line, line
    shot(drv, "hub-02-downloading", wait=False)
    hubsite.throttle = 0.0
    wait_for(drv, lambda: "Barrier, vanilla averaging" in _body(drv), 300, "the result")
    assert "computes B's function" in _body(drv)
    shot(drv, "hub-03-result")
    needed = {"config.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "pytorch_model.bin"}
    assert sorted(hubsite.downloads()) == sorted((MB.format(s), f) for s in (0, 1) for f in needed)
