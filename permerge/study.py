"""Studies over a pair or a family of pairs: the paper's figures and tables as data frames.

* ``variant_sets``: Table 1 (attention variants, FF aligned too) and Table 2 (residual only).
* ``pair_curves``: curves of several alignment options on one pair.
* ``family_curves``: the same over many pairs, for mean and standard-error bands and tables.
* ``data_amount``: barrier against the amount of alignment data, from the prefix snapshots.
* ``layer_correlations``: mean feature correlation per layer, before and after (Fig. 5).

Pipelines are kept per job in a small in-process registry so that a dashboard page served from
cache does not reload the models.
"""
from __future__ import annotations

import itertools
import threading
from collections import OrderedDict

import pandas as pd

from .align import VANILLA, AlignOptions, Alignment
from .interpolate import mean_sem
from .pipeline import CurveResult, Job, Pipeline

TABLE1 = [AlignOptions(ff=True, attention=a, residual="identity") for a in
          ("vanilla", "monotonic", "ignore-heads", "head-perm")]
TABLE2 = [AlignOptions(ff=False, attention="vanilla", residual=r) for r in
          ("identity", "first", "last", "all", "separate")]
FIG4 = [VANILLA, AlignOptions(ff=True, attention="vanilla"), AlignOptions(ff=False, attention="head-perm"),
        AlignOptions(ff=True, attention="head-perm")]


def variant_sets() -> dict[str, list[AlignOptions]]:
    return {"Table 1: attention (FF aligned too)": TABLE1, "Table 2: residual only": TABLE2}


def table_label(o: AlignOptions) -> str:
    """Row names of the paper's tables."""
    if o in TABLE1:
        return {"vanilla": "Vanilla attention avg. (FF aligned)", "monotonic": "Monotonic head alignment",
                "ignore-heads": "Ignore-Heads", "head-perm": "Head-Perm"}[o.attention]
    if o in TABLE2:
        return o.residual.capitalize()
    return o.label()


class PipelineRegistry:
    """At most ``size`` pipelines (each holds two models), least recently used evicted."""

    def __init__(self, cache, size: int = 6):
        self.cache, self.size = cache, size
        self._items: OrderedDict[Job, Pipeline] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job: Job) -> Pipeline:
        with self._lock:
            if job in self._items:
                self._items.move_to_end(job)
                return self._items[job]
            p = self._items[job] = Pipeline(job, cache=self.cache)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return p


def pair_curves(pipe: Pipeline, options: list[AlignOptions], lambdas: int = 21, progress=None) -> list[CurveResult]:
    pipe.progress = progress
    return [pipe.curve(o, lambdas) for o in options]


def curves_frame(results: list[CurveResult], **extra) -> pd.DataFrame:
    rows = []
    for c in results:
        for r in c.rows:
            rows.append({**extra, "method": c.method, "function_preserving": c.function_preserving, **r})
    return pd.DataFrame(rows)


def barriers_frame(results: list[CurveResult], **extra) -> pd.DataFrame:
    return pd.DataFrame([{**extra, "method": c.method, "barrier": c.barrier, "barrier_lambda": c.barrier_lambda,
                          "loss_a": c.loss_a, "loss_b": c.loss_b, "function_preserving": c.function_preserving,
                          "fraction": c.fraction, "tokens": c.tokens} for c in results])


def family_pairs(paths: list[str]) -> list[tuple[str, str]]:
    """All unordered pairs (A, B) of a family, A the lower seed: 5 seeds give 10 pairs."""
    return list(itertools.combinations(paths, 2))


def family_curves(registry: PipelineRegistry, base: Job, pairs: list[tuple[str, str]], options: list[AlignOptions],
                  lambdas: int = 21, progress=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Curves and barriers of every option on every pair (the data and settings of ``base``)."""
    curves, bars = [], []
    n = len(pairs) * len(options)
    k = 0
    for a, b in pairs:
        job = Job(**{**base.to_dict(), "model_a": a, "model_b": b})
        pipe = registry.get(job)

        def sub(stage, done, total, **info):
            if progress:
                progress(f"pair {pairs.index((a, b)) + 1}/{len(pairs)}: {stage}", done, total, overall=(k, n), **info)

        pipe.progress = sub
        for o in options:
            c = pipe.curve(o, lambdas)
            curves.append(curves_frame([c], pair=f"{_short(a)} | {_short(b)}"))
            bars.append(barriers_frame([c], pair=f"{_short(a)} | {_short(b)}"))
            k += 1
            if progress:
                progress("family", k, n)
    return pd.concat(curves, ignore_index=True), pd.concat(bars, ignore_index=True)


def methods_table(bars: pd.DataFrame, options: list[AlignOptions]) -> pd.DataFrame:
    """Mean and standard error of the barrier over pairs, one row per option, in table order."""
    rows = []
    for o in options:
        v = bars.loc[bars["method"] == o.label(), "barrier"]
        m, se = mean_sem(v)
        rows.append({"method": table_label(o), "barrier": m, "std_err": se, "pairs": len(v),
                     "function_preserving": "yes" if o.function_preserving else "NO"})
    return pd.DataFrame(rows)


def band(curves: pd.DataFrame, value: str = "loss") -> pd.DataFrame:
    """Mean and standard error per method and lambda over pairs."""
    rows = []
    for (method, lam), g in curves.groupby(["method", "lambda"], sort=True):
        m, se = mean_sem(g[value])
        rows.append({"method": method, "lambda": lam, "mean": m, "std_err": se if se == se else 0.0, "pairs": len(g)})
    return pd.DataFrame(rows)


def data_amount(pipe: Pipeline, options: AlignOptions, lambdas: int = 21, progress=None) -> pd.DataFrame:
    """Barrier against the amount of alignment data: one curve per prefix snapshot of the same pass."""
    pipe.progress = progress
    stats = pipe.stats()
    rows = []
    for f in sorted(set(stats.snapshots) | {1.0}):
        c = pipe.curve(options, lambdas, fraction=f)
        rows.append({"fraction": f, "tokens": stats.snapshot_tokens.get(f, stats.tokens), "barrier": c.barrier,
                     "barrier_lambda": c.barrier_lambda, "method": c.method})
    van = pipe.curve(VANILLA, lambdas)
    return pd.DataFrame(rows).assign(vanilla_barrier=van.barrier)


def layer_correlations(alignment: Alignment, spec) -> pd.DataFrame:
    """Mean feature correlation per group, before and after alignment, with layer and kind."""
    rows = []
    for name, g in alignment.groups.items():
        grp = spec.groups[name]
        point = name if grp.kind == "res" else None
        rows.append({"group": name, "kind": grp.kind, "layer": grp.layer, "point": point,
                     "position": spec.residual_points.index(name) if point else None,
                     "before": g.corr_before, "after": g.corr_after, "aligned": g.aligned})
    return pd.DataFrame(rows)


def _short(path: str) -> str:
    return str(path).rstrip("/").split("/")[-1]
