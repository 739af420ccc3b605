"""The dashboard's first load in a real browser: the sidebar names the pages by their titles from the
first moment it shows, never by their file names ("app", "correlations", "data amount", ...) while
the first script run imports the libraries.  Uses the server of tests/test_browser.py (started cold
for this module) and a browser session of its own, opened before the first page has loaded."""
import time

import pytest

from test_browser import CHROMIUM, DRIVER, SHOTS, server, title_is  # noqa: F401 (server: a fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="chromium and chromedriver not installed (apt-get install -y chromium chromium-driver)"),
]
FILE_NAMES = {"app",  # what Streamlit shows for a pages/ folder before st.navigation runs (case matters:
              # the titles "Methods", "Correlations" ... differ from "methods", "correlations") "start", "run", "permutation", "correlations", "features", "interpolation", "methods",
              "data amount", "export"}


def test_sidebar_shows_page_titles_from_the_first_load(server, tmp_path):  # noqa: F811
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1500,1200",
              f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        drv.set_page_load_timeout(60)
        drv.get(server)
        seen, t0 = [], time.time()
        while time.time() - t0 < 60:
            try:
                names = [a.text.strip().splitlines()[-1] for a in
                         drv.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNavLink"]') if a.text.strip()]
            except StaleElementReferenceException:
                names = []
            if names and names not in seen:
                seen.append(names)
                if FILE_NAMES & set(names):
                    SHOTS.mkdir(parents=True, exist_ok=True)
                    drv.save_screenshot(str(SHOTS / "lecture-sidebar-file-names.png"))
            if title_is(drv, "Start here") and "Start here" in (seen[-1] if seen else []):
                break
            time.sleep(0.05)
        assert seen and "Start here" in seen[-1], seen
        assert not [n for n in seen if FILE_NAMES & set(n)], seen  # never the raw file names
    finally:
        drv.quit()
