"""Long work off the caller's thread, with progress, an estimate of the time left, and cancelling.

The dashboard keeps one JobManager per server process; two browser sessions that submit the same
key share one job (and across processes the cache lock in cache.py keeps a key computed once).
No Streamlit here: a page reads ``JobHandle.snapshot()`` and draws it.
"""
from __future__ import annotations

import atexit
import contextvars
import gc
import threading
import time
import traceback
from dataclasses import dataclass, field

from .errors import Cancelled, PermergeError

WARMUP_STEPS = 1  # steps of a stage not used for its rate (model loading, first-call overheads)


@dataclass
class JobHandle:
    key: str
    label: str
    state: str = "queued"  # queued | running | done | error | cancelled
    stage: str = ""
    done: int = 0
    total: int = 0
    info: dict = field(default_factory=dict)
    result: object = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    stage_started: float = field(default_factory=time.time)
    _rate_from: tuple | None = field(default=None, repr=False)  # (time, done) once the warm-up is over
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def progress(self, stage: str, done: int, total: int, **info) -> None:
        """The callback handed to the pipeline; raises Cancelled once cancel() was called."""
        if self._cancel.is_set():
            raise Cancelled("cancelled by the user")
        with self._lock:
            now = time.time()
            if stage != self.stage or done < self.done:
                self.stage, self.stage_started, self._rate_from = stage, now, None
            if self._rate_from is None and done >= WARMUP_STEPS and total:
                self._rate_from = (now, done)
            self.done, self.total, self.info = done, total, dict(info)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def eta_s(self) -> float | None:
        """Time left in the current stage, from the throughput measured after its warm-up steps
        (None until two steps past the warm-up have been timed)."""
        if not self.total or self.done >= self.total or self._rate_from is None:
            return None
        t0, d0 = self._rate_from
        if self.done - d0 < 2:
            return None
        rate = (time.time() - t0) / (self.done - d0)
        return rate * (self.total - self.done)

    def fraction(self) -> float:
        """How much of the job is done: of the whole study when the work reports ``overall=(k, n)``
        (curves done of n, plus the current curve's share), else of the current stage."""
        stage = self.done / self.total if self.total else 0.0
        if "job" in self.info:  # the work follows a plan of its stages (``plan.JobPlan``)
            return float(self.info["job"]["fraction"])
        if "overall" in self.info:
            k, n = self.info["overall"]
            return (k + stage) / n if n else stage
        return stage

    def job_eta_s(self) -> float | None:
        """Time left for the whole job when the work follows a plan: the plan's estimate at its last
        event, less the time since then (None when unknown)."""
        plan = self.info.get("job")
        if not plan or plan.get("eta_s") is None:
            return None
        return max(float(plan["eta_s"]) - (time.time() - float(plan["at"])), 0.0)

    def snapshot(self) -> dict:
        with self._lock:
            return {"job_eta_s": self.job_eta_s(), "key": self.key, "label": self.label, "state": self.state, "stage": self.stage,
                    "done": self.done, "total": self.total, "info": dict(self.info), "error": self.error,
                    "elapsed_s": (self.finished or time.time()) - self.started, "eta_s": self.eta_s(),
                    "fraction": self.fraction()}


_LIVE: dict[threading.Thread, "JobHandle"] = {}  # job threads still running, with their handles
_LIVE_LOCK = threading.Lock()
STOP_WAIT_S = 10.0


def stop_all(wait_s: float = STOP_WAIT_S) -> int:
    """Cancel every running job and wait (up to ``wait_s`` in all) for its thread to end; returns
    how many are still running.  Registered with ``atexit``: a job thread left inside torch's C++
    code while the interpreter tears down (a server stopped by SIGTERM) can abort the process
    ("terminate called without an active exception"); cancelled, it leaves at its next progress
    step."""
    with _LIVE_LOCK:
        live = list(_LIVE.items())
    for _, h in live:
        h.cancel()
    end = time.time() + wait_s
    for t, _ in live:
        t.join(max(0.0, end - time.time()))
    return sum(t.is_alive() for t, _ in live)


atexit.register(stop_all)


def print_trace(e: BaseException) -> None:
    """``traceback.print_exc()`` without the ``^^^`` lines under each frame: Python 3.11 finds them
    with ``ast.parse``, which a job's thread must not call while a page is parsed (see npyfile.py)."""
    import sys

    te, seen = traceback.TracebackException.from_exception(e), set()
    todo = [te]
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        for frame in t.stack:
            frame.colno = frame.end_colno = None
        todo += [x for x in (t.__cause__, t.__context__) if x is not None]
    sys.stderr.write("".join(te.format()))


class JobManager:
    def __init__(self):
        self._jobs: dict[str, JobHandle] = {}
        self._lock = threading.Lock()

    def submit(self, key: str, fn, label: str = "") -> JobHandle:
        """Run ``fn(progress)`` on a worker thread, unless a job with this key is running or done
        (then that handle is returned).  A failed or cancelled job is replaced by a new one."""
        with self._lock:
            h = self._jobs.get(key)
            if h is not None and h.state in ("queued", "running", "done"):
                return h
            h = self._jobs[key] = JobHandle(key, label)
        # the job runs in its submitter's context (e.g. a dashboard session's download switch)
        ctx = contextvars.copy_context()
        t = threading.Thread(target=ctx.run, args=(self._run, h, fn), daemon=True, name=f"permerge-{key[:24]}")
        with _LIVE_LOCK:
            _LIVE[t] = h
        t.start()
        return h

    def get(self, key: str) -> JobHandle | None:
        return self._jobs.get(key)

    def forget(self, key: str) -> None:
        with self._lock:
            self._jobs.pop(key, None)

    @staticmethod
    def _run(h: JobHandle, fn) -> None:
        h.state = "running"
        try:
            h.result = fn(h.progress)
            h.state = "done"
        except Cancelled:
            h.state, h.error = "cancelled", "cancelled"
        except PermergeError as e:
            h.state, h.error = "error", str(e)
        except Exception as e:  # shown to the user with its type; the trace goes to the server log
            print_trace(e)
            h.state, h.error = "error", f"{type(e).__name__}: {e}"
        finally:
            h.finished = time.time()
            # the dashboard's server runs no collection after each script run (.streamlit/config.toml):
            # one full collection per job returns what the job left in reference cycles
            gc.collect()
            with _LIVE_LOCK:
                _LIVE.pop(threading.current_thread(), None)
