"""Checks of what a user typed (a checkpoint folder, a data path) run off the script thread with a
deadline: a file that blocks (a FIFO, a hung network mount) stalls at most that helper thread, never
the page or the server.

The deadline counts the time the check makes no progress, not its whole time: a check that keeps
using the CPU (a first import of a model family's code on a busy machine can take longer than the
deadline) goes on, up to ``CAP_S``; a check blocked in ``open`` or ``read`` uses none and is given up
after ``VALIDATE_S``.  Where a thread's CPU time cannot be read (not Linux), the deadline is the
whole time."""
from __future__ import annotations

import contextvars
import threading
import time

from permerge.errors import PermergeError

VALIDATE_S = 10.0  # seconds a page waits for one check of a typed path that makes no progress
CAP_S = 120.0  # and at most this long for one that keeps computing
POLL_S = 0.25


class CheckTimedOut(PermergeError):
    """A check of a typed path did not finish within its deadline."""


def within_deadline(fn, *args, what: str = "the path", seconds: float | None = None, **kwargs):
    """``fn(*args, **kwargs)`` on a daemon thread; its value or its exception, or CheckTimedOut
    after ``seconds`` (the thread is left behind: it holds nothing the page needs)."""
    limit = VALIDATE_S if seconds is None else seconds
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller
            box["error"] = e

    # in the caller's context, so that e.g. a session's download switch holds there too
    t = threading.Thread(target=contextvars.copy_context().run, args=(target,), name="permerge-path-check",
                         daemon=True)
    start = last_progress = time.monotonic()
    t.start()
    t.join(min(limit, POLL_S))
    cpu = _thread_cpu(t.native_id)
    while t.is_alive():
        now = time.monotonic()
        used = _thread_cpu(t.native_id)
        if used is not None and cpu is not None and used > cpu:  # it computes: not blocked
            cpu, last_progress = used, now
        if now - last_progress >= limit or now - start >= max(limit, CAP_S if used is not None else limit):
            break
        t.join(POLL_S)
    if t.is_alive():
        raise CheckTimedOut(f"checking {what} took more than {limit:g} s without progress (a FIFO, or a network mount "
                            "that does not answer?); give another path")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _thread_cpu(tid: int | None) -> int | None:
    """CPU time (clock ticks, user + system) a thread of this process has used; None where unknown."""
    if tid is None:
        return None
    try:
        fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
