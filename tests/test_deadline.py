"""The deadline of a page's path checks (dashboard/deadline.py) counts the time a check makes no
progress: a check blocked in a read (a FIFO, a hung mount) is given up, one that computes (a first
import of a family's code on a busy machine) is waited for, up to a cap."""
import sys
import threading
import time

import pytest

from dashboard import deadline
from dashboard.deadline import CheckTimedOut, within_deadline

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's CPU time is read from /proc")


def _compute(seconds):
    end, x = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        x += sum(range(1000))
    return "done"


@linux
def test_a_check_that_computes_past_the_deadline_is_waited_for(monkeypatch):
    monkeypatch.setattr(deadline, "VALIDATE_S", 0.5)
    assert within_deadline(_compute, 2.0) == "done"


def test_a_check_that_blocks_is_given_up_after_the_deadline(monkeypatch):
    monkeypatch.setattr(deadline, "VALIDATE_S", 0.5)
    gate = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(CheckTimedOut, match="without progress"):
        within_deadline(gate.wait, 30, what="the stuck path")
    assert time.monotonic() - t0 < 5
    gate.set()


@linux
def test_a_check_that_computes_for_ever_is_given_up_at_the_cap(monkeypatch):
    monkeypatch.setattr(deadline, "VALIDATE_S", 0.5)
    monkeypatch.setattr(deadline, "CAP_S", 1.5)
    t0 = time.monotonic()
    with pytest.raises(CheckTimedOut):
        within_deadline(_compute, 6.0)
    assert time.monotonic() - t0 < 5
