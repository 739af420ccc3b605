"""Background work for the dashboard, without Streamlit: each ``*_work`` function returns
``fn(progress)`` for ``jobs.JobManager.submit``, and every result says what it belongs to (its
``about``: the pair, data, options and settings), so that a page can show it under the right title
and never under another run's.
"""
from __future__ import annotations

import json
from pathlib import Path

from .align import VANILLA, AlignOptions
from .pipeline import Job, permutations_tensors
from .study import (PipelineRegistry, data_amount, family_curves, layer_correlations, pair_curves, pair_name,
                    short_names)


def about(job: Job, options: AlignOptions | None = None, lambdas: int | None = None, **extra) -> dict:
    """What a result belongs to: pair, data and options (JSON-able)."""
    out = {"model_a": job.model_a, "model_b": job.model_b, "pair": pair_name(job.model_a, job.model_b) if job.model_a else "",
           "data": job.data, "eval_data": job.eval_data, "tokens": job.tokens, "eval_blocks": job.eval_blocks,
           "device": job.device}
    if options is not None:
        out["options"] = options.label()
    if lambdas is not None:
        out["lambdas"] = int(lambdas)
    return {**out, **extra}


def describe_about(a: dict) -> str:
    """One line for a caption: pair, data, options, settings."""
    data = Path(a["data"]).name if a.get("data") else "?"
    bits = [f"pair {a['pair']}" if a.get("pair") else None, f"data {data}",
            f"≤ {a['tokens']:,} alignment tokens" if a.get("tokens") else None,
            f"{a['eval_blocks']} evaluation blocks" if a.get("eval_blocks") else None,
            a.get("options"), f"{a['lambdas']} λ points" if a.get("lambdas") else None,
            f"pairs: {a['pairs']}" if a.get("pairs") else None]
    return "; ".join(b for b in bits if b)


def pair_work(registry: PipelineRegistry, job: Job, options: AlignOptions, lambdas: int):
    """Statistics, permutations, vanilla and aligned curves, and the B' vs B check for one pair."""
    def work(progress):
        pipe = registry.get(job)
        progress("loading checkpoints and data", 0, 0)
        stats = pipe.stats(progress) if options.matcher == "activation" else None  # weight matching: none
        pipe.alignment(options, progress=progress)
        if pipe.prepared.evalset.kind == "none":  # e.g. a classifier aligned on plain text, no labels
            van = aligned = None
        else:
            van = pipe.curve(VANILLA, lambdas, progress=progress)
            aligned = pipe.curve(options, lambdas, progress=progress) if options != VANILLA else van
        check = pipe.function_check(options, progress=progress)
        return {"vanilla": van, "aligned": aligned, "check": check, "tokens": stats.tokens if stats else 0,
                "sentences": stats.sentences if stats else 0, "device": pipe.device, "task": pipe.prepared.task,
                "eval_kind": pipe.prepared.evalset.kind, "summaries": [c.summary() for c in pipe.pair],
                "about": about(job, options, lambdas)}
    return work


def curves_work(registry: PipelineRegistry, job: Job, options: list[AlignOptions], lambdas: int):
    """Curves of several options on one pair (e.g. the paper's Fig. 4 variants)."""
    def work(progress):
        return {"curves": pair_curves(registry.get(job), options, lambdas, progress=progress),
                "about": about(job, None, lambdas, variants=[o.label() for o in options])}
    return work


def family_work(registry: PipelineRegistry, base: Job, pairs: list[tuple[str, str]], options: list[AlignOptions],
                lambdas: int):
    """Curves and barriers over many pairs with the data and settings of ``base``."""
    def work(progress):
        curves, bars = family_curves(registry, base, pairs, options, lambdas, progress=progress)
        return {"curves": curves, "bars": bars,
                "about": about(base, None, lambdas, pairs=", ".join(pair_name(a, b) for a, b in pairs))}
    return work


def tasks_work(registry: PipelineRegistry, tasks: dict[str, list[tuple[str, str]]], task_dirs: dict[str, str],
               tokens: int | None, device: str, options: list[AlignOptions], lambdas: int,
               eval_examples: int | None):
    """Classifier pairs per task (data = the task's folder): curves and barriers with a task column."""
    import pandas as pd

    def work(progress):
        frames, bars = [], []
        for i, (task, pairs) in enumerate(tasks.items()):
            base = Job(model_a="", model_b="", data=str(task_dirs[task]), tokens=tokens, device=device,
                       eval_examples=eval_examples)

            def sub(stage, done, total, _i=i, _t=task, **info):
                progress(f"task {_i + 1}/{len(tasks)} ({_t}) {stage}", done, total, **info)

            c, b = family_curves(registry, base, pairs, options, lambdas, progress=sub)
            frames.append(c.assign(task=task))
            bars.append(b.assign(task=task))
        return {"curves": pd.concat(frames, ignore_index=True), "bars": pd.concat(bars, ignore_index=True),
                "about": {"tasks": list(tasks), "tokens": tokens, "lambdas": lambdas}}
    return work


def data_amount_work(registry: PipelineRegistry, job: Job, options: AlignOptions, lambdas: int):
    """Barrier against the amount of alignment data, from the prefix snapshots of ``job``'s pass."""
    def work(progress):
        return {"frame": data_amount(registry.get(job), options, lambdas, progress=progress),
                "about": about(job, options, lambdas)}
    return work


def alignment_work(registry: PipelineRegistry, job: Job, options: AlignOptions):
    """Mean feature correlation per group before and after ``options``' alignment (Fig. 5)."""
    def work(progress):
        pipe = registry.get(job)
        al = pipe.alignment(options, progress=progress)
        if options.matcher == "weight":  # its own figures are weight cosines: measure the features
            from .compare import with_feature_correlations

            al = with_feature_correlations(al, pipe.spec, pipe.stats(progress).at(1.0))
        return {"frame": layer_correlations(al, pipe.spec), "about": about(job, options)}
    return work


def export_name(job: Job, options: AlignOptions, lam: float) -> str:
    """A folder name for an export: both checkpoints (told apart), the options and lambda."""
    n = short_names([job.model_a, job.model_b])
    a, b = (n[str(p).rstrip("/")].replace("/", "_") for p in (job.model_a, job.model_b))
    return f"{a}__{b}__{options.label().replace(' ', '')}__lambda{lam:.2f}".replace(":", "-").replace("+", "_")


def permutations_bytes(pipe, options: AlignOptions) -> bytes:
    """The permutations as a safetensors file (one int64 index vector per group)."""
    from safetensors.torch import save

    return save(permutations_tensors(pipe.alignment(options)),
                metadata={"options": json.dumps(options.to_dict()), "model_a": pipe.job.model_a,
                          "model_b": pipe.job.model_b})


def matchers_work(registry: PipelineRegistry, job: Job, options: AlignOptions, lambdas: int):
    """Activation matching against weight matching with ``options`` on one pair: vanilla and both
    matchers' curves and barriers, and how much the two permutations agree per group."""
    from .compare import agreement, matcher_options
    from .study import barriers_frame, curves_frame

    def work(progress):
        pipe = registry.get(job)
        act, wgt = matcher_options(options)
        results = pair_curves(pipe, [VANILLA, act, wgt], lambdas, progress=progress)
        al_w = pipe.alignment(wgt)
        return {"curves": curves_frame(results), "bars": barriers_frame(results),
                "agreement": agreement(pipe.alignment(act), al_w, pipe.spec),
                "sweeps": al_w.trace.sweeps if al_w.trace is not None else None,
                "methods": [act.label(), wgt.label()],
                "about": {**about(job, None, lambdas), "options": f"{act.label()} vs {wgt.label()}"}}
    return work
