"""The stages of one long job, so that its progress and time left can be told for the whole job
(stage k of n, about how long until the job ends), not only for the stage running now.

A ``JobPlan`` lists the stages in the order the work runs them, each with a kind ("statistics",
"assignment", "curve", ...) and a size in token-forwards (a token through one model; a statistics
pass runs two models, a curve one model per lambda point).  The work reports each progress event
to the plan with the stage it belongs to (``JobPlan.report``); the plan passes the event on with
``job=`` the whole job's summary.  Reaching a stage marks every earlier stage done (a stage served
from the cache reports nothing).  The time left is each remaining stage's size times the rate
measured on its kind in this job (seconds per token-forward, first step of every stage left out as
warm-up), or the rate of any kind measured so far; None until a rate is measured.  A stage's lead-in
(from its start to its first event: building a working model, reading a cache) is measured too and
counted once more for every stage of its kind still to come.  The share of the job done never goes
back: an event of another kind inside a stage (an assignment solved while a curve's stage runs) does
not move that stage's share.  No Streamlit here.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass


RECENT = 8  # timed steps a rate is measured over


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
    def __init__(self, stages: list[tuple[str, str, float]], history: dict | None = None):
        """``history``: a dict kept across jobs (``History``) of the rates and the durations of
        unsized stages measured by earlier jobs; used for a kind not measured yet in this job (a B′
        check at the end, a curve while the statistics pass runs)."""
        self.stages = [Stage(n, k, float(u or 0.0)) for n, k, u in stages]
        self.history = history
        self.current = 0
        self._rates: dict[str, list[list[float]]] = {}  # kind -> [[seconds, units] of each timed step]
        self._last: tuple | None = None  # (stage, done, time) of the last event
        self._started: dict[int, float] = {0: time.time()}  # when each stage began
        self._last_any = time.time()  # the last event of any stage
        self._leads: dict[str, list[float]] = {}  # kind -> lead-in seconds of the stages of that kind
        self._shown = 0.0  # the largest share of the job reported so far
        self._priors: dict[str, float] = {}  # kind -> a rate measured by other work of this job (``prior``)
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

    def _reach(self, k: int, since: float | None = None) -> None:
        """``since``: when the stage began (the previous stage's last event), if known."""
        if k > self.current:
            self._remember(self.current, since or time.time())
            for s in self.stages[:k]:
                s.fraction = 1.0
            self.current = k
            self._last = None
            self._started[k] = since or time.time()

    def _remember(self, k: int, ended: float) -> None:
        """Keeps what stage ``k`` measured (ended at ``ended``) in the history, for later jobs."""
        if self.history is None:
            return
        s = self.stages[k]
        r = self._rate(s.kind)
        if r is not None:
            self.history.setdefault("rates", {})[s.kind] = r
        if s.units <= 0 and k in self._started and k > 0:  # an unsized stage (a check): its duration
            self.history.setdefault("durations", {})[s.kind] = max(ended - self._started[k], 0.0)

    def finish(self) -> None:
        with self._lock:
            self._remember(self.current, time.time())
            for s in self.stages:
                s.fraction = 1.0
            self.current = len(self.stages) - 1

    def _event(self, k: int, done: int, total: int, kind: str | None = None) -> None:
        now = time.time()
        since, self._last_any = self._last_any, now
        self._reach(k, since)
        if k < self.current:  # a late event of a stage already passed
            return
        s = self.stages[k]
        if kind is not None and kind != s.kind:  # e.g. assignments solved inside a curve's stage
            return
        if self._last is None and k in self._started and s.units > 0:  # the stage's first event: its lead-in
            lead = self._leads.setdefault(s.kind, [])
            if len(lead) < sum(1 for x in self.stages[:k + 1] if x.kind == s.kind):
                lead.append(now - self._started[k])
        if total:
            f = min(max(done / total, 0.0), 1.0)
            last = self._last
            if last is not None and last[0] == k and done > last[1] and s.units > 0:
                self._rates.setdefault(s.kind, []).append([now - last[2], max(f - s.fraction, 0.0) * s.units])
            s.fraction = max(f, s.fraction)  # a stage's share never goes back
        self._last = (k, done, now)

    def prior(self, kind: str, rate: float) -> None:
        """A rate for ``kind`` measured by other work of this job on the same operation (the B′ check's
        float32 forwards for the curves), used until ``kind`` measures its own."""
        with self._lock:
            if rate > 0:
                self._priors[kind] = float(rate)

    def rate(self, kind: str) -> float | None:
        """Seconds per token-forward measured on ``kind``, else its ``prior``, else an earlier job's,
        else the rate of every kind measured so far."""
        r = self._rate(kind)
        if r is not None:
            return r
        if kind in self._priors:
            return self._priors[kind]
        known = (self.history or {}).get("rates", {}).get(kind)
        if known is not None:  # measured by an earlier job of this process
            return known
        steps = [x for v in self._rates.values() for x in v[-RECENT:]]
        secs, units = sum(x[0] for x in steps), sum(x[1] for x in steps)
        return secs / units if units > 0 else None

    def _rate(self, kind: str) -> float | None:
        """Seconds per unit over the last ``RECENT`` timed steps of ``kind``: recent enough to follow a
        machine that gets busier or idler, long enough to average a step's noise."""
        steps = self._rates.get(kind, [])[-RECENT:]
        units = sum(x[1] for x in steps)
        return sum(x[0] for x in steps) / units if units > 0 else None

    def summary(self) -> dict:
        """stage (1-based), stages, name, fraction of the job's size done, eta_s (None until
        measured) and ``at`` (when it was measured)."""
        total = sum(s.units for s in self.stages)
        done = sum(s.units * s.fraction for s in self.stages)
        eta = 0.0 if total > 0 else None  # nothing sized yet (e.g. while loading): unknown, not zero
        durations = (self.history or {}).get("durations", {})
        for k, s in enumerate(self.stages[self.current:], self.current) if eta is not None else []:
            left = s.units * (1.0 - s.fraction)
            if s.units <= 0 and k > self.current and k > 0:  # an unsized stage still to come (a check)
                eta += durations.get(s.kind, 0.0)
            if left <= 0:
                continue
            r = self.rate(s.kind)
            if r is None:
                eta = None
                break
            eta += left * r
            leads = self._leads.get(s.kind)
            if leads and (k > self.current or self._last is None):  # a stage still to start: its lead-in too
                eta += sum(leads) / len(leads)
        frac = done / total if total > 0 else self.current / max(len(self.stages), 1)
        frac = self._shown = max(self._shown, frac)  # never back
        cur = self.stages[self.current]
        return {"stage": self.current + 1, "stages": len(self.stages), "name": cur.name, "fraction": float(frac),
                "eta_s": eta, "at": time.time()}

    def report(self, progress, k: int, stage: str, done: int, total: int, **info) -> None:
        """Record an event of stage ``k`` and pass it on to ``progress`` with the job's summary."""
        with self._lock:
            self._event(k, done, total, event_kind(stage))
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


def event_kind(stage) -> str | None:
    """The kind of stage a progress event belongs to, from its name ("pair 1/3: statistics" is
    "statistics"); None when the name does not tell."""
    name = str(stage)
    for end, kind in (("statistics", "statistics"), ("assignment", "assignment"), ("weight matching", "assignment"),
                      ("interpolation", "curve")):
        if name.endswith(end):
            return kind
    return None


class History(dict):
    """Rates and unsized stages' durations measured by the jobs of one process (see ``JobPlan``)."""
