"""Acceptance of a built family, measured with permerge's own pipeline.

``run(zoo_dir)`` aligns every pair of MLMs (5 seeds: 10 pairs) on ``data/align.txt`` and
interpolates on ``data/eval.txt`` for the variants of the paper's Tables 1 and 2 that the family
is judged on, interpolates every classifier pair of every task (vanilla and FF + Head-Perm), and
checks the criteria below.  It writes ``acceptance.json`` and ``acceptance.md`` (tables to paste
into the zoo README) into the zoo folder and returns the report.

Criteria (``check``):
- every MLM's eval MLM loss (its permerge.json, measured on data/eval.txt) at most 3.5;
- over all MLM pairs, FF + Head-Perm's mean barrier at most 0.95 x vanilla's;
- the paper's Table 1 order of the means: FF only (vanilla attention averaging, FF aligned) >
  FF + Monotonic > FF + Head-Perm;
- the best function-preserving aligned variant's mean barrier at most 0.85 x vanilla's;
- every task has classifiers from at least 3 base seeds, each with dev accuracy at least
  chance + 0.15 (chance: the share of the most frequent dev label);
- the zoo folder (checkpoints, data and the package's own files) at most 160 MB.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..align import VANILLA, AlignOptions

MLM_LOSS_MAX = 3.5
HEAD_PERM_RATIO_MAX = 0.95
BEST_RATIO_MAX = 0.85
ACC_MARGIN = 0.15
MIN_CLASSIFIER_SEEDS = 3
SIZE_MAX_BYTES = 160 * 10 ** 6

VARIANTS = [
    ("Vanilla", VANILLA),
    ("FF only", AlignOptions(ff=True, attention="vanilla")),
    ("FF + Monotonic", AlignOptions(ff=True, attention="monotonic")),
    ("FF + Ignore-Heads", AlignOptions(ff=True, attention="ignore-heads")),
    ("FF + Head-Perm", AlignOptions(ff=True, attention="head-perm")),
    ("FF + Head-Perm + residual First", AlignOptions(ff=True, attention="head-perm", residual="first")),
    ("FF + Head-Perm + residual Last", AlignOptions(ff=True, attention="head-perm", residual="last")),
    ("FF + Head-Perm + residual All", AlignOptions(ff=True, attention="head-perm", residual="all")),
]
PRESERVING = {name: o.function_preserving for name, o in VARIANTS}
CLASSIFIER_VARIANTS = [("Vanilla", VANILLA), ("FF + Head-Perm", AlignOptions(ff=True, attention="head-perm"))]


def m_shape(losses, tol: float = 1e-4) -> bool:
    """The M shape of fine-tuned merges (paper, Sec. 5): loss below both endpoints somewhere in
    0 < lambda < 0.5 and somewhere in 0.5 < lambda < 1, with a higher loss between the two dips.
    ``losses`` are on an evenly spaced grid from lambda = 0 to 1."""
    v = [float(x) for x in losses]
    n = len(v)
    if n < 5:
        return False
    end = min(v[0], v[-1])
    left = [i for i in range(1, n - 1) if (i / (n - 1)) < 0.5]
    right = [i for i in range(1, n - 1) if (i / (n - 1)) > 0.5]
    if not left or not right:
        return False
    i = min(left, key=lambda k: v[k])
    j = min(right, key=lambda k: v[k])
    if not (v[i] < end - tol and v[j] < end - tol):
        return False
    return max(v[i:j + 1]) > max(v[i], v[j]) + tol


def _mean_se(values):
    from ..interpolate import mean_sem

    return mean_sem(values)


def check(mlm_losses: dict[str, float], barriers: dict[str, list[float]], classifiers: list[dict],
          size_bytes: int, tasks: list[str]) -> list[dict]:
    """The criteria as rows {criterion, value, limit, passed}.

    ``barriers``: variant name (VARIANTS) -> barrier per MLM pair; ``classifiers``: rows with
    name, task, seed, dev_accuracy, chance."""
    rows = []

    def add(criterion, value, limit, passed):
        rows.append({"criterion": criterion, "value": value, "limit": limit, "passed": bool(passed)})

    worst = max(mlm_losses.values()) if mlm_losses else float("nan")
    add(f"every MLM's eval loss <= {MLM_LOSS_MAX} ({len(mlm_losses)} MLMs)", round(worst, 4), MLM_LOSS_MAX,
        bool(mlm_losses) and worst <= MLM_LOSS_MAX)
    means = {k: _mean_se(v)[0] for k, v in barriers.items() if len(v)}
    van = means.get("Vanilla", float("nan"))
    hp = means.get("FF + Head-Perm", float("nan"))
    ratio = hp / van if van and van == van else float("nan")
    add(f"FF + Head-Perm / Vanilla barrier <= {HEAD_PERM_RATIO_MAX}", round(ratio, 4), HEAD_PERM_RATIO_MAX,
        ratio <= HEAD_PERM_RATIO_MAX)
    order = [means.get(k, float("nan")) for k in ("FF only", "FF + Monotonic", "FF + Head-Perm")]
    add("Table 1 order: FF only > FF + Monotonic > FF + Head-Perm",
        " > ".join(f"{x:.4f}" for x in order), "strictly decreasing", order[0] > order[1] > order[2])
    aligned = {k: m for k, m in means.items() if k != "Vanilla" and PRESERVING.get(k)}
    best = min(aligned, key=aligned.get) if aligned else None
    best_ratio = aligned[best] / van if best and van == van and van else float("nan")
    add(f"best function-preserving variant / Vanilla <= {BEST_RATIO_MAX} ({best})", round(best_ratio, 4),
        BEST_RATIO_MAX, best_ratio <= BEST_RATIO_MAX)
    for task in tasks:
        rows_t = [c for c in classifiers if c["task"] == task]
        seeds = sorted({c["seed"] for c in rows_t})
        add(f"{task}: classifiers from >= {MIN_CLASSIFIER_SEEDS} base seeds", len(seeds), MIN_CLASSIFIER_SEEDS,
            len(seeds) >= MIN_CLASSIFIER_SEEDS)
        if rows_t:
            margin = min(c["dev_accuracy"] - c["chance"] for c in rows_t)
            worst_c = min(rows_t, key=lambda c: c["dev_accuracy"] - c["chance"])
            add(f"{task}: every dev accuracy >= chance + {ACC_MARGIN} (worst {worst_c['name']}: "
                f"{worst_c['dev_accuracy']:.3f}, chance {worst_c['chance']:.3f})",
                round(margin, 4), ACC_MARGIN, margin >= ACC_MARGIN - 1e-12)
    add(f"zoo folder <= {SIZE_MAX_BYTES / 1e6:.0f} MB", round(size_bytes / 1e6, 2), SIZE_MAX_BYTES / 1e6,
        size_bytes <= SIZE_MAX_BYTES)
    return rows


def folder_bytes(zoo_dir: Path) -> int:
    """Bytes the zoo folder would ship: its checkpoints and data, plus the package's own files
    (code, README) when ``zoo_dir`` is a separate build folder."""
    def size(root: Path) -> int:
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()
                   and not any(part.endswith((".tmp", ".old")) for part in p.relative_to(root).parts))

    total = sum(size(zoo_dir / d) for d in ("checkpoints", "data") if (zoo_dir / d).is_dir())
    pkg = Path(__file__).resolve().parent
    total += sum(p.stat().st_size for p in pkg.iterdir() if p.is_file() and p.suffix in (".py", ".md"))
    return total


def _chance(dev_tsv: Path) -> float:
    lines = dev_tsv.read_text(encoding="utf-8").rstrip("\n").split("\n")[1:]
    labels = [ln.rsplit("\t", 1)[-1] for ln in lines]
    return max(labels.count(x) for x in set(labels)) / len(labels)


def _checkpoints(zoo_dir: Path) -> list[dict]:
    out = []
    for p in sorted((zoo_dir / "checkpoints").glob("*/permerge.json")):
        if p.parent.name.endswith((".tmp", ".old")):
            continue
        m = json.loads(p.read_text())
        out.append({"name": p.parent.name, "path": str(p.parent), "kind": m["kind"], "task": m["task"],
                    "seed": m["seed"], "metrics": m["metrics"]})
    return sorted(out, key=lambda e: (e["kind"], e["task"], e["seed"]))


def run(zoo_dir: Path, device: str = "cpu", align_tokens: int | None = 110_000, eval_blocks: int | None = None,
        lambdas: int = 21, tasks: list[str] | None = None, log=print) -> dict:
    from ..cache import NoCache
    from ..pipeline import Job
    from ..study import PipelineRegistry, family_curves, family_pairs

    zoo_dir = Path(zoo_dir).resolve()
    t0 = time.time()
    ck = _checkpoints(zoo_dir)
    mlms = [e for e in ck if e["kind"] == "mlm"]
    tasks = list(tasks) if tasks is not None else sorted({e["task"] for e in ck if e["kind"] == "classifier"})
    registry = PipelineRegistry(NoCache(), size=1)

    def progress_for(what):
        def cb(stage, done, total, **info):
            if stage == "family":
                log(f"  {what}: {done}/{total} curves (+{time.time() - t0:.0f}s)")
        return cb

    # --- MLM family: barriers of every variant over all pairs
    pairs = family_pairs([e["path"] for e in mlms])
    log(f"  {len(mlms)} MLMs, {len(pairs)} pairs, {len(VARIANTS)} variants, {lambdas} lambdas")
    names = {o.label(): n for n, o in VARIANTS}
    barriers: dict[str, list[float]] = {n: [] for n, _ in VARIANTS}
    per_pair = []
    if pairs:
        base = Job(model_a=pairs[0][0], model_b=pairs[0][1], data=str(zoo_dir / "data" / "align.txt"),
                   eval_data=str(zoo_dir / "data" / "eval.txt"), tokens=align_tokens,
                   eval_blocks=eval_blocks or 10 ** 6, device=device)
        _curves, bars = family_curves(registry, base, pairs, [o for _, o in VARIANTS], lambdas,
                                      progress=progress_for("MLM pairs"))
        for r in bars.itertuples():
            barriers[names[r.method]].append(float(r.barrier))
            per_pair.append({"pair": r.pair, "variant": names[r.method], "barrier": float(r.barrier),
                             "barrier_lambda": float(r.barrier_lambda), "loss_a": float(r.loss_a),
                             "loss_b": float(r.loss_b)})
    mlm_losses = {e["name"]: float(e["metrics"]["eval_mlm_loss"]) for e in mlms}

    # --- classifiers: accuracy, and vanilla / aligned curves for every pair of a task
    classifiers, clf_curves = [], []
    for task in tasks:
        rows_t = [e for e in ck if e["kind"] == "classifier" and e["task"] == task]
        task_dir = zoo_dir / "data" / "tasks" / task
        chance = _chance(task_dir / "dev.tsv")
        for e in rows_t:
            classifiers.append({"name": e["name"], "task": task, "seed": e["seed"],
                                "dev_accuracy": float(e["metrics"]["dev_accuracy"]), "chance": chance})
        tpairs = family_pairs([e["path"] for e in rows_t])
        if not tpairs:
            continue
        base = Job(model_a=tpairs[0][0], model_b=tpairs[0][1], data=str(task_dir), tokens=align_tokens,
                   device=device)
        curves, bars = family_curves(registry, base, tpairs, [o for _, o in CLASSIFIER_VARIANTS], lambdas,
                                     progress=progress_for(f"{task} pairs"))
        cnames = {o.label(): n for n, o in CLASSIFIER_VARIANTS}
        for r in bars.itertuples():
            c = curves[(curves["pair"] == r.pair) & (curves["method"] == r.method)].sort_values("lambda")
            clf_curves.append({
                "task": task, "pair": r.pair, "variant": cnames[r.method], "barrier": float(r.barrier),
                "m_shape": m_shape(c["loss"].tolist()),
                "accuracy_endpoints": [float(c["accuracy"].iloc[0]), float(c["accuracy"].iloc[-1])],
                "accuracy_min": float(c["accuracy"].min()),
                "lambda": [float(x) for x in c["lambda"]], "loss": [float(x) for x in c["loss"]],
                "accuracy": [float(x) for x in c["accuracy"]]})

    size = folder_bytes(zoo_dir)
    criteria = check(mlm_losses, barriers, classifiers, size, tasks)
    summary = []
    van = _mean_se(barriers["Vanilla"])[0] if barriers["Vanilla"] else float("nan")
    for n, o in VARIANTS:
        m, se = _mean_se(barriers[n])
        summary.append({"variant": n, "function_preserving": o.function_preserving, "mean": m, "std_err": se,
                        "ratio_to_vanilla": m / van if van else float("nan"), "pairs": len(barriers[n])})
    report = {"zoo": str(zoo_dir), "device": device, "align_tokens": align_tokens,
              "eval_blocks": eval_blocks, "lambdas": lambdas, "mlm_eval_loss": mlm_losses,
              "barriers": summary, "per_pair": per_pair, "classifiers": classifiers,
              "classifier_curves": clf_curves, "size_bytes": size, "criteria": criteria,
              "passed": all(c["passed"] for c in criteria), "seconds": round(time.time() - t0, 1)}
    (zoo_dir / "acceptance.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    md = markdown(report)
    (zoo_dir / "acceptance.md").write_text(md)
    log(md)
    return report


def _f(x, nd=3):
    return "n/a" if x != x else f"{x:.{nd}f}"


def markdown(report: dict) -> str:
    """The acceptance report as markdown tables."""
    lines = [f"Barriers over {report['barriers'][0]['pairs']} MLM pairs (mean +- standard error; "
             f"{report['align_tokens']} alignment tokens of data/align.txt, data/eval.txt, "
             f"{report['lambdas']} lambdas, {report['device']}):", "",
             "| variant | function-preserving | barrier | x vanilla |", "|---|---|---|---|"]
    for r in report["barriers"]:
        lines.append(f"| {r['variant']} | {'yes' if r['function_preserving'] else 'no'} | "
                     f"{_f(r['mean'])} +- {_f(r['std_err'])} | {_f(r['ratio_to_vanilla'], 2)} |")
    lines += ["", "| MLM | eval MLM loss |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in report["mlm_eval_loss"].items()]
    if report["classifiers"]:
        lines += ["", "| classifier | dev accuracy | chance |", "|---|---|---|"]
        lines += [f"| {c['name']} | {c['dev_accuracy']:.3f} | {c['chance']:.3f} |" for c in report["classifiers"]]
    if report["classifier_curves"]:
        lines += ["", "Classifier curves (loss barrier; accuracy at lambda 0 / 1 and its minimum; M shape = "
                      "loss below both ends near each end, higher in between):", "",
                  "| task | pair | variant | barrier | accuracy ends | min accuracy | M shape |",
                  "|---|---|---|---|---|---|---|"]
        for c in report["classifier_curves"]:
            a0, a1 = c["accuracy_endpoints"]
            lines.append(f"| {c['task']} | {c['pair'].replace(' | ', ' vs ')} | {c['variant']} | {_f(c['barrier'])} | "
                         f"{a0:.3f} / {a1:.3f} | {c['accuracy_min']:.3f} | {'yes' if c['m_shape'] else 'no'} |")
    lines += ["", "| criterion | value | limit | |", "|---|---|---|---|"]
    lines += [f"| {c['criterion']} | {c['value']} | {c['limit']} | {'PASS' if c['passed'] else 'FAIL'} |"
              for c in report["criteria"]]
    lines += ["", f"Folder size: {report['size_bytes'] / 1e6:.1f} MB. Overall: "
                  f"{'PASS' if report['passed'] else 'FAIL'} ({report['seconds']:.0f} s)."]
    return "\n".join(lines) + "\n"
