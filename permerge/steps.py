"""The loss barrier along training steps: two training runs compared step by step.

A *series* pairs the checkpoints of two runs at the same training steps (A at step s with B at step
s).  Several series side by side answer where a barrier comes from: with the PolyPythias,
``pythia-14m-weight-seed1`` vs ``-weight-seed2`` share the data order and differ in initialisation,
``-data-seed1`` vs ``-data-seed2`` the other way round.  Checkpoint names are whatever the rest of
permerge takes (a local folder, a hub id, a revision once names carry one); a folder holding one
checkpoint folder per step (``step1000``, ``step2000``, ...) stands for all of them.  Every step pair
is an ordinary pipeline: its statistics, permutations and curves go through the result cache like
any other pair's, so a step computed once is never computed again.  No Streamlit here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .align import VANILLA, AlignOptions
from .errors import PermergeError
from .pipeline import Job
from .study import PipelineRegistry, barriers_frame, curves_frame

MAX_STEPS = 64  # step pairs per series: each is a full alignment and two curves


@dataclass(frozen=True)
class StepSeries:
    label: str  # "weight-seed", "data-seed", "seed1 vs seed2"
    steps: tuple[str, ...]  # one label per step ("1000", ...)
    a: tuple[str, ...]  # checkpoint of run A at each step
    b: tuple[str, ...]  # checkpoint of run B at each step


def _step_number(text: str, bare: bool = False) -> int | None:
    """The step in ``step1000`` / ``step_1000`` at the end of ``text`` (and a bare ``1000`` if ``bare``)."""
    m = re.search(r"step[_-]?(\d+)$", text, re.I) or (re.fullmatch(r"(\d+)", text) if bare else None)
    return int(m.group(1)) if m else None


def step_label(name: str, k: int) -> str:
    """The step a checkpoint name stands for: its revision (``NAME@step1000``) or the end of its last
    path component (``.../step1000``), else its position (``#1``)."""
    name = name.strip().rstrip("/")
    n = _step_number(name.rsplit("@", 1)[1]) if "@" in name else _step_number(Path(name).name, bare=True)
    return str(n) if n is not None else f"#{k + 1}"


def folder_steps(folder: str) -> list[str]:
    """The checkpoint folders (holding config.json) inside ``folder``, in step order (the number at
    the end of each name); [] when ``folder`` is not such a folder."""
    root = Path(folder).expanduser()
    if not root.is_dir() or (root / "config.json").is_file():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    if not found or any(_step_number(p.name, bare=True) is None for p in found):
        return []
    return [str(p) for p in sorted(found, key=lambda p: _step_number(p.name, bare=True))]


def split_names(text: str) -> list[str]:
    """Checkpoint names, one per line (commas also separate); a folder of step folders expands."""
    names = [x.strip() for line in (text or "").splitlines() for x in line.split(",") if x.strip()]
    out = []
    for n in names:
        out += folder_steps(n) or [n]
    return out


def parse_series(label: str, a_text: str, b_text: str) -> StepSeries:
    """A series from two lists of checkpoint names (see ``split_names``); one-line errors for lists
    that cannot be paired step by step."""
    label = (label or "").strip() or "series"
    a, b = split_names(a_text), split_names(b_text)
    if not a or not b:
        raise PermergeError(f"series {label}: give the checkpoints of both runs (A and B), one per step")
    if len(a) != len(b):
        raise PermergeError(f"series {label}: {len(a)} checkpoints for A but {len(b)} for B; give one of each "
                            "per training step, in the same order")
    if len(a) > MAX_STEPS:
        raise PermergeError(f"series {label}: {len(a)} steps; at most {MAX_STEPS} step pairs per series")
    steps = [step_label(x, k) for k, x in enumerate(a)]
    other = [step_label(x, k) for k, x in enumerate(b)]
    if steps != other and not any(s.startswith("#") for s in steps + other):
        k = next(i for i, (s, t) in enumerate(zip(steps, other)) if s != t)
        raise PermergeError(f"series {label}: step {k + 1} pairs A at step {steps[k]} with B at step {other[k]}")
    if len(set(steps)) != len(steps):
        raise PermergeError(f"series {label}: a training step is listed twice ({steps})")
    return StepSeries(label, tuple(steps), tuple(a), tuple(b))


def check_series(series: list[StepSeries]) -> None:
    if not series:
        raise PermergeError("no series: give the checkpoints of two runs for at least one series")
    labels = [s.label for s in series]
    if len(set(labels)) != len(labels):
        raise PermergeError(f"two series are called {labels[0]!r}: give each its own name")


def step_barriers(registry: PipelineRegistry, base: Job, series: list[StepSeries], options: AlignOptions,
                  lambdas: int = 11, progress=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Curves and barriers of vanilla averaging and of ``options`` for every step pair of every series,
    with the data and settings of ``base``.  Frames of ``study.curves_frame`` / ``barriers_frame``
    with the columns series, step, position (the step's index) and pair in front."""
    check_series(series)
    methods = [VANILLA] if options == VANILLA else [VANILLA, options]
    total = sum(len(s.steps) for s in series) * len(methods)
    curves, bars = [], []
    k = 0
    for s in series:
        for i, (step, a, b) in enumerate(zip(s.steps, s.a, s.b)):
            pipe = registry.get(Job(**{**base.to_dict(), "model_a": a, "model_b": b}))
            extra = dict(series=s.label, step=step, position=i, pair=f"{s.label} @ {step}")

            def sub(stage, done, n, _k=k, _s=s, _step=step, **info):
                if progress:
                    progress(f"{_s.label}, step {_step}: {stage}", done, n, overall=(_k, total), **info)

            for o in methods:
                c = pipe.curve(o, lambdas, progress=sub)
                curves.append(curves_frame([c], **extra))
                bars.append(barriers_frame([c], **extra))
                k += 1
                if progress:
                    progress("training steps", k, total)
    return pd.concat(curves, ignore_index=True), pd.concat(bars, ignore_index=True)


def steps_work(registry: PipelineRegistry, base: Job, series: list[StepSeries], options: AlignOptions,
               lambdas: int):
    """``fn(progress)`` for the dashboard's job manager: the frames and what they belong to."""
    from .work import about

    def work(progress):
        curves, bars = step_barriers(registry, base, series, options, lambdas, progress)
        return {"curves": curves, "barriers": bars,
                "about": about(base, options, lambdas, series=[s.label for s in series],
                               pairs=", ".join(f"{s.label} ({len(s.steps)} steps)" for s in series))}
    return work
