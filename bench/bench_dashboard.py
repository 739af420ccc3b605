"""The dashboard's quality bars, measured through the same job manager and work functions the
pages use (permerge.work), on the bundled default pair with the dashboard's default settings.

1. first complete result, cold cache: statistics, alignment, the 21-point curves of vanilla and the
   default variant, and the B' check (bar: 60 s on 2 CPU cores);
2. a variant switch with the statistics cached: the time until the progress panel has the first
   curve points to draw (3 points: A, B' and the middle; bar: 3 s) and until the full curve (bar: 15 s);
3. a page drawn from cache: (a) in the running server (the job manager has the result), and (b) in a
   fresh process (a new pipeline reads statistics, alignment and curves from the disk cache; model
   loading included) (bar: 1 s);
4. the idle server: CPU time of `streamlit run app.py` over 20 s with no browser attached, after
   start-up (bar: 2% of a core).

The floor printed beside them is two forward passes over the alignment data, measured in the same
run, so that a reader can tell a slow (or busy) machine from a slow program.

With ``--browser`` it measures the first complete result in a real browser against the command line
instead: a fresh `streamlit run app.py` (empty cache, warmed up by loading the run page) driven by
headless Chromium through Selenium, from the click on Run alignment until the result and its loss
chart are drawn, between two runs of `permerge interpolate` on the same job (empty cache each);
``--busy N`` keeps N other processes busy meanwhile.  It prints each time, the browser-versus-command-
line ratio against the command line's whole run and against its run after its imports (torch,
transformers, permerge: a running dashboard has them behind it), and the share of the job's time the
progress reporting took on the work thread.  A third floor is the dashboard's own job (which also
checks B′ against B, as ``permerge interpolate`` does not) run through the job manager in a fresh
process after its imports, with no server or browser.  ``--watch-cost`` measures what reading the page costs
the browser, by the way the page is read.

    python bench/bench_dashboard.py [--tokens 16384] [--lambdas 21] [--eval-blocks 64] [--no-idle | --idle-only]
    python bench/bench_dashboard.py --browser [--repeats 1] [--busy 2]
    python bench/bench_dashboard.py --watch-cost
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from permerge import work, zoo  # noqa: E402
from permerge.align import AlignOptions  # noqa: E402
from permerge.cache import ResultCache  # noqa: E402
from permerge.jobs import JobManager  # noqa: E402
from permerge.pipeline import Job  # noqa: E402
from permerge.study import PipelineRegistry  # noqa: E402


def default_job(tokens: int, blocks: int, device: str = "cpu") -> Job:
    """The dashboard's default job on the bundled default pair."""
    a, b = zoo.default_pair()
    return Job(a, b, data=str(zoo.align_text()), eval_data=str(zoo.eval_text()), tokens=tokens, eval_blocks=blocks,
               device=device)


def wait(h, poll=0.02, first_points=None):
    """Wait for a job; with ``first_points`` also return when its progress first carried that many rows."""
    t0 = time.perf_counter()
    t_first = None
    while h.active:
        if first_points and t_first is None:
            snap = h.snapshot()
            rows = snap["info"].get("rows") or []
            if snap["stage"].endswith("interpolation") and len(rows) >= first_points:
                t_first = time.perf_counter() - t0
        time.sleep(poll)
    if h.state != "done":
        raise SystemExit(f"job failed: {h.error}")
    return time.perf_counter() - t0, t_first


def idle_cpu(seconds: float = 20.0, watcher: str | None = None) -> float:
    """Percent of one core used by an idle `streamlit run app.py` (project config) over ``seconds``;
    ``watcher`` overrides the config's fileWatcherType (e.g. "auto", Streamlit's default)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    extra = ["--server.fileWatcherType", watcher] if watcher else []
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while time.time() - t0 < 60:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(5.0)  # let start-up settle

        def ticks():
            f = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return int(f[11]) + int(f[12])  # utime + stime

        hz = os.sysconf("SC_CLK_TCK")
        a, t = ticks(), time.time()
        time.sleep(seconds)
        return 100.0 * (ticks() - a) / hz / (time.time() - t)
    finally:
        proc.terminate()
        proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_CLI_TIMED = """
import json, sys, time
t0 = time.perf_counter()
import torch, transformers  # noqa: F401  (what a running dashboard has imported already:
from transformers import AutoTokenizer, BertForMaskedLM  # noqa: F401  the model classes,
from permerge import align, checkpoints, cli, evaluate, interpolate, pipeline, stats, study  # noqa: F401  the stages)
t1 = time.perf_counter()
code = cli.main(sys.argv[1:])
print("TIMED " + json.dumps({"imports_s": t1 - t0, "job_s": time.perf_counter() - t1}), file=sys.stderr)
sys.exit(code)
"""


_JOB_TIMED = """
import sys, tempfile, time
import torch, transformers  # noqa: F401
from transformers import AutoTokenizer, BertForMaskedLM  # noqa: F401
sys.path.insert(0, "bench")
from bench_dashboard import default_job
from permerge import work
from permerge.align import AlignOptions
from permerge.cache import ResultCache
from permerge.jobs import JobManager
from permerge.study import PipelineRegistry
import gc, json
tokens, lambdas, blocks = map(int, sys.argv[1:4])
if sys.argv[4:] == ["freeze"]:  # as the dashboard's server does after its first page
    gc.collect()
    gc.freeze()
full = [0, 0.0, None]  # the job's full collections: how many, seconds with the interpreter lock held


def count(phase, info):
    if info["generation"] == 2:
        if phase == "start":
            full[2] = time.perf_counter()
        else:
            full[0], full[1] = full[0] + 1, full[1] + time.perf_counter() - full[2]


job = default_job(tokens, blocks)
with tempfile.TemporaryDirectory() as d:
    gc.callbacks.append(count)
    t = time.perf_counter()
    h = JobManager().submit("job", work.pair_work(PipelineRegistry(ResultCache(d)), job, AlignOptions(), lambdas))
    while h.active:
        time.sleep(0.01)
    seconds = time.perf_counter() - t
    import threading
    for th in threading.enumerate():  # after its result the job's thread tidies memory (one full collection)
        if th.name.startswith("permerge-"):
            th.join(60)
    gc.callbacks.remove(count)
    assert h.state == "done", h.error
    print("TIMED " + json.dumps({"job_s": seconds, "full_collections": full[0],
                                 "full_collection_s": full[1], "tracked_objects": len(gc.get_objects())}),
          file=sys.stderr)
"""


def _timed_child(args: list[str], env: dict, what: str) -> str:
    """Runs ``python -c ARGS...`` in the repository; the text after "TIMED " on the last stderr line that
    has it.  A failing child's error output is shown before this stops."""
    out = subprocess.run([sys.executable, "-c", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"error: {what} failed (exit {out.returncode})")
    return next(x for x in reversed(out.stderr.splitlines()) if x.startswith("TIMED "))[6:]


def job_alone(tokens: int, lambdas: int, blocks: int, env: dict, freeze: bool = False) -> dict:
    """The dashboard's own job (``work.pair_work``: the statistics, the assignments, the B′ check and
    both curves, as the run page submits it) through the job manager in a fresh process after its
    imports, with no server and no browser: what the browser's time would be if showing it cost
    nothing.  {job_s, full_collections, full_collection_s, tracked_objects}: the job's seconds until
    its result is seen, the collector's full collections from its start until its thread ended and
    their seconds (the last one is the job manager's, right after the result: it holds the
    interpreter lock, so the thread that would draw the result waits for it and ``job_s`` includes
    it), and the objects the collector tracks after it.  ``freeze``: the imported modules first go to the permanent generation, as the
    dashboard's server does after its first page."""
    import json
    return json.loads(_timed_child([_JOB_TIMED, str(tokens), str(lambdas), str(blocks)] + ["freeze"] * freeze, env,
                                   "the dashboard's job outside the server"))


def job_seconds(tokens: int, lambdas: int, blocks: int, env: dict, freeze: bool = False) -> float:
    """``job_alone``'s seconds."""
    return job_alone(tokens, lambdas, blocks, env, freeze)["job_s"]


def cli_seconds(tokens: int, lambdas: int, blocks: int, env: dict) -> tuple[float, float, float]:
    """(wall time with start-up, wall time after torch, transformers and permerge are imported, CPU
    seconds) of `permerge interpolate` on the bundled default pair (empty cache).  The second is the
    stricter floor for the browser: a running dashboard has those imports behind it."""
    import json
    import resource
    with tempfile.TemporaryDirectory() as d:
        cmd = [_CLI_TIMED, "interpolate", f"zoo:{zoo.DEFAULT_PAIR[0]}",
               f"zoo:{zoo.DEFAULT_PAIR[1]}",
               "--data", "zoo:align.txt", "--eval-data", "zoo:eval.txt", "--tokens", str(tokens), "--lambdas",
               str(lambdas), "--eval-blocks", str(blocks), "--device", "cpu", "--cache-dir", f"{d}/cache",
               "--out", f"{d}/out", "--quiet"]
        r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        timed = json.loads(_timed_child(cmd, env, "permerge interpolate"))
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, timed["job_s"], (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants."""
    hz, total, todo = os.sysconf("SC_CLK_TCK"), 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / hz
            for t in Path(f"/proc/{p}/task").iterdir():
                kids = (t / "children").read_text().split()
                todo += [int(k) for k in kids]
        except OSError:
            continue
    return total


@contextmanager
def _browser_on(app: Path, env: dict):
    """A fresh `streamlit run APP` (run in its folder, empty result cache) on a free local port with
    headless Chromium; yields (driver, server process, address, shows) where ``shows(*texts)`` tells
    whether the page has all ``texts``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        raise SystemExit("error: the browser measurements need chromium and chromedriver "
                         "(apt-get install chromium chromium-driver)")
    port = _free_port()
    with tempfile.TemporaryDirectory() as d:
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", app.name, "--server.address", "127.0.0.1",
                                   "--server.port", str(port), "--server.headless", "true",
                                   "--browser.gatherUsageStats", "false"],
                                  cwd=app.parent, env={**env, "PERMERGE_CACHE": f"{d}/cache"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                  f"--user-data-dir={d}/profile"):
            opts.add_argument(a)
        drv = None
        try:
            url = f"http://127.0.0.1:{port}"
            t0 = time.time()
            while time.time() - t0 < 60:
                try:
                    urllib.request.urlopen(url + "/_stcore/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.3)
            drv = webdriver.Chrome(service=Service(driver), options=opts)

            def shows(*texts):
                """Whether the page has all ``texts`` (a chart's title included, once Plotly drew it).
                textContent, not the element's .text: .text lays the whole page out for every call,
                which costs Chromium far more than the page's own updates (``--watch-cost``)."""
                try:
                    return drv.execute_script("const t = document.body.textContent; "
                                              "return arguments[0].every(s => t.includes(s));", list(texts))
                except Exception:
                    return False

            yield drv, server, url, shows
        finally:
            if drv is not None:
                drv.quit()
            server.terminate()
            server.wait(10)


@contextmanager
def _run_page(tokens: int, lambdas: int, blocks: int, env: dict):
    """The dashboard (``_browser_on`` app.py) on its run page with the given settings, loaded and
    settled; yields (driver, server process, shows)."""
    with _browser_on(ROOT / "app.py", env) as (drv, server, url, shows):
        drv.get(f"{url}/?tokens={tokens}&lambdas={lambdas}&eval_blocks={blocks}&device=cpu")
        _until(lambda: shows("Compatible", "Run alignment"), 120, "the run page")
        _settle(drv.service.process.pid)
        yield drv, server, shows


_CHART_PAGE = """
import sys
sys.path.insert(0, {root!r})
import plotly.graph_objects as go
import streamlit as st
if {preload!r}:
    from dashboard.figures import preload_plotly
    preload_plotly()
n = st.session_state.setdefault("n", 0)
if st.button("Add a chart"):
    st.session_state.n = n = n + 1
for i in range(n):
    st.plotly_chart(go.Figure(go.Scatter(x=[0, 0.5, 1], y=[1, 2 + i, 1])).update_layout(title=f"chart {{i}}"),
                    key=f"chart{{i}}")
st.caption(f"{{n}} charts")
"""


def first_chart_cost(preload: bool, env: dict, charts: int = 4) -> list[tuple[float, float]]:
    """(seconds until drawn, Chromium CPU seconds) of each of ``charts`` Plotly charts added one per
    click to a minimal Streamlit page in a fresh browser, with or without the dashboard's hidden
    chart that loads Plotly with the page (``dashboard.figures.preload_plotly``)."""
    from selenium.webdriver.common.by import By

    out = []
    with tempfile.TemporaryDirectory() as d:
        app = Path(d) / "charts.py"
        app.write_text(_CHART_PAGE.format(root=str(ROOT), preload=preload))
        with _browser_on(app, env) as (drv, server, url, shows):
            drv.get(url)
            _until(lambda: shows("0 charts"), 60, "the page")
            _settle(drv.service.process.pid)
            for i in range(charts):
                b0, t0 = _cpu_seconds(drv.service.process.pid), time.perf_counter()
                next(b for b in drv.find_elements(By.TAG_NAME, "button") if "Add a chart" in b.text).click()
                _until(lambda: shows(f"chart {i}", f"{i + 1} charts"), 60, f"chart {i}")
                drawn = time.perf_counter() - t0
                _settle(drv.service.process.pid)
                out.append((drawn, _cpu_seconds(drv.service.process.pid) - b0))
    return out


def _settle(pid: int, quiet_s: float = 0.1, timeout: float = 30.0) -> float:
    """Waits until the browser (``pid`` and its children) has used under ``quiet_s`` CPU seconds in
    one second, as a page that has finished loading does (at most ``timeout`` seconds); returns the
    seconds waited.  A fixed pause after the page's text shows would start the timed run while the
    browser may still be drawing or loading code for the page."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        c = _cpu_seconds(pid)
        time.sleep(1.0)
        if _cpu_seconds(pid) - c < quiet_s:
            break
    return time.perf_counter() - t0


def _until(cond, timeout: float, what: str) -> None:
    t = time.time()
    while time.time() - t < timeout:
        if cond():
            return
        time.sleep(0.25)
    raise SystemExit(f"error: the browser did not show {what} in {timeout} s")


def browser_seconds(tokens: int, lambdas: int, blocks: int, env: dict) -> tuple[float, float, float]:
    """(seconds from the click on Run alignment until the result and its loss chart are drawn, CPU
    seconds of the server and of the browser meanwhile) in headless Chromium, on a fresh server with an
    empty cache, warmed up first (its first page load imports torch, as a running dashboard already has)."""
    from selenium.webdriver.common.by import By

    with _run_page(tokens, lambdas, blocks, env) as (drv, server, shows):
        button = next(b for b in drv.find_elements(By.TAG_NAME, "button") if "Run alignment" in b.text)
        c0, b0, t0 = _cpu_seconds(server.pid), _cpu_seconds(drv.service.process.pid), time.perf_counter()
        button.click()
        _until(lambda: shows("Barrier, vanilla averaging", "Loss along λ"), 1200, "the result and its chart")
        seconds = time.perf_counter() - t0
        return seconds, _cpu_seconds(server.pid) - c0, _cpu_seconds(drv.service.process.pid) - b0


def watch_cost(tokens: int, lambdas: int, blocks: int, env: dict, seconds: float = 10.0) -> list[tuple[str, float]]:
    """Chromium's CPU seconds over ``seconds`` on the idle run page while a watcher reads it four
    times a second: not at all, through Selenium's ``.text`` of the page body, and through
    ``document.body.textContent`` (what the browser measurement uses)."""
    from selenium.webdriver.common.by import By

    out = []
    with _run_page(tokens, lambdas, blocks, env) as (drv, server, shows):
        for name, read in (("no reading", lambda: None),
                           ("body .text (Selenium)", lambda: drv.find_element(By.TAG_NAME, "body").text),
                           ("textContent (script)", lambda: shows("Barrier, vanilla averaging"))):
            b0, t0 = _cpu_seconds(drv.service.process.pid), time.time()
            while time.time() - t0 < seconds:
                read()
                time.sleep(0.25)
            out.append((name, _cpu_seconds(drv.service.process.pid) - b0))
    return out


def reporting_share(job: Job, options: AlignOptions, lambdas: int) -> float:
    """Share of a cold run's time (empty cache) spent in its progress reporting on the work thread:
    the job manager's callback with the job plan, read once a second (a page reads it every 2 s)."""
    from dashboard.state import describe, overall_line  # noqa: F401 (what the page runs per poll, no Streamlit call)

    spent = [0.0]
    with tempfile.TemporaryDirectory() as d:
        reg, mgr = PipelineRegistry(ResultCache(d)), JobManager()
        inner = work.pair_work(reg, job, options, lambdas)

        def timed(progress):
            def cb(*a, **k):
                t = time.perf_counter()
                try:
                    return progress(*a, **k)
                finally:
                    spent[0] += time.perf_counter() - t
            return inner(cb)

        t0 = time.perf_counter()
        h = mgr.submit("share", timed)
        while h.active:
            t = time.perf_counter()
            snap = h.snapshot()
            if snap["info"].get("job"):
                overall_line(snap)
            describe(snap)
            spent[0] += time.perf_counter() - t
            time.sleep(1.0)
        total = time.perf_counter() - t0
    return spent[0] / total


def browser_main(args) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        load = os.getloadavg()
        rows = []
        for _ in range(args.repeats):
            before, before_job, cli_cpu = cli_seconds(args.tokens, args.lambdas, args.eval_blocks, env)
            browser, cpu, cpu_browser = browser_seconds(args.tokens, args.lambdas, args.eval_blocks, env)
            after, after_job, cli_cpu2 = cli_seconds(args.tokens, args.lambdas, args.eval_blocks, env)
            bare = job_seconds(args.tokens, args.lambdas, args.eval_blocks, env, freeze=True)  # as in the server
            rows.append((before, before_job, (cli_cpu + cli_cpu2) / 2, browser, cpu, cpu_browser, after, after_job,
                         bare))
        share = reporting_share(default_job(args.tokens, args.eval_blocks), AlignOptions(), args.lambdas)
    finally:
        for p in busy:
            p.terminate()
    print(f"# first complete result, browser vs command line (bundled default pair, {args.tokens} tokens, "
          f"{args.lambdas} lambdas, {args.eval_blocks} evaluation blocks, CPU; {os.cpu_count()} CPUs, {platform.machine()}; "
          f"{args.busy} extra busy processes; load average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f})")
    print("| CLI before (s): with start-up, after imports | CLI CPU, mean (s) | browser: click to result (s) "
          "| server CPU (s) | Chromium CPU (s) | CLI after (s): with start-up, after imports "
          "| ratio to the CLIs' mean: with start-up, after imports | the dashboard's job alone (s) "
          "| browser / job alone |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for before, before_job, cli_cpu, browser, cpu, cpu_browser, after, after_job, bare in rows:
        print(f"| {before:.1f}, {before_job:.1f} | {cli_cpu:.1f} | {browser:.1f} | {cpu:.1f} | {cpu_browser:.1f} "
              f"| {after:.1f}, {after_job:.1f} | {browser / ((before + after) / 2):.2f}x, "
              f"{browser / ((before_job + after_job) / 2):.2f}x | {bare:.1f} | {browser / bare:.2f}x |")
    print(f"progress reporting on the work thread (callbacks, and a reading every second, twice the page's rate): {share:.2%} of the job")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--lambdas", type=int, default=21)
    ap.add_argument("--eval-blocks", type=int, default=64)  # the dashboard's and the CLI's default
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-idle", action="store_true", help="skip the idle-server measurement")
    ap.add_argument("--idle-only", action="store_true",
                    help="only the idle server, with the project's config and with file watching on")
    ap.add_argument("--browser", action="store_true",
                    help="the first complete result in headless Chromium against `permerge interpolate`")
    ap.add_argument("--repeats", type=int, default=1, help="--browser: measurements (each between two CLI runs)")
    ap.add_argument("--busy", type=int, default=0, help="--browser: other busy processes meanwhile")
    ap.add_argument("--watch-cost", action="store_true",
                    help="Chromium's CPU on the idle run page while a watcher reads the page's text 4 times a second")
    ap.add_argument("--first-chart", action="store_true",
                    help="Chromium's CPU for each Plotly chart added to a minimal page, with and without the preload")
    ap.add_argument("--collector", action="store_true",
                    help="the dashboard's job alone, with and without the imported modules frozen for the collector")
    args = ap.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if args.first_chart:
        print(f"# Plotly charts added one per click to a minimal Streamlit page in a fresh headless Chromium "
              f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}): seconds until drawn, Chromium CPU seconds")
        for preload in (False, True):
            cells = " | ".join(f"{t:.2f} s, {c:.2f} s" for t, c in first_chart_cost(preload, env))
            print(f"| {'with' if preload else 'without'} the hidden preload chart | {cells} |")
        return
    if args.collector:
        print(f"# the dashboard's job alone ({args.tokens} tokens, {args.lambdas} lambdas, {args.eval_blocks} blocks, "
              f"CPU; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}): full collections from the job's start until its thread ended")
        print("| imported modules | job (s) | full collections, the job manager's after the result included "
              "| their seconds | objects the collector tracks after |")
        print("| --- | --- | --- | --- | --- |")
        for _ in range(args.repeats):
            for freeze in (False, True):
                r = job_alone(args.tokens, args.lambdas, args.eval_blocks, env, freeze)
                print(f"| {'frozen (gc.freeze)' if freeze else 'walked by every full collection'} | {r['job_s']:.1f} "
                      f"| {r['full_collections']} | {r['full_collection_s']:.3f} "
                      f"| {r['tracked_objects']:,} |")
        return
    if args.watch_cost:
        print(f"# Chromium CPU seconds over 10 s on the idle run page, by how the page is read 4 times a second "
              f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
        for name, cpu in watch_cost(args.tokens, args.lambdas, args.eval_blocks, env):
            print(f"| {name} | {cpu:.2f} |")
        return
    if args.browser:
        browser_main(args)
        return
    if args.idle_only:
        print(f"idle server, % of one core over 20 s: {idle_cpu():.1f} % (fileWatcherType none), "
              f"{idle_cpu(watcher='auto'):.1f} % (fileWatcherType auto); load average {os.getloadavg()[0]:.1f}")
        return
    a, b = zoo.default_pair()  # named in the report
    job = default_job(args.tokens, args.eval_blocks, args.device)
    default = AlignOptions(ff=True, attention="head-perm", residual="identity")
    switched = AlignOptions(ff=True, attention="monotonic", residual="identity")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        cache = ResultCache(d)
        reg, mgr = PipelineRegistry(cache), JobManager()
        first, _ = wait(mgr.submit("first", work.pair_work(reg, job, default, args.lambdas)))
        switch, switch_first = wait(mgr.submit("switch", work.pair_work(reg, job, switched, args.lambdas)),
                                    first_points=3)

        t0 = time.perf_counter()
        res = mgr.submit("first", work.pair_work(reg, job, default, args.lambdas)).result  # a page in the same server
        page_server = time.perf_counter() - t0
        assert res is not None

        fresh = PipelineRegistry(cache)  # a new server process: models load, results come from the disk cache
        page_fresh, _ = wait(JobManager().submit("page", work.pair_work(fresh, job, default, args.lambdas)))

        pipe = reg.get(job)
        t0 = time.perf_counter()
        with torch.no_grad():
            for x in pipe.prepared.align_batches:
                x = {k: v.to(pipe.device) for k, v in x.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                pipe.pair[0].model.base_model(**x)
                pipe.pair[1].model.base_model(**x)
        floor = time.perf_counter() - t0
        cache.close()
    idle = None if args.no_idle else idle_cpu()

    cfg = pipe.pair[0].config
    print(f"# dashboard quality bars (bundled {Path(a).name} vs {Path(b).name}: {cfg.num_hidden_layers} layers, "
          f"width {cfg.hidden_size}, {cfg.num_attention_heads} heads; {pipe.stats().tokens} alignment tokens; "
          f"{args.lambdas} lambdas; {args.eval_blocks} evaluation blocks ({res['vanilla'].items} masked tokens); "
          f"device {pipe.device}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
          f"{platform.machine()}; load average at start {load[0]:.1f})")
    print("| measure | seconds | bar | ratio to floor |")
    print("| --- | --- | --- | --- |")
    print(f"| floor: two forward passes over the alignment data | {floor:.2f} | | 1.0 |")
    print(f"| first complete result, cold cache | {first:.2f} | 60 | {first / floor:.1f} |")
    print(f"| variant switch: first curve points (A, B', middle) | {switch_first:.2f} | 3 | {switch_first / floor:.1f} |")
    print(f"| variant switch: full curve and check | {switch:.2f} | 15 | {switch / floor:.1f} |")
    print(f"| page from cache, running server | {page_server:.3f} | 1 | |")
    print(f"| page from cache, fresh process (models load) | {page_fresh:.2f} | 1 | {page_fresh / floor:.1f} |")
    if idle is not None:
        print(f"| idle server, % of one core over 20 s | {idle:.1f} % | 2 % | |")
    print(f"barriers: vanilla {res['vanilla'].barrier:.4f} ± {res['vanilla'].barrier_se:.4f}, "
          f"{res['aligned'].method} {res['aligned'].barrier:.4f} ± {res['aligned'].barrier_se:.4f}")


if __name__ == "__main__":
    main()
