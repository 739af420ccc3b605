"""Studies over a pair or a family of pairs: the paper's figures and tables as data frames.

* ``variant_sets``: Table 1 (attention variants, FF aligned too) and Table 2 (residual only).
* ``pair_curves``: curves of several alignment options on one pair.
* ``family_curves``: the same over many pairs, for mean and standard-error bands and tables.
* ``data_amount``: barrier against the amount of alignment data, from the prefix snapshots.
* ``layer_correlations``: mean feature correlation per layer, before and after (Fig. 5).
* ``curves_frame``, ``barriers_frame``, ``curve_table``, ``barrier_summary``: the one place where
  curves and barriers become tables (dashboard, CLI's curve.csv and barrier.json, exports).
* ``folder_pairs``: every pair of a folder of checkpoints (a user's own set of seeds).

Pipelines are kept per job in a small in-process registry so that a dashboard page served from
cache does not reload the models.
"""
from __future__ import annotations

import itertools
import threading
from collections import OrderedDict

import pandas as pd

from .align import VANILLA, AlignOptions, Alignment
from .errors import DataError
from .interpolate import mean_sem
from .pipeline import CurveResult, Job, Pipeline
from .stats import DATA_FRACTIONS

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
    out = []
    for k, o in enumerate(options):
        def sub(stage, done, total, _k=k, **info):
            progress(stage, done, total, overall=(_k, len(options)), **info)

        out.append(pipe.curve(o, lambdas, progress=sub if progress else None))
    return out


def curves_frame(results: list[CurveResult], **extra) -> pd.DataFrame:
    """One row per method and lambda: method, function_preserving, lambda, loss, and
    pseudo_perplexity or accuracy (plus ``extra`` columns in front)."""
    rows = []
    for c in results:
        for r in c.rows:
            rows.append({**extra, "method": c.method, "function_preserving": c.function_preserving, **r})
    return pd.DataFrame(rows)


def barriers_frame(results: list[CurveResult], **extra) -> pd.DataFrame:
    return pd.DataFrame([{**extra, "method": c.method, "barrier": c.barrier, "barrier_se": c.barrier_se,
                          "barrier_lambda": c.barrier_lambda, "loss_a": c.loss_a, "loss_b": c.loss_b,
                          "function_preserving": c.function_preserving, "fraction": c.fraction,
                          "tokens": c.tokens, "items": c.items} for c in results])


def curve_table(results: list[CurveResult]) -> pd.DataFrame:
    """Rows of curve.csv: lambda, method, loss, and pseudo_perplexity or accuracy."""
    df = curves_frame(results)
    return df[["lambda", "method"] + [c for c in df.columns if c not in ("lambda", "method", "function_preserving")]]


def barrier_summary(results: list[CurveResult]) -> dict:
    """barrier.json: per method, the barrier, its standard error and lambda, the endpoint losses."""
    bars = barriers_frame(results)
    return {r["method"]: {"barrier": r["barrier"], "barrier_se": r["barrier_se"], "lambda": r["barrier_lambda"],
                          "loss_a": r["loss_a"], "loss_b": r["loss_b"],
                          "function_preserving": r["function_preserving"], "options": c.options}
            for r, c in zip(bars.to_dict("records"), results)}


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
        name = pair_name(a, b)

        def sub(stage, done, total, **info):
            if progress:
                progress(f"pair {pairs.index((a, b)) + 1}/{len(pairs)}: {stage}", done, total, overall=(k, n), **info)

        for o in options:
            c = pipe.curve(o, lambdas, progress=sub)
            curves.append(curves_frame([c], pair=name))
            bars.append(barriers_frame([c], pair=name))
            k += 1
            if progress:
                progress("family", k, n)
    return pd.concat(curves, ignore_index=True), pd.concat(bars, ignore_index=True)


def methods_table(bars: pd.DataFrame, options: list[AlignOptions]) -> pd.DataFrame:
    """Mean and standard error of the barrier over pairs, one row per option, in table order.  With
    one pair the standard error is that of its barrier over the scored tokens (``barrier_se``)."""
    rows = []
    one = "pair" in bars and bars["pair"].nunique() == 1
    for o in options:
        sel = bars["method"] == o.label()
        v = bars.loc[sel, "barrier"]
        m, se = mean_sem(v)
        if one and "barrier_se" in bars and len(v):
            se = bars.loc[sel, "barrier_se"].iloc[0]
            se = float("nan") if se is None else float(se)
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


def snapshot_batch_size(tokens: int, block: int = 128, batches: int = 64, largest: int = 16) -> int:
    """A batch size that cuts a statistics pass over ``tokens`` into at least ``batches`` batches, so
    that its 1%, 3%, 10%, 30% snapshots are distinct prefixes (with 8 batches they are all the first)."""
    return max(1, min(largest, int(tokens) // (block * batches)))


def data_amount_job(job: Job, tokens: int) -> Job:
    """The job of the amount-of-data study (Fig. 7): ``job``'s pair and data over ``tokens``
    alignment tokens, cut into batches small enough for distinct snapshots, which it keeps (a plain
    run keeps none: each snapshot is a copy of the statistics)."""
    return Job(**{**job.to_dict(), "tokens": int(tokens), "batch_size": snapshot_batch_size(int(tokens)),
                  "fractions": DATA_FRACTIONS})


def data_amount(pipe: Pipeline, options: AlignOptions, lambdas: int = 21, progress=None) -> pd.DataFrame:
    """Barrier against the amount of alignment data: one curve per prefix snapshot of the same pass."""
    stats = pipe.stats(progress)
    curves = [pipe.curve(options, lambdas, fraction=f, progress=progress) for f in sorted(set(stats.snapshots) | {1.0})]
    return data_amount_frame(pipe, curves, pipe.curve(VANILLA, lambdas, progress=progress))


def data_amount_frame(pipe: Pipeline, curves: list[CurveResult], vanilla: CurveResult) -> pd.DataFrame:
    """One row per data snapshot's curve: tokens seen, barrier, its standard error and lambda."""
    stats = pipe.stats_info()
    rows = [{"fraction": c.fraction, "tokens": stats["snapshot_tokens"].get(c.fraction, stats["tokens"]), "barrier": c.barrier,
             "barrier_se": c.barrier_se, "barrier_lambda": c.barrier_lambda, "method": c.method} for c in curves]
    return pd.DataFrame(rows).assign(vanilla_barrier=vanilla.barrier)


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


def layer_correlations_over_pairs(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Fig. 5 over several pairs: per group, the mean of ``before`` and ``after`` over the pairs'
    ``layer_correlations`` frames (pair name -> frame) with their standard errors over pairs
    (``before_se``, ``after_se``; NaN with one pair) and the number of pairs."""
    if not frames:
        raise ValueError("no pairs to average")
    both = pd.concat([f.assign(pair=p) for p, f in frames.items()], ignore_index=True)
    rows = []
    for group, g in both.groupby("group", sort=False):
        row = {c: g[c].iloc[0] for c in ("group", "kind", "layer", "point", "position")}
        for what in ("before", "after"):
            row[what], row[f"{what}_se"] = mean_sem(g[what])
        row["aligned"] = bool(g["aligned"].all())
        row["pairs"] = int(g["pair"].nunique())
        rows.append(row)
    return pd.DataFrame(rows)


def short_names(paths) -> dict[str, str]:
    """Names that tell the paths apart: the last path component, extended with parent folders
    until no two differ only above it (``/x/seed1`` and ``/y/seed1`` give ``x/seed1``, ``y/seed1``)."""
    paths = [str(p).rstrip("/") for p in paths]
    parts = {p: p.split("/") for p in paths}
    out = {}
    for p in dict.fromkeys(paths):
        k = 1
        while k < len(parts[p]):
            tail = "/".join(parts[p][-k:])
            if all("/".join(parts[q][-k:]) != tail for q in paths if q != p):
                break
            k += 1
        out[p] = "/".join(parts[p][-k:]) or p
    return out


def pair_name(a: str, b: str) -> str:
    n = short_names([a, b])
    return f"{n[str(a).rstrip('/')]} | {n[str(b).rstrip('/')]}"


def folder_checkpoints(folder: str) -> list[str]:
    """The checkpoints in a folder: its sub-folders that hold a config.json, sorted by name."""
    from pathlib import Path

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"not a folder: {folder}")
    return [str(p) for p in sorted(root.iterdir()) if (p / "config.json").is_file()]


def folder_pairs(folder: str) -> list[tuple[str, str]]:
    """All pairs of the checkpoints in ``folder`` (a user's set of seeds)."""
    found = folder_checkpoints(folder)
    if len(found) < 2:
        raise DataError(f"{folder} holds {len(found)} checkpoint folder(s) with a config.json; pairs need two")
    return family_pairs(found)
