"""The dashboard in a real browser: `streamlit run app.py` on a free local port, driven by headless
Chromium through Selenium.  Runs an alignment on the bundled default pair (small settings), checks
that the charts render and that no exception box shows, then runs a second pair and checks that no
page shows the first pair's figures; saves screenshots to artifacts/screenshots/.  Needs Debian's `chromium` and `chromium-driver` packages; skipped with a
reason when they are absent."""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import HAVE_PAIR
from dashboard.figures import PLOTLY_PRELOAD

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")

# The marks of every real-browser test module (the ones that run on the bundled pair add NEEDS_PAIR).
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="chromium and chromedriver not installed (apt-get install -y chromium chromium-driver)"),
]
NEEDS_PAIR = pytest.mark.skipif(not HAVE_PAIR, reason="the bundled default pair (mlm-seed1, mlm-seed2) is not built")
pytestmark = [*BROWSER_MARKS, NEEDS_PAIR]
DEADLINE_S = 420  # the user flow below (two pairs); server start (30 s) and warm-up (60 s) are bounded apart


# Texts that appear only once a page has drawn to its end (download buttons render after the charts).
PAGE_END_TEXTS = {"Export": ("Permutations (.safetensors)", "Curves (.csv)", "Figure (.html", "Offered: interactive HTML")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_dashboard(env: dict, log_dir: Path):
    """``streamlit run app.py`` on a free loopback port with ``env``: yields its address once healthy,
    then stops it and checks that its log holds no traceback."""
    port = free_port()
    log = open(log_dir / "streamlit.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "127.0.0.1",
                             "--server.port", str(port), "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    import urllib.request

    while time.time() - t0 < 30:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.3)
    else:
        proc.terminate()
        pytest.fail("streamlit did not start in 30 s")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.seek(0)
    text = log.read()
    log.close()
    assert "Traceback" not in text, text[-4000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {**os.environ, "PERMERGE_CACHE": str(tmp_path_factory.mktemp("cache")), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # tiny models; a browser shares the CPUs
    yield from serve_dashboard(env, tmp_path_factory.mktemp("log"))


@pytest.fixture(scope="module")
def browser(tmp_path_factory, server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--window-size=1500,2000",
              f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.set_page_load_timeout(30)
    # warm-up (bounded): the server's first script run imports torch and transformers
    drv.get(server)
    wait_for(drv, lambda: title_is(drv, "Start here"), 60, "the first page")
    wait_for(drv, lambda: "Where to look next" in drv.find_element(By.TAG_NAME, "body").text, 60, "the first page's end")
    yield drv
    drv.quit()


T0 = time.time()


def idle(drv, timeout: float = 20) -> None:
    """Wait until the app's script run has finished (the 'Running...' status widget is gone)."""
    from selenium.webdriver.common.by import By

    t0 = time.time()
    while time.time() - t0 < timeout and drv.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'):
        time.sleep(0.2)


def shot(drv, name: str, wait: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    if wait:
        idle(drv)
    time.sleep(0.8)  # let plotly finish drawing
    drv.save_screenshot(str(SHOTS / f"{name}.png"))
    print(f"{time.time() - T0:6.1f} s  screenshot {name}")


def wait_for(drv, cond, timeout: float, what: str):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            v = cond()
            if v:
                return v
        except Exception:
            pass
        assert_no_exception(drv)
        time.sleep(0.3)
    shot(drv, f"timeout-{what.replace(' ', '_')}")
    raise AssertionError(f"timed out waiting for {what}")


def assert_no_exception(drv) -> None:
    from selenium.webdriver.common.by import By

    boxes = drv.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    assert not boxes, boxes[0].text[:2000]
    assert "Traceback" not in drv.find_element(By.TAG_NAME, "body").text


def click_text(drv, tag: str, text: str):
    from selenium.webdriver.common.by import By

    for el in drv.find_elements(By.TAG_NAME, tag):
        if el.text.strip() == text or text in el.text:
            el.click()
            return el
    raise AssertionError(f"no {tag} with text {text!r}")


def title_is(drv, text):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return any(h.text.strip() == text for h in drv.find_elements(By.TAG_NAME, "h1"))
    except StaleElementReferenceException:  # the page redrew while it was read
        return False


def goto(drv, page: str):
    from selenium.webdriver.common.by import By

    def click():
        links = [a for a in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNavLink"]')
                 if a.text.strip().splitlines()[-1:] == [page]]
        assert links, f"no sidebar link {page!r}"
        links[0].click()

    idle(drv, 30)  # a page still rerunning (e.g. after a job ended) may redraw the sidebar under the click
    click()
    t0 = time.time()
    while time.time() - t0 < 15 and not title_is(drv, page):
        time.sleep(0.3)
    if not title_is(drv, page):  # the click landed on a link being redrawn: click it once more
        idle(drv, 30)
        click()
    wait_for(drv, lambda: title_is(drv, page), 20, f"page {page}")


def set_number(drv, label: str, value: int):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    el = drv.find_element(By.CSS_SELECTOR, f'input[aria-label="{label}"]')
    el.send_keys(Keys.CONTROL, "a")
    el.send_keys(str(value), Keys.ENTER)
    wait_for(drv, lambda: el.get_attribute("value") == str(value), 10, f"{label} = {value}")
    time.sleep(0.5)


def plotly_count(drv) -> int:
    """Plotly's drawn layers on the page, not counting the hidden chart that loads Plotly with the page."""
    return drv.execute_script("return [...document.querySelectorAll('.js-plotly-plot .main-svg')]"
                              ".filter(e => !e.closest('.st-key-' + arguments[0])).length", PLOTLY_PRELOAD)


def test_dashboard_in_browser(server, browser):
    from selenium.webdriver.common.by import By

    global T0
    t_start = T0 = time.time()
    drv = browser
    # a page without a result: the friendly note and its link to the run page
    drv.get(server + "/correlations")
    wait_for(drv, lambda: "run an alignment first" in drv.find_element(By.TAG_NAME, "body").text, 60, "the note")
    wait_for(drv, lambda: "Go to Pick and run" in drv.find_element(By.TAG_NAME, "body").text, 15, "the link")
    shot(drv, "01-no-result-yet")
    # Plotly's code was loaded and run with the page, before any chart: a hidden, empty chart drawn
    hidden = wait_for(drv, lambda: drv.execute_script(
        "const p = document.querySelector('.st-key-' + arguments[0]);"
        "return p && p.querySelector('.js-plotly-plot .main-svg') ? getComputedStyle(p).display : null",
        PLOTLY_PRELOAD),
        30, "Plotly loaded with the page")
    assert hidden == "none" and plotly_count(drv) == 0
    click_text(drv, "a", "Go to Pick and run")
    wait_for(drv, lambda: title_is(drv, "Pick and run"), 30, "the run page after the link")

    drv.get(server + "/?tokens=2048&lambdas=5&eval_blocks=2&device=cpu")  # small settings through the address
    wait_for(drv, lambda: drv.find_elements(By.CSS_SELECTOR, 'input[aria-label="Alignment tokens"]'), 30, "the inputs")
    # the settings came from the address; typing one checks that inputs work too
    wait_for(drv, lambda: drv.find_element(By.CSS_SELECTOR, 'input[aria-label="Alignment tokens"]')
             .get_attribute("value") == "2048", 20, "the settings from the address")
    wait_for(drv, lambda: "Compatible" in drv.find_element(By.TAG_NAME, "body").text, 30, "the compatibility check")
    shot(drv, "02-run-page")
    set_number(drv, "λ points", 3)
    click_text(drv, "button", "Run alignment")
    wait_for(drv, lambda: "Aligning" in drv.find_element(By.TAG_NAME, "body").text
             or "Barrier, vanilla" in drv.find_element(By.TAG_NAME, "body").text, 20, "progress")
    shot(drv, "03-progress", wait=False)
    wait_for(drv, lambda: "Barrier, vanilla averaging" in drv.find_element(By.TAG_NAME, "body").text, 240, "the result")
    wait_for(drv, lambda: plotly_count(drv) >= 1, 20, "the curves chart")
    body = drv.find_element(By.TAG_NAME, "body").text
    assert "computes B's function" in body
    drv.execute_script("document.querySelector('[data-testid=\"stMain\"]')?.scrollTo(0, 10000)")
    shot(drv, "04-result")

    for i, (page, min_charts) in enumerate((("Start here", 1), ("See the permutation", 3), ("Correlations", 6),
                                            ("Feature correlation", 1), ("Interpolation", 2),
                                            ("Amount of data", 0), ("Methods", 0), ("Export", 1)), start=5):
        goto(drv, page)
        if min_charts:
            wait_for(drv, lambda: plotly_count(drv) >= min_charts, 30, f"{min_charts} charts on {page}")
        for text in PAGE_END_TEXTS.get(page, ()):  # the page's last elements drew, not only its charts
            wait_for(drv, lambda: text in drv.find_element(By.TAG_NAME, "body").text, 30, f"'{text}' on {page}")
        assert "run an alignment first" not in drv.find_element(By.TAG_NAME, "body").text
        assert_no_exception(drv)
        shot(drv, f"{i:02d}-{page.lower().replace(' ', '-')}")
    assert time.time() - t_start < DEADLINE_S


def pick_option(drv, label: str, option: str):
    """Choose ``option`` in the selectbox labelled ``label``."""
    from selenium.webdriver.common.by import By

    boxes = [b for b in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stSelectbox"]') if label in b.text]
    assert boxes, f"no selectbox {label!r}"
    boxes[0].find_element(By.CSS_SELECTOR, '[role="combobox"], input').click()
    wait_for(drv, lambda: [o for o in drv.find_elements(By.CSS_SELECTOR, '[role="option"]') if o.text.strip() == option],
             10, f"option {option}")
    [o for o in drv.find_elements(By.CSS_SELECTOR, '[role="option"]') if o.text.strip() == option][0].click()
    wait_for(drv, lambda: any(option == (i.get_attribute("value") or "").strip() or option in i.text
                              for i in boxes[0].find_elements(By.CSS_SELECTOR, "input, div")), 10, f"{label} = {option}")
    idle(drv)


def body(drv) -> str:
    from selenium.webdriver.common.by import By

    return drv.find_element(By.TAG_NAME, "body").text


def test_second_pair_replaces_the_first_everywhere(server, browser):
    """After the first test's run (mlm-seed1 vs mlm-seed2, with Fig. 4 computed here), a second pair
    (mlm-seed1 vs mlm-seed3): the form kept the first run's settings, and no page shows the first
    pair's name or figures."""
    global T0
    t_start = T0 = time.time()
    drv = browser
    goto(drv, "Interpolation")
    click_text(drv, "button", "Compute the Fig. 4 variants")
    wait_for(drv, lambda: plotly_count(drv) >= 4, 120, "the Fig. 4 charts")
    shot(drv, "21-fig4-first-pair")
    first_pair_texts = ("zoo:mlm-seed2", "mlm-seed2 (B)")

    goto(drv, "Pick and run")
    wait_for(drv, lambda: "Barrier, vanilla averaging" in body(drv), 30, "the first result")
    from selenium.webdriver.common.by import By

    assert drv.find_element(By.CSS_SELECTOR, 'input[aria-label="Alignment tokens"]').get_attribute("value") == "2048"
    assert drv.find_element(By.CSS_SELECTOR, 'input[aria-label="λ points"]').get_attribute("value") == "3"
    pick_option(drv, "B: bundled checkpoint", "mlm-seed3")
    click_text(drv, "button", "Run alignment")
    wait_for(drv, lambda: "zoo:mlm-seed3 (B)" in body(drv) and "Barrier, vanilla averaging" in body(drv)
             and "Aligning" not in body(drv), 150, "the second result")
    shot(drv, "22-second-pair")
    for i, (page, charts) in enumerate((("Correlations", 5), ("Feature correlation", 1), ("Interpolation", 2),
                                        ("Amount of data", 0), ("Methods", 0), ("Export", 1)), start=23):
        goto(drv, page)
        if charts:
            wait_for(drv, lambda: plotly_count(drv) >= charts, 60, f"{charts} charts on {page}")
        idle(drv)
        time.sleep(1.0)
        text = body(drv)
        assert not [t for t in first_pair_texts if t in text], (page, text[:3000])
        if page == "Interpolation":  # this run's loss and pseudo-perplexity tabs only, no Fig. 4
            titles = [t.get_attribute("textContent") for t in drv.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .gtitle")]
            shot(drv, f"{i:02d}-second-pair-{page.lower().replace(' ', '-')}")
            assert not [t for t in titles if "Fig. 4" in t], titles
        assert_no_exception(drv)
        shot(drv, f"{i:02d}-second-pair-{page.lower().replace(' ', '-')}")
    assert time.time() - t_start < DEADLINE_S
