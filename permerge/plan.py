"""The stages of one long job, so that its progress and time left can be told for the whole job
(stage k of n, about how long until the job ends), not only for the stage running now.

A ``JobPlan`` lists the stages in the order the work runs them, each with a kind ("statistics",
"assignment", "curve", ...) and a size in token-forwards (a token through one model; a statistics
pass runs two models, a curve one model per lambda point).  The work reports each progress event
to the plan with the stage it belongs to (``JobPlan.report``); the plan passes the event on with
``job=`` the whole job's summary.  Reaching a stage marks every earlier stage done (a stage served
from the cache reports nothing).  The time left is each remaining stage's size times the rate
measured on its kind in this job (seconds per token-forward, first step of every stage left out as
warm-up), or the rate of any kind measured so far; None until a rate is measured.  No Streamlit here.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class Stage:
    name: str
    kind: str
    units: float = 0.0  # token-forwards; 0 for stages too small to count (loading, checks)
    fraction: float = 0.0


def forward_tokens(batches) -> int:
    """Tokens in a list of batches (``input_ids`` of each)."""
    return int(sum(int(b["input_ids"].numel()) for b in batches))


class JobPlan:
    def __init__(self, stages: list[tuple[str, str, float]]):
        self.stages = [Stage(n, k, float(u or 0.0)) for n, k, u in stages]
        self.current = 0
        self._rates: dict[str, list[float]] = {}  # kind -> [seconds, units]
        self._last: tuple | None = None  # (stage, done, time) of the last event
        self._lock = threading.Lock()

    def index(self, kind: str) -> int:
        """The first stage of ``kind``."""
        return next(k for k, s in enumerate(self.stages) if s.kind == kind)

    def set_units(self, k: int, units: float) -> None:
        self.stages[k].units = float(units or 0.0)

    def reach(self, k: int) -> None:
        """Stage ``k`` is running: every earlier stage is done."""
        with self._lock:
            self._reach(k)

    def _reach(self, k: int) -> None:
        if k > self.current:
            for s in self.stages[:k]:
                s.fraction = 1.0
            self.current = k
            self._last = None

    def finish(self) -> None:
        with self._lock:
            for s in self.stages:
                s.fraction = 1.0
            self.current = len(self.stages) - 1

    def _event(self, k: int, done: int, total: int) -> None:
        now = time.time()
        self._reach(k)
        if k < self.current:  # a late event of a stage already passed
            return
        s = self.stages[k]
        if total:
            f = min(max(done / total, 0.0), 1.0)
            last = self._last
            if last is not None and last[0] == k and done > last[1] and s.units > 0:
                r = self._rates.setdefault(s.kind, [0.0, 0.0])
                r[0] += now - last[2]
                r[1] += (f - s.fraction) * s.units
            s.fraction = f
        self._last = (k, done, now)

    def rate(self, kind: str) -> float | None:
        """Seconds per token-forward measured on ``kind`` (else on every kind measured so far)."""
        r = self._rates.get(kind)
        if r and r[1] > 0:
            return r[0] / r[1]
        secs, units = sum(v[0] for v in self._rates.values()), sum(v[1] for v in self._rates.values())
        return secs / units if units > 0 else None

    def summary(self) -> dict:
        """stage (1-based), stages, name, fraction of the job's size done, eta_s (None until
        measured) and ``at`` (when it was measured)."""
        total = sum(s.units for s in self.stages)
        done = sum(s.units * s.fraction for s in self.stages)
        eta = 0.0 if total > 0 else None  # nothing sized yet (e.g. while loading): unknown, not zero
        for s in self.stages[self.current:] if eta is not None else []:
            left = s.units * (1.0 - s.fraction)
            if left <= 0:
                continue
            r = self.rate(s.kind)
            if r is None:
                eta = None
                break
            eta += left * r
        frac = done / total if total > 0 else self.current / max(len(self.stages), 1)
        cur = self.stages[self.current]
        return {"stage": self.current + 1, "stages": len(self.stages), "name": cur.name, "fraction": float(frac),
                "eta_s": eta, "at": time.time()}

    def report(self, progress, k: int, stage: str, done: int, total: int, **info) -> None:
        """Record an event of stage ``k`` and pass it on to ``progress`` with the job's summary."""
        with self._lock:
            self._event(k, done, total)
            summary = self.summary()
        if progress is not None:
            progress(stage, done, total, **{**info, "job": summary})

    def callback(self, progress, k: int, routes: dict[str, int] | None = None):
        """A progress callback for work of stage ``k``; events whose stage name ends with a key of
        ``routes`` ("statistics", "assignment") count towards that stage instead."""
        routes = routes or {}

        def cb(stage, done, total, **info):
            target = next((v for name, v in routes.items() if str(stage).endswith(name)), k)
            self.report(progress, target, stage, done, total, **info)
        return cb
