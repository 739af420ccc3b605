"""Every measurement of the GPU goals in one run, printed as one table: each goal, the figure,
the floor measured in the same run, pass or miss.

    python bench/bench_gpu.py --device cuda        # on a CUDA machine: bert-base sizes (a few minutes on an H200)
    python bench/bench_gpu.py --tiny --device cpu  # a dry run of every step with tiny sizes

It imports only torch, transformers, numpy, scipy, safetensors and the project (no diskcache,
Streamlit, plotly or pandas in anything it runs; the project's CLI runs with --no-cache).
Floors (the two encoders' forwards in fp32, TF32, fp16 and bf16) are measured in the same run as
the statistics passes they are compared with.  Steps:

1. start-up: `import torch`, the BERT classes of transformers, the first CUDA operation (each in
   a fresh process);
2. forward floors and the statistics pass on a random bert-base pair (1M tokens in batches of
   64 x 128, cut into forwards of the size the pass chooses from the model's widths) in the
   default precision, with its peak memory beyond the two models;
3. the precision trade of the statistics on the random bert-base pair and on the bundled pair:
   low-precision statistics against the fp32 path;
4. the assignments of all groups (Head-Perm attention, All residual): one after another and on
   the thread pool;
5. half-precision evaluation along lambda (fp16 on CUDA; bf16 stands in on a CPU) against
   float32: every barrier (vanilla and aligned) on the random bert-base pair and on the bundled
   pair, and the lambda of each maximum;
6. the statistics pass on the bundled pair (all of its alignment text) against its floor;
7. `python -m permerge align` on the bundled pair, wall time;
8. `python -m permerge interpolate` on two bert-base-sized checkpoints with 1M alignment tokens,
   250k evaluation tokens and 21 lambdas, wall time, and the stage timings of the same run done
   in-process (loading, data, statistics, assignments, curves) with the pass's peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_stats import (OPTIONS, assignment_times, forward_floor, load_setup, precision_check,  # noqa: E402
                         random_pair, stats_ratio)

from permerge.arch import spec_for  # noqa: E402
from permerge.evaluate import mlm_evalset  # noqa: E402
from permerge.stats import forward_tokens, resolve_precision  # noqa: E402

ROWS: list[tuple] = []  # (measure, figure, floor on the same machine, goal, verdict)
GB = 1e9


def row(measure, figure, floor="-", goal="-", met=None):
    verdict = "-" if met is None else ("pass" if met else "MISS")
    ROWS.append((measure, figure, floor, goal, verdict))
    print(f"  {measure}: {figure} (floor {floor}; goal {goal}; {verdict})", file=sys.stderr, flush=True)


def child_env() -> dict:
    """The environment of the project's subprocesses: the repository first on PYTHONPATH, the rest kept."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def fresh_process_seconds(code: str) -> float:
    """Wall seconds of a Python snippet in a fresh interpreter (it prints its own timing)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=child_env(), check=True)
    return float(out.stdout.strip().splitlines()[-1])


def model_bytes(*models) -> int:
    return sum(t.numel() * t.element_size() for m in models for t in list(m.parameters()) + list(m.buffers()))


def low_eval_precision(device) -> tuple[str, str]:
    """The half precision the evaluation runs in by default on ``device`` (fp16 on CUDA); on a CPU,
    whose default is float32, bf16 stands in so that the dry run exercises the same path."""
    p = resolve_precision("auto", device)
    return (p, "") if p != "fp32" else ("bf16", " (bf16 stands in on the CPU)")


def startup(device: str) -> None:
    t_torch = fresh_process_seconds("import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)")
    t_tf = fresh_process_seconds("import torch, time; t = time.perf_counter(); "
                                 "from transformers import BertForMaskedLM; print(time.perf_counter() - t)")
    row("start-up: import torch (fresh process)", f"{t_torch:.2f} s")
    row("start-up: import transformers' BERT classes", f"{t_tf:.2f} s")
    if device.startswith("cuda"):
        t_cuda = fresh_process_seconds("import torch, time; t = time.perf_counter(); x = torch.ones(64, 64, device='cuda'); "
                                       "(x @ x).sum().item(); print(time.perf_counter() - t)")
        row("start-up: first CUDA matrix product (context, cuBLAS)", f"{t_cuda:.2f} s")


def forward_rows(spec, batches, device) -> list[int]:
    """Sequences per forward of the statistics pass over ``batches`` (its default sizes on ``device``)."""
    from permerge.stats import _device_chunks

    split = forward_tokens(spec)
    merge = split if str(device).startswith("cuda") else 0
    out = []
    for idx, rows, _ in _device_chunks(batches, lambda i: True, set(), merge, split):
        if idx:
            n = sum(batches[i]["input_ids"].shape[0] for i in idx)
            out.append(n if rows is None else len(range(n)[rows]))
    return out


def per_million(seconds: float, tokens: int) -> float:
    return seconds * 1e6 / tokens


def big_pair(args, device):
    a, b, batches, what = load_setup(random=args.size, tokens=args.tokens, batch_size=args.batch_size)
    return a.to(device), b.to(device), batches, what


def floors_and_pass(a, b, batches, device, args) -> dict:
    spec = spec_for(a)
    tokens = sum(int(x["attention_mask"].sum()) for x in batches)
    default = resolve_precision("auto", device)
    floors = {}
    precisions = ["fp32", "fp16", "bf16"]
    if device.startswith("cuda"):
        precisions.insert(1, "tf32")
    for p in precisions:
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = p == "tf32"
        try:
            forward_floor(a, b, batches[:2], device, "fp32" if p == "tf32" else p)  # warm-up
            floors[p] = min(forward_floor(a, b, batches, device, "fp32" if p == "tf32" else p)[0]
                            for _ in range(args.repeats))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    fwd = forward_tokens(spec)
    rows = max(forward_rows(spec, batches, device))
    seq = batches[0]["input_ids"].shape[1]
    row(f"two {args.size} forward passes, {tokens:,} tokens, forwards of up to {rows} x {seq} (floors)",
        ", ".join(f"{p} {per_million(s, tokens):.2f}" for p, s in floors.items()) + " s per 1M")
    big = min(forward_floor(a, b, batches, device, default, batch_tokens=8192)[0] for _ in range(args.repeats))
    row(f"two {args.size} forward passes, {default}, forwards of 8,192 tokens (the former fixed size)",
        f"{per_million(big, tokens):.2f} s per 1M (the chosen size takes {floors[default] / big:.2f} x this)")
    r = stats_ratio(a, b, spec, batches, device, default, repeats=args.repeats)
    s1m = per_million(r["stat"], tokens)
    ratio = r["stat"] / floors[default]
    target = args.size == "bert-base" and device.startswith("cuda")
    row(f"statistics pass, random {args.size} pair, 1M tokens ({tokens:,} measured), {default} forwards",
        f"{s1m:.2f} s per 1M ({ratio:.2f} x its floor)",
        f"{default} floor {per_million(floors[default], tokens):.2f} s per 1M", "<= 2.0 s and <= 1.8 x the floor",
        s1m <= 2.0 and ratio <= 1.8 if target else None)
    what = (f"forwards of up to {rows} x {seq} tokens, the size chosen from the widths being {fwd:,} tokens; "
            f"batches of {batches[0]['input_ids'].shape[0]} x {seq}")
    if r["peak_bytes"] is not None:
        beyond = r["peak_bytes"] - r["model_bytes"]
        row("peak GPU memory of the statistics pass beyond the two models", f"{beyond / GB:.2f} GB ({what}; "
            f"peak {r['peak_bytes'] / GB:.2f} GB with the models' {r['model_bytes'] / GB:.2f} GB)", "-", "<= 3 GB",
            beyond <= 3 * GB if args.size == "bert-base" else None)
    else:
        rss = r.get("rss_extra_bytes")
        row("peak memory of the statistics pass beyond the two models (CPU: growth of the resident set)",
            "n/a (not measurable here)" if rss is None else f"{rss / GB:.2f} GB ({what})", "-", "<= 3 GB (GPU)")
    if args.fp32_tokens:
        sub = batches[:max(1, len(batches) * args.fp32_tokens // max(tokens, 1))]
        sub_tokens = sum(int(x["attention_mask"].sum()) for x in sub)
        r32 = stats_ratio(a, b, spec, sub, device, "fp32", repeats=1)
        row(f"statistics pass, fp32 forwards, {sub_tokens:,} tokens",
            f"{per_million(r32['stat'], sub_tokens):.2f} s per 1M ({r32['stat'] / r32['floor']:.2f} x its floor)")
    return {"points": r["res"].points, "spec": spec}


def precision_rows(a, b, batches, device, what, max_tokens):
    spec = spec_for(a)
    sub, seen = [], 0
    for x in batches:
        if seen >= max_tokens:
            break
        sub.append(x)
        seen += int(x["attention_mask"].sum())
    chk = precision_check(a, b, spec, sub, device, ["fp16", "bf16"])
    for p, r in chk.items():
        worst = max(e for e, _ in r.values())
        agree = min(s for _, s in r.values())
        row(f"precision trade, {what}, {seen:,} tokens: {p} forwards vs fp32",
            f"max abs dC {worst:.1e}, permutations {100 * agree:.1f}% identical ("
            + "; ".join(f"{k} {e:.1e}/{100 * s:.1f}%" for k, (e, s) in r.items()) + ")",
            "-", "<= 1e-3 and >= 99%", worst <= 1e-3 and agree >= 0.99)


def assignments(points, spec, size):
    t = assignment_times(spec, points)
    widest = max(t["largest"].values())
    row(f"assignments, all {len(spec.groups)} {size} groups (Head-Perm, FF, residual All)",
        f"{t['parallel']:.2f} s wall on {t['workers']} threads ({t['sequential']:.2f} s one after another; "
        f"largest single solve {widest[1]:.2f} s at {widest[0]} wide)", "-", "<= 1.5 s wall, exact",
        t["parallel"] <= 1.5 if size == "bert-base" else None)
    return t["alignment"]


def masked_blocks(tokens: int, vocab: int, mask_id: int = 4, seed: int = 0) -> dict:
    """Random 128-token blocks with 15% of the positions masked (the labels there): an MLM
    evaluation set for random models."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (max(1, tokens // 128), 128), generator=g)
    sel = torch.rand(ids.shape, generator=g) < 0.15
    return {"input_ids": torch.where(sel, torch.full_like(ids, mask_id), ids),
            "labels": torch.where(sel, ids, torch.full_like(ids, -100))}


def eval_precision_rows(model_a, model_b, perms, spec, evalset, device, what, lambdas: int = 21):
    """Barriers of vanilla averaging and of the alignment, evaluated in float32 and in the
    evaluation's half precision, with the lambda of each maximum."""
    import copy

    from permerge.evaluate import losses_along
    from permerge.interpolate import barrier, clone_state, lambda_grid
    from permerge.permute import permute_model

    low, note = low_eval_precision(device)
    grid = lambda_grid(lambdas)
    work = copy.deepcopy(model_a).to(device)
    state_a = {k: v.to(device) for k, v in clone_state(model_a).items()}
    curves, times = {}, {}
    for method, b in (("vanilla", model_b), ("aligned", permute_model(model_b, spec, perms))):
        state_b = {k: v.to(device) for k, v in clone_state(b).items()}
        for p in ("fp32", low):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            curves[method, p] = losses_along(work, state_a, state_b, evalset, grid, device, spec.mlm_head, p)
            times[p] = times.get(p, 0.0) + time.perf_counter() - t
        del state_b
    worst, same, parts = 0.0, True, []
    for method in ("vanilla", "aligned"):
        got = {}
        for p in ("fp32", low):
            losses = curves[method, p]
            got[p] = barrier(grid, losses, losses[-1], curves["vanilla", p][0])  # loss_b: B's own
        d = abs(got[low][0] - got["fp32"][0])
        worst, same = max(worst, d), same and got[low][1] == got["fp32"][1]
        ordered = sorted(curves[method, "fp32"], reverse=True)
        parts.append(f"{method} {got['fp32'][0]:.4f} vs {got[low][0]:.4f} at lambda {got['fp32'][1]:.2f} / "
                     f"{got[low][1]:.2f} (fp32 runner-up {ordered[0] - ordered[1]:.4f} lower)")
    scored = sum(int((b["labels"] != -100).sum()) for b in evalset.batches)
    row(f"evaluation along lambda, {what}: {low}{note} vs fp32 barriers, {lambdas} lambdas, {scored:,} masked tokens",
        f"max abs d(barrier) {worst:.4f} nats, lambda of the maximum {'the same' if same else 'DIFFERS'} ("
        + "; ".join(parts) + f"); curves {times[low]:.1f} s in {low}, {times['fp32']:.1f} s in fp32",
        "-", "<= 0.01 nats and the same lambda", worst <= 0.01 and same)


def bundled_pass(device, args):
    a, b, batches, what = load_setup(tokens=args.bundled_tokens)
    a.to(device)
    b.to(device)
    spec = spec_for(a)
    tokens = sum(int(x["attention_mask"].sum()) for x in batches)
    r = stats_ratio(a, b, spec, batches, device, resolve_precision("auto", device), repeats=args.repeats)
    row(f"statistics pass, bundled pair ({what}), {tokens:,} tokens", f"{r['stat'] / r['floor']:.2f} x the floor",
        f"{r['floor']:.2f} s", "<= 2 x", r["stat"] / r["floor"] <= 2.0)
    precision_rows(a, b, batches, device, "bundled pair", args.bundled_tokens)
    bundled_eval(device, args)


def bundled_eval(device, args):
    """The evaluation's precision bar on the bundled pair: its held-out text, the CLI's default
    alignment (FF + Head-Perm) from the fp32 statistics of its alignment text."""
    from permerge import zoo
    from permerge.align import AlignOptions
    from permerge.pipeline import Job, Pipeline

    pa, pb = map(str, zoo.default_pair())
    pipe = Pipeline(Job(pa, pb, str(zoo.align_text()), tokens=args.bundled_tokens, eval_data=str(zoo.eval_text()),
                        eval_blocks=args.bundled_eval_blocks, device=device, precision="fp32"))
    perms = pipe.alignment(AlignOptions()).perms
    a, b = pipe.pair
    eval_precision_rows(a.model, b.model, perms, pipe.spec, pipe.prepared.evalset, device, "bundled pair",
                        args.accuracy_lambdas)


def cli(args: list[str]) -> float:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "permerge", *args], cwd=ROOT, capture_output=True, text=True,
                         env=child_env())
    if out.returncode:
        raise RuntimeError(f"python -m permerge {args[0]} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return time.perf_counter() - t


def align_cli(device, work: Path, tokens: int | None):
    from permerge import zoo

    a, b = map(str, zoo.default_pair())
    out = work / "align-out"
    wall = cli(["align", a, b, "--data", str(zoo.align_text()), "--device", device, "--no-cache", "--quiet",
                "--out", str(out)] + (["--tokens", str(tokens)] if tokens else []))
    timings = json.loads((out / "report.json").read_text()).get("timings", {})
    parts = ", ".join(f"{k} {v:.2f}" for k, v in timings.items())
    row("bundled pair `align`, wall from the shell", f"{wall:.1f} s wall (in-process stages, s: {parts})", "-",
        "<= 8 s wall", wall <= 8.0)


def end_to_end(device, args, work: Path):
    """Two bert-base-sized checkpoints (random weights, the bundled tokenizer) on disk, 1M
    alignment tokens and 250k evaluation tokens of repeated bundled text."""
    from permerge import zoo
    from permerge.align import VANILLA, AlignOptions
    from permerge.checkpoints import load_checkpoint, save_model
    from permerge.pipeline import Job, Pipeline

    tok = load_checkpoint(zoo.default_pair()[0]).tokenizer
    a, b = random_pair(args.size)
    pa, pb = work / "A", work / "B"
    save_model(a, tok, pa)
    save_model(b, tok, pb)
    del a, b
    text = zoo.align_text().read_text()
    per_copy = max(1, len(tok(text)["input_ids"]))
    data, ev = work / "align.txt", work / "eval.txt"
    data.write_text("\n".join([text] * (args.tokens // per_copy + 1)))
    ev_text = zoo.eval_text().read_text()
    ev.write_text("\n".join([ev_text] * (args.eval_tokens // max(1, len(tok(ev_text)["input_ids"])) + 1)))
    blocks = max(1, args.eval_tokens // 128)
    common = [str(pa), str(pb), "--data", str(data), "--eval-data", str(ev), "--eval-blocks", str(blocks),
              "--tokens", str(args.tokens), "--device", device]
    wall = cli(["interpolate", *common, "--lambdas", "21", "--no-cache", "--quiet", "--out", str(work / "interp")])
    pipe = Pipeline(Job(str(pa), str(pb), str(data), tokens=args.tokens, eval_data=str(ev), eval_blocks=blocks,
                        device=device))
    t = time.perf_counter()
    pipe.pair
    load = time.perf_counter() - t
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    pipe.stats()
    peak = ""
    if device.startswith("cuda"):
        beyond = torch.cuda.max_memory_allocated() - model_bytes(*(c.model for c in pipe.pair))
        peak = f"; statistics pass with the default snapshots {beyond / GB:.2f} GB beyond the models"
    pipe.curve(VANILLA, 21)
    pipe.curve(AlignOptions(), 21)
    after_load = time.perf_counter() - t
    parts = ", ".join(f"{k} {v:.2f}" for k, v in pipe.timings.items())
    row(f"`interpolate`, two {args.size}-sized checkpoints, {args.tokens:,} alignment + {blocks * 128:,} evaluation "
        f"tokens, 21 lambdas, vanilla + aligned, {pipe.eval_precision} evaluation",
        f"{after_load:.1f} s after {load:.1f} s loading, in-process (stages, s: {parts}){peak}; "
        f"{wall:.1f} s wall from the shell", "-", "<= 15 s after loading",
        after_load <= 15.0 if args.size == "bert-base" and device.startswith("cuda") else None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: a dry run of every step (CPU is fine)")
    ap.add_argument("--size", default=None, help="random pair size (default bert-base; tiny with --tiny)")
    ap.add_argument("--tokens", type=int, default=None, help="alignment tokens (default 1M; 16k with --tiny)")
    ap.add_argument("--eval-tokens", type=int, default=None, help="evaluation tokens (default 250k; 4k with --tiny)")
    ap.add_argument("--fp32-tokens", type=int, default=None, help="tokens of the fp32 statistics pass (default 131k)")
    ap.add_argument("--bundled-tokens", type=int, default=None, help="bundled-pair tokens (default: 120k, all)")
    ap.add_argument("--accuracy-tokens", type=int, default=None,
                    help="evaluation tokens of the random pair's precision bar (default 32k; 1k with --tiny)")
    ap.add_argument("--accuracy-lambdas", type=int, default=21, help="lambda points of the precision bars (default 21)")
    ap.add_argument("--bundled-eval-blocks", type=int, default=None,
                    help="evaluation blocks of the bundled pair's precision bar (default 64, the CLI's; 8 with --tiny)")
    ap.add_argument("--batch-size", type=int, default=64, help="sequences of 128 tokens per batch (default 64)")
    ap.add_argument("--repeats", type=int, default=None, help="best of (default 2; 1 with --tiny)")
    ap.add_argument("--skip", default="",
                    help="comma-separated steps to skip: startup,pass,precision,assign,evalprec,bundled,align,e2e "
                         "(assign needs pass's statistics, evalprec assign's permutations)")
    args = ap.parse_args(argv)
    from permerge.pipeline import resolve_device

    device = resolve_device(args.device)
    tiny = args.tiny
    args.size = args.size or ("tiny" if tiny else "bert-base")
    args.tokens = args.tokens or (16384 if tiny else 1_000_000)
    args.eval_tokens = args.eval_tokens or (4096 if tiny else 250_000)
    args.fp32_tokens = args.fp32_tokens if args.fp32_tokens is not None else (4096 if tiny else 131072)
    args.bundled_tokens = args.bundled_tokens or (8192 if tiny else 120_000)
    args.accuracy_tokens = args.accuracy_tokens or (1024 if tiny else 32768)
    args.bundled_eval_blocks = args.bundled_eval_blocks or (8 if tiny else 64)
    args.repeats = args.repeats or (1 if tiny else 2)
    skip = set(filter(None, args.skip.split(",")))
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="permerge-bench-"))
    failed = []

    def step(name, fn, *a):
        """Run one step; a failure is reported as a row and the other steps still run."""
        if name in skip:
            return None
        try:
            return fn(*a)
        except Exception as e:  # noqa: BLE001 (one run on a lent machine: measure what can be measured)
            failed.append(name)
            row(f"step {name} failed", f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:300])
            import traceback

            traceback.print_exc()
            return None

    try:
        step("startup", startup, device)
        if not {"pass", "precision", "assign", "evalprec"} <= skip:
            a, b, batches, what = big_pair(args, device)
            spec = spec_for(a)
            res = step("pass", floors_and_pass, a, b, batches, device, args)
            step("precision", precision_rows, a, b, batches, device, f"random {args.size} pair", args.fp32_tokens)
            del batches
            al = step("assign", assignments, res["points"], spec, args.size) if res else None
            if al is not None:
                evalset = mlm_evalset(masked_blocks(args.accuracy_tokens, a.config.vocab_size), spec.inputs)
                step("evalprec", eval_precision_rows, a, b, al.perms, spec, evalset, device, f"random {args.size} pair",
                     args.accuracy_lambdas)
            del a, b, res, al
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        step("bundled", bundled_pass, device, args)
        step("align", align_cli, device, work, args.bundled_tokens if tiny else None)
        step("e2e", end_to_end, device, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t0
    row("the whole bench, one run", f"{total:.0f} s", "-", "<= 480 s", total <= 480 if not tiny else None)
    print(f"# GPU goals (commit {commit_of()}; {gpu}; device {device}; torch {torch.__version__}; "
          f"transformers {transformers_version()}; {os.cpu_count()} CPUs; "
          f"bench/bench_gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}; {total:.0f} s in all)")
    print("| measure | figure | floor on the same machine | goal | pass/miss |")
    print("| --- | --- | --- | --- | --- |")
    for r in ROWS:
        print("| " + " | ".join(str(x).replace("|", "/") for x in r) + " |")
    if failed:
        print(f"steps that failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


def commit_of() -> str:
    """The checked-out commit (git where there is one; a copy of the tree without .git: unknown)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() or "unknown (no git repository)"
    except OSError:
        return "unknown (no git)"


def transformers_version() -> str:
    import transformers

    return transformers.__version__


if __name__ == "__main__":
    main()
