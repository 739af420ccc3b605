"""Checks of what a user typed (a checkpoint folder, a data path) run off the script thread with a
deadline: a file that blocks (a FIFO, a hung network mount) stalls at most that helper thread, never
the page or the server."""
from __future__ import annotations

import contextvars
import threading

from permerge.errors import PermergeError

VALIDATE_S = 10.0  # seconds a page waits for one check of a typed path


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
    t.start()
    t.join(limit)
    if t.is_alive():
        raise CheckTimedOut(f"checking {what} took more than {limit:g} s (a FIFO, or a network mount that does "
                            "not answer?); give another path")
    if "error" in box:
        raise box["error"]
    return box.get("value")
