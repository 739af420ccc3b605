"""Several sessions at once: one computation per key, no corrupt cache; jobs report and cancel."""
import threading
import time

import pytest

from permerge.cache import ResultCache, make_key
from permerge.jobs import JobManager
from permerge.pipeline import Cancelled


def test_same_key_from_many_clients_is_computed_once(tmp_path):
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.5)
        return {"value": 42}

    key = make_key("test", x=1)
    results = []

    def client():  # each client opens the cache itself, as separate processes would
        c = ResultCache(tmp_path)
        results.append(c.get_or_compute(key, slow, poll=0.05))
        c.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [{"value": 42}] * 4
    assert len(calls) == 1
    c = ResultCache(tmp_path)
    assert c.get(key) == {"value": 42}
    assert not any(str(k).startswith("lock:") for k in c._dc)


def test_failed_computation_stores_nothing_and_releases_the_lock(tmp_path):
    c = ResultCache(tmp_path)
    key = make_key("test", x=2)
    with pytest.raises(RuntimeError):
        c.get_or_compute(key, lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert key not in c
    assert c.get_or_compute(key, lambda: 7) == 7


def test_job_manager_dedups_reports_progress_and_cancels():
    mgr = JobManager()
    started = threading.Event()
    runs = []

    def work(progress):
        runs.append(1)
        started.set()
        for i in range(200):
            progress("statistics", i + 1, 200, tokens=(i + 1) * 128)
            time.sleep(0.01)
        return "done"

    h1 = mgr.submit("k", work, "job")
    assert started.wait(5)
    h2 = mgr.submit("k", work, "job")
    assert h1 is h2  # a second session gets the same job
    time.sleep(0.1)
    snap = h1.snapshot()
    assert snap["state"] == "running" and snap["stage"] == "statistics" and 0 < snap["done"] < 200
    assert snap["info"]["tokens"] == snap["done"] * 128
    h1.cancel()
    for _ in range(100):
        if not h1.active:
            break
        time.sleep(0.05)
    assert h1.state == "cancelled"
    # a cancelled job can be submitted again and runs to the end
    h3 = mgr.submit("k", work, "job")
    assert h3 is not h1
    for _ in range(200):
        if not h3.active:
            break
        time.sleep(0.05)
    assert h3.state == "done" and h3.result == "done" and len(runs) == 2


def test_job_errors_are_one_line():
    from permerge.errors import DataError

    mgr = JobManager()

    def bad(progress):
        raise DataError("the data at x is empty")

    h = mgr.submit("bad", bad)
    for _ in range(100):
        if not h.active:
            break
        time.sleep(0.02)
    assert h.state == "error" and h.error == "the data at x is empty"
    assert issubclass(Cancelled, Exception)


def test_pipeline_progress_is_per_call(tiny_mlm_pair):
    """Two sessions' jobs on one shared Pipeline, each passing its own callback: each callback sees
    only its own thread's work, and one user's cancel stops only that user's job."""
    from permerge.align import AlignOptions
    from permerge.pipeline import Job, Pipeline

    a, b, text = tiny_mlm_pair
    pipe = Pipeline(Job(str(a), str(b), data=str(text), tokens=512, eval_blocks=2, device="cpu"))
    seen, outcome = {"one": set(), "two": set()}, {}

    def worker(name, options, cancel):
        def cb(stage, done, total, **info):
            seen[name].add(threading.current_thread().name)
            if cancel and stage == "interpolation":
                raise Cancelled("cancelled by the user")
        try:
            outcome[name] = pipe.curve(options, 3, progress=cb).barrier
        except Cancelled:
            outcome[name] = "cancelled"

    threads = [threading.Thread(target=worker, args=("one", AlignOptions(attention="monotonic"), True), name="one"),
               threading.Thread(target=worker, args=("two", AlignOptions(), False), name="two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert seen == {"one": {"one"}, "two": {"two"}}
    assert outcome["one"] == "cancelled" and isinstance(outcome["two"], float)
    assert not hasattr(type(pipe), "progress") or not isinstance(getattr(type(pipe), "progress"), property)


def test_eta_is_measured_after_warm_up_and_fraction_follows_the_study(monkeypatch):
    """No estimate from the first (warm-up) step; then the measured throughput; a study's bar
    follows its curves done (overall), not the current curve's stage alone."""
    import permerge.jobs as J

    now = [1000.0]
    monkeypatch.setattr(J.time, "time", lambda: now[0])
    h = J.JobHandle("k", "job")
    h.progress("interpolation", 1, 21)  # includes model loading: 30 s
    now[0] += 1.0
    h.progress("interpolation", 2, 21)
    assert h.eta_s() is None  # one timed step after the warm-up is not a rate yet
    now[0] += 1.0
    h.progress("interpolation", 3, 21)
    assert h.eta_s() == pytest.approx(18.0)  # 1 s per point, 18 points left; not 30 s per point
    h.progress("pair 1/3: interpolation", 1, 21, overall=(1, 4))
    assert h.snapshot()["fraction"] == pytest.approx((1 + 1 / 21) / 4)
    assert h.eta_s() is None  # a new stage starts its own warm-up
