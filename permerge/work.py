"""Background work for the dashboard, without Streamlit: each ``*_work`` function returns
``fn(progress)`` for ``jobs.JobManager.submit``, and every result says what it belongs to (its
``about``: the pair, data, options and settings), so that a page can show it under the right title
and never under another run's.
"""
from __future__ import annotations

import json
from pathlib import Path

from .align import VANILLA, AlignOptions
from .hub import fetch_for_run
from .pipeline import Job, permutations_tensors
from .plan import History, JobPlan, forward_tokens
from .study import (PipelineRegistry, data_amount_frame, family_curves, layer_correlations, pair_name,
                    short_names)


# The B′ check in token-forwards per probe token: B and B′ in float32, then float64 copies of both
# (measured on the bundled pair on the CPU: 1.5 to 2.4 s against 0.12 ms per evaluated token-forward,
# about 13 to 20 forwards of its 1,024 probe tokens).
CHECK_FORWARDS = 16
HISTORY = History()  # rates and check durations measured by this process's jobs, for the next jobs' time left


def about(job: Job, options: AlignOptions | None = None, lambdas: int | None = None, **extra) -> dict:
    """What a result belongs to: pair, data and options (JSON-able)."""
    out = {"model_a": job.model_a, "model_b": job.model_b, "pair": pair_name(job.model_a, job.model_b) if job.model_a else "",
           "data": job.data, "eval_data": job.eval_data, "tokens": job.tokens, "eval_blocks": job.eval_blocks,
           "device": job.device}
    if options is not None:
        out["options"] = options.label()
        if options.matcher == "weight":
            out["matcher"] = "weight"
    if lambdas is not None:
        out["lambdas"] = int(lambdas)
    return {**out, **extra}


def data_label(path: str | None) -> str:
    """A data file or folder's name that tells two of the same name apart: "bundled align.txt" for
    permerge's own, else the parent folder and the name ("pairB/align.txt")."""
    if not path:
        return "?"
    p = Path(str(path)).expanduser()
    try:
        from . import zoo

        root = zoo.DATA_DIR.resolve()
        if p.resolve().is_relative_to(root):
            return f"bundled {p.resolve().relative_to(root)}"
    except (OSError, ValueError):
        pass
    return "/".join(p.parts[-2:]) if len(p.parts) >= 2 else p.name


def describe_about(a: dict) -> str:
    """One line for a caption: pair, data (and evaluation data), options, settings; the alignment
    tokens as used when the result says (``tokens_used``), else the bound asked for."""
    data = data_label(a.get("data"))
    if a.get("eval_data"):
        data += f", evaluated on {data_label(a['eval_data'])}"
    if a.get("matcher") == "weight":
        tokens = "weight matching: no alignment tokens"
    elif a.get("tokens_used"):
        tokens = f"{a['tokens_used']:,} alignment tokens"
    else:
        tokens = f"up to {a['tokens']:,} alignment tokens" if a.get("tokens") else None
    bits = [f"pair {a['pair']}" if a.get("pair") else None, f"data {data}", tokens,
            f"{a['eval_blocks']} evaluation blocks" if a.get("eval_blocks") else None,
            a.get("options"), f"{a['lambdas']} λ points" if a.get("lambdas") else None,
            f"pairs: {a['pairs']}" if a.get("pairs") else None]
    return "; ".join(b for b in bits if b)


def tokens_used(pipe) -> int | None:
    """The alignment tokens of the pipeline's statistics when they are loaded (None otherwise: a
    result served from the cache does not load them only to say how many tokens they hold)."""
    info = getattr(pipe, "_stats_info", None)
    return int(info["tokens"]) if info is not None else None


def pair_work(registry: PipelineRegistry, job: Job, options: AlignOptions, lambdas: int):
    """Statistics, permutations, vanilla and aligned curves, and the B' vs B check for one pair."""
    def work(progress):
        pipe = registry.get(job)
        plan = pair_plan(job, options, lambdas)
        plan.report(progress, 0, "loading checkpoints and data", 0, 0)
        fetch_for_run((job.model_a, job.model_b), plan.callback(progress, 0))  # hub ids, downloads allowed
        size_pair_plan(plan, pipe, lambdas)
        # the curves' and the check's first rate: a timed evaluation batch, not the statistics pass's rate
        # (which also pays for the correlation products, so that it overstates a curve's time)
        fwd = pipe.forward_seconds_per_token()
        plan.prior("curve", fwd)
        plan.prior("check", fwd)
        weight = options.matcher == "weight"  # weight matching: no statistics pass
        steps = {} if weight else {"statistics": plan.index("statistics"), "assignment": plan.index("assignment")}
        if not weight:
            pipe.stats(plan.callback(progress, plan.index("statistics"), steps))
        pipe.alignment(options, progress=plan.callback(progress, plan.index("assignment"), steps))
        pipe.release_stats()  # large statistics go back to the cache while the curves run
        # the B' check before the curves: measured rather than guessed once the curves run
        k_check = plan.index("check")
        plan.reach(k_check)
        plan.report(progress, k_check, "checking B′ against B", 0, 0)
        check = pipe.function_check(options, progress=plan.callback(progress, k_check, steps))
        plan.report(progress, k_check, "checked B′ against B", 1, 1)  # the curves' lead-in starts here
        curves = [k for k, s in enumerate(plan.stages) if s.kind == "curve"]
        if pipe.prepared.evalset.kind == "none":  # e.g. a classifier aligned on plain text, no labels
            van = aligned = None
        else:
            van = pipe.curve(VANILLA, lambdas, progress=plan.callback(progress, curves[0], steps))
            aligned = (pipe.curve(options, lambdas, progress=plan.callback(progress, curves[-1], steps))
                       if options != VANILLA else van)
        plan.finish()
        stats = None if weight else pipe.stats_info()
        tokens = stats["tokens"] if stats else 0
        return {"vanilla": van, "aligned": aligned, "check": check, "tokens": tokens,
                "sentences": stats["sentences"] if stats else 0, "device": pipe.device, "task": pipe.prepared.task,
                "eval_kind": pipe.prepared.evalset.kind, "summaries": [c.summary() for c in pipe.pair],
                "about": about(job, options, lambdas, tokens_used=tokens)}
    return work


def pair_plan(job: Job, options: AlignOptions, lambdas: int) -> JobPlan:
    """The stages of ``pair_work``: loading, the statistics pass, the assignments, the B′ check, the
    vanilla and the aligned curve (one when the options are vanilla)."""
    stages = [("loading checkpoints and data", "load", 0)]
    if options.matcher == "weight":  # from the weights alone: no statistics pass
        stages.append(("weight matching", "assignment", 0))
    else:
        stages += [("statistics pass", "statistics", 0), ("assignments", "assignment", 0)]
    stages += [("B′ check", "check", 0), ("vanilla curve", "curve", 0)]
    if options != VANILLA:
        stages.append((f"{options.label()} curve", "curve", 0))
    return JobPlan(stages, HISTORY)


def size_pair_plan(plan: JobPlan, pipe, lambdas: int) -> None:
    """The stages' sizes in token-forwards, from the pair's prepared data: the statistics pass runs
    both models over the alignment tokens, every curve point one model over the evaluation set."""
    prep = pipe.prepared
    if "statistics" in (s.kind for s in plan.stages):
        plan.set_units(plan.index("statistics"), 2 * forward_tokens(prep.align_batches))
    per_point = 0 if prep.evalset.kind == "none" else forward_tokens(prep.evalset.batches)
    first = True
    for k, s in enumerate(plan.stages):
        if s.kind == "curve":  # λ = 1 is A itself: evaluated by the first curve, cached for the next
            plan.set_units(k, (lambdas if first else lambdas - 1) * per_point)
            first = False
        elif s.kind == "check":  # B and B′ on the probe batch, in float32 and again in float64 copies
            plan.set_units(k, CHECK_FORWARDS * forward_tokens([pipe.probe_batch()]))


def planned_curves(pipe, items: list[tuple[AlignOptions, float]], lambdas: int, progress) -> list:
    """The curves of ``items`` ((options, fraction of the statistics) each) on one pair, as one job
    with one progress line: loading, the statistics pass when an item needs it and it is not cached,
    one stage per curve sized in token-forwards (its assignments run inside it)."""
    plan = JobPlan([("loading checkpoints and data", "load", 0)], HISTORY)
    plan.report(progress, 0, "loading checkpoints and data", 0, 0)
    prep = pipe.prepared
    per_curve = 0 if prep.evalset.kind == "none" else lambdas * forward_tokens(prep.evalset.batches)
    stages = [("loading checkpoints and data", "load", 0)]
    if any(o.matcher != "weight" and o != VANILLA for o, _ in items):
        cached = pipe.stats_key in pipe.cache
        stages.append(("statistics pass", "statistics", 0 if cached else 2 * forward_tokens(prep.align_batches)))
    first = len(stages)
    for o, f in items:
        stages.append((f"{o.label()} curve" + (f" ({f:.0%} of the data)" if f < 1 else ""), "curve", per_curve))
    plan = JobPlan(stages, HISTORY)
    routes = {"statistics": 1} if first > 1 else {}
    out = []
    for k, (o, f) in enumerate(items):
        cb = plan.callback(progress, first + k, routes)

        def sub(stage, done, total, _cb=cb, _k=k, **info):
            _cb(stage, done, total, overall=(_k, len(items)), **info)

        out.append(pipe.curve(o, lambdas, fraction=f, progress=sub))
        plan.reach(min(first + k + 1, len(stages) - 1))
    plan.finish()
    return out


def curves_work(registry: PipelineRegistry, job: Job, options: list[AlignOptions], lambdas: int):
    """Curves of several options on one pair (e.g. the paper's Fig. 4 variants), as one job."""
    def work(progress):
        pipe = registry.get(job)
        return {"curves": planned_curves(pipe, [(o, 1.0) for o in options], lambdas, progress),
                "about": about(job, None, lambdas, variants=[o.label() for o in options],
                               tokens_used=tokens_used(pipe))}
    return work


def family_work(registry: PipelineRegistry, base: Job, pairs: list[tuple[str, str]], options: list[AlignOptions],
                lambdas: int):
    """Curves and barriers over many pairs with the data and settings of ``base``."""
    def work(progress):
        plan = JobPlan(family_stages(pairs, options), HISTORY)
        plan.report(progress, 0, "loading checkpoints and data", 0, 0)
        size_family_plan(plan, 0, registry, base, pairs, options, lambdas)
        curves, bars = family_curves(registry, base, pairs, options, lambdas,
                                     progress=family_progress(plan, progress, len(options)))
        plan.finish()
        return {"curves": curves, "bars": bars,
                "about": about(base, None, lambdas, pairs=", ".join(pair_name(a, b) for a, b in pairs))}
    return work


def tasks_work(registry: PipelineRegistry, tasks: dict[str, list[tuple[str, str]]], task_dirs: dict[str, str],
               tokens: int | None, device: str, options: list[AlignOptions], lambdas: int,
               eval_examples: int | None):
    """Classifier pairs per task (data = the task's folder): curves and barriers with a task column."""
    import pandas as pd

    def task_base(task):
        return Job(model_a="", model_b="", data=str(task_dirs[task]), tokens=tokens, device=device,
                   eval_examples=eval_examples)

    def work(progress):
        stages, offsets = [], {}
        for task, pairs in tasks.items():
            offsets[task] = len(stages)
            stages += family_stages(pairs, options, f"{task}: ")
        plan = JobPlan(stages, HISTORY)
        plan.report(progress, 0, "loading checkpoints and data", 0, 0)
        for task, pairs in tasks.items():
            size_family_plan(plan, offsets[task], registry, task_base(task), pairs, options, lambdas)
        frames, bars = [], []
        for i, (task, pairs) in enumerate(tasks.items()):
            base = task_base(task)

            def sub(stage, done, total, _i=i, _t=task, **info):
                progress(f"task {_i + 1}/{len(tasks)} ({_t}) {stage}", done, total, **info)

            c, b = family_curves(registry, base, pairs, options, lambdas,
                                 progress=family_progress(plan, sub, len(options), offsets[task]))
            frames.append(c.assign(task=task))
            bars.append(b.assign(task=task))
        return {"curves": pd.concat(frames, ignore_index=True), "bars": pd.concat(bars, ignore_index=True),
                "about": {"tasks": list(tasks), "tokens": tokens, "lambdas": lambdas}}
    return work


def family_stages(pairs: list[tuple[str, str]], options: list[AlignOptions], prefix: str = "") -> list[tuple]:
    """The stages of ``study.family_curves``: per pair, its statistics pass, then one curve per option
    (a curve's assignments count towards it)."""
    out = []
    for i, (a, b) in enumerate(pairs):
        where = f"{prefix}pair {i + 1}/{len(pairs)}"
        out.append((f"{where}: statistics pass", "statistics", 0))
        out += [(f"{where}: {o.label()} curve", "curve", 0) for o in options]
    return out


def size_family_plan(plan: JobPlan, offset: int, registry: PipelineRegistry, base: Job,
                     pairs: list[tuple[str, str]], options: list[AlignOptions], lambdas: int) -> None:
    """Sizes of the stages of one family (every pair has ``base``'s data and settings, so the first
    pair's prepared data sizes them all)."""
    if not pairs:
        return
    pipe = registry.get(Job(**{**base.to_dict(), "model_a": pairs[0][0], "model_b": pairs[0][1]}))
    prep = pipe.prepared
    stats = 2 * forward_tokens(prep.align_batches)
    curve = 0 if prep.evalset.kind == "none" else lambdas * forward_tokens(prep.evalset.batches)
    for i in range(len(pairs)):
        k = offset + i * (1 + len(options))
        plan.set_units(k, stats)
        for j in range(len(options)):
            plan.set_units(k + 1 + j, curve)


def family_progress(plan: JobPlan, progress, n_options: int, offset: int = 0):
    """Maps ``study.family_curves``' events (``overall=(curves done, n)``, and "family" after each
    curve) to the stages of ``family_stages``."""
    def stage_of(curve: int, statistics: bool) -> int:
        p, j = divmod(curve, n_options)
        return offset + p * (1 + n_options) + (0 if statistics else 1 + j)

    def cb(stage, done, total, **info):
        if stage == "family":  # ``done`` curves are finished
            k = stage_of(done - 1, False)
            plan.report(progress, k, stage, 1, 1, **info)
            return
        curve = info.get("overall", (0, 0))[0]
        plan.report(progress, stage_of(curve, str(stage).endswith("statistics")), stage, done, total, **info)
    return cb


def data_amount_work(registry: PipelineRegistry, job: Job, options: AlignOptions, lambdas: int):
    """Barrier against the amount of alignment data, from the prefix snapshots of ``job``'s pass."""
    def work(progress):
        pipe = registry.get(job)
        fractions = sorted(set(float(f) for f in job.fractions) | {1.0})
        curves = planned_curves(pipe, [(options, f) for f in fractions] + [(VANILLA, 1.0)], lambdas, progress)
        return {"frame": data_amount_frame(pipe, curves[:-1], curves[-1]), "about": about(job, options, lambdas)}
    return work


def alignment_work(registry: PipelineRegistry, job: Job, options: AlignOptions):
    """Mean feature correlation per group before and after ``options``' alignment (Fig. 5)."""
    def work(progress):
        pipe = registry.get(job)
        al = pipe.alignment(options, progress=progress)
        if options.matcher == "weight":  # its own figures are weight cosines: measure the features
            from .compare import with_feature_correlations

            al = with_feature_correlations(al, pipe.spec, pipe.stats(progress).at(1.0))
        return {"frame": layer_correlations(al, pipe.spec), "about": about(job, options, tokens_used=tokens_used(pipe))}
    return work


def features_family_work(registry: PipelineRegistry, base: Job, pairs: list[tuple[str, str]], options: AlignOptions):
    """Fig. 5 over several pairs with the data and settings of ``base``: each pair's per-layer
    correlations and their mean ± standard error over the pairs (``layer_correlations_over_pairs``)."""
    from .study import layer_correlations_over_pairs

    def work(progress):
        plan = JobPlan([("loading checkpoints and data", "load", 0)]
                       + [(f"pair {i + 1}/{len(pairs)}: alignment", "pair alignment", 1) for i in range(len(pairs))],
                       HISTORY)
        plan.report(progress, 0, "loading checkpoints and data", 0, 0)
        frames = {}
        for i, (a, b) in enumerate(pairs):
            job = Job(**{**base.to_dict(), "model_a": a, "model_b": b})
            name = pair_name(a, b)
            plan.report(progress, i + 1, f"pair {i + 1}/{len(pairs)} ({name}): alignment", 0, 1)
            frames[name] = alignment_work(registry, job, options)(None)["frame"]
            plan.report(progress, i + 1, f"pair {i + 1}/{len(pairs)} ({name}): alignment", 1, 1)
        plan.finish()
        return {"frames": frames, "frame": layer_correlations_over_pairs(frames),
                "about": about(base, options, pairs=", ".join(frames))}
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
        results = planned_curves(pipe, [(VANILLA, 1.0), (act, 1.0), (wgt, 1.0)], lambdas, progress)
        al_w = pipe.alignment(wgt)
        return {"curves": curves_frame(results), "bars": barriers_frame(results),
                "agreement": agreement(pipe.alignment(act), al_w, pipe.spec),
                "sweeps": al_w.trace.sweeps if al_w.trace is not None else None,
                "methods": [act.label(), wgt.label()],
                "about": {**about(job, None, lambdas), "options": f"{act.label()} vs {wgt.label()}"}}
    return work


def steps_work(registry: PipelineRegistry, base: Job, series: list, options: AlignOptions, lambdas: int):
    """The barrier along training steps (``permerge.steps``); ``series`` as ``StepSeries`` or as the
    dicts a run record keeps."""
    from .steps import StepSeries, steps_work as along_steps

    series = [s if isinstance(s, StepSeries) else StepSeries(**s) for s in series]
    return along_steps(registry, base, series, options, lambdas)
